"""``fdrl plot``: read finished run folders, draw the figures, measure what they show,
write everything with a ``report.md`` into a new figures folder.

Output folder (default ``RUN_DIR/figures``; an existing one is never overwritten,
``figures-2``, ``figures-3``... are used instead)::

    fig3a_tsne.png / .csv          t-SNE of S_a, S_t, P_a, P_t (run, and --compare)
    fig3b_centroids.png / .csv / .npz   per-class S centroids (run, and --mu0)
    confusion.png / .csv           per fold and summed, row-normalised
    learning_curves.png / .csv     every history.csv column per fold
    diagnostics.png / .csv         the folds' validation diagnostics (probes, norms, drops)
    measures.json                  modality probes, silhouette, centroid distances, gaps
    report.md                      results table, measures, the figures embedded

The figures use one fold's test set (``fold``, default the run's first fold): each
fold has its own model, so points of different folds do not share a space. The
measures are computed on every fold and reported as mean ± std over folds.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from fdrl.analysis import measures as M
from fdrl.analysis import plots as P
from fdrl.errors import RunError
from fdrl.utils.io import read_json, write_csv, write_json, write_npz, write_text

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """A finished (or partly finished) run folder."""

    path: Path
    role: str                  # "run", "compare" or "mu0"
    results: dict | None       # results.json (None while the run is unfinished)
    classes: list[str]
    folds: list[Path]          # folds/<group> with metrics.json, in fold order
    config: dict               # config.yaml as written by the run

    @property
    def name(self) -> str:
        return self.path.name

    def fold(self, group: str | None) -> Path:
        """The fold folder for test group ``group`` (None: the first fold)."""
        if group is None:
            return self.folds[0]
        for f in self.folds:
            if f.name == str(group):
                return f
        raise RunError(f"{self.path}: no finished fold '{group}' (have: "
                       f"{', '.join(f.name for f in self.folds)})")


def read_run(run_dir: str | Path, role: str = "run") -> RunInfo:
    """Read a run folder written by ``fdrl cv`` / ``fdrl ablate``."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise RunError(f"{path}: not a run folder (config.yaml missing)")
    folds = [p for p in (path / "folds").glob("*") if (p / "metrics.json").is_file()]
    folds.sort(key=lambda p: read_json(p / "metrics.json").get("fold", 0))
    if not folds:
        raise RunError(f"{path}: no finished fold (folds/*/metrics.json); nothing to plot")
    results = read_json(path / "results.json") if (path / "results.json").is_file() else None
    meta = read_json(path / "run.json") if (path / "run.json").is_file() else {}
    classes = (results or {}).get("classes") or meta.get("classes")
    if not classes:
        with np.load(folds[0] / "representations.npz") as z:
            classes = [str(c) for c in z["classes"]]
    config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    return RunInfo(path, role, results, list(classes), folds, config)


def fold_representations(fold_dir: Path) -> dict | None:
    """The arrays of ``representations.npz`` (None when the run did not save them)."""
    path = fold_dir / "representations.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def has_fdrl_representations(reps: dict | None) -> bool:
    return reps is not None and all(k in reps for k in M.REPRESENTATION_KEYS)


def read_history(fold_dir: Path) -> list[dict]:
    """``history.csv`` rows with numbers as floats (empty cells as None)."""
    path = fold_dir / "history.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out = {}
            for k, v in row.items():
                try:
                    out[k] = float(v) if v not in (None, "") else None
                except ValueError:
                    out[k] = None  # a non-numeric column is not a curve
            rows.append(out)
    return rows


def selected_mu(fold_dir: Path) -> float | None:
    """mu at the fold's selected epoch (the checkpoint's epoch)."""
    hist = read_history(fold_dir)
    if not hist or "mu" not in hist[-1]:
        return None
    best = hist[-1].get("best_epoch")
    row = next((r for r in hist if r.get("epoch") == best), hist[-1])
    return row.get("mu")


