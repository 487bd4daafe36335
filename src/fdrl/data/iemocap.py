"""IEMOCAP reader: an official ``IEMOCAP_full_release`` copy -> manifest rows.

Reads, per session ``ROOT/SessionN``:

``dialog/EmoEvaluation/<dialog>.txt``
    blocks whose first line is ``[start - end]<TAB>utt_id<TAB>label<TAB>[v, a, d]``
    (the consensus label), followed by per-annotator lines; other lines are ignored.
``dialog/transcriptions/<dialog>.txt``
    ``utt_id [start-end]: text``; lines of other forms (``M: ...``, ids without times)
    are not utterances and are skipped.
``sentences/wav/<dialog>/<utt_id>.wav``
    the segmented 16 kHz utterance (absolute path in the manifest; null when missing).

The standard 4-class set merges excited into happy: 5531 utterances (ang 1103,
hap 1636, sad 1084, neu 1708). The 6-class set keeps ang, exc, fru, hap, neu, sad
(7380 utterances). Another count is logged as a warning with per-session counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fdrl.data.manifest import LABELS_NAME, MANIFEST_NAME, write_manifest
from fdrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

N_SESSIONS = 5
# Expected utterance counts of a full release, per class set (well-known reference figures).
EXPECTED_COUNTS = {4: 5531, 6: 7380}
CLASSES_4 = ["ang", "hap", "neu", "sad"]
CLASSES_4_UNMERGED = ["ang", "exc", "hap", "neu", "sad"]
CLASSES_6 = ["ang", "exc", "fru", "hap", "neu", "sad"]

_EVAL_RE = re.compile(r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(\S+)\t(\S+)\t\[")
_TRANS_RE = re.compile(r"^(\S+) \[(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\]:\s?(.*)$")
# Ses01F_impro01_M003, Ses01M_script01_1_F012: session, dialogue, speaker gender, number.
_UTT_RE = re.compile(r"^Ses(\d\d)([MF])_(.+)_([MF])(\d+)$")
_READER_VERSION = 1  # bump when the row format changes, so old manifests are rebuilt


def parse_utt_id(utt_id: str) -> dict[str, Any] | None:
    """Metadata encoded in an IEMOCAP utterance id, or None when it is not one.

    The speaker is the session plus the gender letter *right before the utterance
    number*: in ``Ses01F_impro01_M003`` the female actor leads the dialogue but the
    male actor speaks, so the speaker is ``Ses01_M``.

    Returns
    -------
    dict or None
        ``session`` (int), ``speaker``, ``gender``, ``dialog``, ``scripted``.
    """
    m = _UTT_RE.match(utt_id)
    if not m:
        return None
    nn, lead, rest, gender, _ = m.groups()
    dialog = f"Ses{nn}{lead}_{rest}"
    return {"session": int(nn), "speaker": f"Ses{nn}_{gender}", "gender": gender,
            "dialog": dialog, "scripted": "script" in dialog}


def label_mapping(classes: int = 4, merge_excited: bool = True) -> tuple[dict[str, str], list[str]]:
    """Raw IEMOCAP tag -> class, and the fixed class order, for a class set.

    ``merge_excited`` applies to the 4-class set only; the 6-class set keeps ``exc``.
    Tags not in the mapping (xxx, oth, sur, fea, dis, and fru in 4-class) are dropped.
    """
    if classes == 4:
        mapping = {"ang": "ang", "hap": "hap", "neu": "neu", "sad": "sad"}
        mapping["exc"] = "hap" if merge_excited else "exc"
        return mapping, list(CLASSES_4 if merge_excited else CLASSES_4_UNMERGED)
    if classes == 6:
        return {c: c for c in CLASSES_6}, list(CLASSES_6)
    raise ConfigError(f"IEMOCAP classes must be 4 or 6, got {classes}")


def read_emo_evaluation(path: Path) -> list[tuple[str, str, float, float]]:
    """Consensus labels of one dialogue: ``[(utt_id, raw_label, start, end), ...]`` in file order."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _EVAL_RE.match(line)
            if m:
                start, end, utt, label = m.groups()
                out.append((utt, label, float(start), float(end)))
    return out


