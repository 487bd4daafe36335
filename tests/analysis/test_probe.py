"""Tests for the speaker-identification probe on synthetic run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fdrl.analysis.probe import (
    ProbeSettings,
    load_fold_reps,
    probe_run,
    speaker_split,
    write_probe_report,
)
from fdrl.cli import main
from fdrl.errors import RunError


def make_run(root: Path, identity_scale: float, seed: int = 0, sessions: int = 5,
             per_speaker: int = 30, dim: int = 12, uar: float = 0.6,
             genders: tuple = ("F", "M")) -> Path:
    """A fake leave-one-session-out run: 2 speakers per session, embeddings
    ``emb_emotion`` (speaker offset x identity_scale + noise), ``emb_noise`` (noise) and
    FDRL-style ``S_a, S_t, P_a, P_t`` (identity planted in P only)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for s in range(1, sessions + 1):
        spk, utt, lab = [], [], []
        for g in genders:
            for k in range(per_speaker):
                spk.append(f"Ses{s}_{g}")
                utt.append(f"s{s}_{g}_{k:03d}")
                lab.append(k % 4)
        spk, n = np.array(spk), len(spk)
        offsets = {name: rng.normal(0, 1, dim) for name in sorted(set(spk))}
        ident = np.stack([offsets[x] for x in spk])                          # (n, dim)
        noise = lambda: rng.normal(0, 1, (n, dim))                          # noqa: E731
        fold = root / "folds" / str(s)
        fold.mkdir(parents=True)
        np.savez_compressed(
            fold / "representations.npz", utt_id=np.array(utt), speaker=spk,
            label=np.array(lab), pred=np.array(lab), classes=np.array(["a", "b", "c", "d"]),
            emb_emotion=(identity_scale * ident + noise()).astype(np.float16),
            emb_noise=noise().astype(np.float16), emb_S_a=noise().astype(np.float16),
            emb_S_t=noise().astype(np.float16), emb_P_a=(2 * ident + noise()).astype(np.float16),
            emb_P_t=noise().astype(np.float16))
        (fold / "metrics.json").write_text(json.dumps({"fold": s}))
    (root / "results.json").write_text(json.dumps({"war": {"mean": uar + 0.02}, "uar": {"mean": uar},
                                                   "model": "fake", "corpus": "synthetic"}))
    (root / "run.json").write_text(json.dumps({"model": "fake", "corpus": "synthetic",
                                               "protocol": "leave-one-session-out"}))
    return root


def test_split_is_utterance_disjoint_shares_speakers_and_is_seeded():
    spk = np.array(["a"] * 10 + ["b"] * 7 + ["c"] * 1)
    utt = np.array([f"u{i:02d}" for i in range(18)])
    tr, te = speaker_split(spk, utt, 0.3, seed=0)
    assert not set(tr) & set(te)
    assert set(spk[tr]) == set(spk[te]) == {"a", "b"}           # "c" has one utterance: left out
    assert (spk[te] == "a").sum() == 3 and (spk[te] == "b").sum() == 2
    tr2, te2 = speaker_split(spk, utt, 0.3, seed=0)
    assert np.array_equal(te, te2)
    # the split follows the utterance ids, not the file order
    perm = np.random.default_rng(1).permutation(18)
    _, te3 = speaker_split(spk[perm], utt[perm], 0.3, seed=0)
    assert set(utt[perm][te3]) == set(utt[te])


def test_probe_finds_planted_identity_and_not_noise(tmp_path):
    run = make_run(tmp_path / "run", identity_scale=2.5)
    folds = load_fold_reps(run)
    assert {"emotion", "noise", "S_a", "S_t", "P_a", "P_t"} == set(folds[0].emb)
    rep = probe_run(run, ["emotion", "noise", "S", "P"], settings=ProbeSettings(seed=0))
    assert rep["emotion_key"] == "emotion" and rep["uar"] == pytest.approx(0.6)
    pooled = rep["pooled"]
    assert list(pooled) == ["emotion", "noise", "S", "P"]
    chance = pooled["emotion"]["chance"]
    assert chance == pytest.approx(0.1) and pooled["emotion"]["n_speakers"] == 10
    assert pooled["emotion"]["fold_chance"] == pytest.approx(0.5)
    assert pooled["emotion"]["accuracy"] > 0.6                  # >> chance
    assert pooled["noise"]["accuracy"] < chance + 0.1           # near chance
    assert pooled["P"]["accuracy"] > 0.6 and pooled["S"]["accuracy"] < chance + 0.1
    assert pooled["P"]["dim"] == 24                             # [P_a; P_t]
    per_fold = rep["per_fold"]["emotion"]
    assert len(per_fold["folds"]) == 5 and per_fold["mean_chance"] == pytest.approx(0.5)
    assert per_fold["mean_accuracy"] > 0.8


def test_probe_cli_reference_and_never_overwrites(tmp_path, capsys):
    run = make_run(tmp_path / "run", identity_scale=0.3, seed=1)
    ref = make_run(tmp_path / "ref", identity_scale=2.0, seed=2)
    assert main(["probe", str(run), "--reference", str(ref), "--embeddings", "emotion,P",
                 "--no-per-fold"]) == 0
    out = capsys.readouterr().out
    assert "emotion" in out and "probe.json" in out
    rep = json.loads((run / "probe.json").read_text())
    assert list(rep["pooled"]) == ["emotion", "P"]
    e = rep["pooled"]["emotion"]
    assert e["reference_embedding"] == "emotion"
    assert e["disentanglement_pct"] == pytest.approx(
        100 * (e["reference_accuracy"] - e["accuracy"]) / e["reference_accuracy"])
    assert e["disentanglement_pct"] > 20                        # less identity than the reference
    assert "disentanglement" in (run / "probe.md").read_text()
    first = (run / "probe.json").read_text()
    assert main(["probe", str(run), "--no-per-fold"]) == 0
    assert (run / "probe.json").read_text() == first and (run / "probe-2.json").is_file()
    assert (run / "probe-2.md").is_file()
    assert main(["probe", str(run), "--no-per-fold", "--force"]) == 0
    assert (run / "probe.json").read_text() != first and not (run / "probe-3.json").exists()


def test_probe_errors_are_clear(tmp_path, capsys):
    (tmp_path / "empty" / "folds" / "1").mkdir(parents=True)
    with pytest.raises(RunError, match="save_representations"):
        load_fold_reps(tmp_path / "empty")
    assert main(["probe", str(tmp_path / "nowhere")]) == 2
    assert "not a cross-validation run" in capsys.readouterr().err
    run = make_run(tmp_path / "run", identity_scale=1.0)
    assert main(["probe", str(run), "--embeddings", "emotion,missing"]) == 2
    assert "missing" in capsys.readouterr().err


def test_write_report_numbering(tmp_path):
    rep = {"run": "x", "n_folds": 1, "settings": {"test_fraction": 0.3, "seed": 0},
           "pooled": {}, "per_fold": {}}
    paths = [write_probe_report(tmp_path, rep)[0].name for _ in range(3)]
    assert paths == ["probe.json", "probe-2.json", "probe-3.json"]


def test_one_speaker_per_fold_is_flagged(tmp_path):
    run = make_run(tmp_path / "run", identity_scale=2.0, genders=("F",))
    rep = probe_run(run, ["emotion"], ProbeSettings(per_fold=False))
    assert rep["pooled"]["emotion"]["fold_chance"] == pytest.approx(1.0)
    assert rep["warnings"] and "single-model" in rep["warnings"][0]
    assert "warning" in (write_probe_report(run, rep)[1]).read_text()
