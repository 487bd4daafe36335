"""Paired tests: Wilcoxon against scipy, the bootstrap against a known difference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from fdrl.analysis.stats import paired_bootstrap_uar, wilcoxon_paired


def test_wilcoxon_matches_scipy_and_handles_ties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.7, 0.02, 15), rng.normal(0.68, 0.02, 15)
    res = wilcoxon_paired(a, b)
    assert res["p"] == pytest.approx(wilcoxon(a, b).pvalue)
    assert res["n"] == 15 and res["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert wilcoxon_paired(a, a)["p"] == 1.0
    assert wilcoxon_paired([0.5], [0.4])["p"] is None
    with pytest.raises(ValueError):
        wilcoxon_paired([1, 2], [1])


def test_paired_bootstrap_sees_a_real_difference_and_not_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 2000)
    good = np.where(rng.random(2000) < 0.8, y, rng.integers(0, 4, 2000))
    bad = np.where(rng.random(2000) < 0.6, y, rng.integers(0, 4, 2000))
    res = paired_bootstrap_uar(y, good, bad, 4, n_boot=300)
    assert res["lo"] > 0 and res["lo"] <= res["delta"] <= res["hi"]
    same = paired_bootstrap_uar(y, good, good, 4, n_boot=50)
    assert same["delta"] == same["lo"] == same["hi"] == 0.0
