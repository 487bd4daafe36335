"""One benchmark command, one report: real-data accuracy against classical references
(and the paper), speed against plain loops.

Runs the suites of :mod:`benchmarks.suites` on the shared data (``../shared/data`` next
to the repository; ``--data`` overrides) and writes

* ``BENCHMARKS.md`` at the repository root (atomically; rewritten after every suite, so
  an interrupted run still leaves a report of what finished), and
* the raw figures, ``benchmarks/results/<date>-<quick|full>.json``.

Run folders (cross-validation runs, comparisons, ablations) go under
``--out/<time>-<mode>/``, the feature cache under ``--out/cache`` (shared by all
invocations; keyed by content). A suite whose data folder is absent is skipped with the
reason in the report; a suite that fails has its error recorded and the others still run.

Usage::

    python benchmarks/run.py [--quick] [--suites iemocap,emodb,...] [--out DIR] [--data DIR]
    python benchmarks/run.py --resume benchmarks/runs/<time>-full   # continue a stopped run
    python benchmarks/run.py --list
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "src"):  # `python benchmarks/run.py` from a plain checkout
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks import suites  # noqa: E402
from benchmarks.suites.common import Context, Skip, SuiteResult, Target, machine  # noqa: E402
from benchmarks.suites.report import render  # noqa: E402

log = logging.getLogger("benchmarks")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="subsampled run of minutes (fewer folds and epochs, limits)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the harness's smoke test
    ap.add_argument("--suites", help=f"comma-separated suites (default: all): {', '.join(suites.SUITES)}")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs",
                    help="parent of the run folders and the feature cache (default benchmarks/runs)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="the shared data folder (default ../shared/data next to the repository)")
    ap.add_argument("--resume", type=Path, metavar="DIR",
                    help="continue an invocation folder, with the same flags as its first run "
                         "(finished runs whose settings are unchanged are kept)")
    ap.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md",
                    help="where the report goes (default BENCHMARKS.md at the repository root)")
    ap.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results",
                    help="folder of the raw JSON (default benchmarks/results)")
    ap.add_argument("--threads", type=int,
                    help="torch / OpenMP threads, here and in child processes (default: torch's "
                         "choice; 1 is much faster on a machine busy with other jobs)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run up to N accuracy suites at once, each in its own process (the "
                         "speed suites still run one at a time, alone, at the end); with 2 cores "
                         "use --jobs 2 --threads 1")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--list", action="store_true", help="list the suites and exit")
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                    help="rewrite the report from a run's raw JSON (e.g. after editing "
                         "benchmarks/analysis.md); runs nothing")
    return ap.parse_args(argv)


def selected(text: str | None) -> list[str]:
    if not text:
        return list(suites.SUITES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in suites.SUITES]
    if unknown or not names:
        raise SystemExit(f"--suites: unknown suite(s) {unknown or text!r}; known: "
                         f"{', '.join(suites.SUITES)}")
    return [n for n in suites.SUITES if n in names]  # report order


def run_suite(name: str, ctx: Context) -> SuiteResult:
    """Run one suite; a skip or a failure becomes its result instead of stopping the run."""
    module = suites.load(name)
    t0 = time.perf_counter()
    try:
        result = module.run(ctx)
    except Skip as exc:
        result = SuiteResult(name, module.TITLE, status="skipped", reason=str(exc),
                             settings=ctx.pick(module.SETTINGS))
    except Exception as exc:  # noqa: BLE001 - recorded, the other suites still run
        log.error("suite %s failed:\n%s", name, traceback.format_exc())
        result = SuiteResult(name, module.TITLE, status="error",
                             reason=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                             settings=ctx.pick(module.SETTINGS),
                             raw={"traceback": traceback.format_exc()[-6000:]})
    result.seconds = time.perf_counter() - t0
    return not_evaluated(result, module)


def not_evaluated(result: SuiteResult, module) -> SuiteResult:
    """A suite that did not finish: each of its targets is listed as not evaluated."""
    if result.status != "ok":
        result.targets = [Target(text, None, f"suite {result.status}", "—")
                          for text in getattr(module, "TARGETS", [])]
    return result


def _pool_worker(name: str, ctx: Context, threads: int | None) -> SuiteResult:
    """One suite in a worker process of ``--jobs`` (spawned: fresh interpreter)."""
    # force: a worker runs several suites in turn, each line names the current one
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(message)s",
                        datefmt="%H:%M:%S", force=True)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return run_suite(name, ctx)


def run_parallel(names: list[str], ctx: Context, jobs: int, threads: int | None, done) -> None:
    """Run ``names`` in ``jobs`` spawned processes; ``done(result)`` as each one finishes."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_pool_worker, n, ctx, threads): n for n in names}
        for fut in cf.as_completed(futures):
            name = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - the worker died (e.g. killed for memory)
                module = suites.load(name)
                result = not_evaluated(SuiteResult(
                    name, module.TITLE, status="error", settings=ctx.pick(module.SETTINGS),
                    reason=f"worker process failed: {type(exc).__name__}: {exc}"), module)
            done(result)


