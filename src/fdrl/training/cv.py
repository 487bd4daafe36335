"""Cross-validation: folds from metadata, validation carved from the training part,
the test fold touched once at the end, one folder per fold, a summary per run.

Layout of a run folder::

    config.yaml            the resolved configuration
    run.json               protocol, corpus, classes, config and experiment hashes, manifest
                           fingerprint, utterances skipped (data.skip_bad), environment
    folds/<group>/
        metrics.json       test and validation metrics (written last: marks the fold done)
        history.csv        per-epoch loss terms, mu, lambda, validation metrics
        model/             self-describing checkpoint of the selected epoch
        representations.npz  test-set embeddings, labels, speakers, utt ids, probabilities
        predictions.jsonl  one line per test utterance
        resume.pt          training state while the fold runs (removed when it ends)
    results.json, results.md  (written when every selected fold is done)

A run killed at any point continues with ``run_cv(None, run_dir, resume=True)``
(``fdrl cv --resume RUN_DIR``): finished folds are kept, the running fold continues
from its last epoch, and the figures equal those of an uninterrupted run.
Input problems (a bad file, a fold without some class) are found before the run
folder is created, so a failed start leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from fdrl import metrics
from fdrl.checkpoint import build_model, save_checkpoint
from fdrl.config import Config, YAMLTooLarge, from_dict, safe_load_bounded
from fdrl.data.folds import Fold, check_fold_classes, make_folds, validation_split
from fdrl.data.manifest import Manifest, read_manifest
from fdrl.errors import ConfigError, RunError
from fdrl.models.base import InputSpec
from fdrl.training import distributed as D
from fdrl.training.diagnose import fold_diagnostics
from fdrl.training.data import (FeatureData, RawData, bad_rows_error, drop_rows, load_feature_data,
                                load_usable, missing_inputs, renumber, unreadable_inputs)
from fdrl.training.runs import aggregate, environment, experiment_sha256, new_run_dir
from fdrl.training.trainer import Trainer, predict, resolve_device, seed_everything
from fdrl.utils.io import read_json, sha256_text, write_json, write_jsonl, write_npz, write_text
from fdrl.utils.lock import LOCK_NAME, acquire, release

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A corpus ready for training: its manifest, features and the model's input spec.

    With ``features.finetune`` the data are raw (:class:`RawData`) and ``backbones``
    holds the encoder specs; :meth:`fresh_spec` builds pretrained backbones anew for
    every model, so one fold's fine-tuning never leaks into the next fold.
    """

    manifest: Manifest
    data: FeatureData
    spec: InputSpec
    encoders: dict
    backbones: dict = field(default_factory=dict)  # modality -> backbone spec (finetune)
    skipped: list = field(default_factory=list)    # rows left out (data.skip_bad): row, utt_id, reason

    def fresh_spec(self) -> InputSpec:
        if not self.backbones:
            return self.spec
        from fdrl.encoders.backbone import HFBackbone

        mods = {m: HFBackbone.from_spec(m, s) for m, s in self.backbones.items()}
        return dataclasses.replace(self.spec, speech_backbone=mods.get("speech"),
                                   text_backbone=mods.get("text"))


def input_spec(data: FeatureData) -> InputSpec:
    return InputSpec(
        num_classes=data.num_classes,
        speech_dim=data.speech.dim if data.speech is not None else None,
        text_dim=data.text.dim if data.text is not None else None,
        speech_sequence=bool(data.speech is not None and data.speech.is_sequence),
        text_sequence=bool(data.text is not None and data.text.is_sequence),
        num_speakers=len(data.speaker_names),
    )


def prepare(cfg: Config, progress: bool = True) -> Prepared:
    """Read the manifest and load (or extract once) the features the config asks for."""
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: not set; pass data.manifest=PATH (a folder written by "
                          "`fdrl prepare ...`)")
    manifest = D.run_on_main(lambda: read_manifest(cfg.data.manifest))
    if cfg.features.finetune:
        return prepare_finetune(cfg, manifest)
    # rank 0 checks the rows and fills the feature cache; the other ranks then drop
    # the same rows and read the cache (a user error on rank 0 stops every rank)
    loaded: dict = {}

    def on_main() -> list[dict]:
        loaded["manifest"], loaded["data"], skipped = load_usable(manifest, cfg, progress=progress)
        return skipped

    skipped = D.run_on_main(on_main)
    if D.is_main():
        manifest, data = loaded["manifest"], loaded["data"]
    else:
        manifest = drop_rows(manifest, skipped)
        data = load_feature_data(manifest, cfg, progress=False)
    encoders = {"speech": data.speech.encoder if data.speech else None,
                "text": data.text.encoder if data.text else None}
    # precomputed features: record how to compute the same features from new audio
    # (a feature dump's labels.json says so under "speech_features"), for inference
    compute = manifest.meta.get("speech_features")
    if encoders["speech"] and encoders["speech"].get("name") == "precomputed" and compute:
        encoders["speech"] = {**encoders["speech"], "compute": compute}
    return Prepared(manifest, data, input_spec(data), encoders, skipped=skipped)


