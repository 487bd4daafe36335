"""``fdrl collect RUN_DIR... [--out DIR]``: merge folds run as separate jobs into one run.

A cluster job array runs ``fdrl cv --config C --folds k`` with k = 1..5, one job per
fold, each writing its own run folder; ``fdrl collect`` then checks that the runs are
one experiment and writes a new run folder with every fold and one results table.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect", help="merge the folds of several run folders (one experiment) into one run",
        description="Merge the finished folds of several run folders of the same experiment (e.g. "
                    "`fdrl cv --folds k` jobs of a cluster job array) into one new run folder with "
                    "one results.json / results.md. The configs may differ only in cv.folds, run.* "
                    "and features.cache_dir; a fold finished in two runs is an error.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to merge")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="new run folder (default: <parent of the first run>/<name>-collected-<time>)")
    p.set_defaults(func=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    from fdrl.training.runs import collect_runs, format_table

    out, results = collect_runs(args.runs, args.out)
    print(f"{results.get('model')} on {results.get('corpus')}: {results['protocol']}, "
          f"{results['n_folds']} folds collected from {len(args.runs)} run(s)")
    print(format_table(results))
    w, u = results["war"], results["uar"]
    print(f"WAR {100 * w['mean']:.2f} ± {100 * w['std']:.2f} %   "
          f"UAR {100 * u['mean']:.2f} ± {100 * u['std']:.2f} %")
    print(f"run folder: {out}")
    return 0
