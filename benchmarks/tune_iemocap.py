"""Validation-only hyperparameter search for FDRL and the baselines it is compared with
(issue 12): the same grid, i.e. the same budget, for every model.

Each trial is one leave-one-session-out fold of config ``iemocap_features`` on the
shared IEMOCAP features; its score is the **validation** UAR (one held-out speaker of
the training sessions, at the selected epoch), averaged over the tuning folds. The test
session's figures are never read here. Output: ``benchmarks/results/tune_iemocap.json``
with every trial and, per model, the chosen overrides (``chosen``), which
``benchmarks/fdrl_evidence.py --tuned`` applies (S0-S6 take FDRL's).

Usage::

    python benchmarks/tune_iemocap.py --jobs 2 [--folds 1,3] [--inputs pooled]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fdrl_evidence import REPO, prepare, run_job  # noqa: E402

log = logging.getLogger("tune")
MODELS = {"fdrl": "S0", "concat": "concat", "speech-only": "speech-only", "text-only": "text-only"}
GRID = {"train.lr": [3e-4, 1e-3], "model.dropout": [0.1, 0.2, 0.3]}
OUT = REPO / "benchmarks" / "results" / "tune_iemocap.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", default="1,3")
    ap.add_argument("--inputs", default="pooled")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "tune_iemocap")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    inputs = args.inputs.split(",")
    manifest = prepare(args.data, args.out, inputs, None)
    trials = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    jobs = [{"input": i, "system": system, "model": model, "fold": int(f), "seed": 0,
             "extra": [f"{k}={v}" for k, v in t.items()]}
            for i in inputs for model, system in MODELS.items() for t in trials
            for f in args.folds.split(",")]
    records = []
    import multiprocessing as mp

    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_job, j, str(manifest), str(args.out), None): j for j in jobs}
        for fut in as_completed(futs):
            j = futs[fut]
            rec = fut.result()
            records.append({"model": j["model"], "input": j["input"], "fold": j["fold"],
                            "overrides": j["extra"], "val_uar": rec["val_uar"],
                            "best_epoch": rec["best_epoch"], "seconds": rec["seconds"]})
            log.info("%s %s fold %d: val UAR %.4f", j["model"], j["extra"], j["fold"], rec["val_uar"])
    chosen, table = {}, {}
    for model in MODELS:
        by = {}
        for r in records:
            if r["model"] == model:
                by.setdefault(tuple(r["overrides"]), []).append(r["val_uar"])
        scores = {k: sum(v) / len(v) for k, v in by.items()}
        best = max(scores, key=scores.get)
        chosen[model] = list(best)
        table[model] = {" ".join(k): v for k, v in scores.items()}
    result = {"protocol": f"config iemocap_features, folds {args.folds} (validation = one held-out "
                          f"training speaker; test figures not read), inputs {args.inputs}, seed 0, "
                          f"{len(trials)} trials per model",
              "grid": GRID, "chosen": chosen, "mean_val_uar": table, "trials": records}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps({"chosen": chosen, "mean_val_uar": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
