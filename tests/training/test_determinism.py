"""Reproducible: the same config and seed give identical figures on CPU; every run
records package versions, git commit and config hashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from fdrl.cli import main
from fdrl.config import from_dict, load_config
from fdrl.training.runs import experiment_sha256
from tests.conftest import REPO, tiny_overrides
from tests.robustness import one_torch_thread  # noqa: F401  (tiny models: one thread is faster)


def _run(tmp_path: Path, corpus, cache, name: str, *extra: str) -> Path:
    run_dir = tmp_path / name
    assert main(["cv", "--config", "demo", "--quiet", *tiny_overrides(corpus, cache, tmp_path / "runs"),
                 "cv.folds=[1, 2]", "--run-dir", str(run_dir), *extra]) == 0
    return run_dir


def _figures(run_dir: Path) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in r.items() if k not in ("environment", "git_commit")}


def _probs(run_dir: Path, fold: str = "1") -> np.ndarray:
    lines = (run_dir / "folds" / fold / "predictions.jsonl").read_text().splitlines()
    return np.array([list(json.loads(line)["probs"].values()) for line in lines])


def test_same_config_and_seed_give_identical_results(tmp_path, tiny_corpus, feature_cache):
    a = _run(tmp_path, tiny_corpus, feature_cache, "a")
    b = _run(tmp_path, tiny_corpus, feature_cache, "b")
    c = _run(tmp_path, tiny_corpus, feature_cache, "c", "train.seed=1")
    assert _figures(a) == _figures(b)  # every figure, per fold and confusion matrix included
    for fold in ("1", "2"):
        np.testing.assert_array_equal(_probs(a, fold), _probs(b, fold))
        assert (a / "folds" / fold / "history.csv").read_text().count("\n") == 4
    assert not np.array_equal(_probs(a), _probs(c))  # the seed is what fixes them

    meta = json.loads((a / "run.json").read_text())
    env = meta["environment"]
    for pkg in ("torch", "numpy", "transformers", "scikit-learn", "fdrl"):
        assert env["versions"][pkg], pkg
    assert env["python"] and env["platform"]
    if (REPO / ".git").exists():
        assert isinstance(env["git_commit"], str) and len(env["git_commit"].split("-")[0]) == 40
    cfg = from_dict(yaml.safe_load((a / "config.yaml").read_text()))
    assert meta["config_sha256"] == cfg.sha256()
    assert meta["experiment_sha256"] == experiment_sha256(cfg)
    assert meta["manifest_sha256"] and meta["n_utterances"] == 120 and meta["skipped"] == []
    results = json.loads((a / "results.json").read_text())
    assert results["config_sha256"] == cfg.sha256() and results["git_commit"] == env["git_commit"]


def test_experiment_hash_ignores_only_where_and_which_folds():
    base = load_config("demo", ["data.manifest=x"])
    same = load_config("demo", ["data.manifest=x", "cv.folds=[3]", "run.name=job3", "run.out_dir=/scratch",
                                "features.cache_dir=/local/cache", "run.tensorboard=false"])
    assert experiment_sha256(base) == experiment_sha256(same)
    assert base.sha256() != same.sha256()
    for change in ("train.lr=0.01", "train.seed=1", "model.beta=0", "data.manifest=y", "cv.protocol=speaker"):
        assert experiment_sha256(load_config("demo", ["data.manifest=x", change])) != experiment_sha256(base), change
