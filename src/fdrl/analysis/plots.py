"""Figures of a run: Fig. 3a (t-SNE of S_a, S_t, P_a, P_t), Fig. 3b (per-class S
centroids), confusion matrices, learning curves.

Each ``plot_*`` draws on a fresh :class:`matplotlib.figure.Figure` (the Agg canvas;
no pyplot, so the global backend of a notebook or GUI is left alone) and writes the
PNG atomically. The numbers behind a figure come from the ``*_points`` /
``*_projection`` helpers, which the report writes next to the PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fdrl.utils.io import atomic_path

#: representation types of Fig. 3a, in legend order, with their colours
TYPES = ("S_a", "S_t", "P_a", "P_t")
TYPE_COLOURS = {"S_a": "tab:blue", "S_t": "tab:cyan", "P_a": "tab:red", "P_t": "tab:orange"}
TYPE_LABELS = {"S_a": "shared speech S_a", "S_t": "shared text S_t",
               "P_a": "private speech P_a", "P_t": "private text P_t"}


def class_colour(c: int):
    """Colour of class (or fold) ``c``: Dark2, so emotions never share the type colours."""
    from matplotlib import colormaps

    return colormaps["Dark2"](c % 8)


def save_figure(fig: Figure, png: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically (complete or absent)."""
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)  # layout="constrained" fits the labels
    return png


# -- Fig. 3a ---------------------------------------------------------------------------

def tsne_points(reps: Mapping[str, np.ndarray], max_points: int = 1500, seed: int = 0) -> dict:
    """t-SNE of the four representations of (a seeded subset of) the test utterances.

    Parameters
    ----------
    reps : ``emb_S_a, emb_S_t, emb_P_a, emb_P_t`` (N, d), ``label`` (N,), ``utt_id`` (N,).
    max_points : at most this many points in all (max_points // 4 utterances, the same
        utterances for all four types).

    Returns
    -------
    {"xy": (M, 2), "kind": (M,) type name, "label": (M,) class index, "utt_id": (M,)}
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(reps["label"])
    n_utt = max(2, min(n, max_points // len(TYPES)))
    keep = np.sort(np.random.default_rng(seed).choice(n, n_utt, replace=False))
    X = np.concatenate([np.asarray(reps[f"emb_{t}"], dtype=np.float32)[keep] for t in TYPES])  # (4n, d)
    perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
    # one thread: reproducible, and at <= a few thousand points OpenMP's spin-waiting on a
    # busy machine costs more than it gains (measured 3-10x slower on 2 loaded cores)
    with threadpool_limits(1):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(X)                                        # (4n, 2)
    utt = np.asarray(reps["utt_id"])[keep] if "utt_id" in reps else keep.astype(str)
    return {"xy": xy, "kind": np.repeat(np.array(TYPES), len(keep)),
            "label": np.tile(np.asarray(reps["label"])[keep], len(TYPES)),
            "utt_id": np.tile(utt, len(TYPES))}


def plot_tsne(panels: Sequence[tuple[str, dict]], classes: Sequence[str], png: str | Path) -> Path:
    """One row per run: points coloured by representation type (left) and by emotion (right)."""
    fig = Figure(figsize=(11, 4.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for row, (title, pts) in zip(axes, panels):
        for t in TYPES:
            m = pts["kind"] == t
            row[0].scatter(*pts["xy"][m].T, s=7, alpha=0.7, color=TYPE_COLOURS[t], label=TYPE_LABELS[t])
        for c, name in enumerate(classes):
            m = pts["label"] == c
            row[1].scatter(*pts["xy"][m].T, s=7, alpha=0.7, color=class_colour(c), label=name)
        row[0].set_title(f"{title}\nby representation type", fontsize=10)
        row[1].set_title(f"{title}\nby emotion", fontsize=10)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(fontsize=8, markerscale=2, loc="best")
    fig.suptitle("Fig. 3a: t-SNE of test-set representations", fontsize=12)
    return save_figure(fig, png)


# -- Fig. 3b ---------------------------------------------------------------------------

def centroid_projection(reps: Mapping[str, np.ndarray]) -> dict:
    """PCA (2-D) fitted on this run's shared rows S_a ∪ S_t; samples and per-class centroids.

    Each run gets its own PCA: two models' spaces share no coordinates, so one
    projection fitted on both would mix unrelated axes.

    Returns
    -------
    {"xy_a", "xy_t": (N, 2) projected S_a / S_t, "label": (N,),
     "classes": (K,) class indices present, "cent_a", "cent_t": (K, 2), "explained": (2,)}
    """
    from sklearn.decomposition import PCA

    S_a = np.asarray(reps["emb_S_a"], dtype=np.float64)
    S_t = np.asarray(reps["emb_S_t"], dtype=np.float64)
    y = np.asarray(reps["label"])
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate([S_a, S_t]))  # fitted on (2N, d)
    xy_a, xy_t = pca.transform(S_a), pca.transform(S_t)                          # (N, 2) each
    present = np.unique(y)
    return {"xy_a": xy_a, "xy_t": xy_t, "label": y, "classes": present,
            # PCA is affine, so the projected centroid is the centroid of the projections
            "cent_a": np.stack([xy_a[y == c].mean(axis=0) for c in present]),  # (K, 2)
            "cent_t": np.stack([xy_t[y == c].mean(axis=0) for c in present]),  # (K, 2)
            "explained": pca.explained_variance_ratio_}


def plot_centroids(panels: Sequence[tuple[str, dict]], classes: Sequence[str], png: str | Path) -> Path:
    """One panel per run: S_a (circles) and S_t (triangles) samples faintly, class centroids
    large, a line joining the same class's speech and text centroids."""
    fig = Figure(figsize=(5.6 * len(panels), 5.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, proj) in zip(axes, panels):
        y = proj["label"]
        for k, c in enumerate(proj["classes"]):
            col = class_colour(int(c))
            m = y == c
            ax.scatter(*proj["xy_a"][m].T, s=5, alpha=0.15, color=col, marker="o")
            ax.scatter(*proj["xy_t"][m].T, s=5, alpha=0.15, color=col, marker="^")
            (xa, ya), (xt, yt) = proj["cent_a"][k], proj["cent_t"][k]
            ax.plot([xa, xt], [ya, yt], color=col, lw=2)
            ax.scatter([xa], [ya], s=110, color=col, marker="o", edgecolor="black",
                       label=f"{classes[int(c)]}")
            ax.scatter([xt], [yt], s=130, color=col, marker="^", edgecolor="black")
        ev = proj["explained"]
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f} % of S variance)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f} %)")
        ax.set_title(title, fontsize=10)
        ax.legend(title="class (○ speech, △ text)", fontsize=8, title_fontsize=8)
    fig.suptitle("Fig. 3b: per-class centroids of S_a and S_t (PCA of S)", fontsize=12)
    return save_figure(fig, png)


