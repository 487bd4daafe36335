"""EmoDB reader (Berlin Database of Emotional Speech): ``ROOT/labels.csv`` -> manifest rows.

``labels.csv`` columns: file (relative to ROOT), speaker, gender, age, sentence, text,
emotion, version. Seven classes with their English names in sorted order. The session
of a row is its speaker, so leave-one-session-out on EmoDB is leave-one-speaker-out.
Gender is stored as ``M``/``F`` like the IEMOCAP reader.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import soundfile as sf

from fdrl.data.custom import problem_report
from fdrl.data.manifest import write_manifest
from fdrl.errors import DataError

CLASSES = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
COLUMNS = ("file", "speaker", "gender", "emotion")  # required; age, sentence, text, version optional
_GENDER = {"male": "M", "m": "M", "female": "F", "f": "F"}


def prepare_emodb(root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``OUT/manifest.jsonl`` + ``OUT/labels.json`` for an EmoDB folder.

    Parameters
    ----------
    root : str or PathLike
        Folder holding ``labels.csv`` and the wav files it names.
    out : str or PathLike
        Output folder.

    Returns
    -------
    Path
        ``OUT/manifest.jsonl``.

    Raises
    ------
    DataError
        ``labels.csv`` missing or lacking columns; every unknown emotion, missing or
        unreadable wav listed with its line number.
    """
    root = Path(root).resolve()
    table = root / "labels.csv"
    if not table.is_file():
        raise DataError(f"{root}: no labels.csv (expected columns: file, speaker, gender, age, "
                        f"sentence, text, emotion, version)")
    try:
        with open(table, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{table}: missing column(s) {missing}; found {reader.fieldnames}")
            records = [(reader.line_num, r) for r in reader]
    except UnicodeDecodeError as exc:
        raise DataError(f"{table}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"re-save it as UTF-8") from None

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for lineno, r in records:
        emotion = (r["emotion"] or "").strip()
        if emotion not in CLASSES:
            problems.append(f"line {lineno}: emotion '{emotion}' is not one of {CLASSES}")
            continue
        wav = root / r["file"].strip()
        try:
            duration = round(float(sf.info(str(wav)).duration), 4)
        except (sf.SoundFileError, RuntimeError) as exc:
            problems.append(f"line {lineno}: {wav}: " + ("not found" if not wav.is_file() else
                                                        f"unreadable audio ({exc})"))
            continue
        speaker = r["speaker"].strip()
        gender = (r.get("gender") or "").strip()
        rows.append({
            "utt_id": wav.stem, "corpus": "emodb", "session": speaker, "speaker": speaker,
            "label": emotion, "audio": str(wav), "text": (r.get("text") or "").strip() or None,
            "duration": duration, "gender": _GENDER.get(gender.lower(), gender or None),
            "label_raw": emotion, "sentence": (r.get("sentence") or "").strip() or None,
        })
    if problems:
        raise DataError(problem_report(f"{table}: {len(problems)} problem(s); nothing was written", problems))
    if not rows:
        raise DataError(f"{table}: no rows")
    ids = [r["utt_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError(f"{table}: two rows name the same wav file stem")
    return write_manifest(out, rows, list(CLASSES), {"source": {"labels_csv": str(table)}})
