"""EmoDB (real German speech, 7 classes, 10 speakers, leave-one-speaker-out): every model
of the toolkit on eGeMAPS (one ``fdrl compare`` with the speaker probe, the same command
the README's EmoDB table comes from), speech-only and FDRL also on log-mel frame
sequences, against eGeMAPS functionals + logistic regression on the same folds.

Speaker probe protocol. Under leave-one-speaker-out every test fold holds one speaker,
so a probe pooled over the folds' test sets would identify the fold model rather than
the speaker. ``fdrl compare --probe`` detects this and instead lets each fold's model
embed the whole corpus (its training speakers included) and trains a 10-way speaker
probe on those embeddings; the figure is the mean over the fold models
(:mod:`fdrl.analysis.probe`, mode "every fold model").
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .common import (shown_overrides, Context, Skip, SuiteResult, Table, logreg_reference, mean_std_pct, pct,
                     points_target, seconds_str, take_every)
from .runs import compare_models, compare_rows

log = logging.getLogger("benchmarks")

NAME = "emodb"
TITLE = "EmoDB: every model on eGeMAPS (+ speaker probe), FDRL and speech-only on log-mel, vs eGeMAPS functionals + logistic regression"
CONFIG = "emodb"
TARGET_MARGIN = 5.0
#: the comparison on eGeMAPS: all models, the identity techniques as labelled multitask variants
ALL_MODELS = ["fdrl", "foalnet", "concat", "late-fusion", "misa", "multitask", "adv=multitask",
              "conf=multitask", "orth=multitask", "speech-only", "text-only"]
IDENTITY_OVERRIDES = ["adv.identity.method=adversarial", "conf.identity.method=confusion",
                      "orth.identity.method=orthogonality"]
FEATURES = {
    "eGeMAPS": ["features.speech={name: egemaps-functionals}"],
    "log-mel": ["features.speech={name: logmel}", "features.sequences=true"],
}
#: models per feature set (the probe runs with the eGeMAPS comparison)
MODELS = {"eGeMAPS": ALL_MODELS, "log-mel": ["speech-only", "fdrl"]}

TARGETS = [f"FDRL on {feat}: UAR ≥ eGeMAPS-functionals reference UAR + {TARGET_MARGIN:g} points"
           for feat in FEATURES]

SETTINGS = {
    "full": {"n_folds": None, "epochs": None, "limit": None, "probe": True},
    "quick": {"n_folds": 2, "epochs": 5, "limit": None, "probe": True},
    "tiny": {"n_folds": 1, "epochs": 1, "limit": 120, "probe": True},
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


def prepare_manifest(ctx: Context, limit: int | None) -> Path:
    """The EmoDB manifest in the suite folder (a spread subset with ``limit``)."""
    from fdrl.data.emodb import prepare_emodb
    from fdrl.data.manifest import read_manifest, write_manifest

    root = ctx.data_dir / "emodb"
    if not (root / "labels.csv").is_file():
        raise Skip(f"{root / 'labels.csv'} not found (the shared EmoDB copy)")
    folder = ctx.suite_dir(NAME) / "data" / "emodb"
    prepare_emodb(root, folder)
    if limit:
        m = read_manifest(folder)
        folder = folder.with_name(f"emodb-limit{limit}")
        write_manifest(folder, take_every(m.rows, limit), m.classes)
    return folder


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

    inputs = {"logreg eGeMAPS functionals (88-d; the reference, also the models' input)":
              ["features.speech={name: egemaps-functionals}"],
              "logreg eGeMAPS LLD mean+std": ["features.speech={name: egemaps}"],
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


def run(ctx: Context) -> SuiteResult:
    from fdrl.data.manifest import read_manifest

    s = ctx.pick(SETTINGS)
    res = SuiteResult(NAME, TITLE, settings=s)
    manifest = prepare_manifest(ctx, s["limit"])
    rows = read_manifest(manifest).rows
    classes = read_manifest(manifest).classes
    groups = first_groups(manifest, "speaker", s["n_folds"])
    root = ctx.suite_dir(NAME)
    ov = overrides_for(manifest, ctx, s["epochs"], groups, root)
    refs, test_groups = references(ctx, ov)
    models, probe_rows, failed, folders = {}, {}, {}, {}
    commands = {}
    for feat, extra in FEATURES.items():
        names = MODELS[feat]
        probe = bool(s["probe"]) and feat == "eGeMAPS"
        labelled = [o for o in IDENTITY_OVERRIDES if o.split(".", 1)[0] in
                    {n.split("=", 1)[0] for n in names}]
        commands[feat] = (f"fdrl compare --config {CONFIG} --models {','.join(names)}"
                          + (" --probe" if probe else "") + " " + " ".join(extra + labelled))
        try:  # one feature set failing must not lose the other's figures
            cmp = compare_models(CONFIG, names, ov + extra + labelled, root / feat, ctx.progress,
                                 probe=probe)
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            log.exception("EmoDB on %s failed", feat)
            failed[feat] = f"{type(exc).__name__}: {exc}"
            continue
        folders[feat] = cmp["compare_dir"]
        for m, row in compare_rows(cmp, classes, {}).items():
            models[f"{m} ({feat})"] = row
        if probe:
            for m in cmp["models"]:
                if m.get("probe"):
                    probe_rows[m["model"]] = {"uar": m["uar"], **m["probe"]}
    if not models:  # nothing ran: the suite failed
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in failed.items()))
    readme = readme_reference(ctx.data_dir)
    res.raw = {"references": refs, "models": models, "probe": probe_rows, "readme_reference": readme,
               "errors": failed, "test_groups": test_groups, "overrides": ov, "folders": folders,
               "commands": commands}

    n_all = len({str(r["speaker"]) for r in rows})
    res.notes.append(f"Leave-one-speaker-out, {len(test_groups)} of {n_all} folds (test speakers "
                     f"{', '.join(test_groups)}); config `{CONFIG}` with `{shown_overrides(ov)}`; one "
                     f"seed; validation carved from the training speakers.")
    for feat, cmd in commands.items():
        res.notes.append(f"{feat}: `{cmd}` (plus the overrides above), run folder `{folders.get(feat, '—')}`.")
    for what, err in failed.items():
        res.notes.append(f"Models on {what}: **error** — {err} (traceback in the log; the other parts ran).")
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
                            ["model", "folds", "WAR", "UAR", "macro F1", "time"], table,
                            note="adv / conf / orth: the multitask model with the adversarial, "
                                 "confusion and orthogonality identity techniques."))
    if probe_rows:
        ptable = []
        for label, r in probe_rows.items():
            d = r.get("disentanglement_pct")
            acc = pct(r.get("accuracy")) + (f" ± {pct(r['accuracy_std'])}"
                                            if r.get("accuracy_std") is not None else "")
            ptable.append([label, mean_std_pct(r["uar"]), r.get("embedding") or "—", acc,
                           pct(r.get("chance")), pct(r.get("majority")),
                           "—" if d is None else f"{d:+.1f}"])
        mode = next((r.get("mode") for r in probe_rows.values() if r.get("mode")), "pooled")
        res.tables.append(Table(
            f"Speaker probe on the emotion embedding (eGeMAPS; {mode})",
            ["model", "emotion UAR", "embedding", "speaker probe acc %", "chance %", "majority %",
             "disentanglement vs multitask %"], ptable,
            note="Lower probe accuracy = less speaker identity in the emotion embedding. Each "
                 "fold's model embeds every utterance (its training speakers included) and gets "
                 "its own speaker-ID probe (logistic regression, utterance-disjoint split, same "
                 "speakers); mean ± std over the fold models. Disentanglement = relative drop of "
                 "the probe accuracy against the plain multitask model."))
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
