"""IEMOCAP text (real transcripts, 4 classes, 5514 utterances, leave-one-session-out):
the text-only model on frozen MiniLM, and MiniLM fine-tuned end to end (full run only,
and only while it fits the time budget), against MiniLM pooled + logistic regression
on the same features and folds.

Figures on all utterances and on the improvised dialogues only (scripted dialogues
repeat the same sentences across sessions, so text models look better on them).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .common import (shown_overrides, Context, Skip, SuiteResult, Table, logreg_reference, mean_std_pct,
                     points_target, seconds_str, take_every)
from .runs import model_config, model_row, single_run

log = logging.getLogger("benchmarks")

NAME = "iemocap-text"
TITLE = "IEMOCAP text: MiniLM text-only model vs logistic regression"
CONFIG = "iemocap_features"  # its train/model settings; speech switched off
TARGET_MARGIN = 3.0
TARGETS = [f"text-only, frozen MiniLM: UAR ≥ logistic-regression reference + {TARGET_MARGIN:g} points"]

SETTINGS = {
    # finetune_budget_s: fine-tuning stops after the fold that would overrun it
    # sequences None = the config's (iemocap_features: pooled MiniLM vectors, the cache
    # entries the iemocap suite fills too); finetune: MiniLM trained end to end, fold by fold
    "full": {"folds": None, "epochs": None, "sequences": None, "limit": None, "finetune": True,
             "finetune_epochs": 4, "finetune_budget_s": 3600},
    "quick": {"folds": [1, 2], "epochs": 3, "sequences": False, "limit": None, "finetune": False},
    "tiny": {"folds": [1], "epochs": 1, "sequences": False, "limit": 300, "finetune": False},
}


def prepare_manifest(ctx: Context, limit: int | None) -> Path:
    """Text-only manifest from the transcripts file (session and speaker from the file)."""
    from fdrl.data.custom import prepare_custom
    from fdrl.data.manifest import read_manifest, write_manifest

    jsonl = ctx.data_dir / "iemocap4_text" / "iemocap4.jsonl"
    if not jsonl.is_file():
        raise Skip(f"{jsonl} not found (the shared IEMOCAP transcripts)")
    folder = ctx.suite_dir(NAME) / "data" / "iemocap4_text"
    prepare_custom(jsonl, folder, corpus="iemocap4_text")
    if not limit:
        return folder
    m = read_manifest(folder)
    sub = folder.with_name(f"iemocap4_text-limit{limit}")
    write_manifest(sub, take_every(m.rows, limit), m.classes)
    return sub


def overrides_for(manifest: Path, ctx: Context, s: dict, epochs: int | None) -> list[str]:
    out = [f"data.manifest={manifest}", f"features.cache_dir={ctx.cache_dir}",
           f"run.out_dir={ctx.suite_dir(NAME)}", "run.tensorboard=false",
           "features.speech={name: none}"]
    if epochs is not None:
        out.append(f"train.epochs={epochs}")
    if s["folds"]:
        out.append(f"cv.folds=[{', '.join(map(str, s['folds']))}]")
    if s["sequences"] is not None:
        out.append(f"features.sequences={'true' if s['sequences'] else 'false'}")
    return out


def finetune(ctx: Context, manifest: Path, s: dict, subsets: dict, classes: list) -> dict:
    """MiniLM fine-tuned with the text-only head, fold by fold (``fdrl collect`` merges
    them); stops before a fold that would overrun the budget, judged from the folds so far."""
    from fdrl.data.folds import make_folds
    from fdrl.data.manifest import read_manifest
    from fdrl.training.runs import collect_runs

    groups = [str(f.test_group) for f in make_folds(read_manifest(manifest), "session")]
    groups = [g for g in groups if not s["folds"] or g in map(str, s["folds"])]
    base = overrides_for(manifest, ctx, s, s["finetune_epochs"]) + [
        "features.finetune=true", "features.text={name: minilm}", "train.batch_size=16",
        "train.lr=1e-4", "train.encoder_lr=2e-5", "run.save_representations=false"]
    t0, done = time.time(), []
    for g in groups:
        spent = time.time() - t0
        if done and spent / len(done) * (len(done) + 1) > s["finetune_budget_s"]:
            log.info("fine-tuning: stopping before fold %s (time budget)", g)
            break
        ov = [o for o in base if not o.startswith("cv.folds=")] + [f"cv.folds=[{g}]"]
        cfg = model_config(CONFIG, "text-only", ov)
        rd, _ = single_run(cfg, ctx.suite_dir(NAME) / f"finetune-fold{g}", progress=ctx.progress)
        done.append(rd)
    if not done:
        return {"status": "skipped", "reason": "no fold fitted the time budget"}
    out = ctx.suite_dir(NAME) / f"finetune-collected-{int(time.time())}"
    rd, results = collect_runs(done, out)
    row = model_row("text-only, MiniLM fine-tuned", rd, results, classes, subsets)
    row["seconds"] = time.time() - t0
    return {"status": "ok", "row": row, "folds_done": len(done), "folds_planned": len(groups)}


def run(ctx: Context) -> SuiteResult:
    from fdrl.data.folds import make_folds
    from fdrl.training.cv import prepare, select_folds

    s = ctx.pick(SETTINGS)
    res = SuiteResult(NAME, TITLE, settings=s)
    manifest = prepare_manifest(ctx, s["limit"])
    ov = overrides_for(manifest, ctx, s, s["epochs"])
    cfg = model_config(CONFIG, "text-only", ov)
    prep = prepare(cfg, progress=ctx.progress)
    rows = prep.manifest.rows
    classes = prep.manifest.classes
    ids = [str(r["utt_id"]) for r in rows]
    improvised = {str(r["utt_id"]) for r in rows if r.get("scripted") is False}
    subsets = {"improvised": improvised}
    folds = select_folds(make_folds(prep.manifest, cfg.cv.protocol), cfg.cv.folds)

    text = prep.data.text.pooled  # (N, 384) MiniLM masked mean
    ref = logreg_reference(text, prep.data.labels, folds, prep.data.num_classes, ids, subsets,
                           seed=cfg.train.seed)
    rd, results = single_run(cfg, ctx.suite_dir(NAME) / "text-only-frozen", prep=prep,
                             progress=ctx.progress)
    frozen = model_row("text-only, frozen MiniLM", rd, results, classes, subsets)

    ft = {"status": "skipped", "reason": f"{ctx.mode} run: fine-tuning MiniLM end to end on CPU "
                                         f"takes hours; the full run does it"}
    if s["finetune"]:
        try:
            ft = finetune(ctx, manifest, s, subsets, classes)
        except Exception as exc:  # fine-tuning failing must not lose the frozen figures
            log.exception("fine-tuning failed")
            ft = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    res.raw = {"reference": ref, "frozen": frozen, "finetune": ft, "overrides": ov,
               "n_utterances": len(ids), "n_improvised": len(improvised),
               "test_groups": [str(f.test_group) for f in folds]}

    table = [[f"logreg MiniLM mean ({text.shape[1]}-d)", len(folds), mean_std_pct(ref["war"]),
              mean_std_pct(ref["uar"]), mean_std_pct(ref["subsets"]["improvised"]["war"]),
              mean_std_pct(ref["subsets"]["improvised"]["uar"]), "—"]]
    model_rows = [frozen] + ([ft["row"]] if ft.get("status") == "ok" else [])
    for row in model_rows:
        imp = row["subsets"]["improvised"]
        table.append([row["label"], row["n_folds"], mean_std_pct(row["war"]), mean_std_pct(row["uar"]),
                      mean_std_pct(imp["war"]), mean_std_pct(imp["uar"]), seconds_str(row["seconds"])])
    res.tables.append(Table("Text-only models and reference (mean ± std over folds, %)",
                            ["model", "folds", "WAR", "UAR", "improvised WAR", "improvised UAR", "time"],
                            table))
    res.notes.append(f"{len(ids)} utterances ({len(improvised)} improvised); test sessions "
                     f"{', '.join(str(f.test_group) for f in folds)}; config `{CONFIG}` with "
                     f"`{shown_overrides(ov)}`; one seed.")
    if ft.get("status") != "ok":
        res.notes.append(f"MiniLM fine-tuned: {ft['status']} — {ft['reason']}.")
    elif ft["folds_done"] < ft["folds_planned"]:
        res.notes.append(f"MiniLM fine-tuned: {ft['folds_done']} of {ft['folds_planned']} folds "
                         f"within the time budget ({s['finetune_budget_s'] / 3600:.1f} h).")
    hint = ("The reference is a linear model on the same frozen MiniLM means; the text-only "
            "model adds an MLP (and, on token sequences, an attention pooling), which on ~4.4k "
            "sentences per fold has little to add to frozen sentence vectors. Candidates: fine-tuning MiniLM (or a larger text model), "
            "tuning lr / dropout on validation, class-balanced sampling.")
    for row in model_rows:
        res.targets.append(points_target(
            f"{row['label']}: UAR ≥ logistic-regression reference + {TARGET_MARGIN:g} points",
            row["uar"]["mean"], row["label"], ref["uar"]["mean"], "reference", TARGET_MARGIN,
            hint, ctx.mode))
    return res
