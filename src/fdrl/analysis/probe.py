"""Speaker-identification probes on frozen embeddings: how much identity is left.

For a finished cross-validation run, every fold's ``representations.npz`` holds the
test-set embeddings (``emb_<name>``), the speakers and the emotion labels. A fresh
probe (standardisation + multinomial logistic regression, scikit-learn) is trained to
identify the speaker from one embedding, on a split that is disjoint in utterances and
shares its speakers (identification, not verification: stratified by speaker, seeded),
and its test accuracy is reported next to chance (1 / number of speakers), the
majority-class rate and the run's emotion UAR. *Disentanglement %* is the relative
drop of probe accuracy against a reference run (e.g. the plain multitask model):
``100 (acc_ref - acc) / acc_ref`` (spec ``identity.md``).

Two ways to pool the data:

``pooled`` (the headline)
    the union of all folds' test sets: every utterance appears in exactly one test
    fold, so each is probed once, with all the corpus's speakers. The embeddings come
    from *different fold models* (one per fold). A speaker's utterances all sit in one
    test fold (leave-one-session-out and leave-one-speaker-out keep speakers whole),
    so a probe could partly "identify" a speaker by recognising which fold model made
    the embedding. To blunt that, each fold's embeddings are standardised with that
    fold's own mean and standard deviation before pooling (no labels used; the
    statistics come from the fold's probe-training rows only, see
    :func:`standardise_per_fold`; ``fold_standardise=False`` turns it off). The price:
    what the speakers of a fold share (their mean) is removed too, so the pooled
    accuracy is a conservative estimate of the identity present. We also report
    ``fold_chance``: the accuracy of guessing uniformly among the speakers of the right
    fold, i.e. what perfect fold recognition alone would give.
``per_fold`` (a detail)
    one probe per fold on that fold's test set alone. Under leave-one-session-out a
    test fold has two speakers, so this is 2-way identification (chance 0.5); under
    leave-one-speaker-out it has one speaker and cannot be probed (skipped).

``single`` (``single_model=FOLD``, for leave-one-speaker-out)
    when every test fold holds a single speaker (EmoDB's leave-one-speaker-out), the
    pooled probe cannot separate speaker from fold model: the fold standardisation
    removes each speaker's mean, and without it the probe only has to recognise the
    model. The single-model mode instead loads one fold's checkpoint, embeds *every*
    utterance of the corpus with it (its training speakers included, which the model
    has seen) and probes those embeddings: identity left in one model's space.

``every fold model`` (``single_model="all"``; what ``fdrl compare --probe`` uses when
every test fold holds one speaker)
    the single-model probe repeated with each fold's checkpoint (the features are
    prepared once); the reported accuracy is the mean over the fold models, with their
    standard deviation and each model's figure (``models``).

Derived embeddings: for FDRL-style runs ``S = S_a + S_t`` (the paper's S) and
``P = [P_a; P_t]`` (concatenated) are added when their parts are present.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fdrl.errors import DataError, RunError
from fdrl.utils.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

#: names under which models store their emotion embedding, in order of preference
EMOTION_KEYS = ("emotion", "fused")


@dataclass
class ProbeSettings:
    """How the probes are trained."""

    test_fraction: float = 0.3    # share of each speaker's utterances held out for the probe's test
    seed: int = 0                 # seeds the split and the solver
    C: float = 1.0                # inverse L2 strength of the logistic regression
    max_iter: int = 2000          # solver iterations (lbfgs)
    per_fold: bool = True         # also probe each fold's test set alone
    fold_standardise: bool = True  # pooled: standardise each fold's embeddings (fold-model fingerprint)


@dataclass
class FoldReps:
    """One fold's test-set representations."""

    name: str
    utt_id: np.ndarray            # (N,) str
    speaker: np.ndarray           # (N,) str
    label: np.ndarray             # (N,) int
    emb: dict[str, np.ndarray]    # name -> (N, d) float32


# ----------------------------------------------------------------------------------
# Reading a run


