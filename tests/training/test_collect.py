"""Folds run as separate jobs (``fdrl cv --folds k``) and merged with ``fdrl collect``
give the same results as one run over those folds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from fdrl.cli import main
from fdrl.config import load_config
from tests.conftest import tiny_overrides
from tests.robustness import error_line, one_torch_thread  # noqa: F401


def _cv(tmp_path, corpus, cache, name, *extra):
    run_dir = tmp_path / name
    assert main(["cv", "--config", "demo", "--quiet", *tiny_overrides(corpus, cache, tmp_path / "runs"),
                 "--run-dir", str(run_dir), *extra]) == 0
    return run_dir


def _figures(run_dir: Path) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    keep = ("n_folds", "war", "uar", "macro_f1", "weighted_f1", "folds", "confusion_sum", "classes",
            "protocol", "model", "corpus")
    return {k: r[k] for k in keep}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_corpus, feature_cache):
    """Fold 1 and fold 2 as two jobs (one with another run name and cache folder), and
    both folds in one run."""
    tmp = tmp_path_factory.mktemp("jobs")
    one = _cv(tmp, tiny_corpus, feature_cache, "job1", "--folds", "1")
    two = _cv(tmp, tiny_corpus, feature_cache, "job2", "--folds", "2", "run.name=other")
    both = _cv(tmp, tiny_corpus, feature_cache, "both", "--folds", "1,2")
    return tmp, one, two, both


def test_collected_folds_equal_one_run_over_them(jobs, capsys):
    tmp, one, two, both = jobs
    out = tmp / "collected"
    assert main(["collect", str(one), str(two), "--out", str(out)]) == 0
    assert f"run folder: {out}" in capsys.readouterr().out
    assert _figures(out) == _figures(both)
    assert yaml.safe_load((out / "config.yaml").read_text())["cv"]["folds"] == [1, 2]
    meta = json.loads((out / "run.json").read_text())
    assert [c["folds"] for c in meta["collected_from"]] == [["1"], ["2"]]
    # fold files are hard links of the jobs' files where the file system allows
    a, b = out / "folds" / "1" / "metrics.json", one / "folds" / "1" / "metrics.json"
    assert a.read_bytes() == b.read_bytes() and os.stat(a).st_ino == os.stat(b).st_ino
    # the collected folder is a finished run: resuming it changes nothing
    assert main(["cv", "--resume", str(out), "--quiet"]) == 0
    assert _figures(out) == _figures(both)


def test_collect_default_folder_is_new(jobs, capsys):
    tmp, one, two, _ = jobs
    assert main(["collect", str(one), str(two)]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    assert out.parent == one.parent and out.name.startswith("tiny-collected-")
    assert (out / "results.json").is_file()


def test_collect_refuses_other_configs_duplicates_and_existing_folders(jobs, tiny_corpus, feature_cache,
                                                                        capsys):
    tmp, one, two, both = jobs
    other = _cv(tmp, tiny_corpus, feature_cache, "other-lr", "--folds", "2", "train.lr=0.01")
    assert main(["collect", str(one), str(other)]) == 2
    line = error_line(capsys.readouterr().err)
    demo_lr = load_config("demo").train.lr
    assert str(other) in line and f"train.lr: {demo_lr!r} vs 0.01" in line

    assert main(["collect", str(one), str(both)]) == 2
    line = error_line(capsys.readouterr().err)
    assert "test group 1 is finished in both" in line and str(both) in line

    taken = tmp / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    assert main(["collect", str(one), str(two), "--out", str(taken)]) == 2
    assert "never overwritten" in error_line(capsys.readouterr().err)
    assert [p.name for p in taken.iterdir()] == ["x"]

    assert main(["collect", str(one), str(tmp / "nope")]) == 2
    assert "run folder not found" in error_line(capsys.readouterr().err)
    assert not [p for p in tmp.iterdir() if p.name.endswith(".tmp")]  # no staging left behind