def write_outputs(meta: dict, results: list[SuiteResult], pending: list[str], report: Path,
                  json_path: Path) -> None:
    from fdrl.utils.io import write_json, write_text

    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, {**meta, "suites": [r.to_dict() for r in results], "pending": pending})
    report.parent.mkdir(parents=True, exist_ok=True)
    write_text(report, render(meta, results, pending))


def render_only(json_path: Path, report: Path) -> int:
    """Rewrite ``report`` from the raw JSON of a run (figures unchanged)."""
    import json

    from fdrl.utils.io import write_text

    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        results = [SuiteResult.from_dict(d) for d in data.pop("suites")]
        pending = data.pop("pending", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--render {json_path}: not a benchmark results file ({exc})") from None
    write_text(report, render(data, results, pending))
    print(f"report: {report} (from {json_path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name in suites.SUITES:
            print(f"{name:<14} {suites.load(name).TITLE}")
        return 0
    if args.render:
        return render_only(args.render, args.report)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.threads:
        import torch

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # inherited by the child processes
        torch.set_num_threads(args.threads)
    names = selected(args.suites)
    started = dt.datetime.now()
    out_root = args.out.resolve()
    if args.resume:
        out_dir = args.resume.resolve()
        if not out_dir.is_dir():
            raise SystemExit(f"--resume {out_dir}: no such folder")
    else:
        out_dir = out_root / f"{started:%Y%m%d-%H%M%S}-{mode}"
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(data_dir=args.data.resolve(), out_dir=out_dir, cache_dir=out_root / "cache",
                  mode=mode, progress=not args.quiet)
    from fdrl.training.runs import git_commit

    json_path = args.results_dir / f"{started:%Y-%m-%d}-{mode}.json"
    shown = ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    meta = {"command": shlex.join(shown), "mode": mode, "suites": names,
            "started": started.isoformat(timespec="seconds"), "finished": None,
            "git_commit": git_commit(REPO), "machine": machine(), "data_dir": str(ctx.data_dir),
            "out_dir": str(out_dir), "json": str(json_path), "seconds": None,
            "threads": args.threads}
    if args.jobs < 1:
        raise SystemExit(f"--jobs: expected a positive number, got {args.jobs}")
    meta["jobs"] = args.jobs
    log.info("benchmarks (%s): %s -> %s", mode, ", ".join(names), out_dir)
    results: list[SuiteResult] = []
    t0 = time.perf_counter()

    def done(r: SuiteResult) -> None:
        results.append(r)
        results.sort(key=lambda x: names.index(x.name))  # report order
        log.info("suite %s: %s (%.0f s)%s", r.name, r.status, r.seconds,
                 f": {r.reason}" if r.reason else "")
        meta["seconds"] = time.perf_counter() - t0
        finished = {x.name for x in results}
        write_outputs(meta, results, [n for n in names if n not in finished], args.report, json_path)

    try:
        parallel = [n for n in names if n not in suites.SPEED] if args.jobs > 1 else []
        if parallel:
            log.info("accuracy suites in %d processes: %s", args.jobs, ", ".join(parallel))
            run_parallel(parallel, ctx, args.jobs, args.threads, done)
        rest = [n for n in names if n not in parallel]
        for k, name in enumerate(rest):
            log.info("[%d/%d] suite %s", len(parallel) + k + 1, len(names), name)
            done(run_suite(name, ctx))
    except KeyboardInterrupt:
        meta["seconds"] = time.perf_counter() - t0
        done = {r.name for r in results}
        write_outputs(meta, results, [n for n in names if n not in done], args.report, json_path)
        log.error("interrupted; the report holds the finished suites (continue with --resume %s)",
                  out_dir)
        return 130
    meta.update(finished=dt.datetime.now().isoformat(timespec="seconds"),
                seconds=time.perf_counter() - t0, load_average_end=round(os.getloadavg()[0], 2))
    write_outputs(meta, results, [], args.report, json_path)
    print(f"report: {args.report}\nraw results: {json_path}\nrun folders: {out_dir}")
    for r in results:
        print(f"  {r.name:<14} {r.status:<8} {r.seconds:8.1f} s  " + "; ".join(
            f"{'met' if t.met else 'NOT met' if t.met is False else 'n/a'}: {t.text}" for t in r.targets))
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
