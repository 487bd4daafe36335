"""Numbers for what the figures show: is the shared space aligned, the private one
distinct, and does emotion structure the shared space?

Pure functions of arrays (numpy / scikit-learn), no files. The inputs are test-set
representations of one fold: ``X_a`` and ``X_b`` are paired row by row (row ``i`` of
both comes from utterance ``i``), e.g. ``S_a`` and ``S_t``.

- :func:`modality_accuracy`: a logistic-regression probe telling the two modalities
  apart. About 0.5 on S means aligned (the probe cannot tell), near 1.0 on P means
  the private spaces are distinct.
- :func:`silhouette_by_label`: silhouette of the rows by emotion label (-1..1).
- :func:`centroid_cosine_distances`: per class, cosine distance between the class's
  centroid in each modality (Fig. 3b: close = fine-grained alignment).
- :func:`alignment_gap`: distance between the two modality centroids relative to the
  within-modality spread (0 = same centre).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

#: keys of a representations.npz the FDRL measures need
REPRESENTATION_KEYS = ("emb_S_a", "emb_S_t", "emb_P_a", "emb_P_t", "label")


def _f64(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def _subsample(n: int, max_n: int | None, seed: int) -> np.ndarray:
    if max_n is None or n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False))


def modality_accuracy(X_a, X_b, n_splits: int = 5, seed: int = 0,
                      max_pairs: int | None = 2000) -> float:
    """Cross-validated accuracy of a logistic regression telling rows of ``X_a`` from ``X_b``.

    Parameters
    ----------
    X_a, X_b : (N, d) paired representations (row i of both from the same utterance).
    n_splits : folds of the cross-validation; grouped by utterance, so the two views
        of one utterance are never split between training and test.
    max_pairs : at most this many utterances (a random, seeded subset) for speed.

    Returns
    -------
    float in [0, 1]; 0.5 = chance (the two modalities are indistinguishable).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    X_a, X_b = _f64(X_a), _f64(X_b)
    if X_a.shape != X_b.shape:
        raise ValueError(f"modality_accuracy: paired inputs expected, got {X_a.shape} and {X_b.shape}")
    n = len(X_a)
    if n < 2:
        raise ValueError(f"modality_accuracy: need at least 2 rows, got {n}")
    keep = _subsample(n, max_pairs, seed)
    X = np.concatenate([X_a[keep], X_b[keep]])                      # (2n, d)
    y = np.concatenate([np.zeros(len(keep)), np.ones(len(keep))])  # (2n,) 0 = a, 1 = b
    groups = np.concatenate([keep, keep])                           # utterance id per row
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = GroupKFold(n_splits=min(n_splits, len(keep)))
    # one BLAS thread: these fits are tiny, and thread start-up / spin-waiting dominated
    # them (6x slower with 2 threads on a busy 2-core machine)
    with threadpool_limits(1):
        return float(np.mean(cross_val_score(probe, X, y, groups=groups, cv=cv)))


def silhouette_by_label(X, labels, metric: str = "euclidean", max_points: int | None = 3000,
                        seed: int = 0) -> float | None:
    """Silhouette score of ``X`` (N, d) clustered by ``labels`` (N,); None when undefined
    (fewer than 2 labels, or as many labels as rows)."""
    from sklearn.metrics import silhouette_score

    X, labels = _f64(X), np.asarray(labels)
    keep = _subsample(len(X), max_points, seed)
    X, labels = X[keep], labels[keep]
    k = len(np.unique(labels))
    if k < 2 or k >= len(X):
        return None
    return float(silhouette_score(X, labels, metric=metric))


def class_centroids(X, labels) -> dict:
    """{label: (d,) mean of the rows with that label}."""
    X, labels = _f64(X), np.asarray(labels)
    return {c: X[labels == c].mean(axis=0) for c in np.unique(labels)}


