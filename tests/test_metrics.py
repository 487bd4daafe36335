import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from fdrl import metrics


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = 4
    y = rng.integers(0, c, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, c, 200))
    assert metrics.war(y, p) == pytest.approx(accuracy_score(y, p))
    assert metrics.uar(y, p, c) == pytest.approx(balanced_accuracy_score(y, p))
    assert metrics.macro_f1(y, p, c) == pytest.approx(f1_score(y, p, average="macro"))
    assert metrics.weighted_f1(y, p, c) == pytest.approx(f1_score(y, p, average="weighted"))
    np.testing.assert_array_equal(metrics.confusion(y, p, c), confusion_matrix(y, p, labels=range(c)))


def test_war_and_uar_differ_on_imbalanced_data():
    y = np.array([0] * 90 + [1] * 10)
    p = np.zeros(100, dtype=int)  # always the majority class
    assert metrics.war(y, p) == pytest.approx(0.9)
    assert metrics.uar(y, p, 2) == pytest.approx(0.5)


def test_uar_ignores_classes_absent_from_truth_like_sklearn():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 2, 1, 1])
    with pytest.warns(UserWarning):
        ref = balanced_accuracy_score(y, p)
    assert metrics.uar(y, p, 3) == pytest.approx(ref)


def test_summary_and_mean_std():
    s = metrics.summary([0, 1, 1], [0, 1, 0], ["a", "b"])
    assert s["confusion"] == [[1, 0], [1, 1]]
    assert s["per_class_recall"] == {"a": 1.0, "b": 0.5}
    ms = metrics.mean_std([0.5, 0.7])
    assert ms["mean"] == pytest.approx(0.6) and ms["std"] == pytest.approx(0.1)
