"""Cross-validation runs for the accuracy suites, through the toolkit's own APIs:
:mod:`fdrl.training.compare` (several models, same folds and features),
:mod:`fdrl.training.ablate` (ablation systems) and :func:`fdrl.training.cv.run_cv`.

Every folder lives under the suite's folder of this invocation. When a benchmark
invocation is continued (``run.py --resume DIR``), a comparison, ablation or run whose
plan / configuration equals the new one is continued (finished runs are kept);
anything else starts fresh next to it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .common import subset_metrics

log = logging.getLogger("benchmarks")


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _matching_folder(parent: Path, prefix: str, plan: dict) -> Path | None:
    """A folder ``parent/<prefix>-*`` whose plan.json holds the same plan (to continue)."""
    from fdrl.utils.io import read_json

    keys = ("base", "models", "sections", "seeds", "probe", "reference", "systems")
    want = {k: plan.get(k) for k in keys}
    for folder in sorted(parent.glob(f"{prefix}-*")):
        try:
            have = read_json(folder / "plan.json")
        except (OSError, ValueError):
            continue
        if _same({k: have.get(k) for k in keys}, want):
            return folder
    return None


def model_config(config: str, model: str, overrides: list[str]):
    """The validated config of ``model`` on ``config``, built as ``fdrl compare`` builds it:
    the YAML's model section carries over only the keys the model has (``d``, ``hidden``...),
    so e.g. FDRL's loss weights do not break a baseline's config. ``model.KEY=V``
    overrides apply to the model when it has KEY."""
    from fdrl.training.compare import make_plan, model_config as build

    plan = make_plan(config, [model], overrides, n_seeds=1)
    return build(plan, model, plan.seeds[0])


def compare_models(config: str, models: list[str], overrides: list[str], parent: Path,
                   progress: bool, probe: bool = False) -> dict:
    """Run (or continue) ``fdrl compare`` for ``models``; returns its summary dict."""
    from fdrl.training.compare import make_plan, run_compare, start_compare

    plan = make_plan(config, models, overrides, n_seeds=1, probe=probe)
    folder = _matching_folder(parent, "compare", plan.to_dict())
    if folder is None:
        folder = start_compare(plan, parent)
    else:
        log.info("continuing the comparison in %s", folder)
    return run_compare(folder, progress=progress)


def ablate(config: str, overrides: list[str], system_names: list[str], parent: Path,
           progress: bool) -> dict:
    """Run (or continue) ``fdrl ablate`` for the named systems; returns its summary dict."""
    from fdrl.config import load_config
    from fdrl.training.ablate import make_plan, run_ablation, start_ablation
    from fdrl.training.systems import load_systems

    model = load_config(config, overrides).model_name
    systems = load_systems().select(list(system_names), model)
    plan = make_plan(config, overrides, systems, n_seeds=1)
    folder = _matching_folder(parent, "ablation", plan.to_dict())
    if folder is None:
        folder = start_ablation(plan, parent)
    else:
        log.info("continuing the ablation in %s", folder)
    return run_ablation(folder, progress=progress)


def single_run(cfg, run_dir: Path, prep=None, progress: bool = True) -> tuple[Path, dict]:
    """``run_cv`` into ``run_dir``: reused when finished with the same config, resumed when
    started with it, else a fresh folder (``run_dir``, or ``run_dir-2`` ... when taken)."""
    from fdrl.training.cv import load_run_config, run_cv
    from fdrl.utils.io import read_json

    for k in range(1, 100):
        cand = run_dir if k == 1 else run_dir.with_name(f"{run_dir.name}-{k}")
        if not cand.exists() or not any(cand.iterdir()):
            return run_cv(cfg, run_dir=cand, progress=progress, prep=prep)
        try:
            same = load_run_config(cand).sha256() == cfg.sha256()
        except Exception:  # a damaged or foreign folder: leave it alone
            same = False
        if not same:
            continue
        if (cand / "results.json").is_file():
            log.info("reusing the finished run %s", cand)
            return cand, read_json(cand / "results.json")
        log.info("continuing the run %s", cand)
        return run_cv(None, cand, resume=True, progress=progress, prep=prep)
    raise RuntimeError(f"{run_dir}: no free folder name")


def run_seconds(run_dir: Path) -> float | None:
    """Wall time of a finished run: config.yaml (written at the start) to results.json."""
    start, end = run_dir / "config.yaml", run_dir / "results.json"
    if not (start.is_file() and end.is_file()):
        return None
    return max(0.0, end.stat().st_mtime - start.stat().st_mtime)


def model_row(label: str, run_dir: Path, results: dict, classes: list[str],
              subsets: dict[str, set]) -> dict:
    """The figures of one finished run: all utterances and each subset, plus its time."""
    return {"label": label, "run_dir": str(run_dir),
            "war": results["war"], "uar": results["uar"], "macro_f1": results["macro_f1"],
            "n_folds": results["n_folds"], "seconds": run_seconds(run_dir),
            "subsets": {n: subset_metrics(run_dir, keep, classes) for n, keep in subsets.items()}}


def compare_rows(summary: dict, classes: list[str], subsets: dict[str, set]) -> dict[str, dict]:
    """model -> :func:`model_row` for every finished model of a comparison."""
    from fdrl.utils.io import read_json

    out = {}
    cmp_dir = Path(summary["compare_dir"])
    for m in summary["models"]:
        done = [r for r in m["runs"] if r["status"] == "done"]
        if not done:
            continue
        rd = cmp_dir / done[0]["run_dir"]
        out[m["model"]] = model_row(m["model"], rd, read_json(rd / "results.json"), classes, subsets)
    return out


def ablation_rows(summary: dict, classes: list[str], subsets: dict[str, set]) -> dict[str, dict]:
    """system -> :func:`model_row` (plus description and the paper's figures)."""
    from fdrl.utils.io import read_json

    out = {}
    abl_dir = Path(summary["ablation_dir"])
    for s in summary["systems"]:
        done = [r for r in s["runs"] if r["status"] == "done"]
        if not done:
            continue
        rd = abl_dir / done[0]["run_dir"]
        row = model_row(s["system"], rd, read_json(rd / "results.json"), classes, subsets)
        row.update({"description": s["description"], "paper": s.get("paper"),
                    "paper_setting": s.get("paper_setting")})
        out[s["system"]] = row
    return out
