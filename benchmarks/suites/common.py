"""Shared pieces of the benchmark suites: the run context, result records (tables and
targets), the classical reference, metrics on an utterance subset, child processes
measured for wall time and peak memory, and a description of the machine.

A suite returns a :class:`SuiteResult`; :mod:`benchmarks.run` turns the results into
``BENCHMARKS.md`` and the raw JSON. Every figure in a result is computed by the suite
in the same run, except where a row says where it was read from (e.g. the paper's
numbers from the toolkit's ablation systems file).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parents[2]
MODES = ("full", "quick", "tiny")


class Skip(Exception):
    """Raised by a suite that cannot run here (its data are absent); the message is the reason."""


# ----------------------------------------------------------------------------------
# Context and results


@dataclass
class Context:
    """What every suite gets.

    data_dir: the shared data folder (``../shared/data`` next to the repository).
    out_dir:  this invocation's folder for run folders and scratch files.
    cache_dir: the feature cache shared by all invocations (content-keyed, safe to reuse).
    mode:     "full", "quick" (< 10 min in all) or "tiny" (the harness's own smoke test).
    progress: show the toolkit's progress bars.
    """

    data_dir: Path
    out_dir: Path
    cache_dir: Path
    mode: str = "full"
    progress: bool = True

    def suite_dir(self, name: str) -> Path:
        path = self.out_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pick(self, settings: dict[str, dict]) -> dict:
        """The settings of this mode (``settings[mode]``)."""
        return dict(settings[self.mode])


@dataclass
class Table:
    """A Markdown table: a title, a header, rows of cells (already formatted) and a note."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Target:
    """One stated target and whether this run met it.

    met:      True / False, or None when it could not be evaluated (``measured`` says why).
    measured, versus: the two figures compared, as display strings ("61.2 % UAR").
    why:      default text for the "Why not met" paragraph (gap, likely causes); the
              lead edits it. Unused when met.
    """

    text: str
    met: bool | None
    measured: str
    versus: str
    why: str = ""


@dataclass
class SuiteResult:
    """Everything a suite reports."""

    name: str
    title: str
    status: str = "ok"                 # ok | skipped | error
    reason: str = ""                   # why skipped, or the error
    seconds: float | None = None
    settings: dict = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # the numbers behind the tables (JSON only)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SuiteResult":
        """The inverse of :meth:`to_dict` (re-rendering a report from its raw JSON)."""
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        d["targets"] = [Target(**t) for t in d.get("targets", [])]
        return cls(**d)


# ----------------------------------------------------------------------------------
# Formatting


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string ("—" for None)."""
    return "—" if x is None else f"{100 * x:.{digits}f}"


def mean_std_pct(st: dict | None) -> str:
    """``{"mean", "std"}`` fractions -> "61.2 ± 3.4"."""
    if not st or st.get("mean") is None:
        return "—"
    return f"{100 * st['mean']:.1f} ± {100 * (st.get('std') or 0.0):.1f}"


def seconds_str(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def points_target(text: str, ours: float | None, ours_label: str, ref: float | None,
                  ref_label: str, margin_points: float, hint: str, mode: str) -> Target:
    """Target "ours >= ref + margin" on fractions (UAR), reported in % and points."""
    if ours is None or ref is None:
        missing = " and ".join(label for label, v in ((ours_label, ours), (ref_label, ref)) if v is None)
        return Target(text, None, f"no figure for {missing}: see the suite's notes", "—")
    need = ref + margin_points / 100
    met = ours >= need - 1e-12
    gap = 100 * (need - ours)
    why = (f"{ours_label} reached {pct(ours)} % but the target needs {pct(need)} % "
           f"({ref_label} {pct(ref)} % + {margin_points:g}): short by {gap:.1f} points. {hint}")
    if mode != "full":
        why += (f" This was a {mode} run (fewer folds and epochs than the protocol): run the full "
                f"benchmark before concluding.")
    return Target(text, met, f"{ours_label} {pct(ours)} %", f"{ref_label} {pct(ref)} % "
                  f"+ {margin_points:g} = {pct(need)} %", why)


# ----------------------------------------------------------------------------------
# Classical reference and metrics


def fold_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    from fdrl import metrics

    return {"war": metrics.war(y_true, y_pred), "uar": metrics.uar(y_true, y_pred, num_classes),
            "macro_f1": metrics.macro_f1(y_true, y_pred, num_classes), "n": int(len(y_true))}


def summarise_folds(per_fold: list[dict]) -> dict:
    """Mean and std (ddof=0, as the toolkit's results.json) over folds of each metric."""
    out = {}
    for key in ("war", "uar", "macro_f1"):
        vals = [f[key] for f in per_fold if f.get(key) is not None]
        out[key] = ({"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals
                    else {"mean": None, "std": None})
    return out


def logreg_reference(x: np.ndarray, labels: np.ndarray, folds: list, num_classes: int,
                     utt_ids: list[str], subsets: dict[str, set] | None = None,
                     seed: int = 0) -> dict:
    """Standardised features + logistic regression (scikit-learn) on the given folds.

    The scaler and the classifier are fitted on each fold's whole training part
    (nothing is selected on validation data, so none is carved out) and scored once
    on the fold's test part.

    Parameters
    ----------
    x : (N, d) features in manifest order.
    labels : (N,) class indices.
    folds : :class:`fdrl.data.folds.Fold` objects (their ``train`` / ``test`` indices).
    num_classes : C.
    utt_ids : N utterance ids (for the subsets).
    subsets : name -> utterance ids; metrics are also reported on each subset of every
        fold's test part (e.g. improvised-only).

    Returns
    -------
    dict with ``folds`` (per-fold metrics), ``war`` / ``uar`` / ``macro_f1`` mean and std,
    and ``subsets[name]`` likewise.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    ids = np.asarray(utt_ids)
    per_fold, per_subset = [], {name: [] for name in subsets or {}}
    for fold in folds:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
        clf.fit(x[fold.train], labels[fold.train])
        pred = clf.predict(x[fold.test])  # (N_test,)
        truth = labels[fold.test]
        per_fold.append({"test_group": str(fold.test_group), **fold_metrics(truth, pred, num_classes)})
        for name, keep in (subsets or {}).items():
            mask = np.isin(ids[fold.test], list(keep))
            if mask.any():
                per_subset[name].append(fold_metrics(truth[mask], pred[mask], num_classes))
    return {"folds": per_fold, **summarise_folds(per_fold),
            "subsets": {n: summarise_folds(v) for n, v in per_subset.items()}}


def subset_metrics(run_dir: Path, keep: set[str], classes: list[str]) -> dict:
    """WAR / UAR / macro F1 of a finished CV run restricted to the utterances in ``keep``,
    computed per fold from ``folds/*/predictions.jsonl`` (no retraining), mean ± std."""
    index = {c: i for i, c in enumerate(classes)}
    per_fold = []
    for path in sorted(Path(run_dir).glob("folds/*/predictions.jsonl")):
        truth, pred = [], []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                if row["utt_id"] in keep:
                    truth.append(index[row["label"]])
                    pred.append(index[row["pred"]])
        if truth:
            per_fold.append(fold_metrics(np.array(truth), np.array(pred), len(classes)))
    return {**summarise_folds(per_fold), "n_folds": len(per_fold)}


def shown_overrides(overrides: list[str]) -> str:
    """The overrides that change what is computed (paths to data, cache and outputs left out)."""
    hidden = ("data.manifest=", "features.cache_dir=", "run.out_dir=", "run.tensorboard=")
    return " ".join(o for o in overrides if not o.startswith(hidden)) or "no changes"


def take_every(rows: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows spread evenly over ``rows`` (every k-th), order kept."""
    if not limit or len(rows) <= limit:
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


# ----------------------------------------------------------------------------------
# Child processes: wall time and peak memory of one measurement


@dataclass
class Measured:
    """A finished child process."""

    returncode: int
    seconds: float          # wall time
    peak_rss_mb: float      # the child's own peak resident set (ru_maxrss of wait4)
    output: str             # the tail of stdout + stderr


#: A small launcher: forks, execs the command, waits for it with ``os.wait4`` and writes
#: the command's own peak RSS (KiB) to the file named by its first argument. Needed
#: because Linux carries the peak RSS of the process that forks over ``execve``: a child
#: started straight from this (large) process would report at least our own peak.
_LAUNCHER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(cmd: list[str], timeout: float | None = None, env: dict | None = None,
                 cwd: Path | None = None, tail_chars: int = 4000) -> Measured:
    """Run ``cmd`` through :data:`_LAUNCHER` and return its exit status, wall time, its own
    peak RSS (``ru_maxrss`` of that one process; at least the launcher's ~10 MB) and the
    tail of its output. ``timeout`` kills it (status -9)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        with open(Path(tmp) / "out", "w+", encoding="utf-8", errors="replace") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(peak_file), *cmd],
                                    stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(cwd or REPO), start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the launcher and the command (same session)
                proc.wait()
            seconds = time.perf_counter() - t0
            out.seek(0)
            text = out.read()
        kib = float(peak_file.read_text()) if peak_file.is_file() else float("nan")
    return Measured(proc.returncode, seconds, kib / 1024, text[-tail_chars:])


def child_env() -> dict:
    """The environment for child processes: the package importable, offline models."""
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def python_script(path: Path, args: list[str], globals_: dict[str, str] | None = None) -> list[str]:
    """A command running the script at ``path`` with ``args``; ``globals_`` (name -> a
    Python expression) are set in the script's module before its ``main()`` runs (e.g.
    its ``DATA`` folder, for scripts that have no option for it)."""
    if not globals_:
        return [sys.executable, str(path), *args]
    sets = "".join(f"mod.{k} = {v}\n" for k, v in globals_.items())
    code = ("import importlib.util, sys\nfrom pathlib import Path\n"
            f"sys.argv = {[str(path), *args]!r}\n"
            f"spec = importlib.util.spec_from_file_location('bench_child', {str(path)!r})\n"
            "mod = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(mod)\n"
            f"{sets}mod.main()\n")
    return [sys.executable, "-c", code]


def check_child(m: Measured, what: str) -> None:
    if m.returncode != 0:
        last = "\n".join(m.output.strip().splitlines()[-15:])
        raise RuntimeError(f"{what} exited with status {m.returncode}:\n{last}")


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


# ----------------------------------------------------------------------------------
# The machine


def machine() -> dict:
    """Cores, RAM, CPU model (/proc/cpuinfo), versions, load average."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram_gib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
        ram_gib = round(kib / 1024 ** 2, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    from importlib import metadata

    versions = {}  # from the installed metadata: importing transformers takes seconds
    for key, dist in (("torch", "torch"), ("numpy", "numpy"), ("sklearn", "scikit-learn"),
                      ("transformers", "transformers")):
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return {"cores": os.cpu_count(), "usable_cores": affinity, "cpu": cpu, "ram_gib": ram_gib,
            "python": platform.python_version(), "platform": platform.platform(), **versions,
            "load_average_1min": round(os.getloadavg()[0], 2)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0
