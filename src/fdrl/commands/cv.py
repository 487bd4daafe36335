"""``fdrl cv`` (cross-validation with any config) and ``fdrl demo`` (the main job)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fdrl.config import load_config


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
    p.add_argument("--folds", help="comma-separated test groups to run, e.g. 1,3 (default: all)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run in RUN_DIR")
    p.add_argument("--run-dir", help="write into this new folder instead of runs/<name>-<time>")
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
    print(format_table(results))
    w, u = results["war"], results["uar"]
    print(f"WAR {100 * w['mean']:.2f} ± {100 * w['std']:.2f} %   "
          f"UAR {100 * u['mean']:.2f} ± {100 * u['std']:.2f} %   ({seconds:.0f} s)")
    print(f"run folder: {run_dir}")


def cmd_cv(args) -> int:
    from fdrl.errors import ConfigError
    from fdrl.training import distributed as D
    from fdrl.training.cv import run_cv

    t0 = time.time()
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume takes its config from RUN_DIR/config.yaml; "
                              "drop --config and overrides")
        run_dir, results = run_cv(None, Path(args.resume), resume=True, progress=not args.quiet)
    else:
        if not args.config:
            raise ConfigError("--config is required (a YAML file or a built-in name such as demo)")
        overrides = list(args.overrides)
        if args.folds:
            overrides.append(f"cv.folds=[{args.folds}]")
        cfg = load_config(args.config, overrides)
        D.init_from_env(cfg.train.device)
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is not None and D.is_main():
            if run_dir.exists() and any(run_dir.iterdir()):
                from fdrl.errors import RunError

                raise RunError(f"--run-dir {run_dir}: folder exists and is not empty; runs are "
                               f"never overwritten (use --resume {run_dir} to continue it)")
            run_dir.mkdir(parents=True, exist_ok=True)
        run_dir, results = run_cv(cfg, run_dir, progress=not args.quiet)
    if D.is_main():
        _print_results(run_dir, results, time.time() - t0)
    return 0


def cmd_demo(args) -> int:
    from fdrl.data.demo import generate_demo
    from fdrl.training.cv import run_cv

    t0 = time.time()
    data_dir = generate_demo(Path(args.data_dir))
    data_dir = data_dir.parent if data_dir.is_file() else data_dir
    cfg = load_config("demo", [f"data.manifest={data_dir}", *args.overrides])
    run_dir, results = run_cv(cfg, progress=not args.quiet)
    _print_results(run_dir, results, time.time() - t0)
    return 0
