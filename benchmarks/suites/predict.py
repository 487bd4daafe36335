"""Prediction latency (p50 / p95 of one 5 s wav + one sentence) and batch throughput of a
demo bundle, via ``benchmarks/predict_latency.py`` in a child process (its peak RSS is
its own); median over runs. Needs no data (it trains a small demo bundle first)."""

from __future__ import annotations

from .common import (REPO, Context, SuiteResult, Table, Target, check_child, child_env, median,
                     python_script, run_measured)

NAME = "predict"
TITLE = "Prediction latency and throughput (demo bundle, CPU)"

TARGETS = ["single-call latency p50 ≤ 150 ms"]
#: what could shrink each stage (default text of the "Why not met" paragraph)
STAGE_HINTS = {
    "speech_encoder": "openSMILE eGeMAPS runs over the whole 5 s file on every call: a cheaper "
                      "speech encoder (log-mel) or a shorter data.max_seconds would cut it; check "
                      "the machine's load first.",
    "text_encoder": "MiniLM on one sentence: torch thread contention (try --threads 1) or an "
                    "exported / quantised text model.",
    "model": "the head itself: fewer threads for tiny matrices, or torch.compile.",
    "read_audio": "decoding and resampling the file: read at the model's rate.",
}

SETTINGS = {
    "full": {"repeats": 3, "calls": 50, "warmup": 5, "batch_items": 64},
    "quick": {"repeats": 1, "calls": 20, "warmup": 3, "batch_items": 32},
    "tiny": {"repeats": 1, "calls": 3, "warmup": 1, "batch_items": 8},
}


def run(ctx: Context) -> SuiteResult:
    from fdrl.utils.io import read_json

    s = ctx.pick(SETTINGS)
    res = SuiteResult(NAME, TITLE, settings=s)
    runs = []
    for k in range(s["repeats"]):
        out = ctx.suite_dir(NAME) / f"predict-{k}.json"
        args = ["--calls", str(s["calls"]), "--warmup", str(s["warmup"]),
                "--batch-items", str(s["batch_items"]), "--json", str(out)]
        m = run_measured(python_script(REPO / "benchmarks" / "predict_latency.py", args), env=child_env())
        check_child(m, "benchmarks/predict_latency.py")
        runs.append({**read_json(out), "peak_rss_mb": m.peak_rss_mb})
    res.raw = {"runs": runs}
    p50 = median([r["single"]["p50_ms"] for r in runs])
    p95 = median([r["single"]["p95_ms"] for r in runs])
    tput = median([r["batch"]["utterances_per_s"] for r in runs])
    stages = {k: median([r["stages_median_ms"][k] for r in runs]) for k in runs[0]["stages_median_ms"]}
    first = runs[0]
    res.tables.append(Table(
        f"One call: {first['single']['input']} ({first['single']['calls']} calls after "
        f"{first['single']['warmup']} warm-up per run; median over {len(runs)} run(s))",
        ["p50 ms", "p95 ms", *[f"{k} ms" for k in stages], "batch utt/s", "peak RSS MB"],
        [[f"{p50:.1f}", f"{p95:.1f}", *[f"{v:.1f}" for v in stages.values()], f"{tput:.1f}",
          f"{median([r['peak_rss_mb'] for r in runs]):.0f}"]],
        note=f"Bundle: {first['bundle']}. Stages are timed one by one (median). Batch: "
             f"{first['batch']['items']} demo utterances, batch size {first['batch']['batch_size']}. "
             f"Peak RSS: the child process (training the bundle included)."))
    limit = first["single"].get("target_p50_ms", 150)
    top = max(stages, key=stages.get)
    res.targets.append(Target(
        f"single-call latency p50 ≤ {limit} ms", p50 <= limit, f"p50 {p50:.1f} ms", f"{limit} ms",
        f"p50 is {p50 - limit:.0f} ms over the target. Stage times (median, each alone): "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in stages.items())
        + f"; the largest is {top}. " + STAGE_HINTS.get(top, "")))
    return res
