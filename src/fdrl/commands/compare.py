"""``fdrl compare``: several models through the same cross-validation, one table."""

from __future__ import annotations

import time
from pathlib import Path

from fdrl.commands.cv import add_config_args, config_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare models (FDRL, Foal-Net, baselines) on the same folds and features",
        description="Run each model through the same cross-validation (one feature extraction, "
                    "the same folds) and write compare.md / .csv / .json in a new folder "
                    "<run.out_dir>/compare-<run.name>-<time>/. Overrides: section keys "
                    "(train.epochs=5) apply to every model; model.KEY=V to every model that has "
                    "KEY; <model>.KEY=V (e.g. foalnet.proj_dim=64) to one model.")
    add_config_args(p, required=False)
    p.add_argument("--models", help="comma-separated registry names, e.g. "
                                    "fdrl,foalnet,concat,late-fusion,misa,multitask,speech-only,text-only")
    p.add_argument("--seeds", type=int, default=1, help="seeds per model (train.seed, +1, ...)")
    p.add_argument("--probe", action="store_true",
                   help="also probe each model's emotion embedding for speaker identity")
    p.add_argument("--reference", help="model the probe's disentanglement % refers to "
                                       "(default: multitask when compared)")
    p.add_argument("--folds", help="comma-separated test groups to run, e.g. 1,3 (default: all)")
    p.add_argument("--out-dir", help="parent folder of the comparison folder (default: run.out_dir)")
    p.add_argument("--resume", metavar="COMPARE_DIR", help="continue a stopped comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from fdrl.errors import ConfigError
    from fdrl.training.compare import format_table, make_plan, run_compare, start_compare

    t0 = time.time()
    if args.resume:
        if args.config or args.overrides or args.models:
            raise ConfigError("--resume takes everything from COMPARE_DIR/plan.json; drop "
                              "--config, --models and overrides")
        cmp_dir = Path(args.resume)
    else:
        overrides = config_overrides(args)
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        plan = make_plan(args.config, models, overrides, n_seeds=args.seeds, probe=args.probe,
                         reference=args.reference)
        cmp_dir = start_compare(plan, args.out_dir)
        print(f"comparison folder: {cmp_dir}")
    summary = run_compare(cmp_dir, progress=not args.quiet)
    print(f"{len(summary['models'])} models on {summary['corpus']}: {summary['protocol']}, "
          f"folds {summary['folds'] or 'all'}, seeds {summary['seeds']}")
    print(format_table(summary))
    print(f"({time.time() - t0:.0f} s) table: {cmp_dir / 'compare.md'}")
    return 0
