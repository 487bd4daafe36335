"""End-to-end cross-validation through the CLI on the tiny corpus, and resume."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from fdrl.cli import main
from tests.conftest import tiny_overrides


def _run_cv(tmp_path, tiny_corpus, feature_cache, *extra, out="runs"):
    args = ["cv", "--config", "demo", "--quiet",
            *tiny_overrides(tiny_corpus, feature_cache, tmp_path / out), "cv.folds=[1, 2]", *extra]
    assert main(args) == 0
    (run_dir,) = list((tmp_path / out).iterdir())
    return run_dir


def test_cv_two_folds_end_to_end_then_resume(tmp_path, tiny_corpus, feature_cache, capsys):
    run_dir = _run_cv(tmp_path, tiny_corpus, feature_cache)
    out = capsys.readouterr().out
    assert "WAR" in out and "UAR" in out and str(run_dir) in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_folds"] == 2
    assert results["protocol"] == "leave-one-session-out"
    assert {f["test_group"] for f in results["folds"]} == {"1", "2"}
    for key in ("war", "uar", "macro_f1"):
        assert 0.0 <= results[key]["mean"] <= 1.0 and results[key]["std"] >= 0.0
    assert results["config_sha256"] and "git_commit" in results
    for f in results["folds"]:
        assert f["n_test"] == 24 and len(f["confusion"]) == 4
    fold1 = run_dir / "folds" / "1"
    for name in ("metrics.json", "history.csv", "predictions.jsonl", "representations.npz",
                 "model/model.safetensors", "model/bundle.json"):
        assert (fold1 / name).is_file(), name
    assert not (fold1 / "resume.pt").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"] == "fdrl"
    metrics = json.loads((fold1 / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 96  # 4 training sessions x 24

    # simulate a run killed after its first fold: fold 2 and the summary are missing
    killed = tmp_path / "killed"
    shutil.copytree(run_dir, killed)
    shutil.rmtree(killed / "folds" / "2")
    (killed / "results.json").unlink()
    (killed / "results.md").unlink()
    assert main(["cv", "--resume", str(killed), "--quiet"]) == 0
    resumed = json.loads((killed / "results.json").read_text())
    for key in ("war", "uar", "macro_f1"):
        assert resumed[key] == pytest.approx(results[key])
    assert [f["confusion"] for f in resumed["folds"]] == [f["confusion"] for f in results["folds"]]


def test_run_dir_is_never_overwritten(tmp_path, tiny_corpus, feature_cache, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "results.json").write_text("{}")
    code = main(["cv", "--config", "demo", "--run-dir", str(target), "--quiet",
                 *tiny_overrides(tiny_corpus, feature_cache, tmp_path / "runs")])
    assert code == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (target / "results.json").read_text() == "{}"


def test_config_typo_is_a_clear_error(tmp_path, tiny_corpus, feature_cache, capsys):
    code = main(["cv", "--config", "demo", *tiny_overrides(tiny_corpus, feature_cache, tmp_path),
                 "train.lr_rate=0.1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.lr_rate" in err and "did you mean 'lr'" in err