def fresh_dir(path: str | Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``... when it exists (never overwrite)."""
    path = Path(path)
    for n in range(1, 1000):
        cand = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            cand.mkdir(parents=True)
            return cand
        except FileExistsError:
            continue
    raise RunError(f"{path}: could not create a new figures folder")


def _csv(path: Path, header: list[str], rows) -> None:
    """A figure's numbers as CSV; ids and class names are spreadsheet-safe text."""
    write_csv(path, header, rows)


def run_measures(run: RunInfo, seed: int = 0) -> dict:
    """Measures per fold (folds with FDRL representations) and their mean ± std."""
    per_fold = {}
    for f in run.folds:
        reps = fold_representations(f)
        if has_fdrl_representations(reps):
            per_fold[f.name] = M.representation_measures(reps, seed=seed)
    return {"run_dir": str(run.path), "role": run.role, "per_fold": per_fold,
            "mean": M.mean_over_folds(list(per_fold.values())) if per_fold else None}


# -- the figures -----------------------------------------------------------------------

def _fig3a(runs: list[RunInfo], group, out: Path, max_points: int, seed: int) -> str | None:
    panels, rows = [], []
    for run in runs:
        fold = _same_fold(run, group)
        reps = fold_representations(fold)
        if not has_fdrl_representations(reps):
            log.warning("%s: no S/P representations in fold %s; Fig. 3a skips it", run.path, fold.name)
            continue
        pts = P.tsne_points(reps, max_points=max_points, seed=seed)
        title = {"run": "run", "compare": "compare"}[run.role] + f": {run.name} (fold {fold.name})"
        panels.append((title, pts))
        rows += [(run.name, run.role, fold.name, u, k, int(y), run.classes[int(y)], f"{x:.5f}", f"{yy:.5f}")
                 for u, k, y, (x, yy) in zip(pts["utt_id"], pts["kind"], pts["label"], pts["xy"])]
    if not panels:
        return None
    P.plot_tsne(panels, runs[0].classes, out / "fig3a_tsne.png")
    _csv(out / "fig3a_tsne.csv", ["run", "role", "fold", "utt_id", "type", "label", "class", "x", "y"], rows)
    return "fig3a_tsne.png"


def _same_fold(run: RunInfo, group) -> Path:
    """The fold with the main run's test group, else this run's first fold."""
    names = [f.name for f in run.folds]
    if group is not None and str(group) in names:
        return run.fold(group)
    if group is not None:
        log.warning("%s: no fold %s; using fold %s", run.path, group, names[0])
    return run.folds[0]


def _fig3b(runs: list[RunInfo], group, out: Path) -> str | None:
    panels, rows, arrays = [], [], {}
    for run in runs:
        fold = _same_fold(run, group)
        reps = fold_representations(fold)
        if not has_fdrl_representations(reps):
            log.warning("%s: no S representations in fold %s; Fig. 3b skips it", run.path, fold.name)
            continue
        proj = P.centroid_projection(reps)
        dists = M.centroid_cosine_distances(reps["emb_S_a"], reps["emb_S_t"], reps["label"])
        mu = selected_mu(fold)
        mu_text = "?" if mu is None else f"{mu:.2f}"
        kind = "μ = 0" if run.role == "mu0" else "μ ≠ 0"
        title = (f"{kind}: {run.name} (fold {fold.name})\nμ at selected epoch {mu_text}; "
                 f"mean centroid cos. distance {np.mean(list(dists.values())):.3f}")
        panels.append((title, proj))
        for k, c in enumerate(proj["classes"]):
            for mod, cent in (("speech", proj["cent_a"]), ("text", proj["cent_t"])):
                rows.append((run.name, run.role, fold.name, run.classes[int(c)], mod,
                             f"{cent[k, 0]:.5f}", f"{cent[k, 1]:.5f}", f"{dists[c]:.5f}"))
        arrays.update({f"{run.role}_{k}": v for k, v in proj.items()})
    if not panels:
        return None
    P.plot_centroids(panels, runs[0].classes, out / "fig3b_centroids.png")
    _csv(out / "fig3b_centroids.csv", ["run", "role", "fold", "class", "modality", "pc1", "pc2",
                                       "cosine_distance_speech_text"], rows)
    write_npz(out / "fig3b_centroids.npz", **arrays)
    return "fig3b_centroids.png"


def _confusions(run: RunInfo, out: Path) -> str:
    panels, rows = [], []
    for f in run.folds:
        m = read_json(f / "metrics.json")
        panels.append((f"fold {f.name} (n={m['test']['n']})", np.asarray(m["test"]["confusion"])))
    total = np.sum([cm for _, cm in panels], axis=0)
    panels.append((f"all folds summed (n={int(total.sum())})", total))
    for title, cm in panels:
        frac = P.row_normalise(cm)
        name = "sum" if title.startswith("all") else title.split()[1]
        for i, t in enumerate(run.classes):
            for j, p in enumerate(run.classes):
                rows.append((name, t, p, int(cm[i, j]), f"{frac[i, j]:.5f}"))
    P.plot_confusions(panels, run.classes, out / "confusion.png")
    _csv(out / "confusion.csv", ["fold", "true", "pred", "count", "row_fraction"], rows)
    return "confusion.png"


def _learning_curves(run: RunInfo, out: Path) -> str | None:
    histories = {f.name: read_history(f) for f in run.folds}
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    P.plot_learning_curves(histories, out / "learning_curves.png")
    keys = P.curve_quantities(histories)
    rows = [(fold, int(r["epoch"]), k, r[k]) for fold, hist in histories.items() for r in hist
            for k in keys if r.get(k) is not None]
    _csv(out / "learning_curves.csv", ["fold", "epoch", "quantity", "value"], rows)
    return "learning_curves.png"


def _diagnostics(run: RunInfo, out: Path) -> str | None:
    """The folds' validation diagnostics (metrics.json) as bars beside the curves."""
    from fdrl.analysis.diagnostics import DESCRIPTIONS

    per_fold = {f.name: read_json(f / "metrics.json").get("diagnostics") for f in run.folds}
    per_fold = {k: v for k, v in per_fold.items() if v}
    if not per_fold:
        return None
    P.plot_diagnostics(per_fold, out / "diagnostics.png", DESCRIPTIONS)
    _csv(out / "diagnostics.csv", ["fold", "diagnostic", "value"],
         [(fold, k, v) for fold, d in per_fold.items() for k, v in d.items()])
    return "diagnostics.png"


# -- report ------------------------------------------------------------------------------

def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _ms(d: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "—"
    if d.get("n_folds") == 1:  # a std over one fold says nothing
        return f"{scale * d['mean']:.{digits}f} (1 fold)"
    return f"{scale * d['mean']:.{digits}f} ± {scale * d['std']:.{digits}f}"


def _run_summary(run: RunInfo) -> dict:
    """WAR / UAR mean ± std over the finished folds."""
    if run.results:
        return {m: run.results[m] for m in ("war", "uar", "macro_f1")} | {"n_folds": run.results["n_folds"]}
    tests = [read_json(f / "metrics.json")["test"] for f in run.folds]
    return {m: {"mean": float(np.mean([t[m] for t in tests])), "std": float(np.std([t[m] for t in tests]))}
            for m in ("war", "uar", "macro_f1")} | {"n_folds": len(tests)}


def _model_line(run: RunInfo) -> str:
    model = run.config.get("model") or {}
    keys = ("alpha", "beta", "gamma", "use_global", "use_local", "use_modality_disc",
            "use_orthogonality", "use_predictor", "fusion_tokens", "mu_fixed")
    shown = ", ".join(f"{k}={model[k]}" for k in keys if k in model)
    return f"{model.get('name', '?')}" + (f" ({shown})" if shown else "")


def report_markdown(runs: list[RunInfo], measures: dict, figures: dict, group) -> str:
    main = runs[0]
    lines = [f"# Figures and measures: {main.name}", ""]
    roles = {"run": "run", "compare": "compare (Fig. 3a: without alignment + disparity)",
             "mu0": "μ = 0 (Fig. 3b)"}
    for run in runs:
        lines.append(f"- **{roles[run.role]}**: `{run.path}` — {_model_line(run)}")
    lines += ["", "## Results", ""]
    if main.results:
        r = main.results
        lines += [f"{r.get('model')} on {r.get('corpus')}, {r.get('protocol')}; WAR = accuracy, "
                  f"UAR = mean per-class recall (%), each fold's test group.", "",
                  "| fold | test group | n test | best epoch | WAR | UAR | macro F1 |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in r["folds"]:
            lines.append(f"| {f['fold']} | {f['test_group']} | {f['n_test']} | {f.get('best_epoch')} | "
                         f"{_pct(f['war'])} | {_pct(f['uar'])} | {_pct(f['macro_f1'])} |")
        lines.append("| **mean ± std** | | | | " + " | ".join(
            f"**{_ms(r[m], 100, 2)}**" for m in ("war", "uar", "macro_f1")) + " |")
    else:
        lines.append(f"(`{main.path}/results.json` missing: the run is unfinished; "
                     f"{len(main.folds)} finished folds are used below.)")
    if len(runs) > 1:
        lines += ["", "| run | role | folds | WAR | UAR | macro F1 |", "| --- | --- | --- | --- | --- | --- |"]
        for run in runs:
            s = _run_summary(run)
            lines.append(f"| {run.name} | {run.role} | {s['n_folds']} | " + " | ".join(
                _ms(s[m], 100, 2) for m in ("war", "uar", "macro_f1")) + " |")
    lines += ["", "## Measures", "",
              "Computed on each fold's test-set representations; mean ± std over folds. The "
              "modality probe is a logistic regression (5-fold cross-validation grouped by "
              "utterance) telling one modality from the other: 0.5 = cannot tell (aligned).", "",
              "| measure | what it shows | " + " | ".join(f"{run.role}: {run.name}" for run in runs) + " |",
              "| --- | --- | " + " | ".join("---" for _ in runs) + " |"]
    for key, desc in M.DESCRIPTIONS.items():
        cells = []
        for run in runs:
            m = measures[run.role]["mean"]
            cells.append(_ms(m[key]) if m else "n/a (no S/P representations)")
        lines.append(f"| {key} | {desc} | " + " | ".join(cells) + " |")
    sections = [
        ("fig3a", "Figure 3a: t-SNE of S_a, S_t, P_a, P_t",
         f"Test set of fold {group}. Aligned shared spaces put S_a and S_t in one cloud; "
         f"distinct private spaces keep P_a and P_t apart."),
        ("fig3b", "Figure 3b: per-class centroids of S_a and S_t",
         "PCA of each run's shared rows; a short line = the class's speech and text centroids "
         "agree (fine-grained alignment)."),
        ("confusion", "Confusion matrices", "Rows = true class, % of the row, count in brackets."),
        ("curves", "Learning curves", "One line per fold; the dot marks the selected epoch."),
        ("diagnostics", "Diagnostics",
         "Per fold, on the validation rows at the selected epoch: fresh modality probes "
         "(0.5 = aligned), norms, and the UAR lost when S or P is replaced by its training "
         "mean (fdrl.analysis.diagnostics)."),
    ]
    for key, title, text in sections:
        lines += ["", f"## {title}", ""]
        if figures.get(key):
            stem = Path(figures[key]).stem
            lines += [text, "", f"![{title}]({figures[key]})", "",
                      f"Numbers: `{stem}.csv`" + (" and `fig3b_centroids.npz`" if key == "fig3b" else "") + "."]
        else:
            lines.append("Not drawn: the runs have no S/P representations "
                         "(run.save_representations=false or another model).")
    return "\n".join(lines) + "\n"


def make_report(run_dir: str | Path, out: str | Path | None = None, compare: str | Path | None = None,
                mu0: str | Path | None = None, fold: str | None = None, max_points: int = 1500,
                seed: int = 0, progress: bool = False) -> Path:
    """Draw every figure of ``run_dir`` (+ ``compare`` for Fig. 3a, ``mu0`` for Fig. 3b),
    measure them, write ``report.md``; returns the (new) output folder."""
    main = read_run(run_dir, "run")
    others = [read_run(p, role) for p, role in ((compare, "compare"), (mu0, "mu0")) if p]
    runs = [main, *others]
    for run in others:
        if run.classes != main.classes:
            raise RunError(f"{run.path}: classes {run.classes} differ from {main.path}'s {main.classes}")
    group = main.fold(fold).name
    out = fresh_dir(out or main.path / "figures")
    steps = {
        "fig3a": lambda: _fig3a([r for r in runs if r.role in ("run", "compare")], group, out,
                                max_points, seed),
        "fig3b": lambda: _fig3b([r for r in others if r.role == "mu0"] + [main], group, out),
        "confusion": lambda: _confusions(main, out),
        "curves": lambda: _learning_curves(main, out),
        "diagnostics": lambda: _diagnostics(main, out),
    }
    figures, measures = {}, {}
    with tqdm(total=len(steps) + len(runs), desc="plot", unit="step",
              disable=None if progress else True) as bar:
        for key, step in steps.items():
            bar.set_postfix_str(key)
            figures[key] = step()
            bar.update()
        for run in runs:
            bar.set_postfix_str(f"measures {run.role}")
            measures[run.role] = run_measures(run, seed=seed)
            bar.update()
    write_json(out / "measures.json", {"figure_fold": group, "descriptions": M.DESCRIPTIONS, **measures})
    write_text(out / "report.md", report_markdown(runs, measures, figures, group))
    return out


def runs_from_ablation(abl_dir: str | Path) -> dict:
    """Pick the runs for ``fdrl plot ABL_DIR``: the reference system's first seed, the
    first finished of S1 / no-align-disparity as compare, mu0 as the μ = 0 run."""
    abl_dir = Path(abl_dir)
    plan = read_json(abl_dir / "plan.json")
    seed = plan["seeds"][0]
    names = [s["name"] for s in plan["systems"]]

    def done(name):
        p = abl_dir / "runs" / f"{name}-seed{seed}"
        return p if name in names and (p / "results.json").is_file() else None

    ref = plan.get("reference") or names[0]
    if not done(ref):
        raise RunError(f"{abl_dir}: the reference system {ref} (seed {seed}) has not finished")
    compare = next((done(n) for n in ("S1", "no-align-disparity") if done(n)), None)
    return {"run_dir": done(ref), "compare": compare, "mu0": done("mu0")}
