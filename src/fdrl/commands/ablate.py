"""``fdrl ablate``: run ablation systems (paper Table 2) through the same cross-validation."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fdrl.commands.cv import add_config_args, config_overrides


def register(sub) -> None:
    p = sub.add_parser(
        "ablate", help="run ablation systems x seeds through cross-validation (paper Table 2)",
        description="Each system is the config plus its overrides (configs/systems/*.yaml or "
                    "--systems-file); every (system, seed) is an ordinary run folder under one "
                    "ablation folder, summarised in ablation.md / .csv / .json.")
    add_config_args(p, required=False)
    p.add_argument("--systems", help="comma-separated names (e.g. S0,S1,S2) or 'all' "
                                     "(default: the systems files' default list, Table 2)")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds per system: train.seed = base seed + 0..N-1 (default 1)")
    p.add_argument("--folds", help="comma-separated test groups, e.g. 1,2 (default: all)")
    p.add_argument("--systems-file", action="append", default=[], metavar="FILE",
                   help="extra systems (YAML, format in fdrl.training.systems); repeatable")
    p.add_argument("--reference", help="system the others are compared with (default: the "
                                       "systems file's reference, S0 for FDRL)")
    p.add_argument("--resume", metavar="ABL_DIR", help="continue a stopped ablation")
    p.add_argument("--list", action="store_true", help="list the known systems and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ablate)


def _list(catalog) -> int:
    for s in catalog.systems.values():
        paper = s.paper or {}
        nums = f"  paper WAR/UAR {paper['war']:.2f}/{paper['uar']:.2f}" if paper.get("war") else ""
        ov = " ".join(f"{k}={json.dumps(v)}" for k, v in s.overrides.items()) or "(no overrides)"
        print(f"{s.name:<20} [{s.model or 'any'}] {s.description}{nums}\n{'':<21}{ov}")
    return 0


def cmd_ablate(args) -> int:
    from fdrl.errors import ConfigError
    from fdrl.training.ablate import format_table, make_plan, run_ablation, start_ablation
    from fdrl.training.systems import load_systems

    t0 = time.time()
    catalog = load_systems(args.systems_file)
    if args.list:
        return _list(catalog)
    if args.resume:
        if args.config or args.overrides or args.systems or args.folds or args.systems_file:
            raise ConfigError("--resume takes everything from ABL_DIR/plan.json; drop --config, "
                              "--systems, --folds, --systems-file and overrides")
        abl_dir = Path(args.resume)
    else:
        overrides = config_overrides(args)
        from fdrl.training.ablate import base_config

        _, cfg = base_config(args.config, overrides)
        systems = catalog.select(args.systems, cfg.model_name)
        plan = make_plan(args.config, overrides, systems, args.seeds, args.reference)
        abl_dir = start_ablation(plan)
        print(f"ablation folder: {abl_dir}")
    summary = run_ablation(abl_dir, progress=not args.quiet)
    print(format_table(summary))
    print(f"ablation folder: {abl_dir}  ({time.time() - t0:.0f} s)")
    return 0
