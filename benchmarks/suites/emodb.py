"""EmoDB (real German speech, 7 classes, 10 speakers, leave-one-speaker-out): speech-only
and FDRL (the ten fixed sentences as text) on eGeMAPS and on log-mel, against eGeMAPS
functionals + logistic regression on the same folds; plus the speaker probe for FDRL,
the multitask model and the three disentanglement techniques.

Speaker probe protocol. Under leave-one-speaker-out every test fold holds one speaker,
so a probe pooled over folds would identify the fold model rather than the speaker, and
a per-fold probe has nothing to tell apart. The probe runs therefore use five folds of
two speakers each (one female and one male where possible, as in IEMOCAP's sessions):
the per-fold probe is 2-way identification (chance 50 %), the pooled one 10-way with
each fold's embeddings standardised (:mod:`fdrl.analysis.probe`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .common import (shown_overrides, Context, Skip, SuiteResult, Table, logreg_reference, mean_std_pct, pct,
                     points_target, seconds_str, take_every)
from .runs import compare_models, compare_rows, model_config, single_run

log = logging.getLogger("benchmarks")

NAME = "emodb"
TITLE = "EmoDB: FDRL and speech-only on eGeMAPS / log-mel vs eGeMAPS functionals + logistic regression"
CONFIG = "emodb"
TARGET_MARGIN = 5.0
FEATURES = {
    "eGeMAPS": ["features.speech={name: egemaps}"],
    "log-mel": ["features.speech={name: logmel}", "features.sequences=true"],
}
IDENTITY = [("fdrl", "fdrl", []),
            ("multitask", "multitask", ["model.identity={method: multitask}"]),
            ("multitask + adversarial", "multitask", ["model.identity={method: adversarial}"]),
            ("multitask + confusion", "multitask", ["model.identity={method: confusion}"]),
            ("multitask + orthogonality", "multitask", ["model.identity={method: orthogonality}"])]

TARGETS = [f"FDRL on {feat}: UAR ≥ eGeMAPS-functionals reference UAR + {TARGET_MARGIN:g} points"
           for feat in FEATURES]

SETTINGS = {
    "full": {"n_folds": None, "epochs": None, "limit": None, "probe_folds": None, "probe": True},
    "quick": {"n_folds": 2, "epochs": 5, "limit": None, "probe_folds": 2, "probe": True},
    "tiny": {"n_folds": 1, "epochs": 1, "limit": 120, "probe_folds": 2, "probe": True},
}


def readme_reference(data_dir: Path) -> dict | None:
    """The eGeMAPS + logistic regression figure the data README states (WAR, UAR in %)."""
    path = data_dir / "README.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"eGeMAPS\w*\s+functionals\s*\+\s*logistic regression.*?WAR\s+([\d.]+)\s*%,?\s*"
                  r"UAR\s+([\d.]+)\s*%", text, flags=re.S | re.I)
    return {"war": float(m.group(1)), "uar": float(m.group(2))} if m else None


def prepare_manifests(ctx: Context, limit: int | None) -> tuple[Path, Path]:
    """The EmoDB manifest, and a copy whose session is a pair of speakers (probe runs)."""
    from fdrl.data.emodb import prepare_emodb
    from fdrl.data.manifest import read_manifest, write_manifest

    root = ctx.data_dir / "emodb"
    if not (root / "labels.csv").is_file():
        raise Skip(f"{root / 'labels.csv'} not found (the shared EmoDB copy)")
    folder = ctx.suite_dir(NAME) / "data" / "emodb"
    prepare_emodb(root, folder)
    m = read_manifest(folder)
    if limit:
        folder = folder.with_name(f"emodb-limit{limit}")
        write_manifest(folder, take_every(m.rows, limit), m.classes)
        m = read_manifest(folder)
    pair_of = speaker_pairs(m.rows)
    rows = [{**r, "session": pair_of[str(r["speaker"])]} for r in m.rows]
    pairs = folder.with_name(folder.name + "-speaker-pairs")
    write_manifest(pairs, rows, m.classes)
    return folder, pairs


def speaker_pairs(rows: list[dict]) -> dict[str, str]:
    """speaker -> pair name: the i-th female with the i-th male (sorted ids); speakers left
    over are paired in order."""
    gender = {str(r["speaker"]): r.get("gender") for r in rows}
    fem = sorted(s for s, g in gender.items() if g == "F")
    mal = sorted(s for s, g in gender.items() if g == "M")
    pairs = [list(p) for p in zip(fem, mal)]
    rest = sorted(set(gender) - {s for p in pairs for s in p})
    pairs += [rest[i:i + 2] for i in range(0, len(rest), 2)]
    return {s: "pair-" + "-".join(p) for p in pairs for s in p}


def first_groups(manifest: Path, protocol: str, n: int | None) -> list[str] | None:
    from fdrl.data.folds import make_folds
    from fdrl.data.manifest import read_manifest

    if not n:
        return None
    return [str(f.test_group) for f in make_folds(read_manifest(manifest), protocol)][:n]


def overrides_for(manifest: Path, ctx: Context, epochs: int | None, groups: list[str] | None,
                  out: Path, protocol: str = "speaker") -> list[str]:
    ov = [f"data.manifest={manifest}", f"features.cache_dir={ctx.cache_dir}", f"run.out_dir={out}",
          "run.tensorboard=false", f"cv.protocol={protocol}"]
    if epochs is not None:
        ov.append(f"train.epochs={epochs}")
    if groups:
        ov.append("cv.folds=[" + ", ".join(f"'{g}'" for g in groups) + "]")
    return ov


def references(ctx: Context, ov: list[str]) -> tuple[dict, list]:
    """Logistic regression on eGeMAPS functionals (the stated reference) and on each model
    input (eGeMAPS LLD mean+std, log-mel mean+std), the same folds."""
    from fdrl.config import load_config
    from fdrl.data.folds import make_folds
    from fdrl.training.cv import prepare, select_folds

    inputs = {"logreg eGeMAPS functionals (88-d) — the reference": ["features.speech={name: egemaps-functionals}"],
              "logreg eGeMAPS LLD mean+std (model input)": ["features.speech={name: egemaps}"],
              "logreg log-mel mean+std (model input)": ["features.speech={name: logmel}"]}
    refs, folds = {}, []
    for name, extra in inputs.items():
        # the model section is not used: prepare() only reads the data and features sections
        cfg = load_config(CONFIG, ov + extra + ["features.text={name: none}"])
        prep = prepare(cfg, progress=ctx.progress)
        folds = select_folds(make_folds(prep.manifest, cfg.cv.protocol), cfg.cv.folds)
        ids = [str(r["utt_id"]) for r in prep.manifest.rows]
        x = prep.data.speech.pooled  # (N, d)
        refs[name] = {**logreg_reference(x, prep.data.labels, folds, prep.data.num_classes, ids,
                                         seed=cfg.train.seed), "dim": int(x.shape[1])}
    return refs, [str(f.test_group) for f in folds]


def probes(ctx: Context, pairs: Path, s: dict) -> dict:
    """Emotion CV + pooled / per-fold speaker probes on the speaker-pair folds."""
    from fdrl.training.compare import run_probe
    from fdrl.training.cv import prepare

    out = ctx.suite_dir(NAME) / "probe"
    groups = first_groups(pairs, "session", s["probe_folds"])
    ov = overrides_for(pairs, ctx, s["epochs"], groups, out, protocol="session")
    prep = None
    rows = {}
    for label, model, extra in IDENTITY:
        cfg = model_config(CONFIG, model, ov + extra)
        prep = prep or prepare(cfg, progress=ctx.progress)
        rd, results = single_run(cfg, out / label.replace(" + ", "-"), prep=prep, progress=ctx.progress)
        report = run_probe(rd)
        key = (report or {}).get("emotion_key")
        pooled = report["pooled"][key] if key else {}
        per_fold = (report.get("per_fold") or {}).get(key) or {} if key else {}
        rows[label] = {"run_dir": str(rd), "uar": results["uar"], "war": results["war"],
                       "embedding": key, "probe": pooled.get("accuracy"),
                       "chance": pooled.get("chance"), "fold_chance": pooled.get("fold_chance"),
                       "per_fold_probe": per_fold.get("mean_accuracy"),
                       "per_fold_chance": per_fold.get("mean_chance")}
    ref = rows.get("multitask", {}).get("probe")
    for r in rows.values():
        r["disentanglement_pct"] = (100 * (ref - r["probe"]) / ref
                                    if ref and r["probe"] is not None else None)
    return {"rows": rows, "test_groups": groups, "overrides": ov}


def run(ctx: Context) -> SuiteResult:
    from fdrl.data.manifest import read_manifest

    s = ctx.pick(SETTINGS)
    res = SuiteResult(NAME, TITLE, settings=s)
    manifest, pairs = prepare_manifests(ctx, s["limit"])
    classes = read_manifest(manifest).classes
    groups = first_groups(manifest, "speaker", s["n_folds"])
    root = ctx.suite_dir(NAME)
    ov = overrides_for(manifest, ctx, s["epochs"], groups, root)
    refs, test_groups = references(ctx, ov)
    models, failed = {}, {}
    for feat, extra in FEATURES.items():
        try:  # one feature set failing must not lose the other's figures
            cmp = compare_models(CONFIG, ["speech-only", "fdrl"], ov + extra, root / feat, ctx.progress)
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            log.exception("EmoDB on %s failed", feat)
            failed[feat] = f"{type(exc).__name__}: {exc}"
            continue
        for m, row in compare_rows(cmp, classes, {}).items():
            models[f"{m} ({feat})"] = row
    probe = None
    if s["probe"]:
        try:
            probe = probes(ctx, pairs, s)
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            log.exception("EmoDB speaker probes failed")
            failed["probe"] = f"{type(exc).__name__}: {exc}"
    if not models and probe is None:  # nothing ran: the suite failed
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in failed.items()))
    readme = readme_reference(ctx.data_dir)
    res.raw = {"references": refs, "models": models, "probe": probe, "readme_reference": readme,
               "errors": failed,
               "test_groups": test_groups, "overrides": ov}

    n_all = len({str(r["speaker"]) for r in read_manifest(manifest).rows})
    res.notes.append(f"Leave-one-speaker-out, {len(test_groups)} of {n_all} folds (test speakers "
                     f"{', '.join(test_groups)}); config `{CONFIG}` with `{shown_overrides(ov)}`; one seed.")
    for what, err in failed.items():
        label = "Speaker probe" if what == "probe" else f"Models on {what}"
        res.notes.append(f"{label}: **error** — {err} (traceback in the log; the other parts ran).")
    table = []
    for name, ref in refs.items():
        table.append([name, len(ref["folds"]), mean_std_pct(ref["war"]), mean_std_pct(ref["uar"]),
                      mean_std_pct(ref["macro_f1"]), "—"])
    if readme:
        table.append(["data README's figure: eGeMAPS functionals + logreg, all 10 folds (not "
                      "measured here)", 10, f"{readme['war']:.1f}", f"{readme['uar']:.1f}", "—", "—"])
    for name, row in models.items():
        table.append([name, row["n_folds"], mean_std_pct(row["war"]), mean_std_pct(row["uar"]),
                      mean_std_pct(row["macro_f1"]), seconds_str(row["seconds"])])
    res.tables.append(Table("Models and references (mean ± std over folds, %)",
                            ["model", "folds", "WAR", "UAR", "macro F1", "time"], table))
    if probe:
        ptable = []
        for label, r in probe["rows"].items():
            d = r["disentanglement_pct"]
            ptable.append([label, mean_std_pct(r["uar"]), r["embedding"] or "—", pct(r["probe"]),
                           pct(r["chance"]), pct(r["fold_chance"]), pct(r["per_fold_probe"]),
                           pct(r["per_fold_chance"]), "—" if d is None else f"{d:+.1f}"])
        res.tables.append(Table(
            f"Speaker probe (eGeMAPS, folds of two speakers: {', '.join(probe['test_groups'] or ['all'])})",
            ["model", "emotion UAR (these folds)", "embedding", "probe acc, pooled", "chance", "fold chance",
             "probe acc, per fold (2-way)", "per-fold chance", "disentanglement vs multitask %"],
            ptable, note="Lower probe accuracy = less speaker identity in the emotion embedding. "
                         "Pooled: all folds' test sets, each fold's embeddings standardised "
                         "(a conservative estimate). Disentanglement = relative drop of the "
                         "pooled probe accuracy against the multitask model."))
    elif not s["probe"]:
        res.notes.append(f"Speaker probe: skipped in the {ctx.mode} run.")

    key = next(iter(refs))
    ref_uar = refs[key]["uar"]["mean"]
    hint = ("EmoDB is small (535 utterances, ~480 for training per fold) and its text carries no "
            "emotion, so FDRL's text branch and its alignment terms add parameters without "
            "information; the functionals are a strong hand-made representation for acted "
            "German speech. Candidates: a speech-only model on pretrained frames (wav2vec2 / "
            "WavLM), FDRL with a smaller head (model.d, hidden) and stronger dropout, more epochs "
            "with patience on validation.")
    for feat in FEATURES:
        row = models.get(f"fdrl ({feat})")
        res.targets.append(points_target(
            f"FDRL on {feat}: UAR ≥ eGeMAPS-functionals reference UAR + {TARGET_MARGIN:g} points",
            row["uar"]["mean"] if row else None, f"FDRL ({feat})", ref_uar, "reference",
            TARGET_MARGIN, hint, ctx.mode))
    return res
