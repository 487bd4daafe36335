"""Feature stores (.npy, per-key .npz, offset-layout .npz) and feature-dump manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fdrl.data import featstore
from fdrl.data.featstore import FeatureStore, load_features, open_store, prepare_feature_dump
from fdrl.data.manifest import read_manifest
from fdrl.errors import DataError

IDS = ["Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses02M_script01_1_F003"]
LENGTHS = [4, 2, 5]


def make_offset_store(path: Path, dim: int = 3, with_labels: bool = True) -> list[np.ndarray]:
    """Write an offset-layout store; return each utterance's frames."""
    rng = np.random.default_rng(0)
    utts = [rng.normal(size=(n, dim)).astype(np.float16) for n in LENGTHS]
    arrays = {"utt_id": np.array(IDS), "offset": np.cumsum([0] + LENGTHS[:-1]),
              "length": np.array(LENGTHS), "frames": np.concatenate(utts)}
    if with_labels:
        arrays["label"] = np.array(["neu", "ang", "sad"])
    np.savez(path, **arrays)
    return utts


@pytest.fixture(autouse=True)
def _fresh_cache():
    featstore.clear_cache()
    yield
    featstore.clear_cache()


def test_offset_layout_slices_and_float32(tmp_path):
    utts = make_offset_store(tmp_path / "mel.npz")
    for utt, expected in zip(IDS, utts):
        arr = load_features(f"{tmp_path / 'mel.npz'}#{utt}")
        assert arr.dtype == np.float32 and arr.shape == expected.shape
        np.testing.assert_array_equal(arr, expected.astype(np.float32))
    store = open_store(tmp_path / "mel.npz")
    assert store.offset_layout and store.dim == 3 and len(store) == 3
    assert store.labels == dict(zip(IDS, ["neu", "ang", "sad"]))
    assert store.length(IDS[2]) == 5


def test_store_is_opened_once_per_process(tmp_path):
    make_offset_store(tmp_path / "mel.npz")
    ref = f"{tmp_path / 'mel.npz'}#{IDS[0]}"
    load_features(ref)
    store = open_store(tmp_path / "mel.npz")
    frames = store._frames
    assert frames is not None  # read on first access ...
    load_features(f"{tmp_path / 'mel.npz'}#{IDS[1]}")
    assert open_store(tmp_path / "mel.npz") is store and store._frames is frames  # ... and kept


def test_per_key_npz_and_npy(tmp_path):
    np.savez(tmp_path / "keys.npz", a=np.ones((6, 2)), b=np.arange(4.0))
    assert load_features(f"{tmp_path / 'keys.npz'}#a").shape == (6, 2)
    assert load_features(f"{tmp_path / 'keys.npz'}#b", dim=4).shape == (4,)
    assert not open_store(tmp_path / "keys.npz").offset_layout
    np.save(tmp_path / "u.npy", np.zeros((7, 5), dtype=np.float16))
    arr = load_features(tmp_path / "u.npy")
    assert arr.shape == (7, 5) and arr.dtype == np.float32


def test_clear_errors(tmp_path):
    make_offset_store(tmp_path / "mel.npz")
    with pytest.raises(DataError, match=r"mel.npz: no utterance 'nope'"):
        load_features(f"{tmp_path / 'mel.npz'}#nope")
    with pytest.raises(DataError, match="feature store not found"):
        load_features(f"{tmp_path / 'absent.npz'}#a")
    with pytest.raises(DataError, match="features file not found"):
        load_features(tmp_path / "absent.npy")
    with pytest.raises(DataError, match="needs '#utt_id'"):
        load_features(tmp_path / "mel.npz")
    with pytest.raises(DataError, match="dimension 3, expected 64"):
        load_features(f"{tmp_path / 'mel.npz'}#{IDS[0]}", dim=64)
    bad = np.ones((3, 2))
    bad[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="nan.npy: features contain NaN"):
        load_features(tmp_path / "nan.npy")
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    with pytest.raises(DataError, match=r"got shape \(2, 2, 2\)"):
        load_features(tmp_path / "cube.npy")
    np.savez(tmp_path / "broken.npz", utt_id=np.array(["a"]), offset=np.array([3]),
             length=np.array([4]), frames=np.zeros((5, 2)))
    with pytest.raises(DataError, match="outside 'frames'"):
        FeatureStore(tmp_path / "broken.npz")