def prepare_finetune(cfg: Config, manifest: Manifest) -> Prepared:
    """End-to-end fine-tuning (the paper's setting): raw audio + text through trainable
    transformers backbones that are part of the model."""
    from fdrl.encoders.backbone import HFBackbone

    specs = {m: getattr(cfg.features, m) for m in ("speech", "text")
             if getattr(cfg.features, m).get("name", "none") != "none"}
    if not specs:
        raise ConfigError("features: both features.speech and features.text are 'none'")
    for m, s in specs.items():
        if s.get("name") in ("egemaps", "egemaps-functionals", "logmel", "precomputed"):
            raise ConfigError(f"features.{m}: '{s.get('name')}' is not a trainable encoder; "
                              f"features.finetune=true needs a transformers model (name: hf)")
    if "speech" in specs and not any(r.get("audio") for r in manifest.rows):
        raise ConfigError("features.finetune with a speech encoder needs an `audio` file on every row")
    probe = {m: HFBackbone.from_spec(m, s) for m, s in specs.items()}  # loads once: dims, collate

    def check() -> list[dict]:
        # audio is read during training: a bad file found now costs seconds, not a
        # crash hours into fine-tuning
        bad = missing_inputs(manifest, cfg)
        bad = renumber(bad + unreadable_inputs(drop_rows(manifest, bad), cfg, probe,
                                               sample_rate=cfg.data.sample_rate), manifest)
        if bad and not cfg.data.skip_bad:
            raise bad_rows_error(manifest, bad, "missing or unreadable input")
        return bad

    skipped = D.run_on_main(check)
    manifest = drop_rows(manifest, skipped)
    data = RawData(manifest, probe, cfg.data.sample_rate, cfg.data.max_seconds,
                   min_samples=getattr(probe.get("speech"), "min_samples", 0))
    spec = InputSpec(num_classes=len(manifest.classes),
                     speech_dim=probe["speech"].out_dim if "speech" in probe else None,
                     text_dim=probe["text"].out_dim if "text" in probe else None,
                     num_speakers=len(data.speaker_names))
    encoders = {m: ({**b.spec(), "finetune": True} if (b := probe.get(m)) else None)
                for m in ("speech", "text")}
    return Prepared(manifest, data, spec, encoders, backbones={m: b.spec() for m, b in probe.items()},
                    skipped=skipped)


def _fold_dirname(fold: Fold) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(fold.test_group))


def select_folds(folds: list[Fold], wanted) -> list[Fold]:
    if not wanted:
        return folds
    wanted = [str(w) for w in wanted]
    names = {str(f.test_group): f for f in folds}
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ConfigError(f"cv.folds: no test group {missing}; available: {list(names)}")
    return [names[w] for w in wanted]


