"""Paired significance for comparisons of systems: pure functions of arrays.

- :func:`wilcoxon_paired`: Wilcoxon signed-rank test over paired per-(fold, seed) scores
  (scipy), two-sided.
- :func:`paired_bootstrap_uar`: the UAR difference of two systems on the *same*
  utterances with a percentile bootstrap confidence interval, resampling utterances
  (Koehn 2004; the usual test for one test set).
"""

from __future__ import annotations

import numpy as np

from fdrl import metrics


def wilcoxon_paired(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired scores ``a`` vs ``b`` (same order).

    Returns ``{"n", "mean_diff", "statistic", "p"}``; ``p`` is None when fewer than
    2 pairs differ (the test is undefined) and 1.0 when all pairs are equal.
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"wilcoxon_paired: paired scores expected, got {a.shape} and {b.shape}")
    d = a - b
    out = {"n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else None,
           "statistic": None, "p": None}
    nonzero = int(np.sum(d != 0))
    if len(d) and nonzero == 0:
        out["p"] = 1.0
    elif nonzero >= 2:
        res = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def paired_bootstrap_uar(labels, pred_a, pred_b, num_classes: int, n_boot: int = 1000,
                         seed: int = 0, level: float = 0.95) -> dict:
    """UAR(a) - UAR(b) on the same utterances and its bootstrap confidence interval.

    Parameters
    ----------
    labels, pred_a, pred_b : (N,) true labels and the two systems' predictions, row i
        of each for the same utterance (several seeds may be stacked as extra rows).
    n_boot : bootstrap resamples of the N rows (with replacement).

    Returns
    -------
    ``{"delta", "lo", "hi", "n", "n_boot"}``; the difference is significant at
    ``1 - level`` when the interval excludes 0.
    """
    y, a, b = (np.asarray(v) for v in (labels, pred_a, pred_b))
    if not (y.shape == a.shape == b.shape):
        raise ValueError("paired_bootstrap_uar: labels and predictions must have one shape")
    delta = metrics.uar(y, a, num_classes) - metrics.uar(y, b, num_classes)
    rng = np.random.default_rng(seed)
    n = len(y)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        boots[i] = metrics.uar(y[idx], a[idx], num_classes) - metrics.uar(y[idx], b[idx], num_classes)
    tail = (1.0 - level) / 2
    return {"delta": float(delta), "lo": float(np.quantile(boots, tail)),
            "hi": float(np.quantile(boots, 1 - tail)), "n": int(n), "n_boot": int(n_boot)}
