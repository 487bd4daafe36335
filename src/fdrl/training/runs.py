"""Run folders: created fresh (never overwritten), described (config, versions,
commit), and summarised (results.json / results.md from per-fold metrics)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from fdrl import __version__
from fdrl.errors import RunError
from fdrl.metrics import mean_std
from fdrl.utils.io import read_json, write_json, write_text

RESULT_METRICS = ("war", "uar", "macro_f1", "weighted_f1")


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create ``out_dir/<name>-<YYYYmmdd-HHMMSS>`` (a suffix -2, -3... if taken)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out / f"{name}-{stamp}"
    for n in range(1, 1000):
        cand = base if n == 1 else Path(f"{base}-{n}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise RunError(f"{out}: could not create a new run folder for '{name}'")


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the toolkit's source checkout (None when not a git checkout)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Package versions, platform and commit, recorded with every run."""
    versions = {}
    for pkg in ("torch", "transformers", "numpy", "scikit-learn", "soundfile", "librosa",
                "opensmile", "safetensors"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["fdrl"] = __version__
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def fold_dirs(run_dir: Path) -> list[Path]:
    return sorted((p for p in (run_dir / "folds").glob("*") if (p / "metrics.json").is_file()),
                  key=lambda p: read_json(p / "metrics.json").get("fold", 0))


def aggregate(run_dir: str | Path, fold_metrics: list[dict] | None = None,
              extra: dict | None = None) -> dict:
    """Write ``results.json`` and ``results.md`` from the folds' ``metrics.json``."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    folds = fold_metrics if fold_metrics is not None else [read_json(p / "metrics.json")
                                                         for p in fold_dirs(run_dir)]
    if not folds:
        raise RunError(f"{run_dir}: no finished folds (folds/*/metrics.json) to summarise")
    results = {
        "protocol": meta.get("protocol"),
        "model": meta.get("model"),
        "corpus": meta.get("corpus"),
        "classes": meta.get("classes"),
        "n_folds": len(folds),
        **{m: mean_std([f["test"][m] for f in folds]) for m in RESULT_METRICS},
        "folds": [{
            "fold": f["fold"], "test_group": f["test_group"], "n_train": f.get("n_train"),
            "n_val": f.get("n_val"), "n_test": f["test"]["n"], "best_epoch": f.get("best_epoch"),
            **{m: f["test"][m] for m in RESULT_METRICS},
            "val_uar": f.get("val", {}).get("uar"),
            "confusion": f["test"]["confusion"],
        } for f in folds],
        "confusion_sum": np.sum([f["test"]["confusion"] for f in folds], axis=0).tolist(),
        "config_sha256": meta.get("config_sha256"),
        "git_commit": meta.get("environment", {}).get("git_commit"),
        "environment": meta.get("environment"),
    }
    results.update(extra or {})
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "results.md", results_markdown(results, run_dir))
    return results


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def results_markdown(results: dict, run_dir: Path | None = None) -> str:
    lines = []
    title = f"# Results: {results.get('model')} on {results.get('corpus')}"
    lines += [title, "", f"Protocol: {results.get('protocol')}; folds: {results['n_folds']}; "
              f"classes: {', '.join(results.get('classes') or [])}.",
              "Metrics on each fold's test group, the model chosen on validation data carved "
              "from the training part only. WAR = accuracy, UAR = mean per-class recall (%).", "",
              "| fold | test group | n test | best epoch | WAR | UAR | macro F1 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in results["folds"]:
        lines.append(f"| {f['fold']} | {f['test_group']} | {f['n_test']} | {f.get('best_epoch')} | "
                     f"{_pct(f['war'])} | {_pct(f['uar'])} | {_pct(f['macro_f1'])} |")
    ms = {m: results[m] for m in ("war", "uar", "macro_f1")}
    lines.append("| **mean ± std** | | | | " + " | ".join(
        f"**{_pct(ms[m]['mean'])} ± {_pct(ms[m]['std'])}**" for m in ("war", "uar", "macro_f1")) + " |")
    lines += ["", f"config sha256: `{results.get('config_sha256')}`  ", f"git commit: `{results.get('git_commit')}`"]
    return "\n".join(lines) + "\n"


def format_table(results: dict) -> str:
    """Plain-text per-fold table for the terminal."""
    rows = [f"{'fold':>4}  {'test group':>12}  {'n':>5}  {'WAR %':>7}  {'UAR %':>7}"]
    for f in results["folds"]:
        rows.append(f"{f['fold']:>4}  {str(f['test_group']):>12}  {f['n_test']:>5}  "
                    f"{_pct(f['war']):>7}  {_pct(f['uar']):>7}")
    w, u = results["war"], results["uar"]
    rows.append(f"{'mean':>4}  {'':>12}  {'':>5}  {_pct(w['mean']):>7}  {_pct(u['mean']):>7}")
    rows.append(f"{'std':>4}  {'':>12}  {'':>5}  {_pct(w['std']):>7}  {_pct(u['std']):>7}")
    return "\n".join(rows)