def cosine_distance(u, v) -> float:
    """1 - cos(u, v); 1.0 when either vector is zero."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    den = np.linalg.norm(u) * np.linalg.norm(v)
    return 1.0 if den == 0 else float(1.0 - np.dot(u, v) / den)


def centroid_cosine_distances(X_a, X_b, labels) -> dict:
    """{label: cosine distance between the label's centroid in X_a and in X_b}.

    X_a, X_b : (N, d) paired representations; labels : (N,) class of each row.
    """
    ca, cb = class_centroids(X_a, labels), class_centroids(X_b, labels)
    return {c: cosine_distance(ca[c], cb[c]) for c in ca}


def alignment_gap(X_a, X_b) -> float:
    """||mean(X_a) - mean(X_b)|| / spread, spread = RMS distance of a row to its own
    modality's mean (pooled over both). 0 = same centre; >> 1 = separate clouds."""
    X_a, X_b = _f64(X_a), _f64(X_b)
    ma, mb = X_a.mean(axis=0), X_b.mean(axis=0)
    spread = np.sqrt(0.5 * (np.mean(np.sum((X_a - ma) ** 2, axis=1))
                            + np.mean(np.sum((X_b - mb) ** 2, axis=1))))
    gap = float(np.linalg.norm(ma - mb))
    if spread == 0:
        return 0.0 if gap == 0 else float("inf")
    return gap / float(spread)


#: measure name -> what it shows (report tables)
DESCRIPTIONS = {
    "modality_acc_S": "probe accuracy S_a vs S_t (0.5 = aligned)",
    "modality_acc_P": "probe accuracy P_a vs P_t (1.0 = distinct)",
    "silhouette_S_emotion": "silhouette of S_a ∪ S_t by emotion (higher = emotions separate)",
    "centroid_cosine_S": "mean cosine distance of same-class S_a / S_t centroids (Fig. 3b; 0 = aligned)",
    "alignment_gap_S": "S_a–S_t centre distance / within-modality spread (0 = aligned)",
    "alignment_gap_P": "P_a–P_t centre distance / within-modality spread (large = distinct)",
}


def representation_measures(reps: Mapping[str, np.ndarray], seed: int = 0) -> dict:
    """Every measure above for one fold's ``representations.npz`` contents.

    ``reps`` needs ``emb_S_a, emb_S_t, emb_P_a, emb_P_t`` (N, d) and ``label`` (N,);
    ``classes`` (C,) names the per-class entries when present.
    """
    missing = [k for k in REPRESENTATION_KEYS if k not in reps]
    if missing:
        raise KeyError(f"representations lack {', '.join(missing)}")
    S_a, S_t, P_a, P_t = (reps[k] for k in REPRESENTATION_KEYS[:4])
    y = np.asarray(reps["label"])
    names = list(reps["classes"]) if "classes" in reps else None
    per_class = centroid_cosine_distances(S_a, S_t, y)
    return {
        "n": int(len(y)),
        "modality_acc_S": modality_accuracy(S_a, S_t, seed=seed),
        "modality_acc_P": modality_accuracy(P_a, P_t, seed=seed),
        "silhouette_S_emotion": silhouette_by_label(np.concatenate([S_a, S_t]),
                                                    np.concatenate([y, y]), seed=seed),
        "centroid_cosine_S": float(np.mean(list(per_class.values()))),
        "centroid_cosine_S_per_class": {(str(names[int(c)]) if names else str(c)): v
                                        for c, v in per_class.items()},
        "alignment_gap_S": alignment_gap(S_a, S_t),
        "alignment_gap_P": alignment_gap(P_a, P_t),
    }


def mean_over_folds(per_fold: list[dict]) -> dict:
    """{measure: {"mean", "std"}} over folds for every scalar measure (None skipped)."""
    out = {}
    for key in DESCRIPTIONS:
        vals = [f[key] for f in per_fold if f.get(key) is not None and np.isfinite(f[key])]
        out[key] = ({"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n_folds": len(vals)}
                    if vals else {"mean": None, "std": None, "n_folds": 0})
    return out
