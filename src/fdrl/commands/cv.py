"""``fdrl cv`` (cross-validation with any config) and ``fdrl demo`` (the main job).

Both run unchanged under ``torchrun --nproc_per_node=N -m fdrl cv ...`` (one process
per GPU, or gloo on CPU); see README, "Running on several GPUs or machines".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fdrl.config import load_config
from fdrl.errors import ConfigError


def config_overrides(args) -> list[str]:
    """The overrides of a fresh run: ``--config`` must be there; ``--folds`` -> cv.folds."""
    if not args.config:
        raise ConfigError("--config is required (a YAML file or a built-in name such as demo)")
    overrides = list(args.overrides)
    if args.folds:
        overrides.append(f"cv.folds=[{args.folds}]")
    return overrides


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required,
                   help="YAML file or built-in config name (demo, iemocap_paper, iemocap_features, emodb)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.lr=3e-4 model.beta=0")


def register(sub) -> None:
    p = sub.add_parser("cv", help="cross-validate a model (leave-one-session-out by default)",
                       description="Cross-validation with folds from metadata. Validation data for "
                                   "model selection come from the training part only.")
    add_config_args(p, required=False)
    p.add_argument("--folds", help="comma-separated test groups to run, e.g. 1,3 (default: all); "
                                   "one fold per job spreads a run over a cluster (merge with "
                                   "`fdrl collect`)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped (even killed) run in RUN_DIR; the result equals an "
                        "uninterrupted run's")
    p.add_argument("--run-dir", help="write into this new (or empty) folder instead of "
                                     "runs/<name>-<time>")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave utterances with missing or unreadable input out of the run, with a "
                        "warning (listed in run.json under 'skipped'), instead of stopping "
                        "(= data.skip_bad=true)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cv)

    d = sub.add_parser("demo", help="the main job: demo corpus -> features -> FDRL 5-fold CV",
                       description="Generate the built-in demo corpus, extract features with the "
                                   "offline encoders, run FDRL with 5-fold leave-one-session-out "
                                   "cross-validation and print WAR/UAR per fold.")
    d.add_argument("--data-dir", default="data/demo", help="where the demo corpus is generated")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)


def _print_results(run_dir: Path, results: dict, seconds: float) -> None:
    from fdrl.training.runs import format_table

    print(f"{results.get('model')} on {results.get('corpus')}: {results['protocol']}, "
          f"{results['n_folds']} folds")
    if results.get("n_skipped"):
        print(f"skipped {results['n_skipped']} utterance(s) with unusable input "
              f"(listed in {run_dir / 'run.json'} under 'skipped')")
    print(format_table(results))
    w, u = results["war"], results["uar"]
    print(f"WAR {100 * w['mean']:.2f} ± {100 * w['std']:.2f} %   "
          f"UAR {100 * u['mean']:.2f} ± {100 * u['std']:.2f} %   ({seconds:.0f} s)")
    print(f"run folder: {run_dir}")


def cmd_cv(args) -> int:
    from fdrl.errors import ConfigError

    t0 = time.time()
    if args.resume:
        from fdrl.training.cv import load_run_config

        if args.config or args.overrides or args.folds or args.skip_bad or args.run_dir:
            raise ConfigError("--resume takes its config from RUN_DIR/config.yaml; "
                              "drop --config, --folds, --skip-bad, --run-dir and overrides")
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir) if run_dir.is_dir() else None
    else:
        overrides = config_overrides(args)
        if args.skip_bad:
            overrides.append("data.skip_bad=true")
        cfg = load_config(args.config, overrides)  # config errors before the heavy imports
        run_dir = Path(args.run_dir) if args.run_dir else None
    from fdrl.training import distributed as D
    from fdrl.training.cv import run_cv

    D.init_from_env(cfg.train.device if cfg is not None else "cpu")
    try:
        if args.resume:
            run_dir, results = run_cv(None, run_dir, resume=True, progress=not args.quiet)
        else:
            run_dir, results = run_cv(cfg, run_dir, progress=not args.quiet)
        if D.is_main():
            _print_results(run_dir, results, time.time() - t0)
    finally:
        D.shutdown()
    return 0


def cmd_demo(args) -> int:
    from fdrl.data.demo import generate_demo
    from fdrl.training import distributed as D
    from fdrl.training.cv import run_cv

    t0 = time.time()
    cfg = load_config("demo", [f"data.manifest={args.data_dir}", *args.overrides])
    D.init_from_env(cfg.train.device)
    try:
        D.run_on_main(lambda: generate_demo(Path(args.data_dir)))  # rank 0 writes the corpus
        run_dir, results = run_cv(cfg, progress=not args.quiet)
        if D.is_main():
            _print_results(run_dir, results, time.time() - t0)
    finally:
        D.shutdown()
    return 0
