"""The representation diagnostics as pure functions: probes, norms, ablation drops."""

from __future__ import annotations

import numpy as np
import pytest

from fdrl.analysis.diagnostics import (DIAGNOSTIC_KEYS, ablation_drop, mean_norm,
                                       mean_std_over_folds, representation_diagnostics)

PARTS = {"S": ("S_a", "S_t"), "P": ("P_a", "P_t")}


def corpus(n: int = 200, d: int = 6, seed: int = 0):
    """y is carried by P_a only; S_a and S_t are the same noise (aligned); P_t is shifted."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    S = rng.normal(size=(n, d))
    reps = {"S_a": S + 0.01 * rng.normal(size=(n, d)), "S_t": S + 0.01 * rng.normal(size=(n, d)),
            "P_a": rng.normal(size=(n, d)) + 3.0 * y[:, None], "P_t": rng.normal(size=(n, d)) + 5.0}
    return reps, y


def classify(reps):
    """A head that reads the first dimension of P_a only."""
    score = reps["P_a"][:, 0] - 1.5
    return np.stack([-score, score], axis=1)


def test_ablation_drop_is_positive_only_for_the_part_the_head_uses():
    reps, y = corpus()
    means = {k: v.mean(0) for k, v in reps.items()}
    assert ablation_drop(reps, y, 2, {"P_a": means["P_a"], "P_t": means["P_t"]}, classify) > 0.3
    assert ablation_drop(reps, y, 2, {"S_a": means["S_a"], "S_t": means["S_t"]}, classify) == 0.0


def test_representation_diagnostics_keys_and_values():
    reps, y = corpus()
    means = {k: v.mean(0) for k, v in reps.items()}
    d = representation_diagnostics(reps, y, 2, means, PARTS, classify)
    assert set(d) == set(DIAGNOSTIC_KEYS)
    # a speaker-level offset between the modalities: the raw probe sees it, centred not
    spk = np.arange(len(y)) % 4
    shifted = dict(reps, S_a=reps["S_a"] + 2.0 * (spk == 1)[:, None])
    c = representation_diagnostics(shifted, y, 2, means, PARTS, classify, speakers=spk)
    assert c["probe_modality_S"] > 0.6 and c["probe_modality_S_speaker_centred"] < 0.65
    assert 0.3 <= d["probe_modality_S"] <= 0.65          # same noise in both: aligned
    assert d["probe_modality_P"] > 0.95                  # P_t is shifted: distinct
    assert d["norm_S"] == pytest.approx(mean_norm(reps["S_a"], reps["S_t"]))
    assert d["drop_P_uar"] > 0.3 and d["drop_S_uar"] == 0.0


def test_mean_norm_and_fold_summary():
    assert mean_norm(np.array([[3.0, 4.0]]), np.array([[0.0, 1.0]])) == pytest.approx(3.0)
    s = mean_std_over_folds([{"norm_S": 1.0, "drop_S_uar": None}, {"norm_S": 3.0, "drop_S_uar": 0.1}])
    assert s["norm_S"] == {"mean": 2.0, "std": 1.0, "n_folds": 2}
    assert s["drop_S_uar"]["n_folds"] == 1
