"""``fdrl probe RUN_DIR``: speaker-identification probes on a run's frozen embeddings."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "probe", help="how much speaker identity a run's embeddings carry (speaker-ID probe)",
        description="Train a fresh speaker-identification probe (standardise + logistic "
                    "regression) on each frozen test-set embedding of a cross-validation run, "
                    "pooled over all folds (headline) and per fold; report probe accuracy, "
                    "chance, the run's emotion UAR and, with --reference, disentanglement % "
                    "(relative drop of probe accuracy vs the reference run). Writes "
                    "RUN_DIR/probe.json and probe.md (probe-2.* etc. if present).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished `fdrl cv` run folder")
    p.add_argument("--reference", metavar="RUN_DIR",
                   help="run to compare with, e.g. the plain multitask model")
    p.add_argument("--embeddings", help="comma-separated names, e.g. fused,S,P,S_a "
                                        "(default: all stored, plus S = S_a + S_t and P = [P_a; P_t])")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of each speaker's utterances held out for the probe (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the solver")
    p.add_argument("--no-per-fold", action="store_true", help="skip the per-fold probes")
    p.add_argument("--no-fold-standardise", action="store_true",
                   help="pooled probe: do not standardise each fold's embeddings separately "
                        "(they come from different fold models)")
    p.add_argument("--single-model", metavar="FOLD",
                   help="embed every utterance with this fold's checkpoint and probe those "
                        "(for leave-one-speaker-out, where each test fold has one speaker); "
                        "'all': do so with every fold's checkpoint and report the mean")
    p.add_argument("--force", action="store_true",
                   help="replace probe.json / probe.md instead of writing probe-2.* etc.")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from fdrl.analysis.probe import (
        ProbeSettings,
        add_disentanglement,
        format_probe_table,
        probe_run,
        write_probe_report,
    )
    from fdrl.errors import ConfigError

    if not 0.0 < args.test_fraction < 1.0:
        raise ConfigError(f"--test-fraction: expected a value in (0, 1), got {args.test_fraction}")
    settings = ProbeSettings(test_fraction=args.test_fraction, seed=args.seed,
                             per_fold=not args.no_per_fold,
                             fold_standardise=not args.no_fold_standardise)
    names = [n.strip() for n in args.embeddings.split(",") if n.strip()] if args.embeddings else None
    report = probe_run(Path(args.run_dir), names, settings, single_model=args.single_model)
    if args.reference:
        ref = probe_run(Path(args.reference), None, ProbeSettings(
            test_fraction=args.test_fraction, seed=args.seed, per_fold=False,
            fold_standardise=settings.fold_standardise), single_model=args.single_model)
        add_disentanglement(report, ref)
    js, md = write_probe_report(Path(args.run_dir), report, force=args.force)
    uar = report.get("uar")
    print(f"speaker probe: {report.get('model')} on {report.get('corpus')} "
          f"(emotion UAR {'-' if uar is None else f'{100 * uar:.2f}'} %), {report['mode']}, "
          f"{report['n_folds']} fold(s)")
    for w in report.get("warnings", []):
        print(f"warning: {w}")
    print(format_probe_table(report))
    print(f"written: {js} and {md.name}")
    return 0