# -- confusion matrices ------------------------------------------------------------------

def row_normalise(cm) -> np.ndarray:
    """(C, C) counts -> row fractions (rows without samples stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    s = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, s, out=np.zeros_like(cm), where=s > 0)


def plot_confusions(panels: Sequence[tuple[str, np.ndarray]], classes: Sequence[str],
                    png: str | Path) -> Path:
    """Row-normalised confusion matrices (rows = true class), the count in brackets."""
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    size = 1.0 + 0.7 * len(classes)
    fig = Figure(figsize=(size * cols + 1, (size + 0.9) * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, cm) in zip(axes, panels):
        cm = np.asarray(cm)
        frac = row_normalise(cm)
        ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{100 * frac[i, j]:.0f}\n({cm[i, j]})", ha="center", va="center",
                        fontsize=7, color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=9)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Confusion matrices (% of each true class, count in brackets)", fontsize=11)
    return save_figure(fig, png)


# -- learning curves -----------------------------------------------------------------------

#: history.csv columns that are bookkeeping, not curves
NOT_CURVES = ("epoch", "seconds", "best_epoch")


def curve_quantities(histories: Mapping[str, list[dict]]) -> list[str]:
    """Numeric history columns present in any fold, in first-seen order."""
    keys: list[str] = []
    for rows in histories.values():
        for row in rows:
            keys += [k for k in row if k not in keys and k not in NOT_CURVES]
    return keys


def plot_learning_curves(histories: Mapping[str, list[dict]], png: str | Path,
                         ncols: int = 4) -> Path:
    """One subplot per quantity (loss terms, mu, lambda, validation metrics...), one line
    per fold; a dot marks each fold's selected epoch."""
    keys = curve_quantities(histories)
    rows = max(1, math.ceil(len(keys) / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for k, (fold, hist) in enumerate(histories.items()):
            pts = [(r["epoch"], r[key]) for r in hist if r.get(key) is not None]
            if not pts:
                continue
            ep, val = np.array(pts, dtype=float).T
            line = ax.plot(ep, val, lw=1.2, label=f"fold {fold}", color=class_colour(k))[0]
            best = hist[-1].get("best_epoch") if hist else None
            if best is not None and best in ep:
                ax.plot([best], [val[list(ep).index(best)]], "o", ms=4, color=line.get_color())
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if keys and histories:
        axes[0].legend(fontsize=7)
    fig.suptitle("Learning curves per fold (dot: selected epoch)", fontsize=11)
    return save_figure(fig, png)


def plot_diagnostics(per_fold: Mapping[str, Mapping[str, float]], png: str | Path,
                     descriptions: Mapping[str, str] | None = None) -> Path:
    """One bar group per diagnostic (fdrl.analysis.diagnostics), one bar per fold; the
    reference lines mark chance (0.5) for the probes and 0 for the UAR drops."""
    keys = [k for k in (descriptions or {}) if any(d.get(k) is not None for d in per_fold.values())]
    keys += sorted({k for d in per_fold.values() for k in d} - set(keys))
    ncols = 4
    rows = max(1, math.ceil(len(keys) / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, ncols, squeeze=False).ravel()
    folds = list(per_fold)
    for ax, key in zip(axes, keys):
        vals = [per_fold[f].get(key) for f in folds]
        ax.bar(range(len(folds)), [np.nan if v is None else v for v in vals],
               color=[class_colour(k) for k in range(len(folds))])
        ax.set_xticks(range(len(folds)), [str(f) for f in folds], fontsize=7)
        if key.startswith("probe_"):
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0, 1.05)
        elif key.startswith("drop_"):
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("Diagnostics per fold (validation rows, selected epoch)", fontsize=11)
    return save_figure(fig, png)
