"""Measures on synthetic data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from fdrl.analysis import measures as M


def _clouds(n=300, d=8, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n, d))
    b = rng.normal(0, 1, (n, d))
    b[:, 0] += shift
    return a, b


def test_modality_accuracy_is_chance_for_identical_distributions():
    a, b = _clouds(shift=0.0)
    assert M.modality_accuracy(a, b) == pytest.approx(0.5, abs=0.08)


def test_modality_accuracy_is_high_for_separated_modalities():
    a, b = _clouds(shift=6.0)
    assert M.modality_accuracy(a, b) > 0.97


def test_modality_accuracy_subsamples_and_checks_pairing():
    a, b = _clouds(n=500, shift=6.0)
    assert M.modality_accuracy(a, b, max_pairs=60) > 0.9
    with pytest.raises(ValueError, match="paired"):
        M.modality_accuracy(a, b[:10])


def test_silhouette_sign_follows_cluster_structure():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 50)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    clustered = centres[labels] + rng.normal(0, 0.5, (150, 2))
    assert M.silhouette_by_label(clustered, labels) > 0.8
    shuffled = rng.permutation(labels)  # labels unrelated to the geometry
    assert M.silhouette_by_label(clustered, shuffled) < 0.05
    assert M.silhouette_by_label(clustered, np.zeros(150)) is None  # one label: undefined


def test_centroid_cosine_distances_zero_when_same_and_one_when_orthogonal():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 40)
    base = np.where(labels[:, None] == 0, [5.0, 0.0], [0.0, 5.0]) + rng.normal(0, 0.1, (80, 2))
    same = M.centroid_cosine_distances(base, base + rng.normal(0, 0.1, (80, 2)), labels)
    assert all(v < 0.01 for v in same.values())
    rotated = base[:, ::-1]  # class 0 now points along y, class 1 along x: orthogonal centroids
    far = M.centroid_cosine_distances(base, rotated, labels)
    assert all(v > 0.95 for v in far.values())
    assert M.cosine_distance(np.zeros(2), np.ones(2)) == 1.0


def test_alignment_gap():
    a, b = _clouds(n=2000, shift=0.0, seed=3)
    assert M.alignment_gap(a, b) < 0.1
    a, b = _clouds(n=2000, shift=10.0, seed=3)
    # centres 10 apart, RMS spread sqrt(d) = sqrt(8)
    assert M.alignment_gap(a, b) == pytest.approx(10 / np.sqrt(8), rel=0.05)
    assert M.alignment_gap(np.ones((4, 2)), np.ones((4, 2))) == 0.0


def test_representation_measures_on_aligned_shared_and_distinct_private():
    rng = np.random.default_rng(4)
    n, d = 200, 6
    y = rng.integers(0, 4, n)
    emotion = rng.normal(0, 3, (4, d))[y]
    reps = {
        "emb_S_a": emotion + rng.normal(0, 1, (n, d)),        # same distribution for both
        "emb_S_t": emotion + rng.normal(0, 1, (n, d)),        # modalities: aligned
        "emb_P_a": rng.normal(0, 1, (n, d)) + 5,              # private spaces far apart
        "emb_P_t": rng.normal(0, 1, (n, d)) - 5,
        "label": y, "classes": np.array(["ang", "hap", "neu", "sad"]),
    }
    m = M.representation_measures(reps)
    assert m["n"] == n
    assert m["modality_acc_S"] < 0.65
    assert m["modality_acc_P"] > 0.97
    assert m["silhouette_S_emotion"] > 0.2
    assert m["centroid_cosine_S"] < 0.05
    assert set(m["centroid_cosine_S_per_class"]) == {"ang", "hap", "neu", "sad"}
    assert m["alignment_gap_S"] < 0.3 < 2.0 < m["alignment_gap_P"]
    agg = M.mean_over_folds([m, {**m, "modality_acc_S": m["modality_acc_S"] + 0.1}])
    assert agg["modality_acc_S"]["mean"] == pytest.approx(m["modality_acc_S"] + 0.05)
    assert agg["modality_acc_S"]["std"] == pytest.approx(0.05)
    with pytest.raises(KeyError, match="emb_P_t"):
        M.representation_measures({k: v for k, v in reps.items() if k != "emb_P_t"})
