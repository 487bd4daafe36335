"""``fdrl train`` (a model bundle from a whole corpus) and ``fdrl export`` (a CV fold's
checkpoint as a standalone bundle)."""

from __future__ import annotations

import time

from fdrl.commands.cv import add_config_args


def register(sub) -> None:
    p = sub.add_parser("train", help="train on a whole corpus and write a model bundle",
                       description="Train on all utterances of the corpus (a seeded stratified "
                                   "validation share selects the epoch; there is no test set) and "
                                   "write a self-describing model bundle for `fdrl predict` / "
                                   "`fdrl serve` / fdrl.load().")
    add_config_args(p)
    p.add_argument("--out", help="bundle folder to create (default bundles/<run.name>-<time>); "
                                 "never overwritten")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="copy a CV fold's checkpoint into a standalone bundle",
                       description="Copy RUN_DIR/folds/<FOLD>/model (the checkpoint of the epoch "
                                   "chosen on validation) into a model bundle folder.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `fdrl cv`")
    e.add_argument("--fold", required=True,
                   help="the fold's folder name under RUN_DIR/folds (its test group, e.g. 1)")
    e.add_argument("--out", help="bundle folder to create (default bundles/<run>-fold<FOLD>)")
    e.set_defaults(func=cmd_export)


def cmd_train(args) -> int:
    from fdrl.config import load_config
    from fdrl.training.full import train_full

    from fdrl.training import distributed as D

    t0 = time.time()
    cfg = load_config(args.config, args.overrides)
    D.init_from_env(cfg.train.device)  # a no-op outside torchrun
    try:
        res = train_full(cfg, out=args.out, progress=not args.quiet)
        main_rank = D.is_main()
    finally:
        D.shutdown()
    if not main_rank:
        return 0
    v = res.val
    print(f"{cfg.model_name} trained on {res.n_train} utterances ({res.n_val} for validation), "
          f"best epoch {res.best_epoch} of {res.epochs_run}: validation WAR "
          f"{100 * v['war']:.2f} %  UAR {100 * v['uar']:.2f} %  ({time.time() - t0:.0f} s)")
    print(f"bundle: {res.bundle}")
    return 0


def cmd_export(args) -> int:
    from fdrl.inference.bundle import export_fold

    out = export_fold(args.run_dir, args.fold, args.out)
    print(f"bundle: {out}")
    return 0