def read_transcription(path: Path) -> dict[str, str]:
    """Transcripts of one dialogue: ``{utt_id: text}``; non-utterance lines skipped."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _TRANS_RE.match(line.rstrip("\r\n"))
            if m and _UTT_RE.match(m.group(1)):
                out[m.group(1)] = m.group(4).strip()
    return out


def _session_dirs(root: Path) -> dict[int, Path]:
    """``{N: ROOT/SessionN}`` for the sessions that have EmoEvaluation files."""
    if not root.is_dir():
        raise DataError(f"{root}: IEMOCAP root folder not found (expected the IEMOCAP_full_release "
                        f"folder holding Session1 ... Session5)")
    found = {n: root / f"Session{n}" for n in range(1, N_SESSIONS + 1)
             if (root / f"Session{n}" / "dialog" / "EmoEvaluation").is_dir()}
    if not found:
        hint = ""
        nested = root / "IEMOCAP_full_release"
        if nested.is_dir():
            hint = f"; did you mean {nested}?"
        raise DataError(f"{root}: no IEMOCAP sessions found: expected Session1 ... Session5, each with "
                        f"dialog/EmoEvaluation/*.txt, dialog/transcriptions/*.txt and "
                        f"sentences/wav/<dialog>/<utt_id>.wav (the IEMOCAP_full_release layout){hint}")
    return found


def _dialog_files(session_dir: Path, sub: str) -> list[Path]:
    folder = session_dir / "dialog" / sub
    # Skip macOS '._' resource forks that appear in copies made from a Mac.
    return sorted(p for p in folder.glob("*.txt") if not p.name.startswith("."))


def _fingerprint(sessions: dict[int, Path]) -> str:
    """Hash of the annotation files' names and sizes and the number of wavs.

    Changes when the corpus copy changes (e.g. wavs added to a text-only copy).
    """
    h = hashlib.sha256()
    for n, sdir in sorted(sessions.items()):
        for sub in ("EmoEvaluation", "transcriptions"):
            for p in _dialog_files(sdir, sub):
                h.update(f"{n}/{sub}/{p.name}:{p.stat().st_size}\n".encode())
        n_wav = sum(1 for _ in (sdir / "sentences" / "wav").glob("*/*.wav"))
        h.update(f"{n}/wav:{n_wav}\n".encode())
    return h.hexdigest()[:16]


def _up_to_date(out: Path, sessions: dict[int, Path], options: dict[str, Any]) -> bool:
    manifest, labels = out / MANIFEST_NAME, out / LABELS_NAME
    if not (manifest.is_file() and labels.is_file()):
        return False
    try:
        with open(labels, encoding="utf-8") as fh:
            stored = json.load(fh).get("iemocap")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    if stored != options:
        return False
    built = manifest.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns < built for sdir in sessions.values()
               for sub in ("EmoEvaluation", "transcriptions") for p in _dialog_files(sdir, sub))


def prepare_iemocap(root: str | os.PathLike, out: str | os.PathLike, classes: int = 4,
                    merge_excited: bool = True) -> Path:
    """Parse an official IEMOCAP release into ``OUT/manifest.jsonl`` + ``OUT/labels.json``.

    Idempotent: when OUT already holds a manifest written with the same options from
    the same annotation files (fingerprint of names and sizes) and newer than all of
    them, it is kept and returned.

    Parameters
    ----------
    root : str or PathLike
        The ``IEMOCAP_full_release`` folder (holding Session1 ... Session5).
    out : str or PathLike
        Output folder.
    classes : {4, 6}
        Class set; see :func:`label_mapping`.
    merge_excited : bool
        4-class only: map ``exc`` to ``hap`` (standard) or keep it as its own class.

    Returns
    -------
    Path
        ``OUT/manifest.jsonl``.
    """
    root, out = Path(root).resolve(), Path(out)
    mapping, class_list = label_mapping(classes, merge_excited)
    sessions = _session_dirs(root)
    options = {"root": str(root), "classes": classes,
               "merge_excited": bool(merge_excited) if classes == 4 else False,
               "fingerprint": _fingerprint(sessions), "reader_version": _READER_VERSION}
    if _up_to_date(out, sessions, options):
        log.info("%s is up to date (same options, newer than the annotation files); kept",
                 out / MANIFEST_NAME)
        return out / MANIFEST_NAME

    rows: list[dict[str, Any]] = []
    no_text, no_wav, bad_ids = 0, [], []
    dialogs = [(n, sdir, f) for n, sdir in sorted(sessions.items())
               for f in _dialog_files(sdir, "EmoEvaluation")]
    # Fast on a local disk; the bar matters on network copies (10k wav stat calls).
    for n, sdir, eval_file in tqdm(dialogs, desc="IEMOCAP dialogues", unit="dlg", disable=None,
                                   leave=False):
        dialog = eval_file.stem
        texts = read_transcription(sdir / "dialog" / "transcriptions" / eval_file.name)
        for utt, raw, start, end in read_emo_evaluation(eval_file):
            if raw not in mapping:
                continue
            meta = parse_utt_id(utt)
            if meta is None:
                bad_ids.append(utt)
                continue
            wav = sdir / "sentences" / "wav" / dialog / f"{utt}.wav"
            has_wav = wav.is_file()
            if not has_wav:
                no_wav.append(str(wav))
            text = texts.get(utt)
            no_text += text is None
            rows.append({
                "utt_id": utt, "corpus": "iemocap", "session": n, "speaker": meta["speaker"],
                "label": mapping[raw], "audio": str(wav) if has_wav else None,
                "text": text, "duration": round(end - start, 4), "gender": meta["gender"],
                "dialog": dialog, "scripted": "script" in dialog, "label_raw": raw,
            })
    if not rows:
        raise DataError(f"{root}: no utterances with labels {sorted(mapping)} found in "
                        f"Session*/dialog/EmoEvaluation/*.txt")
    if bad_ids:
        log.warning("skipped %d utterance ids that do not follow the IEMOCAP pattern, e.g. %s",
                    len(bad_ids), bad_ids[:3])
    if no_wav:
        log.warning("%d of %d utterances have no wav under SessionN/sentences/wav (audio = null), "
                    "e.g. %s", len(no_wav), len(rows), no_wav[0])
    if no_text:
        log.warning("%d of %d utterances have no transcript (text = null)", no_text, len(rows))
    expected = EXPECTED_COUNTS[classes]
    if len(rows) != expected:
        per_session = Counter(r["session"] for r in rows)
        log.warning("IEMOCAP %d-class: %d utterances, a full release gives %d; per session: %s "
                    "(sessions found: %s). Is the copy complete?", classes, len(rows), expected,
                    ", ".join(f"{s}: {per_session.get(s, 0)}" for s in range(1, N_SESSIONS + 1)),
                    sorted(sessions))
    return write_manifest(out, rows, class_list, {"iemocap": options})
