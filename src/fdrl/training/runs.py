"""Run folders: created fresh (never overwritten), described (config, versions,
commit), summarised (results.json / results.md from per-fold metrics), and collected
(folds run as separate jobs, e.g. a cluster job array with ``fdrl cv --folds k``,
merged into one run folder by :func:`collect_runs`)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from fdrl import __version__
from fdrl.analysis.diagnostics import DESCRIPTIONS as DIAGNOSTIC_DESCRIPTIONS, mean_std_over_folds
from fdrl.errors import RunError
from fdrl.metrics import mean_std
from fdrl.utils.io import read_json, sha256_text, write_json, write_text

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


#: config keys that name where a run goes or which of its folds run, not what is computed;
#: runs that differ only in these are parts of one experiment
NOT_EXPERIMENT = (("cv", "folds"), ("run", "name"), ("run", "out_dir"), ("run", "tensorboard"),
                  ("features", "cache_dir"))


def experiment_dict(cfg) -> dict:
    """``cfg.to_dict()`` without the :data:`NOT_EXPERIMENT` keys."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else json.loads(json.dumps(cfg))
    for section, key in NOT_EXPERIMENT:
        d.get(section, {}).pop(key, None)
    return d


def experiment_sha256(cfg) -> str:
    """Hash of everything in a config that can change a fold's figures: the same for
    ``fdrl cv --folds 1`` and ``--folds 2`` of one experiment (see :func:`collect_runs`)."""
    return sha256_text(json.dumps(experiment_dict(cfg), sort_keys=True, default=str))


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
        "n_skipped": meta.get("n_skipped", 0),
        **{m: mean_std([f["test"][m] for f in folds]) for m in RESULT_METRICS},
        "folds": [{
            "fold": f["fold"], "test_group": f["test_group"], "n_train": f.get("n_train"),
            "n_val": f.get("n_val"), "n_test": f["test"]["n"], "best_epoch": f.get("best_epoch"),
            **{m: f["test"][m] for m in RESULT_METRICS},
            "val_uar": f.get("val", {}).get("uar"),
            "confusion": f["test"]["confusion"],
            **({"diagnostics": f["diagnostics"]} if f.get("diagnostics") else {}),
        } for f in folds],
        "confusion_sum": np.sum([f["test"]["confusion"] for f in folds], axis=0).tolist(),
        "config_sha256": meta.get("config_sha256"),
        "git_commit": meta.get("environment", {}).get("git_commit"),
        "environment": meta.get("environment"),
    }
    per_fold = [f["diagnostics"] for f in folds if f.get("diagnostics")]
    if per_fold:
        results["diagnostics"] = mean_std_over_folds(per_fold)
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
    if results.get("diagnostics"):
        lines += ["", "Diagnostics on each fold's validation rows at the selected epoch "
                  "(mean ± std over folds; `fdrl.analysis.diagnostics`):", "",
                  "| diagnostic | mean ± std | what it shows |", "| --- | --- | --- |"]
        for key, v in results["diagnostics"].items():
            val = "-" if v["mean"] is None else f"{v['mean']:.3f} ± {v['std']:.3f}"
            lines.append(f"| {key} | {val} | {DIAGNOSTIC_DESCRIPTIONS.get(key, '')} |")
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
    if results.get("diagnostics"):
        rows.append("diagnostics (validation rows, mean ± std over folds):")
        width = max(len(k) for k in results["diagnostics"])
        rows += [f"  {k:<{width}}  {v['mean']:.3f} ± {v['std']:.3f}"
                 for k, v in results["diagnostics"].items() if v["mean"] is not None]
    return "\n".join(rows)


