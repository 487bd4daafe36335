"""Folds from metadata and validation splits drawn only from a fold's training rows."""

from __future__ import annotations

import numpy as np
import pytest

from fdrl.data.folds import (Fold, check_fold_classes, make_folds, natural_key,
                             validation_split)
from fdrl.data.manifest import Manifest
from fdrl.errors import ConfigError, DataError

CLASSES = ["ang", "hap", "neu", "sad"]


def make_manifest(sessions=(1, 2, 3, 4, 5, 10), per_speaker: int = 20) -> Manifest:
    """Two speakers per session, classes cycling within each speaker."""
    rows = []
    for s in sessions:
        for g in "FM":
            for k in range(per_speaker):
                rows.append({"utt_id": f"s{s}{g}{k}", "session": s, "speaker": f"Ses{s:02d}_{g}",
                             "label": CLASSES[k % 4], "fold": f"f{(k % 3) + 1}"})
    return Manifest(rows=rows, classes=list(CLASSES))


def test_leave_one_session_out_in_natural_order():
    m = make_manifest()
    folds = make_folds(m, "session")
    assert [f.test_group for f in folds] == ["1", "2", "3", "4", "5", "10"]
    assert [f.name for f in folds][:2] == ["session1", "session2"]
    for i, f in enumerate(folds):
        assert isinstance(f, Fold) and f.index == i
        assert f.train.dtype == np.int64
        assert len(np.intersect1d(f.train, f.test)) == 0
        assert len(f.train) + len(f.test) == len(m)
        assert {str(m.rows[j]["session"]) for j in f.test} == {f.test_group}
        assert f.test_group not in {str(m.rows[j]["session"]) for j in f.train}


def test_speaker_and_fold_column_protocols():
    m = make_manifest(sessions=(1, 2))
    speakers = make_folds(m, "speaker")
    assert [f.test_group for f in speakers] == ["Ses01_F", "Ses01_M", "Ses02_F", "Ses02_M"]
    assert speakers[0].name == "speakerSes01_F"
    by_fold = make_folds(m, "fold")
    assert [f.test_group for f in by_fold] == ["f1", "f2", "f3"]
    assert all(m.rows[j]["fold"] == "f2" for j in by_fold[1].test)


def test_missing_metadata_and_too_few_groups():
    m = make_manifest(sessions=(1, 2))
    m.rows[3]["speaker"] = None
    del m.rows[5]["speaker"]
    with pytest.raises(DataError, match="2 of 80 manifest rows have no 'speaker'"):
        make_folds(m, "speaker")
    with pytest.raises(DataError, match="at least 2 distinct 'session' values"):
        make_folds(make_manifest(sessions=(3,)), "session")
    with pytest.raises(ConfigError, match="unknown fold protocol"):
        make_folds(m, "random")


def test_natural_key():
    assert sorted(["Ses10", "Ses2", "Ses1"], key=natural_key) == ["Ses1", "Ses2", "Ses10"]


def test_stratified_validation_comes_from_training_rows_only():
    m = make_manifest()
    fold = make_folds(m, "session")[2]
    tr, va = validation_split(m, fold.train, "stratified", fraction=0.1, seed=0)
    assert len(va) == round(0.1 * len(fold.train))
    assert set(va) <= set(fold.train) and not set(va) & set(fold.test)
    assert sorted(np.concatenate([tr, va]).tolist()) == sorted(fold.train.tolist())
    counts = np.bincount([CLASSES.index(m.rows[i]["label"]) for i in va], minlength=4)
    assert counts.tolist() == [5, 5, 5, 5]  # 200 training rows, 10 %, classes kept equal
    tr2, va2 = validation_split(m, fold.train, "stratified", fraction=0.1, seed=0)
    np.testing.assert_array_equal(va, va2)
    _, va3 = validation_split(m, fold.train, "stratified", fraction=0.1, seed=1)
    assert not np.array_equal(va, va3)


def test_speaker_validation_holds_out_whole_speakers():
    m = make_manifest()
    fold = make_folds(m, "session")[0]
    tr, va = validation_split(m, fold.train, "speaker", fraction=0.1, seed=3)
    val_speakers = {m.rows[i]["speaker"] for i in va}
    train_speakers = {m.rows[i]["speaker"] for i in tr}
    assert len(val_speakers) == 1 and not val_speakers & train_speakers
    assert set(va) <= set(fold.train)
    assert len(tr) + len(va) == len(fold.train)
    _, va_again = validation_split(m, fold.train, "speaker", fraction=0.1, seed=3)
    np.testing.assert_array_equal(va, va_again)
    # A larger fraction holds out more speakers, still whole ones.
    _, va_big = validation_split(m, fold.train, "speaker", fraction=0.3, seed=3)
    assert len({m.rows[i]["speaker"] for i in va_big}) == 3
    with pytest.raises(DataError, match="at least 2 speakers"):
        validation_split(m, make_folds(m, "speaker")[0].test, "speaker")


def test_validation_edge_cases():
    m = make_manifest(sessions=(1, 2))
    idx = np.arange(len(m))
    tr, va = validation_split(m, idx, fraction=0.0)
    assert len(va) == 0 and len(tr) == len(m)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        validation_split(m, idx, fraction=1.0)
    with pytest.raises(ConfigError, match="unknown validation strategy"):
        validation_split(m, idx, strategy="random")
    m.rows[0]["label"] = "rare"  # one row of a class: stratification impossible, falls back
    m.classes.append("rare")
    tr, va = validation_split(m, idx, fraction=0.1)
    assert len(va) == 8 and set(va) <= set(idx)


def test_missing_class_in_training_part():
    m = make_manifest(sessions=(1, 2, 3))
    for i, r in enumerate(m.rows):
        if r["label"] == "sad" and r["session"] != 3:
            r["label"] = "neu"
    folds = make_folds(m, "session")
    check_fold_classes(m, folds[0].train, "fold 1 (test group 1)")  # sad is in session 3
    with pytest.raises(DataError, match=r"^fold 3 \(test group 3\): the training part has no 'sad' "):
        check_fold_classes(m, folds[2].train, "fold 3 (test group 3)")
