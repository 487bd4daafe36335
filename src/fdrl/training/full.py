"""Train one model on a whole corpus and write a model bundle (``fdrl train``).

There is no test set: every utterance is training data except a seeded, stratified
validation share (``cv.val_fraction``, ``cv.val_strategy``) used for early stopping
and model selection, exactly as inside a CV fold. The bundle is written to a hidden
staging folder and renamed into place when complete; see :mod:`fdrl.inference.bundle`.
Under ``torchrun`` every rank trains its share of each batch (as ``fdrl cv``) and rank 0
alone writes the bundle.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdrl import metrics
from fdrl.checkpoint import build_model, save_checkpoint
from fdrl.config import Config
from fdrl.data.folds import check_fold_classes, validation_split
from fdrl.errors import ConfigError
from fdrl.inference.bundle import check_new_folder, default_bundle_dir, publish, staging_dir
from fdrl.training import distributed as D
from fdrl.training.cv import Prepared, prepare
from fdrl.training.runs import environment
from fdrl.training.trainer import Trainer, predict, resolve_device, seed_everything

log = logging.getLogger(__name__)

DEFAULT_PARENT = "bundles"


@dataclass
class TrainResult:
    """What :func:`train_full` produced."""

    bundle: Path          # the bundle folder
    val: dict             # validation metrics of the selected epoch (metrics.summary)
    best_epoch: int       # 1-based
    epochs_run: int
    n_train: int
    n_val: int


def train_full(cfg: Config, out: str | Path | None = None, progress: bool = True,
               prep: Prepared | None = None) -> TrainResult:
    """Train ``cfg``'s model on all of ``cfg.data.manifest`` and write a bundle.

    Parameters
    ----------
    cfg : the resolved configuration (``cv.val_fraction`` > 0 is required).
    out : bundle folder to create; default ``bundles/<run.name>-<YYYYmmdd-HHMMSS>``.
        An existing folder is an error (never overwritten).
    progress : tqdm bars for feature extraction and epochs.
    prep : an already prepared corpus (features loaded), to skip :func:`prepare`.

    Returns
    -------
    TrainResult

    Raises
    ------
    BundleError : ``out`` exists.
    ConfigError / DataError : bad config or corpus (e.g. a class without utterances).
    """
    if cfg.cv.val_fraction <= 0:
        raise ConfigError("cv.val_fraction: must be > 0 for `fdrl train` (the validation share "
                          "selects the epoch to keep); e.g. cv.val_fraction=0.1")
    # under torchrun rank 0 picks (and checks) the folder and tells the others
    out = Path(D.run_on_main(lambda: str(check_new_folder(out) if out is not None
                                         else default_bundle_dir(cfg.run.name, DEFAULT_PARENT))))
    prep = prep or prepare(cfg, progress=progress)
    manifest, data = prep.manifest, prep.data
    every = np.arange(len(manifest), dtype=np.int64)  # (N,)
    check_fold_classes(manifest, every, f"corpus {manifest.root}")
    train_idx, val_idx = validation_split(manifest, every, cfg.cv.val_strategy,
                                          cfg.cv.val_fraction, cfg.train.seed)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, prep.spec)
    tmp = staging_dir(out) if D.is_main() else None  # only rank 0 writes
    try:
        # the staging folder receives history.csv; TensorBoard events stay out of bundles
        trainer = Trainer(model, cfg.train, device, log_dir=tmp, tensorboard=False, progress=progress)
        fit = trainer.fit(data, train_idx, val_idx, resume_path=None, desc="train")
        val = predict(trainer.net, data, val_idx, cfg.train.eval_batch_size, device,
                      keep_embeddings=False)  # every rank: the rows are gathered
        val_metrics = metrics.summary(val.labels, val.preds, manifest.classes)
        rows = manifest.rows
        if not D.is_main():
            D.barrier()  # wait for rank 0 to publish the bundle
            return TrainResult(bundle=out, val=val_metrics, best_epoch=fit.best_epoch + 1,
                               epochs_run=len(fit.history), n_train=int(len(train_idx)),
                               n_val=int(len(val_idx)))
        save_checkpoint(tmp, model, cfg, manifest.classes, prep.spec, prep.encoders,
                        fit.best_epoch + 1, {"val": val_metrics}, extra={
                            "kind": "bundle",
                            "trained_on": {
                                "corpus": rows[0].get("corpus"),
                                "manifest": str(Path(cfg.data.manifest).resolve()),
                                "n_utterances": len(manifest), "n_train": int(len(train_idx)),
                                "n_val": int(len(val_idx)), "val_strategy": cfg.cv.val_strategy,
                                "val_fraction": cfg.cv.val_fraction,
                            },
                            "epochs_run": len(fit.history), "stopped_early": fit.stopped_early,
                            "config_sha256": cfg.sha256(),
                            "created": _dt.datetime.now().isoformat(timespec="seconds"),
                            "environment": environment(),
                        })
        publish(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    D.barrier()
    log.info("bundle written to %s", out)
    return TrainResult(bundle=out, val=val_metrics, best_epoch=fit.best_epoch + 1,
                       epochs_run=len(fit.history), n_train=int(len(train_idx)),
                       n_val=int(len(val_idx)))
