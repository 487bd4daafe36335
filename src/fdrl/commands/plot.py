"""``fdrl plot``: figures (paper Fig. 3a/3b, confusion matrices, learning curves),
measures and a report.md for a finished run."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "plot", help="figures, measures and report.md for a run (paper Fig. 3)",
        description="Draw Fig. 3a (t-SNE of S_a, S_t, P_a, P_t; with --compare side by side), "
                    "Fig. 3b (per-class S centroids, with --mu0 side by side), confusion "
                    "matrices and learning curves; measure alignment and disparity; write "
                    "report.md. RUN_DIR may also be an ablation folder: the reference run, "
                    "S1 (or no-align-disparity) and mu0 are then picked from it.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (or an ablation folder)")
    p.add_argument("--compare", metavar="RUN_DIR2",
                   help="the run without alignment and disparity (Fig. 3a), e.g. system S1")
    p.add_argument("--mu0", metavar="RUN_DIR3", help="the run with mu = 0 (Fig. 3b), system mu0")
    p.add_argument("--out", help="output folder (default RUN_DIR/figures; never overwritten: "
                                 "an existing one gets a -2, -3... suffix)")
    p.add_argument("--fold", help="test group whose test set the figures show (default: the first)")
    p.add_argument("--max-points", type=int, default=1500, help="t-SNE points at most (default 1500)")
    p.add_argument("--seed", type=int, default=0, help="seed of t-SNE, subsampling and probes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from fdrl.analysis.report import make_report, runs_from_ablation

    run_dir, compare, mu0 = Path(args.run_dir), args.compare, args.mu0
    if (run_dir / "plan.json").is_file():
        picked = runs_from_ablation(run_dir)
        run_dir = picked["run_dir"]
        compare = compare or picked["compare"]
        mu0 = mu0 or picked["mu0"]
        print(f"ablation folder: run {run_dir}, compare {compare or '-'}, mu0 {mu0 or '-'}")
    out = make_report(run_dir, out=args.out, compare=compare, mu0=mu0, fold=args.fold,
                      max_points=args.max_points, seed=args.seed, progress=not args.quiet)
    print(f"figures and report: {out / 'report.md'}")
    return 0
