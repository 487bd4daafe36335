"""EmoDB reader on a generated labels.csv + wav folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fdrl.data.emodb import CLASSES, prepare_emodb
from fdrl.data.folds import make_folds
from fdrl.data.manifest import read_manifest
from fdrl.errors import DataError

HEADER = "file,speaker,gender,age,sentence,text,emotion,version\n"


def make_emodb(root: Path, rows: list[tuple[str, str, str, str]], write_wavs: bool = True) -> Path:
    """rows: (stem, speaker, gender, emotion); 0.5 s wavs at 22.05 kHz like the shared copy."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for stem, speaker, gender, emotion in rows:
        lines.append(f"wav/{stem}.wav,{speaker},{gender},30,a01,Der Lappen liegt auf dem Eisschrank.,"
                     f"{emotion},a\n")
        if write_wavs:
            sf.write(root / "wav" / f"{stem}.wav", np.full(11025, 0.1, np.float32), 22050)
    (root / "labels.csv").write_text("".join(lines))
    return root


def test_rows_classes_and_speaker_sessions(tmp_path):
    root = make_emodb(tmp_path / "emodb", [("03a01Wa", "03", "male", "anger"),
                                           ("03a01Nc", "03", "male", "neutral"),
                                           ("08a01Ta", "08", "female", "sadness")])
    m = read_manifest(prepare_emodb(root, tmp_path / "out"))
    assert m.classes == CLASSES == sorted(CLASSES)
    first = m.rows[0]
    assert (first["utt_id"], first["speaker"], first["session"]) == ("03a01Wa", "03", "03")
    assert first["gender"] == "M" and first["corpus"] == "emodb" and first["label"] == "anger"
    assert first["duration"] == pytest.approx(0.5)
    assert Path(first["audio"]).is_absolute() and Path(first["audio"]).is_file()
    assert first["text"] == "Der Lappen liegt auf dem Eisschrank."
    # session = speaker: leave-one-session-out is leave-one-speaker-out.
    assert [f.test_group for f in make_folds(m, "session")] == ["03", "08"]


def test_problems_listed_with_line_numbers(tmp_path):
    root = make_emodb(tmp_path / "emodb", [("03a01Wa", "03", "male", "anger"),
                                           ("03a01Xa", "03", "male", "anxiety")])
    (root / "wav" / "03a01Wa.wav").unlink()
    with pytest.raises(DataError) as err:
        prepare_emodb(root, tmp_path / "out")
    msg = str(err.value)
    assert "2 problem(s)" in msg.splitlines()[0]
    assert "line 2: " in msg and "03a01Wa.wav: not found" in msg
    assert "line 3: emotion 'anxiety' is not one of" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="no labels.csv"):
        prepare_emodb(tmp_path, tmp_path / "out")
