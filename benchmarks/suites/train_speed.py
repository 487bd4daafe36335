"""Training speed: FDRL head steps/s for C = 4 vs C = 16 classes, and ``Trainer.fit``
against a plain loop, via ``benchmarks/train_speed.py`` in a child process (its peak
RSS is its own). Needs no data (random features)."""

from __future__ import annotations

from .common import (REPO, Context, SuiteResult, Table, Target, check_child, child_env,
                     python_script, run_measured)

NAME = "train-speed"
TITLE = "Training speed: FDRL head, C = 4 vs C = 16; trainer vs plain loop"
TARGET_RATIO = 1.5
TARGETS = [f"FDRL training step time with C = 16 ≤ {TARGET_RATIO:g} × C = 4"]

SETTINGS = {
    "full": {"steps": 100, "repeats": 5, "warmup": 20, "trainer_n": 800, "trainer_epochs": 5},
    "quick": {"steps": 30, "repeats": 3, "warmup": 5, "trainer_n": 800, "trainer_epochs": 2},
    "tiny": {"steps": 2, "repeats": 3, "warmup": 1, "trainer_n": 64, "trainer_epochs": 1},
}


def run(ctx: Context) -> SuiteResult:
    from fdrl.utils.io import read_json

    s = ctx.pick(SETTINGS)
    res = SuiteResult(NAME, TITLE, settings=s)
    out = ctx.suite_dir(NAME) / "train_speed.json"
    args = ["--steps", str(s["steps"]), "--repeats", str(s["repeats"]), "--warmup", str(s["warmup"]),
            "--trainer-n", str(s["trainer_n"]), "--trainer-epochs", str(s["trainer_epochs"]),
            "--target-ratio", str(TARGET_RATIO), "--json", str(out)]
    m = run_measured(python_script(REPO / "benchmarks" / "train_speed.py", args), env=child_env())
    check_child(m, "benchmarks/train_speed.py")
    r = read_json(out)
    r["peak_rss_mb"] = m.peak_rss_mb
    res.raw = r
    cl = r["classes"]
    rows = [[f"C = {c}", f"{v['step_ms_median']:.2f}", f"{v['steps_per_s']:.1f}", v["n_params"],
             f"{v['ratio_vs_base']:.2f}" if "ratio_vs_base" in v else "1 (base)"]
            for c, v in cl["per_class"].items()]
    res.tables.append(Table(
        f"FDRL head, batch {cl['batch_size']}, random pooled features (speech 50-d, text 384-d); "
        f"median of {cl['repeats']} blocks of {cl['steps_per_block']} steps",
        ["classes", "ms / step", "steps / s", "parameters", "step-time ratio vs C = 4"], rows,
        note=f"Peak RSS of the child (this suite's whole measurement): {m.peak_rss_mb:.0f} MB."))
    if "trainer" in r:
        t = r["trainer"]
        res.tables.append(Table(
            f"`Trainer.fit` vs a plain loop (same model, data and steps; {t['n_train']} training / "
            f"{t['n_val']} validation utterances, {t['epochs']} epochs, median of {t['repeats']} pairs)",
            ["toolkit s", "plain s", "ratio toolkit / plain"],
            [[f"{t['toolkit_s_median']:.2f}", f"{t['plain_s_median']:.2f}", f"{t['ratio_median']:.2f}"]],
            note="The trainer's extra work: validation metrics, a copy of the best weights, "
                 "per-epoch history, the seeded epoch order."))
    tg = r["target"]
    ratio = tg["ratio"]
    res.targets.append(Target(
        TARGETS[0], tg["met"],
        f"ratio {ratio:.2f}", f"{TARGET_RATIO:g}",
        f"A C = 16 step costs {ratio:.2f}x a C = 4 step ({100 * (ratio - TARGET_RATIO) / TARGET_RATIO:.0f} % "
        f"over the limit). FDRL has one local subdomain discriminator per class; they run as one "
        f"batched module (models/layers.py BatchedDiscriminators), so the remaining cost grows "
        f"with C through its per-class weights and the per-class loss. Profile the local term."))
    return res
