"""Figures and report on synthetic run folders (no training)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from fdrl.analysis import plots as P
from fdrl.analysis.report import fresh_dir, make_report, read_history
from fdrl.errors import RunError

CLASSES = ["ang", "hap", "neu", "sad"]


def _fake_run(root, name, aligned: bool, folds=(1, 2), n=40, d=6, reps=True, mu=0.4, seed=0):
    """A run folder with the files `fdrl cv` writes, filled with synthetic numbers."""
    rng = np.random.default_rng(seed)
    run = root / name
    (run / "folds").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "fdrl", "alpha": 1.0,
                                                               "mu_fixed": None if mu else 0.0}}))
    fold_results = []
    for k, g in enumerate(folds, 1):
        fd = run / "folds" / str(g)
        fd.mkdir()
        y = np.arange(n) % 4
        pred = np.where(rng.random(n) < 0.7, y, (y + 1) % 4)
        cm = np.zeros((4, 4), int)
        np.add.at(cm, (y, pred), 1)
        war = float(np.mean(y == pred))
        test = {"n": n, "war": war, "uar": war, "macro_f1": war, "weighted_f1": war,
                "confusion": cm.tolist()}
        diag = ({"probe_modality_S": 0.6, "probe_modality_P": 1.0, "norm_S": 8.0, "norm_P": 5.0,
                 "drop_S_uar": 0.05, "drop_P_uar": 0.1} if reps else None)
        (fd / "metrics.json").write_text(json.dumps({"fold": k, "test_group": str(g), "test": test,
                                                     **({"diagnostics": diag} if diag else {})}))
        fold_results.append({"fold": k, "test_group": str(g), "n_test": n, "best_epoch": 2,
                             "war": war, "uar": war, "macro_f1": war, "confusion": cm.tolist()})
        with open(fd / "history.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["epoch", "train_task", "mu", "grl_lambda", "val_uar", "seconds", "best_epoch"])
            for e in (1, 2, 3):
                w.writerow([e, 1.0 / e, mu, e / 3, 0.3 + 0.1 * e, 0.5, 2])
        if reps:
            emo = rng.normal(0, 3, (4, d))[y]
            shift = 0.0 if aligned else 4.0
            np.savez(fd / "representations.npz", utt_id=np.array([f"u{i}" for i in range(n)]),
                     speaker=np.array(["s"] * n), label=y, pred=pred,
                     probs=np.full((n, 4), 0.25, np.float32), classes=np.array(CLASSES),
                     emb_S_a=(emo + rng.normal(0, 1, (n, d))).astype(np.float16),
                     emb_S_t=(emo + shift + rng.normal(0, 1, (n, d))).astype(np.float16),
                     emb_P_a=(rng.normal(0, 1, (n, d)) + 4).astype(np.float16),
                     emb_P_t=(rng.normal(0, 1, (n, d)) - 4).astype(np.float16),
                     emb_fused=rng.normal(0, 1, (n, 4 * d)).astype(np.float16))
    (run / "run.json").write_text(json.dumps({"classes": CLASSES}))
    mean = float(np.mean([f["war"] for f in fold_results]))
    ms = {"mean": mean, "std": 0.0}
    (run / "results.json").write_text(json.dumps({
        "model": "fdrl", "corpus": "synthetic", "protocol": "leave-one-session-out",
        "classes": CLASSES, "n_folds": len(folds), "war": ms, "uar": ms, "macro_f1": ms,
        "folds": fold_results}))
    return run


def test_make_report_with_compare_and_mu0(tmp_path):
    run = _fake_run(tmp_path, "full", aligned=True)
    compare = _fake_run(tmp_path, "s1", aligned=False, seed=1)
    mu0 = _fake_run(tmp_path, "mu0", aligned=False, mu=0.0, seed=2)
    out = make_report(run, compare=compare, mu0=mu0, fold="2", max_points=100)
    assert out == run / "figures"
    for name in ("fig3a_tsne", "fig3b_centroids", "confusion", "learning_curves"):
        assert (out / f"{name}.png").stat().st_size > 1000, name
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with open(out / f"{name}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert rows, name
    tsne = list(csv.DictReader(open(out / "fig3a_tsne.csv")))
    assert {r["role"] for r in tsne} == {"run", "compare"}
    assert {r["fold"] for r in tsne} == {"2"}  # the figures show one fold's test set
    assert {r["type"] for r in tsne} == set(P.TYPES)
    assert len([r for r in tsne if r["role"] == "run"]) == 100  # 25 utterances x 4 types
    cents = list(csv.DictReader(open(out / "fig3b_centroids.csv")))
    assert {r["role"] for r in cents} == {"run", "mu0"}
    assert len(cents) == 2 * 4 * 2  # runs x classes x modalities
    conf = list(csv.DictReader(open(out / "confusion.csv")))
    assert {r["fold"] for r in conf} == {"1", "2", "sum"}
    curves = {r["quantity"] for r in csv.DictReader(open(out / "learning_curves.csv"))}
    assert {"train_task", "mu", "grl_lambda", "val_uar"} <= curves and "seconds" not in curves

    measures = json.loads((out / "measures.json").read_text())
    assert set(measures) >= {"run", "compare", "mu0", "figure_fold"}
    run_m, cmp_m = measures["run"]["mean"], measures["compare"]["mean"]
    # the synthetic "aligned" run's S_a and S_t share a distribution; the compare's do not
    assert run_m["modality_acc_S"]["mean"] < cmp_m["modality_acc_S"]["mean"]
    assert run_m["alignment_gap_S"]["mean"] < cmp_m["alignment_gap_S"]["mean"]
    assert set(measures["run"]["per_fold"]) == {"1", "2"}

    report = (out / "report.md").read_text()
    for png in ("fig3a_tsne.png", "fig3b_centroids.png", "confusion.png", "learning_curves.png",
                "diagnostics.png"):
        assert f"]({png})" in report
    diag = list(csv.DictReader(open(out / "diagnostics.csv")))
    assert {(r["fold"], r["diagnostic"]) for r in diag} >= {("1", "probe_modality_S"), ("2", "drop_P_uar")}
    assert "modality_acc_S" in report and "mu0: mu0" in report and "**mean ± std**" in report


def test_run_without_representations_still_gets_curves_and_confusions(tmp_path):
    run = _fake_run(tmp_path, "norep", aligned=True, reps=False)
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "report.md").write_text("mine")
    out = make_report(run, out=tmp_path / "figs")
    assert out == tmp_path / "figs-2"  # an existing folder is never written into
    assert (tmp_path / "figs" / "report.md").read_text() == "mine"
    assert (out / "confusion.png").is_file() and (out / "learning_curves.png").is_file()
    assert not (out / "fig3a_tsne.png").exists()
    assert "Not drawn" in (out / "report.md").read_text()
    assert json.loads((out / "measures.json").read_text())["run"]["mean"] is None


def test_bad_fold_and_bad_folders_are_clear_errors(tmp_path):
    run = _fake_run(tmp_path, "full", aligned=True, folds=(1, 2))
    with pytest.raises(RunError, match="no finished fold '7'"):
        make_report(run, fold="7")
    with pytest.raises(RunError, match="not a run folder"):
        make_report(tmp_path / "nothing")
    other = _fake_run(tmp_path, "other", aligned=True)
    (other / "results.json").write_text(json.dumps({**json.loads((other / "results.json").read_text()),
                                                    "classes": ["a", "b", "c", "d"]}))
    with pytest.raises(RunError, match="classes"):
        make_report(run, compare=other)


def test_fresh_dir_and_history_reader(tmp_path):
    assert fresh_dir(tmp_path / "f") == tmp_path / "f"
    assert fresh_dir(tmp_path / "f") == tmp_path / "f-2"
    assert fresh_dir(tmp_path / "f") == tmp_path / "f-3"
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "history.csv").write_text("epoch,mu,note\n1,0.5,x\n2,,y\n")
    assert read_history(tmp_path / "h") == [{"epoch": 1.0, "mu": 0.5, "note": None},
                                            {"epoch": 2.0, "mu": None, "note": None}]


def test_row_normalise_keeps_empty_rows_zero():
    frac = P.row_normalise([[2, 2], [0, 0]])
    assert frac.tolist() == [[0.5, 0.5], [0.0, 0.0]]
