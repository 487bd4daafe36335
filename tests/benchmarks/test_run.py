"""The benchmark harness (``benchmarks/run.py``) on tiny generated data: suites that
skip, fail and succeed all end up in the report; the helpers compute what they claim.
The real-data suites are not run here (they take minutes to hours)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from benchmarks import run as bench_run
from benchmarks import suites
from benchmarks.suites.common import (SuiteResult, Table, Target, logreg_reference, points_target,
                                      run_measured, subset_metrics, take_every)
from benchmarks.suites.emodb import readme_reference
from benchmarks.suites import report as report_mod
from benchmarks.suites.report import WHY, render


def _fake_suite(monkeypatch, name: str, run) -> None:
    """Register a suite module ``name`` whose ``run(ctx)`` is ``run``."""
    mod = types.ModuleType(f"benchmarks.suites.{name.replace('-', '_')}")
    mod.NAME, mod.TITLE, mod.run = name, f"fake suite {name}", run
    mod.SETTINGS = {m: {"size": m} for m in ("full", "quick", "tiny")}
    mod.TARGETS = [f"{name} works"]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(suites.SUITES, name, mod.__name__.rsplit(".", 1)[1])


def _args(tmp_path, *extra) -> list[str]:
    return ["--tiny", "--quiet", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "runs"),
            "--report", str(tmp_path / "BENCHMARKS.md"), "--results-dir", str(tmp_path / "results"),
            *extra]


def test_skip_error_and_success_all_reach_the_report(tmp_path, monkeypatch):
    def fails(ctx):
        raise RuntimeError("boom in the middle")

    def works(ctx):
        res = SuiteResult("fake-ok", "fake suite fake-ok", settings=ctx.pick({"tiny": {"n": 3}}))
        res.tables.append(Table("numbers", ["a", "b"], [[1, "x|y"]], note="a note"))
        res.targets.append(Target("fake-ok is fast", False, "12 ms", "10 ms", "2 ms too slow."))
        res.targets.append(Target("fake-ok is right", True, "UAR 70.0 %", "65.0 %"))
        return res

    _fake_suite(monkeypatch, "fake-fail", fails)
    _fake_suite(monkeypatch, "fake-ok", works)
    rc = bench_run.main(_args(tmp_path, "--suites", "fake-ok,iemocap,fake-fail"))
    assert rc == 1  # a suite failed: the exit status says so, the report is still complete

    report = (tmp_path / "BENCHMARKS.md").read_text()
    (json_file,) = (tmp_path / "results").glob("*-tiny.json")
    data = json.loads(json_file.read_text())
    status = {s["name"]: s for s in data["suites"]}
    assert [s["name"] for s in data["suites"]] == ["iemocap", "fake-fail", "fake-ok"]  # report order
    assert status["iemocap"]["status"] == "skipped"
    assert "no-data/iemocap4_mel/mel64.npz not found" in status["iemocap"]["reason"]
    assert status["fake-fail"]["status"] == "error"
    assert "boom in the middle" in status["fake-fail"]["reason"]
    assert "RuntimeError" in status["fake-fail"]["raw"]["traceback"]
    assert status["fake-ok"]["status"] == "ok"  # ran after the failure
    assert all(s["seconds"] is not None for s in data["suites"])
    assert data["machine"]["cores"] >= 1 and data["command"].startswith("python benchmarks/run.py")

    assert "target: fake-ok is fast — not met (measured 12 ms vs 10 ms)" in report
    assert "target: fake-ok is right — met (measured UAR 70.0 % vs 65.0 %)" in report
    assert f"**{WHY}** (fake-ok is fast) 2 ms too slow." in report
    assert report.count(WHY) == 1  # only for the target not met
    assert "target: fake-fail works — not evaluated (suite error)" in report
    assert "| 1 | x\\|y |" in report  # cells are escaped
    assert "skipped" in report and "boom in the middle" in report
    assert "git commit" in report and "| machine |" in report

    # the maintainers' analysis of a target not met, then the report rewritten from the JSON
    analysis = tmp_path / "analysis.md"
    analysis.write_text("# Analysis\n\n## fake-ok is fast\nThe fake sleeps;\nremove the sleep.\n")
    monkeypatch.setattr(report_mod, "ANALYSIS", analysis)
    out = tmp_path / "again.md"
    assert bench_run.main(["--render", str(json_file), "--report", str(out)]) == 0
    again = out.read_text()
    assert (f"**{WHY}** (fake-ok is fast) The fake sleeps; remove the sleep. _Figures of this run:_ "
            f"2 ms too slow.") in again
    assert again.replace("The fake sleeps; remove the sleep. _Figures of this run:_ ", "").replace(
        " _(Default text generated from the figures: no analysis for this target in "
        "benchmarks/analysis.md yet.)_", "") == report.replace(
        " _(Default text generated from the figures: no analysis for this target in "
        "benchmarks/analysis.md yet.)_", "")
    with pytest.raises(SystemExit, match="not a benchmark results file"):
        bench_run.main(["--render", str(analysis), "--report", str(out)])


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown suite"):
        bench_run.main(_args(tmp_path, "--suites", "iemocapp"))
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_train_speed_suite_runs_end_to_end(tmp_path):
    """A real suite (random features, no data) through a child process, tiny settings."""
    rc = bench_run.main(_args(tmp_path, "--suites", "train-speed", "--threads", "1"))
    assert rc == 0
    (json_file,) = (tmp_path / "results").glob("*-tiny.json")
    (suite,) = json.loads(json_file.read_text())["suites"]
    assert suite["status"] == "ok", suite["reason"]
    per = suite["raw"]["classes"]["per_class"]
    assert set(per) == {"4", "16"} and per["16"]["n_params"] > per["4"]["n_params"]
    assert per["16"]["ratio_vs_base"] > 0 and suite["raw"]["peak_rss_mb"] > 50
    assert suite["targets"][0]["met"] == (per["16"]["ratio_vs_base"] <= 1.5)
    assert "C = 16" in (tmp_path / "BENCHMARKS.md").read_text()


# ----------------------------------------------------------------------------------
# Helpers


def test_logreg_reference_scores_each_fold_and_subset():
    from fdrl.data.folds import Fold

    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(3), 40)  # (120,)
    x = np.eye(3)[labels] * 4 + rng.normal(0, 0.3, (120, 3))  # separable
    ids = [f"u{i}" for i in range(120)]
    folds = [Fold(0, "g1", "1", np.arange(60, 120), np.arange(60)),
             Fold(1, "g2", "2", np.arange(60), np.arange(60, 120))]
    ref = logreg_reference(x, labels, folds, 3, ids, {"even": {f"u{i}" for i in range(0, 120, 2)}})
    assert [f["test_group"] for f in ref["folds"]] == ["1", "2"]
    assert [f["n"] for f in ref["folds"]] == [60, 60]
    assert ref["uar"]["mean"] > 0.9 and ref["subsets"]["even"]["uar"]["mean"] > 0.9

    shuffled = rng.permutation(labels)  # no signal left: near chance
    assert logreg_reference(x, shuffled, folds, 3, ids)["uar"]["mean"] < 0.6


def test_subset_metrics_reads_predictions_per_fold(tmp_path):
    classes = ["ang", "hap"]
    rows = {"1": [("a", "ang", "ang"), ("b", "hap", "ang"), ("c", "hap", "hap")],
            "2": [("d", "ang", "hap"), ("e", "hap", "hap")]}
    for fold, preds in rows.items():
        (tmp_path / "folds" / fold).mkdir(parents=True)
        (tmp_path / "folds" / fold / "predictions.jsonl").write_text("".join(
            json.dumps({"utt_id": u, "label": y, "pred": p}) + "\n" for u, y, p in preds))
    res = subset_metrics(tmp_path, {"a", "b", "d", "e"}, classes)
    # fold 1: a right, b wrong -> WAR 0.5, UAR (1 + 0) / 2; fold 2: d wrong, e right -> 0.5, 0.5
    assert res["n_folds"] == 2
    assert res["war"]["mean"] == pytest.approx(0.5) and res["war"]["std"] == pytest.approx(0.0)
    assert res["uar"]["mean"] == pytest.approx(0.5)
    assert subset_metrics(tmp_path, {"c"}, classes)["war"]["mean"] == pytest.approx(1.0)
    assert subset_metrics(tmp_path, set(), classes)["n_folds"] == 0


def test_run_measured_gives_each_child_its_own_peak(tmp_path):
    big = run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(40_000_000); print(a.sum())"])
    small = run_measured([sys.executable, "-c", "print('hi')"])
    assert big.returncode == 0 and "40000000" in big.output
    assert big.peak_rss_mb > 300 > small.peak_rss_mb  # 320 MB of float64 ones vs a bare interpreter
    failed = run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert failed.returncode == 3 and failed.seconds > 0
    slow = run_measured([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert slow.returncode == -9 and slow.seconds < 30


def test_points_target_verdicts_and_default_explanation():
    met = points_target("t", 0.70, "ours", 0.64, "ref", 5.0, "hint.", "full")
    assert met.met is True and met.measured == "ours 70.0 %" and "69.0 %" in met.versus
    miss = points_target("t", 0.66, "ours", 0.64, "ref", 5.0, "Try more epochs.", "quick")
    assert miss.met is False
    assert "short by 3.0 points" in miss.why and "Try more epochs." in miss.why and "quick run" in miss.why
    assert "quick run" not in met.why
    assert points_target("t", None, "ours", 0.64, "ref", 5.0, "", "full").met is None


def test_render_lists_pending_suites_and_unevaluated_targets():
    meta = {"command": "python benchmarks/run.py --quick", "mode": "quick", "started": "now",
            "machine": {"cores": 2, "cpu": "cpu", "python": "3.11", "load_average_1min": 1.0},
            "data_dir": "d", "out_dir": "o", "json": "j"}
    res = SuiteResult("a", "A", targets=[Target("x", None, "a figure is missing", "—")], seconds=1.0)
    text = render(meta, [res], pending=["b"])
    assert "| b | not run | — | — |" in text
    assert "target: x — not evaluated (a figure is missing)" in text
    assert "no figure for ours" in points_target("t", None, "ours", 0.6, "ref", 5, "", "full").measured
    assert "| a | ok | 1.0 s | — (1 not evaluated) |" in text


def test_emodb_helpers(tmp_path):
    (tmp_path / "README.md").write_text(
        "Reference figure, measured here: openSMILE eGeMAPSv02 functionals + logistic regression,\n"
        "7 classes, leave-one-speaker-out: WAR 64.8 %, UAR 63.5 %.\n")
    assert readme_reference(tmp_path) == {"war": 64.8, "uar": 63.5}
    assert readme_reference(tmp_path / "nowhere") is None
    assert take_every(list(range(10)), 4) == [0, 2, 5, 7] and take_every([1, 2], None) == [1, 2]


def test_jobs_run_accuracy_suites_in_processes_and_keep_report_order(tmp_path):
    """--jobs 2: the accuracy suites run in spawned workers (here they skip: no data), the
    report keeps the suites' order and says how they ran."""
    rc = bench_run.main(_args(tmp_path, "--jobs", "2", "--suites", "emodb,iemocap,iemocap-text"))
    assert rc == 0
    (json_file,) = (tmp_path / "results").glob("*-tiny.json")
    data = json.loads(json_file.read_text())
    assert [s["name"] for s in data["suites"]] == ["iemocap", "iemocap-text", "emodb"]
    assert {s["status"] for s in data["suites"]} == {"skipped"} and data["jobs"] == 2
    assert data["pending"] == []
    assert "2 at a time" in (tmp_path / "BENCHMARKS.md").read_text()


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(SystemExit, match="--jobs"):
        bench_run.main(_args(tmp_path, "--jobs", "0", "--suites", "iemocap"))