def run_fold(cfg: Config, prep: Prepared, fold: Fold, fold_dir: Path, progress: bool = True) -> dict:
    """Train on the fold's training part (minus validation), select on validation,
    evaluate once on the test part, write the fold's files; return its metrics."""
    manifest, data = prep.manifest, prep.data
    check_fold_classes(manifest, fold.train, fold.name)
    train_idx, val_idx = validation_split(manifest, fold.train, cfg.cv.val_strategy,
                                          cfg.cv.val_fraction, cfg.train.seed)
    assert not set(val_idx) & set(fold.test), "validation rows must come from training sessions"
    seed_everything(cfg.train.seed + 7919 * fold.index, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    spec = prep.fresh_spec()
    model = build_model(cfg, spec)
    fold_dir.mkdir(parents=True, exist_ok=True)
    backbone_params = [p for b in (spec.speech_backbone, spec.text_backbone) if b is not None
                       for p in b.parameters()]
    trainer = Trainer(model, cfg.train, device, log_dir=fold_dir, tensorboard=cfg.run.tensorboard,
                      backbone_params=backbone_params, progress=progress)
    fit = trainer.fit(data, train_idx, val_idx, resume_path=fold_dir / "resume.pt",
                      desc=f"fold {fold.name}")
    val = predict(trainer.net, data, val_idx, cfg.train.eval_batch_size, device)
    # on validation rows at the selected epoch, never the test fold
    diagnostics = fold_diagnostics(trainer.net, data, train_idx, val, cfg.train.eval_batch_size,
                                   device, seed=cfg.train.seed)
    test = predict(trainer.net, data, fold.test, cfg.train.eval_batch_size, device,
                   keep_embeddings=cfg.run.save_representations)
    classes = manifest.classes
    result = {
        "fold": fold.index + 1, "name": fold.name, "test_group": str(fold.test_group),
        "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "best_epoch": fit.best_epoch + 1, "epochs_run": len(fit.history), "stopped_early": fit.stopped_early,
        "val": metrics.summary(val.labels, val.preds, classes),
        "test": metrics.summary(test.labels, test.preds, classes),
    }
    if diagnostics is not None:
        result["diagnostics"] = diagnostics
    if D.is_main():
        save_checkpoint(fold_dir / "model", model, cfg, classes, prep.spec, prep.encoders,
                        fit.best_epoch + 1, {"val": result["val"], "test": result["test"]},
                        extra={"fold": fold.index + 1, "test_group": str(fold.test_group)})
        rows = manifest.rows
        if cfg.run.save_representations:
            write_npz(fold_dir / "representations.npz", compressed=True,
                      utt_id=np.array([rows[i]["utt_id"] for i in test.index]),
                      speaker=np.array([str(rows[i].get("speaker")) for i in test.index]),
                      label=test.labels, pred=test.preds, probs=test.probs.astype(np.float32),
                      classes=np.array(classes),
                      **{f"emb_{k}": v.astype(np.float16) for k, v in test.embeddings.items()})
        write_jsonl(fold_dir / "predictions.jsonl", [
            {"utt_id": rows[i]["utt_id"], "label": classes[y], "pred": classes[p],
             "probs": {c: round(float(q), 6) for c, q in zip(classes, pr)}}
            for i, y, p, pr in zip(test.index, test.labels, test.preds, test.probs)])
        write_json(fold_dir / "metrics.json", result)  # last: marks the fold as done
        (fold_dir / "resume.pt").unlink(missing_ok=True)
    D.barrier()
    return result


def manifest_fingerprint(manifest: Manifest) -> str:
    """sha256 of the rows' ids, labels and groups: fold indices stay valid while it holds."""
    keys = ("utt_id", "label", "session", "speaker", "fold")
    return sha256_text(json.dumps([[r.get(k) for k in keys] for r in manifest.rows], default=str))


def run_meta(cfg: Config, prep: Prepared) -> dict:
    """The contents of ``run.json``."""
    manifest = prep.manifest
    return {
        "protocol": {"session": "leave-one-session-out", "speaker": "leave-one-speaker-out",
                     "fold": "predefined folds (fold column)"}[cfg.cv.protocol],
        "model": cfg.model_name, "corpus": manifest.rows[0].get("corpus"),
        "classes": manifest.classes,
        "manifest": str(Path(cfg.data.manifest).resolve()),
        "n_utterances": len(manifest), "manifest_sha256": manifest_fingerprint(manifest),
        "n_skipped": len(prep.skipped), "skipped": prep.skipped,
        "config_sha256": cfg.sha256(), "experiment_sha256": experiment_sha256(cfg),
        "environment": environment(),
    }


def start_run(cfg: Config, prep: Prepared, run_dir: Path | None = None) -> Path:
    """Create the run folder, lock it (:mod:`fdrl.utils.lock`; the caller releases the
    lock) and record config.yaml + run.json.

    ``run_dir`` may exist only if it is empty: a run folder is never overwritten.
    """
    def check_empty(folder: Path) -> None:
        if folder.exists() and (not folder.is_dir() or _has_files(folder)):
            raise RunError(f"--run-dir {folder}: folder exists and is not empty; runs are never "
                           f"overwritten (use --resume {folder} to continue it)")

    if run_dir is None:
        run_dir = new_run_dir(cfg.run.out_dir, cfg.run.name)
    else:
        run_dir = Path(run_dir)
        check_empty(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    acquire(run_dir / LOCK_NAME, "run folder")  # released when run_cv ends
    try:
        check_empty(run_dir)  # another process may have started in it meanwhile
        write_text(run_dir / "config.yaml", cfg.to_yaml())
        write_json(run_dir / "run.json", run_meta(cfg, prep))
    except BaseException:
        release(run_dir / LOCK_NAME)
        raise
    return run_dir


def _has_files(folder: Path) -> bool:
    """True when ``folder`` holds anything but a lock file."""
    return any(p.name != LOCK_NAME for p in folder.iterdir())


def load_run_config(run_dir: Path) -> Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (config.yaml missing; a run stopped before "
                       f"writing it has nothing to resume: start it again)")
    try:
        data = safe_load_bounded(path.read_text(encoding="utf-8"))
    except YAMLTooLarge as exc:
        raise RunError(f"{path}: not a usable config: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not a readable config ({type(exc).__name__})") from None
    cfg = from_dict(data)
    meta = _read_run_json(run_dir)
    if meta.get("config_sha256") not in (None, cfg.sha256()):
        raise RunError(f"{run_dir}/config.yaml was edited after the run started "
                       f"(hash differs from run.json); start a new run instead")
    return cfg


def _read_run_json(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError):
        raise RunError(f"{path}: not valid JSON; the run folder is damaged") from None


def check_resumable(run_dir: Path, cfg: Config, prep: Prepared) -> None:
    """Make ``run_dir`` ready to continue: the corpus must be the one the run started
    with; run.json is rewritten if the run was killed before writing it; leftovers of
    a kill (temporary files, a finished fold's training state) are removed."""
    meta = _read_run_json(run_dir)
    if not meta:
        write_json(run_dir / "run.json", run_meta(cfg, prep))
    elif meta.get("manifest_sha256") not in (None, manifest_fingerprint(prep.manifest)):
        then, now = meta.get("n_utterances"), len(prep.manifest)
        raise RunError(f"{run_dir}: the corpus changed since the run started ({then} usable "
                       f"utterances then, {now} now; rows, labels or groups differ); the finished "
                       f"folds would not match: start a new run")
    for tmp in run_dir.rglob(".*.tmp"):  # atomic writes cut short by the kill
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
    for done in (run_dir / "folds").glob("*/metrics.json"):
        (done.parent / "resume.pt").unlink(missing_ok=True)


def check_folds(manifest: Manifest, folds: list[Fold]) -> None:
    """Every selected fold's training part must hold every class (checked before any
    training, so a bad fold 5 does not surface after four folds of training)."""
    for fold in folds:
        check_fold_classes(manifest, fold.train, f"fold {fold.index + 1} (test group {fold.test_group})")


def run_cv(cfg: Config, run_dir: Path | None = None, resume: bool = False,
           progress: bool = True, prep: Prepared | None = None) -> tuple[Path, dict]:
    """Run (or resume) cross-validation; returns (run folder, results dict)."""
    locked: list[Path] = []  # the run folder's lock file, held by rank 0 while it runs

    def lock(folder: Path) -> None:
        acquire(folder / LOCK_NAME, "run folder")
        locked.append(folder / LOCK_NAME)

    if resume:
        if run_dir is None or not Path(run_dir).is_dir():
            raise RunError(f"--resume: run folder {run_dir} does not exist")
        cfg = load_run_config(Path(run_dir))
        # before anything is cleaned up or trained: a second --resume of the same run
        # would train the same folds and delete this process's temporary files
        D.run_on_main(lambda: lock(Path(run_dir)))
    try:
        prep = prep or prepare(cfg, progress=progress)
        folds = select_folds(make_folds(prep.manifest, cfg.cv.protocol), cfg.cv.folds)
        check_folds(prep.manifest, folds)
        if resume:
            D.run_on_main(lambda: check_resumable(Path(run_dir), cfg, prep))
        else:
            def start() -> str:
                folder = start_run(cfg, prep, run_dir)  # takes the lock
                locked.append(folder / LOCK_NAME)
                return str(folder)

            run_dir = D.run_on_main(start)
        run_dir = Path(run_dir)
        for fold in folds:
            fold_dir = run_dir / "folds" / _fold_dirname(fold)
            if (fold_dir / "metrics.json").is_file():
                log.info("fold %s already done: skipped", fold.name)
                continue
            run_fold(cfg, prep, fold, fold_dir, progress=progress)
        results = D.run_on_main(lambda: aggregate(run_dir))
    finally:
        for lock_file in locked:
            release(lock_file, remove=True)
    return run_dir, results
