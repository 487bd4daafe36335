"""Classification metrics, named explicitly.

``war`` (weighted average recall) is plain accuracy; ``uar`` (unweighted average
recall) is the mean of per-class recalls. Both are computed from the confusion
matrix, so classes absent from ``y_true`` are handled the way scikit-learn's
``balanced_accuracy_score`` handles them (ignored in the mean) — see the tests.
"""

from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) counts; rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def war(y_true, y_pred) -> float:
    """Weighted average recall = accuracy."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == np.asarray(y_pred)))


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """(C,) recall per class; NaN for classes with no true samples."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def uar(y_true, y_pred, num_classes: int | None = None) -> float:
    """Unweighted average recall: mean recall over classes present in ``y_true``."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    c = num_classes or int(max(np.max(y_true), np.max(y_pred)) + 1)
    return float(np.nanmean(per_class_recall(confusion(y_true, y_pred, c))))


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(float)
    precision_den = cm.sum(axis=0)
    recall_den = cm.sum(axis=1)
    den = precision_den + recall_den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred``
    (scikit-learn's ``f1_score(average='macro')`` over the observed labels)."""
    cm = confusion(y_true, y_pred, num_classes)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(np.mean(f1_per_class(cm)[present])) if present.any() else float("nan")


def weighted_f1(y_true, y_pred, num_classes: int) -> float:
    """F1 averaged with class supports as weights (``average='weighted'``)."""
    cm = confusion(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    if support.sum() == 0:
        return float("nan")
    return float(np.sum(f1_per_class(cm) * support) / support.sum())


def summary(y_true, y_pred, classes: list[str]) -> dict:
    """Every metric the toolkit reports for one evaluation, JSON-ready."""
    c = len(classes)
    cm = confusion(y_true, y_pred, c)
    recall = per_class_recall(cm)
    return {
        "n": int(len(y_true)),
        "war": war(y_true, y_pred),
        "uar": uar(y_true, y_pred, c),
        "macro_f1": macro_f1(y_true, y_pred, c),
        "weighted_f1": weighted_f1(y_true, y_pred, c),
        "per_class_recall": {k: (None if np.isnan(r) else float(r)) for k, r in zip(classes, recall)},
        "confusion": cm.tolist(),
    }


def mean_std(values) -> dict:
    """{"mean", "std"} over folds (population std, ddof=0, as in most SER papers)."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std())}