def _write_transcripts(path: Path) -> None:
    rows = [
        {"utt_id": IDS[0], "session": 1, "speaker": "Ses01_F", "gender": "F", "dialog": "Ses01F_impro01",
         "scripted": False, "label": "neu", "label_raw": "neu", "duration": 1.5, "text": "Excuse me."},
        {"utt_id": IDS[1], "session": 1, "speaker": "Ses01_M", "gender": "M", "dialog": "Ses01F_impro01",
         "scripted": False, "label": "ang", "label_raw": "ang", "duration": 0.7, "text": "No."},
        {"utt_id": "Ses05F_impro01_F000", "session": 5, "label": "hap", "text": "not in the store"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prepare_feature_dump_rows_and_spec(tmp_path, caplog):
    make_offset_store(tmp_path / "mel.npz")
    _write_transcripts(tmp_path / "t.jsonl")
    spec = {"name": "logmel", "sample_rate": 16000, "n_mels": 3, "n_fft": 2048, "hop_length": 512}
    with caplog.at_level(logging.WARNING):
        path = prepare_feature_dump(tmp_path / "mel.npz", tmp_path / "t.jsonl", out=tmp_path / "o",
                                    encoder_spec=spec, corpus="iemocap")
    assert "1 of 3 utterances have no transcript" in caplog.text
    m = read_manifest(path)
    assert m.classes == ["ang", "neu", "sad"]
    rows = {r["utt_id"]: r for r in m.rows}
    assert set(rows) == set(IDS)
    first = rows[IDS[0]]
    assert first["features"] == f"{(tmp_path / 'mel.npz').resolve()}#{IDS[0]}"
    assert (first["text"], first["duration"], first["speaker"]) == ("Excuse me.", 1.5, "Ses01_F")
    no_text = rows[IDS[2]]
    # No transcript: text null, metadata from the IEMOCAP id, duration from frames * hop / sr.
    assert no_text["text"] is None and no_text["label"] == "sad"
    assert (no_text["session"], no_text["speaker"]) == (2, "Ses02_F")
    assert no_text["duration"] == pytest.approx(5 * 512 / 16000)
    labels = json.loads((tmp_path / "o" / "labels.json").read_text())
    assert labels["speech_features"] == spec and labels["feature_dim"] == 3
    assert load_features(m.resolve(first["features"])).shape == (4, 3)


def test_prepare_feature_dump_require_text_and_labels_from_transcripts(tmp_path, caplog):
    make_offset_store(tmp_path / "mel.npz", with_labels=False)
    _write_transcripts(tmp_path / "t.jsonl")
    with caplog.at_level(logging.WARNING):
        path = prepare_feature_dump(tmp_path / "mel.npz", tmp_path / "t.jsonl", out=tmp_path / "o",
                                    require_text=True)
    assert "1 of 3 utterances have no transcript and were dropped" in caplog.text
    m = read_manifest(path)
    assert [r["label"] for r in m.rows] == ["neu", "ang"]  # from the transcripts
    assert m.rows[0]["corpus"] == "mel" and m.rows[0]["duration"] == 1.5
    with pytest.raises(DataError, match="1 utterances have no label"):
        prepare_feature_dump(tmp_path / "mel.npz", tmp_path / "t.jsonl", out=tmp_path / "o2")


def test_unreadable_stores(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match="text.npz: not a readable .npz"):
        load_features(f"{tmp_path / 'text.npz'}#a")
    np.savez(tmp_path / "obj.npz", utt_id=np.array(["a", None], dtype=object), offset=np.array([0, 1]),
             length=np.array([1, 1]), frames=np.zeros((2, 2)))
    with pytest.raises(DataError, match="obj.npz: not a readable .npz"):
        FeatureStore(tmp_path / "obj.npz")
