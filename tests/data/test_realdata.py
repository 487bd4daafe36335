"""Readers on the real data in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fdrl.data.emodb import prepare_emodb
from fdrl.data.featstore import load_features, prepare_feature_dump
from fdrl.data.folds import make_folds
from fdrl.data.manifest import read_manifest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MEL = DATA / "iemocap4_mel" / "mel64.npz"
TEXT = DATA / "iemocap4_text" / "iemocap4.jsonl"
EMODB = DATA / "emodb"
LOGMEL64 = {"name": "logmel", "sample_rate": 16000, "n_mels": 64, "n_fft": 2048, "hop_length": 512}

pytestmark = pytest.mark.realdata


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"real data not available: {p} is absent (see shared/data/README.md)")


def test_iemocap_feature_dump(tmp_path):
    _need(MEL, TEXT)
    path = prepare_feature_dump(MEL, TEXT, out=tmp_path / "iemocap", encoder_spec=LOGMEL64,
                                corpus="iemocap")
    m = read_manifest(path)
    assert len(m) == 4490
    assert m.classes == ["ang", "hap", "neu", "sad"]
    assert Counter(r["label"] for r in m.rows) == {"ang": 1103, "hap": 595, "sad": 1084, "neu": 1708}
    assert all(r["text"] for r in m.rows)
    assert len({r["speaker"] for r in m.rows}) == 10
    assert [f.test_group for f in make_folds(m, "session")] == ["1", "2", "3", "4", "5"]
    assert json.loads((tmp_path / "iemocap" / "labels.json").read_text())["speech_features"] == LOGMEL64
    for row in (m.rows[0], m.rows[-1]):
        arr = load_features(m.resolve(row["features"]))
        assert arr.ndim == 2 and arr.shape[1] == 64 and arr.dtype == np.float32
        # 31.25 frames/s: the frame count matches the real duration.
        assert arr.shape[0] / 31.25 == pytest.approx(row["duration"], abs=0.1)
        assert -80.5 <= arr.min() and arr.max() <= 0.5  # log-mel in dB


def test_emodb(tmp_path):
    _need(EMODB / "labels.csv")
    m = read_manifest(prepare_emodb(EMODB, tmp_path / "emodb"))
    assert len(m) == 535
    assert len({r["speaker"] for r in m.rows}) == 10
    assert Counter(r["label"] for r in m.rows)["anger"] == 127
    assert len(m.classes) == 7 and all(Path(r["audio"]).is_file() for r in m.rows[:5])
