"""IEMOCAP reader on a small tree written in the official release formats."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fdrl.data.iemocap import parse_utt_id, prepare_iemocap
from fdrl.data.manifest import read_manifest
from fdrl.errors import DataError

# (utt_id, raw label, start, end, transcript or None); dialogue = id without the last part.
UTTERANCES = {
    1: {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", "neu", 6.2901, 8.2357, "Excuse me."),
            # Female-led dialogue, male speaker: speaker must be Ses01_M.
            ("Ses01F_impro01_M000", "ang", 8.5, 10.0, "Do you have your forms?"),
            ("Ses01F_impro01_F001", "exc", 10.1, 12.6, "Yeah, I got it!"),
            ("Ses01F_impro01_M001", "xxx", 13.0, 14.0, "Whatever."),
            ("Ses01F_impro01_F002", "fru", 14.5, 16.0, "This is ridiculous."),
        ],
        "Ses01M_script01_1": [
            ("Ses01M_script01_1_F000", "sad", 1.0, 3.5, "I miss him."),
            ("Ses01M_script01_1_M000", "sur", 4.0, 5.0, "What?"),
            ("Ses01M_script01_1_M001", "hap", 5.5, 7.25, "That's wonderful."),
        ],
    },
    2: {
        "Ses02F_impro02": [
            ("Ses02F_impro02_M000", "neu", 2.0, 4.0, "Okay."),
            ("Ses02F_impro02_F000", "ang", 4.5, 6.0, None),  # no transcript line
        ],
    },
}
NO_WAV = {"Ses02F_impro02_M000"}  # utterance whose wav is missing from the copy


def _eval_block(utt, label, start, end) -> str:
    # First line carries the consensus label; annotator lines follow (tab separated).
    return (f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 2.5000]\n"
            f"C-E2:\tNeutral;\t()\nC-E3:\tAnger;\t()\n"
            f"A-E3:\tval 3; act 2; dom  2;\t()\n\n")


def make_iemocap_tree(root: Path) -> Path:
    """Write Session1/Session2 of a fake IEMOCAP_full_release; return root."""
    for session, dialogs in UTTERANCES.items():
        sdir = root / f"Session{session}"
        for dialog, utts in dialogs.items():
            ev = sdir / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            tr = sdir / "dialog" / "transcriptions" / f"{dialog}.txt"
            ev.parent.mkdir(parents=True, exist_ok=True)
            tr.parent.mkdir(parents=True, exist_ok=True)
            ev.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
                          + "".join(_eval_block(u, lab, s, e) for u, lab, s, e, _ in utts))
            lines = ["M: (laughs) not an utterance",
                     f"{dialog}_MXX0 [000.1000-000.9000]: [BREATHING]",
                     f"{utts[0][0]}: a line without times"]
            lines += [f"{u} [{s:08.4f}-{e:08.4f}]: {t}" for u, _, s, e, t in utts if t is not None]
            tr.write_text("\n".join(lines) + "\n")
            wdir = sdir / "sentences" / "wav" / dialog
            wdir.mkdir(parents=True, exist_ok=True)
            for u, *_ in utts:
                if u not in NO_WAV:
                    sf.write(wdir / f"{u}.wav", np.full(160, 0.1, dtype=np.float32), 16000)
    # Annotation subfolders and a macOS resource fork exist in real copies; both are ignored.
    (root / "Session1" / "dialog" / "EmoEvaluation" / "Categorical").mkdir()
    (root / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05")
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_iemocap_tree(tmp_path / "IEMOCAP_full_release")


def _rows(path: Path) -> dict[str, dict]:
    return {r["utt_id"]: r for r in read_manifest(path).rows}


def test_parse_utt_id_speaker_is_the_letter_before_the_number():
    assert parse_utt_id("Ses01F_impro01_M003") == {
        "session": 1, "speaker": "Ses01_M", "gender": "M", "dialog": "Ses01F_impro01",
        "scripted": False}
    meta = parse_utt_id("Ses05M_script02_2_F010")
    assert meta["speaker"] == "Ses05_F" and meta["dialog"] == "Ses05M_script02_2" and meta["scripted"]
    assert parse_utt_id("Ses01F_script01_1_MXX0") is None
    assert parse_utt_id("03a01Fa") is None


def test_four_class_rows(tree, tmp_path):
    path = prepare_iemocap(tree, tmp_path / "out")
    m = read_manifest(path)
    assert m.classes == ["ang", "hap", "neu", "sad"]
    rows = _rows(path)
    # xxx, fru and sur are dropped; exc is kept as hap.
    assert set(rows) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001",
                         "Ses01M_script01_1_F000", "Ses01M_script01_1_M001",
                         "Ses02F_impro02_M000", "Ses02F_impro02_F000"}
    exc = rows["Ses01F_impro01_F001"]
    assert (exc["label"], exc["label_raw"]) == ("hap", "exc")
    male = rows["Ses01F_impro01_M000"]
    assert (male["speaker"], male["gender"], male["session"]) == ("Ses01_M", "M", 1)
    assert male["dialog"] == "Ses01F_impro01" and male["scripted"] is False
    assert male["corpus"] == "iemocap" and male["text"] == "Do you have your forms?"
    scripted = rows["Ses01M_script01_1_F000"]
    assert scripted["speaker"] == "Ses01_F" and scripted["scripted"] is True
    assert scripted["duration"] == pytest.approx(2.5)
    assert rows["Ses01F_impro01_F000"]["text"] == "Excuse me."  # not the no-times line
    assert rows["Ses02F_impro02_F000"]["text"] is None
    audio = Path(rows["Ses01F_impro01_F000"]["audio"])
    assert audio.is_absolute() and audio.is_file()
    assert rows["Ses02F_impro02_M000"]["audio"] is None
    assert [r["session"] for r in m.rows] == [1, 1, 1, 1, 1, 2, 2]


def test_unmerged_and_six_class(tree, tmp_path):
    m = read_manifest(prepare_iemocap(tree, tmp_path / "u", merge_excited=False))
    assert m.classes == ["ang", "exc", "hap", "neu", "sad"]
    assert {r["utt_id"]: r["label"] for r in m.rows}["Ses01F_impro01_F001"] == "exc"
    m6 = read_manifest(prepare_iemocap(tree, tmp_path / "six", classes=6))
    assert m6.classes == ["ang", "exc", "fru", "hap", "neu", "sad"]
    labels = {r["utt_id"]: r["label"] for r in m6.rows}
    assert labels["Ses01F_impro01_F002"] == "fru"
    assert "Ses01M_script01_1_M000" not in labels  # sur is not in the 6-class set


def test_idempotent_until_options_or_annotations_change(tree, tmp_path, caplog):
    out = tmp_path / "out"
    path = prepare_iemocap(tree, out)
    first = path.stat()
    with caplog.at_level(logging.INFO, logger="fdrl.data.iemocap"):
        assert prepare_iemocap(tree, out) == path
    assert "up to date" in caplog.text
    again = path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    prepare_iemocap(tree, out, merge_excited=False)  # other options: rebuilt
    assert json.loads((out / "labels.json").read_text())["iemocap"]["merge_excited"] is False
    assert "exc" in read_manifest(out).classes

    prepare_iemocap(tree, out)
    kept = path.stat().st_ino
    ev = tree / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    future = path.stat().st_mtime + 100
    os.utime(ev, (future, future))  # annotation edited after the manifest was written
    prepare_iemocap(tree, out)
    assert path.stat().st_ino != kept


def test_partial_copy_warns_with_per_session_counts(tree, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fdrl.data.iemocap"):
        prepare_iemocap(tree, tmp_path / "out")
    warning = [r.getMessage() for r in caplog.records if "5531" in r.getMessage()]
    assert len(warning) == 1
    assert "7 utterances" in warning[0] and "1: 5, 2: 2, 3: 0" in warning[0]
    assert any("no wav" in r.getMessage() for r in caplog.records)


def test_missing_sessions_names_root_and_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*Session1 \.\.\. Session5.*EmoEvaluation"):
        prepare_iemocap(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="not found"):
        prepare_iemocap(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_points_to_nested_release_folder(tree, tmp_path):
    with pytest.raises(DataError, match="did you mean .*IEMOCAP_full_release"):
        prepare_iemocap(tree.parent, tmp_path / "out")
