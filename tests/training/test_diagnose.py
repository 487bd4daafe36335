"""Diagnostics in every FDRL cross-validation run: stored per fold and over folds, on
validation rows only; the history holds the mu and lambda each epoch used and, with
train.diagnose, the gradient each term sends into E_s."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fdrl.analysis.diagnostics import DIAGNOSTIC_KEYS
from fdrl.config import load_config
from fdrl.data.folds import make_folds
from fdrl.data.manifest import read_manifest
from fdrl.training import diagnose
from fdrl.training.cv import run_cv
from fdrl.utils.io import read_json
from tests.conftest import tiny_overrides


def test_cv_writes_diagnostics_from_validation_rows_only(tiny_corpus, feature_cache, tmp_path,
                                                         monkeypatch):
    seen: list[np.ndarray] = []
    real = diagnose.predict

    def spy(net, data, indices, *args, **kwargs):
        seen.append(np.asarray(indices))
        return real(net, data, indices, *args, **kwargs)

    monkeypatch.setattr(diagnose, "predict", spy)
    cfg = load_config("demo", tiny_overrides(tiny_corpus, feature_cache, tmp_path,
                                             **{"cv.folds": "[2]", "train.diagnose": "true",
                                                "train.diagnose_every": 1}))
    run_dir, results = run_cv(cfg, progress=False)

    test_rows = make_folds(read_manifest(tiny_corpus), "session")[1].test
    assert seen and not any(set(s) & set(test_rows) for s in seen)   # training rows for the means
    fold = read_json(next(run_dir.glob("folds/*/metrics.json")))
    d = fold["diagnostics"]
    assert set(DIAGNOSTIC_KEYS) <= set(d) and "probe_modality_S_train" in d
    assert 0.0 <= d["probe_modality_S"] <= 1.0 and 0.0 <= d["probe_modality_P"] <= 1.0
    assert d["norm_S"] > 0 and d["norm_P"] > 0
    assert -1.0 <= d["drop_S_uar"] <= 1.0 and -1.0 <= d["drop_P_uar"] <= 1.0
    assert results["folds"][0]["diagnostics"] == d
    assert results["diagnostics"]["norm_S"]["mean"] == pytest.approx(d["norm_S"])
    assert "probe_modality_S" in (run_dir / "results.md").read_text()

    rows = list(csv.DictReader(open(next(run_dir.glob("folds/*/history.csv")))))
    assert float(rows[0]["mu"]) == 0.5                                  # the mu epoch 1 used
    assert {"grl_lambda", "mu_next", "train_grad_norm", "train_clipped", "grad_task",
            "grad_align_global_confusion", "grad_align_local_confusion", "grad_predictor"} <= set(rows[0])
    # the discriminators' own loss stays with them; the encoders get the confusion term
    assert float(rows[-1]["grad_align_global"]) == 0 < float(rows[-1]["grad_align_global_confusion"])


def test_misa_gets_the_same_diagnostics(tiny_corpus, feature_cache, tmp_path):
    cfg = load_config("demo", tiny_overrides(tiny_corpus, feature_cache, tmp_path,
                                             **{"cv.folds": "[1]", "model.name": "misa",
                                                "train.epochs": 1, "train.diagnose": "true"}))
    run_dir, results = run_cv(cfg, progress=False)
    assert set(DIAGNOSTIC_KEYS) <= set(results["folds"][0]["diagnostics"])
    rows = list(csv.DictReader(open(next(run_dir.glob("folds/*/history.csv")))))
    assert float(rows[0]["grad_misa_sim"]) > 0                 # MISA's E_s gets L_sim's gradient


def test_models_without_parts_get_no_diagnostics(tiny_corpus, feature_cache, tmp_path):
    cfg = load_config("demo", tiny_overrides(tiny_corpus, feature_cache, tmp_path,
                                             **{"cv.folds": "[1]", "model.name": "concat",
                                                "train.epochs": 1}))
    _, results = run_cv(cfg, progress=False)
    assert "diagnostics" not in results and "diagnostics" not in results["folds"][0]
