"""Cross-validation wall time on the demo corpus: a cold run (feature extraction + 5-fold
CV) and the same CV on cached features (median of several runs), each ``fdrl cv`` a
child process with its own peak RSS; in the full run also ``fdrl demo`` end to end in a
fresh folder. Needs no data (the demo corpus is generated)."""

from __future__ import annotations

import sys
import time

from .common import (Context, SuiteResult, Table, check_child, child_env, median, run_measured,
                     seconds_str)

NAME = "cv-speed"
TITLE = "Cross-validation wall time on the demo corpus (5-fold, cached features)"

SETTINGS = {
    "full": {"n_utterances": 800, "epochs": None, "repeats": 3, "demo": True},
    "quick": {"n_utterances": 400, "epochs": 3, "repeats": 3, "demo": False},
    "tiny": {"n_utterances": 60, "epochs": 1, "repeats": 1, "demo": False},
}


def run(ctx: Context) -> SuiteResult:
    import shutil

    from fdrl.data.demo import generate_demo
    from fdrl.utils.io import read_json

    s = ctx.pick(SETTINGS)
    res = SuiteResult(NAME, TITLE, settings=s)
    work = ctx.suite_dir(NAME)
    corpus = work / "demo"
    t0 = time.perf_counter()
    generate_demo(corpus, n_utterances=s["n_utterances"])
    gen_s = time.perf_counter() - t0
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the cold run starts from an empty cache
    fdrl = [sys.executable, "-m", "fdrl"]

    def cv(name: str) -> tuple:
        rd = work / "runs" / name
        cmd = [*fdrl, "cv", "--config", "demo", "--quiet", "--run-dir", str(rd),
               f"data.manifest={corpus}", f"features.cache_dir={cache}", "run.tensorboard=false"]
        if s["epochs"] is not None:
            cmd.append(f"train.epochs={s['epochs']}")
        m = run_measured(cmd, env=child_env())
        check_child(m, f"fdrl cv ({name})")
        return m, read_json(rd / "results.json")

    shutil.rmtree(work / "runs", ignore_errors=True)
    cold, cold_res = cv("cold")
    warm = [cv(f"warm-{k}") for k in range(s["repeats"])]
    rows = [[f"generate the demo corpus ({s['n_utterances']} utterances, in process)", 1,
             seconds_str(gen_s), "—"],
            ["`fdrl cv --config demo`, empty feature cache (extraction + 5-fold CV)", 1,
             seconds_str(cold.seconds), f"{cold.peak_rss_mb:.0f}"],
            ["`fdrl cv --config demo`, cached features (5-fold CV)", len(warm),
             seconds_str(median([m.seconds for m, _ in warm])),
             f"{median([m.peak_rss_mb for m, _ in warm]):.0f}"]]
    raw = {"generate_s": gen_s, "cold": {"seconds": cold.seconds, "peak_rss_mb": cold.peak_rss_mb},
           "warm": [{"seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb} for m, _ in warm],
           "uar": cold_res["uar"], "war": cold_res["war"]}
    if s["demo"]:
        demo_dir = work / "fresh-demo"
        shutil.rmtree(demo_dir, ignore_errors=True)
        m = run_measured([*fdrl, "demo", "--quiet", "--data-dir", str(demo_dir / "data"),
                          f"run.out_dir={demo_dir / 'runs'}", f"features.cache_dir={demo_dir / 'cache'}"],
                         env=child_env())
        check_child(m, "fdrl demo")
        rows.append(["`fdrl demo` in a fresh folder (generate + extract + 5-fold CV)", 1,
                     seconds_str(m.seconds), f"{m.peak_rss_mb:.0f}"])
        raw["demo"] = {"seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb}
    res.raw = raw
    epochs = s["epochs"] if s["epochs"] is not None else "the config's"
    res.tables.append(Table(
        f"Wall time (FDRL, config `demo`, {epochs} epochs; each `fdrl` a child process)",
        ["what", "runs", "wall time (median)", "peak RSS MB"], rows,
        note=f"The CV's own figures (cold run): WAR {100 * cold_res['war']['mean']:.1f} %, "
             f"UAR {100 * cold_res['uar']['mean']:.1f} % (demo corpus; not an accuracy benchmark). "
             f"Wall time includes Python start-up and imports."))
    return res