def load_fold_reps(run_dir: str | Path) -> list[FoldReps]:
    """Read ``folds/*/representations.npz`` of a run, folds in natural order."""
    from fdrl.data.folds import natural_key

    run_dir = Path(run_dir)
    if not (run_dir / "folds").is_dir():
        raise RunError(f"{run_dir}: not a cross-validation run folder (no folds/)")
    paths = sorted((run_dir / "folds").glob("*/representations.npz"),
                   key=lambda p: natural_key(p.parent.name))
    if not paths:
        raise RunError(f"{run_dir}/folds/*/representations.npz: none found; the run must be "
                       f"trained with run.save_representations=true")
    folds = []
    for path in paths:
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        for key in ("speaker", "label", "utt_id"):
            if key not in z.files:
                raise DataError(f"{path}: field '{key}' is missing (expected utt_id, speaker, "
                                f"label and emb_* arrays)")
        emb = {k[4:]: z[k].astype(np.float32) for k in z.files if k.startswith("emb_")}
        if not emb:
            raise DataError(f"{path}: no embeddings (emb_* arrays) stored")
        folds.append(FoldReps(path.parent.name, z["utt_id"].astype(str), z["speaker"].astype(str),
                              z["label"].astype(np.int64), emb))
    return folds


def single_model_reps(run_dir: str | Path, fold: str) -> FoldReps:
    """Embed every utterance of the run's corpus with the checkpoint of one fold.

    Reads the run's config, prepares its features (from the cache when present) and
    runs ``folds/<fold>/model`` on all rows, on CPU.
    """
    run_dir = Path(run_dir)
    ck = run_dir / "folds" / str(fold) / "model"
    if not ck.is_dir():
        have = sorted(p.parent.name for p in (run_dir / "folds").glob("*/model"))
        raise RunError(f"{ck}: no checkpoint for fold '{fold}' (folds with one: {have})")
    return fold_model_reps(run_dir, [ck])[0]


def every_model_reps(run_dir: str | Path) -> list[FoldReps]:
    """:func:`single_model_reps` for every fold with a checkpoint, features prepared once."""
    from fdrl.data.folds import natural_key

    run_dir = Path(run_dir)
    cks = sorted((run_dir / "folds").glob("*/model"), key=lambda p: natural_key(p.parent.name))
    if not cks:
        raise RunError(f"{run_dir}/folds/*/model: no fold checkpoint found (the every-fold-model "
                       f"probe embeds the corpus with each fold's model)")
    return fold_model_reps(run_dir, cks)


def fold_model_reps(run_dir: Path, checkpoints: list[Path]) -> list[FoldReps]:
    """Each checkpoint's embeddings of every utterance of the run's corpus (CPU)."""
    import torch

    from fdrl.checkpoint import load_checkpoint
    from fdrl.training.cv import load_run_config, prepare
    from fdrl.training.trainer import predict

    cfg = load_run_config(run_dir)
    prep = prepare(cfg, progress=False)
    idx = np.arange(len(prep.manifest), dtype=np.int64)
    rows = prep.manifest.rows
    utt = np.array([str(r["utt_id"]) for r in rows])
    spk = np.array([str(r.get("speaker")) for r in rows])
    out = []
    for ck in checkpoints:
        model, _, _ = load_checkpoint(ck, device="cpu")
        pred = predict(model, prep.data, idx, cfg.train.eval_batch_size, torch.device("cpu"))
        out.append(FoldReps(f"model of fold {ck.parent.name}", utt, spk, pred.labels.astype(np.int64),
                            {k: v.astype(np.float32) for k, v in pred.embeddings.items()}))
    return out


def single_speaker_folds(folds: list[FoldReps]) -> bool:
    """True when each test fold holds one speaker (leave-one-speaker-out): the folds' test
    sets cannot be probed (pooled, the probe would recognise the fold model)."""
    return bool(folds) and max(len(set(f.speaker.tolist())) for f in folds) == 1