# ----------------------------------------------------------------------------- collect


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("speech", "text", "identity"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(a: dict, b: dict, limit: int = 3) -> str:
    fa, fb = _flat(a), _flat(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if fa.get(k) != fb.get(k)]
    shown = ", ".join(f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _read_run(run_dir: Path) -> tuple[dict, dict]:
    """(run.json, experiment config dict) of a run folder, with RunErrors for damage."""
    import yaml

    from fdrl.config import from_dict, safe_load_bounded

    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found")
    for name in ("config.yaml", "run.json"):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir}: not a run folder ({name} missing)")
    try:
        meta = read_json(run_dir / "run.json")
        cfg = from_dict(safe_load_bounded((run_dir / "config.yaml").read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunError(f"{run_dir}: unreadable config.yaml or run.json ({type(exc).__name__})") from None
    meta.setdefault("experiment_sha256", experiment_sha256(cfg))  # runs from before the field
    return meta, cfg


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the file system allows (no extra disk;
    safe because every output is replaced by rename, never rewritten in place)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link,
                    ignore=shutil.ignore_patterns("resume.pt", ".*.tmp", ".fdrl.lock"))


def collect_runs(run_dirs: list[str | Path], out: str | Path | None = None) -> tuple[Path, dict]:
    """Merge the finished folds of several run folders of one experiment into a new one.

    For folds run as separate jobs (``fdrl cv --folds k`` per job). The runs must share
    the experiment (:func:`experiment_sha256`: their configs may differ only in
    ``cv.folds``, ``run.*`` and ``features.cache_dir``) and the corpus (classes and
    manifest fingerprint); a test group finished in two runs is an error.

    Parameters
    ----------
    run_dirs : the run folders (unfinished folds in them are ignored, with a warning).
    out : the new folder (must not exist, or be empty); default
        ``<parent of the first run>/<run.name>-collected-<time>``.

    Returns
    -------
    (the new run folder, its results dict). The folder holds config.yaml (``cv.folds``
    set to the collected test groups), run.json (``collected_from``), the fold folders
    (hard links or copies) and results.json / results.md. It is built in a hidden
    staging folder and renamed into place, so a failure leaves nothing behind.
    """
    import logging

    from fdrl.config import from_dict

    log = logging.getLogger(__name__)
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise RunError("fdrl collect: give at least one run folder")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise RunError("fdrl collect: the same run folder is given twice")
    runs = [(d, *_read_run(d)) for d in dirs]
    first_dir, first_meta, first_cfg = runs[0]
    for d, meta, cfg in runs[1:]:
        if meta["experiment_sha256"] != first_meta["experiment_sha256"]:
            raise RunError(f"{d}: config differs from {first_dir} "
                           f"({_config_diff(experiment_dict(first_cfg), experiment_dict(cfg))}); "
                           f"only folds of one experiment can be collected")
        for key in ("classes", "manifest_sha256", "protocol"):
            if meta.get(key) != first_meta.get(key):
                raise RunError(f"{d}: run.json '{key}' differs from {first_dir} "
                               f"({meta.get(key)!r} vs {first_meta.get(key)!r}); the runs did not "
                               f"use the same corpus and protocol")
    folds: dict[str, tuple[Path, Path]] = {}  # test group -> (run, fold folder)
    for d, _, _ in runs:
        finished = {p.name for p in fold_dirs(d)}
        for p in sorted((d / "folds").glob("*")):
            if p.name not in finished:
                log.warning("%s: fold %s is not finished (no metrics.json): left out", d, p.name)
        for p in fold_dirs(d):
            group = str(read_json(p / "metrics.json")["test_group"])
            if group in folds:
                raise RunError(f"test group {group} is finished in both {folds[group][0]} and {d}; "
                               f"collect each fold from one run only")
            folds[group] = (d, p)
    if not folds:
        raise RunError(f"{', '.join(map(str, dirs))}: no finished folds (folds/*/metrics.json) to collect")

    if out is None:
        out = first_dir.parent / f"{first_cfg.run.name}-collected-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out}: folder exists and is not empty; runs are never overwritten")
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = sorted(folds, key=lambda g: read_json(folds[g][1] / "metrics.json").get("fold", 0))
    cfg_data = first_cfg.to_dict()
    cfg_data["cv"]["folds"] = [int(g) if g.isdigit() else g for g in groups]
    cfg = from_dict(cfg_data)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for g in groups:
            _, fold_dir = folds[g]
            _link_or_copy_tree(fold_dir, stage / "folds" / fold_dir.name)
        write_text(stage / "config.yaml", cfg.to_yaml())
        skipped = {json.dumps(m.get("skipped", []), sort_keys=True) for _, m, _ in runs}
        if len(skipped) > 1:  # same manifest fingerprint, so this cannot differ; be loud if it does
            raise RunError("the runs skipped different utterances (run.json 'skipped')")
        write_json(stage / "run.json", {
            **first_meta, "config_sha256": cfg.sha256(), "experiment_sha256": experiment_sha256(cfg),
            "collected_from": [{"run": str(d.resolve()), "folds": [g for g in groups if folds[g][0] == d]}
                               for d, _, _ in runs],
            "collected_with": environment(),  # the runs' own environments stay in their folders
        })
        results = aggregate(stage)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out, results