def add_derived(emb: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``S = S_a + S_t`` and ``P = [P_a; P_t]`` when their parts are there."""
    out = dict(emb)
    if "S_a" in emb and "S_t" in emb and "S" not in emb:
        out["S"] = emb["S_a"] + emb["S_t"]
    if "P_a" in emb and "P_t" in emb and "P" not in emb:
        out["P"] = np.concatenate([emb["P_a"], emb["P_t"]], axis=1)
    return out


def emotion_key(names) -> str | None:
    """The name of the emotion embedding among ``names`` (``emotion``, else ``fused``)."""
    return next((k for k in EMOTION_KEYS if k in names), None)


def standardise_per_fold(x: np.ndarray, fold_of: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Standardise each fold's rows with the mean and std of that fold's *probe-training*
    rows (all its rows if it has none).

    Statistics from the training rows only, as any scaler: with all of a fold's rows,
    the centring would tie each test row to its own fold's training means (with two
    speakers per fold it pushes the probe away from the right fold, below chance).
    """
    x = np.asarray(x, dtype=np.float64).copy()
    in_train = np.zeros(len(x), dtype=bool)
    in_train[train] = True
    for f in np.unique(fold_of):
        rows = fold_of == f
        ref = x[rows & in_train] if (rows & in_train).any() else x[rows]
        x[rows] = (x[rows] - ref.mean(0)) / np.maximum(ref.std(0), 1e-6)
    return x


# ----------------------------------------------------------------------------------
# The probe


def speaker_split(speakers: np.ndarray, utt_ids: np.ndarray, test_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Utterance-disjoint train/test indices that share speakers, stratified by speaker.

    Within each speaker (utterances sorted by id, so the split depends on the
    utterances and the seed only, not on file order), ``round(test_fraction * n)``
    utterances, at least 1 and at most n - 1, go to the test part. Speakers with a
    single utterance cannot be in both parts and are left out.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for spk in sorted(set(speakers.tolist())):
        idx = np.flatnonzero(speakers == spk)
        if len(idx) < 2:
            continue
        idx = idx[np.argsort(utt_ids[idx], kind="stable")]
        idx = idx[rng.permutation(len(idx))]
        k = min(max(int(round(test_fraction * len(idx))), 1), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    if not test:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def probe_accuracy(x: np.ndarray, speakers: np.ndarray, train: np.ndarray, test: np.ndarray,
                   settings: ProbeSettings) -> dict:
    """Fit standardisation + logistic regression on ``train``, score on ``test``.

    Returns accuracy, chance (1 / number of speakers), majority (the test accuracy of
    always answering the training part's most frequent speaker), n_train, n_test,
    n_speakers.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_spk = len(set(speakers[train].tolist()))
    res = {"n_train": int(len(train)), "n_test": int(len(test)), "n_speakers": n_spk}
    if n_spk < 2 or len(test) == 0:
        return {**res, "accuracy": None, "chance": None, "majority": None}
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(C=settings.C, max_iter=settings.max_iter,
                                           random_state=settings.seed))
    clf.fit(x[train], speakers[train])
    acc = float((clf.predict(x[test]) == speakers[test]).mean())
    values, counts = np.unique(speakers[train], return_counts=True)
    majority = float((speakers[test] == values[counts.argmax()]).mean())
    return {**res, "accuracy": acc, "chance": 1.0 / n_spk, "majority": majority}


def probe_folds(folds: list[FoldReps], names: list[str] | None = None,
                settings: ProbeSettings | None = None) -> dict:
    """Pooled (and per-fold) speaker probes on the named embeddings of a run's folds.

    Returns ``{"embeddings": [...], "pooled": {name: result}, "per_fold": {name:
    {"folds": [result + fold], "mean_accuracy", "mean_chance"}}}``.
    """
    settings = settings or ProbeSettings()
    embs = [add_derived(f.emb) for f in folds]
    common = [k for k in embs[0] if all(k in e for e in embs)]
    if names is None:
        names = common
    missing = [n for n in names if n not in common]
    if missing:
        raise DataError(f"--embeddings: {missing} not stored in every fold; available: {common}")
    speakers = np.concatenate([f.speaker for f in folds])
    utt_ids = np.concatenate([f.utt_id for f in folds])
    fold_of = np.concatenate([np.full(len(f.speaker), i) for i, f in enumerate(folds)])
    train, test = speaker_split(speakers, utt_ids, settings.test_fraction, settings.seed)
    # accuracy of knowing the fold and guessing among its speakers
    per_fold_spk = [len(set(f.speaker.tolist())) for f in folds]
    fold_chance = float(np.mean([1.0 / per_fold_spk[i] for i in fold_of[test]])) if len(test) else None
    out: dict = {"embeddings": list(names), "pooled": {}, "per_fold": {}, "warnings": []}
    if len(folds) > 1 and max(per_fold_spk) == 1:
        out["warnings"].append(
            "every test fold holds one speaker: the pooled probe cannot tell speaker from fold "
            "model (fold standardisation removes each speaker's mean; without it the probe "
            "recognises the model). Use the single-model mode (fdrl probe --single-model FOLD, or "
            "--single-model all for every fold model).")
    for name in names:
        x = np.concatenate([e[name] for e in embs])
        if settings.fold_standardise:
            x = standardise_per_fold(x, fold_of, train)
        res = probe_accuracy(x, speakers, train, test, settings)
        res["fold_chance"] = fold_chance
        res["dim"] = int(x.shape[1])
        out["pooled"][name] = res
        if not settings.per_fold:
            continue
        rows = []
        for f, e in zip(folds, embs):
            tr, te = speaker_split(f.speaker, f.utt_id, settings.test_fraction, settings.seed)
            r = probe_accuracy(e[name], f.speaker, tr, te, settings)
            rows.append({"fold": f.name, **r})
        ok = [r for r in rows if r["accuracy"] is not None]
        out["per_fold"][name] = {
            "folds": rows,
            "mean_accuracy": float(np.mean([r["accuracy"] for r in ok])) if ok else None,
            "mean_chance": float(np.mean([r["chance"] for r in ok])) if ok else None,
        }
    return out


def probe_run(run_dir: str | Path, names: list[str] | None = None,
              settings: ProbeSettings | None = None, single_model: str | None = None) -> dict:
    """Probe a finished CV run; adds the run's model, corpus, emotion WAR/UAR.

    ``single_model``: a fold name; probe the embeddings that fold's checkpoint gives
    every utterance (:func:`single_model_reps`) instead of the folds' test sets.
    """
    run_dir = Path(run_dir)
    settings = settings or ProbeSettings()
    if single_model == "all":
        settings = ProbeSettings(**{**asdict(settings), "per_fold": False})
        models = every_model_reps(run_dir)
        res = average_over_models([probe_folds([m], names, settings) for m in models],
                                  [m.name for m in models])
        res["mode"] = f"every fold model ({len(models)} model{'' if len(models) == 1 else 's'})"
        folds = models
    elif single_model is not None:
        folds = [single_model_reps(run_dir, single_model)]
        settings = ProbeSettings(**{**asdict(settings), "per_fold": False})
        res = probe_folds(folds, names, settings)
        res["mode"] = f"single model (fold {single_model})"
    else:
        folds = load_fold_reps(run_dir)
        res = probe_folds(folds, names, settings)
        res["mode"] = "pooled"
    results = read_json(run_dir / "results.json") if (run_dir / "results.json").is_file() else {}
    meta = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    return {
        "run": str(run_dir), "model": meta.get("model") or results.get("model"),
        "corpus": meta.get("corpus") or results.get("corpus"), "protocol": meta.get("protocol"),
        "n_folds": len(folds), "emotion_key": emotion_key(res["embeddings"]),
        "war": (results.get("war") or {}).get("mean"), "uar": (results.get("uar") or {}).get("mean"),
        "settings": asdict(settings), **res,
    }


def average_over_models(reports: list[dict], model_names: list[str]) -> dict:
    """One report from the single-model probes of several fold models: per embedding the
    mean accuracy (chance, majority: means too), ``accuracy_std`` over the models and each
    model's accuracy under ``models``."""
    first = reports[0]
    pooled = {}
    for name in first["embeddings"]:
        rows = [r["pooled"][name] for r in reports]
        accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]

        def mean(key, rows=rows):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        pooled[name] = {**rows[0], "accuracy": float(np.mean(accs)) if accs else None,
                        "accuracy_std": float(np.std(accs)) if accs else None,
                        "chance": mean("chance"), "majority": mean("majority"),
                        "fold_chance": None,
                        "models": {m: r["accuracy"] for m, r in zip(model_names, rows)}}
    warnings = sorted({w for r in reports for w in r.get("warnings", [])})
    return {"embeddings": first["embeddings"], "pooled": pooled, "per_fold": {},
            "warnings": warnings}


def add_disentanglement(report: dict, reference: dict) -> dict:
    """``disentanglement_pct`` per pooled embedding: ``100 (acc_ref - acc) / acc_ref``.

    Each embedding is compared with the reference run's embedding of the same name, or
    else with the reference's emotion embedding (e.g. FDRL's ``fused`` vs the multitask
    model's ``emotion``); the name used is stored as ``reference_embedding``.
    """
    ref_pooled = reference["pooled"]
    ref_default = reference.get("emotion_key")
    report["reference"] = {"run": reference["run"], "model": reference.get("model"),
                           "uar": reference.get("uar"), "war": reference.get("war"),
                           "pooled": ref_pooled}
    for name, res in report["pooled"].items():
        ref_name = name if name in ref_pooled else ref_default
        ref_acc = ref_pooled.get(ref_name, {}).get("accuracy") if ref_name else None
        res["reference_embedding"] = ref_name
        res["reference_accuracy"] = ref_acc
        res["disentanglement_pct"] = (
            100.0 * (ref_acc - res["accuracy"]) / ref_acc
            if ref_acc and res.get("accuracy") is not None else None)
    return report


# ----------------------------------------------------------------------------------
# Reports


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def probe_markdown(report: dict) -> str:
    """The report as Markdown: the pooled table first, then the per-fold detail."""
    ref = report.get("reference")
    lines = [f"# Speaker probe: {report.get('model')} on {report.get('corpus')}", "",
             f"Run: `{report['run']}`; protocol: {report.get('protocol')}; folds: {report['n_folds']}; "
             f"emotion WAR {_pct(report.get('war'))} %, UAR {_pct(report.get('uar'))} %.", "",
             "A fresh speaker-identification probe (standardisation + logistic regression) on "
             "each frozen embedding; train/test split disjoint in utterances, same speakers "
             f"(test fraction {report['settings']['test_fraction']}, seed {report['settings']['seed']}). "
             "**Pooled**: all folds' test sets together (each utterance once; embeddings from "
             "the fold models" + (", standardised per fold" if report['settings'].get('fold_standardise')
                                  else "") + "). fold chance = guessing among the right "
             "fold's speakers.", ""]
    if str(report.get("mode", "pooled")).startswith("single"):
        lines += [f"**Mode: {report['mode']}**: one fold's checkpoint embeds every utterance "
                  "(its training speakers included); the probe is trained and tested on those.", ""]
    elif str(report.get("mode", "pooled")).startswith("every"):
        lines += [f"**Mode: {report['mode']}**: each fold's checkpoint embeds every utterance "
                  "(its training speakers included) and gets its own probe; the accuracy is "
                  "the mean over the fold models (± their standard deviation).", ""]
    lines += [f"> warning: {w}  " for w in report.get("warnings", [])]
    if report.get("warnings"):
        lines.append("")
    head = "| embedding | dim | probe acc % | chance % | majority % | fold chance % |"
    sep = "| --- | --- | --- | --- | --- | --- |"
    if ref:
        head += " ref acc % | disentanglement % |"
        sep += " --- | --- |"
        lines.insert(3, f"Reference: `{ref['run']}` ({ref.get('model')}, emotion UAR "
                        f"{_pct(ref.get('uar'))} %).  ")
    lines += [head, sep]
    for name, r in report["pooled"].items():
        acc = _pct(r["accuracy"]) + (f" ± {_pct(r['accuracy_std'])}" if r.get("accuracy_std") is not None
                                     else "")
        row = (f"| {name} | {r.get('dim')} | {acc} | {_pct(r['chance'])} | "
               f"{_pct(r['majority'])} | {_pct(r.get('fold_chance'))} |")
        if ref:
            d = r.get("disentanglement_pct")
            row += (f" {_pct(r.get('reference_accuracy'))} | "
                    f"{'-' if d is None else f'{d:.1f}'} |")
        lines.append(row)
    if report.get("per_fold"):
        lines += ["", "## Per fold (each fold's test set alone)", "",
                  "| embedding | fold | n speakers | probe acc % | chance % |",
                  "| --- | --- | --- | --- | --- |"]
        for name, pf in report["per_fold"].items():
            for r in pf["folds"]:
                lines.append(f"| {name} | {r['fold']} | {r['n_speakers']} | "
                             f"{_pct(r['accuracy'])} | {_pct(r['chance'])} |")
            lines.append(f"| {name} | **mean** | | **{_pct(pf['mean_accuracy'])}** | "
                         f"{_pct(pf['mean_chance'])} |")
    return "\n".join(lines) + "\n"


def format_probe_table(report: dict) -> str:
    """Plain-text pooled table for the terminal."""
    rows = [f"{'embedding':>12}  {'probe %':>8}  {'chance %':>8}  {'major. %':>8}  {'disent. %':>9}"]
    for name, r in report["pooled"].items():
        d = r.get("disentanglement_pct")
        rows.append(f"{name:>12}  {_pct(r['accuracy']):>8}  {_pct(r['chance']):>8}  "
                    f"{_pct(r['majority']):>8}  {'-' if d is None else f'{d:.1f}':>9}")
    return "\n".join(rows)


def write_probe_report(run_dir: str | Path, report: dict, force: bool = False) -> tuple[Path, Path]:
    """Write ``probe.json`` + ``probe.md`` into the run folder, never overwriting: when
    ``probe.json`` exists the next free ``probe-2``, ``probe-3``... is used, unless
    ``force`` (then probe.json / probe.md are replaced atomically)."""
    run_dir = Path(run_dir)
    stem = "probe"
    if not force:
        n = 1
        while (run_dir / f"{stem}.json").exists() or (run_dir / f"{stem}.md").exists():
            n += 1
            stem = f"probe-{n}"
    js, md = run_dir / f"{stem}.json", run_dir / f"{stem}.md"
    write_json(js, report)
    write_text(md, probe_markdown(report))
    return js, md
