"""The manifest: one JSON object per utterance, the common currency of the toolkit.

Every reader (``iemocap``, ``demo``, a user's CSV/JSONL, a feature dump) writes
``OUT/manifest.jsonl`` and ``OUT/labels.json``; every later step reads them back
with :func:`read_manifest`.

Row keys
--------
``utt_id``   unique id (str)
``corpus``   corpus name (str)
``session``  recording session / group used for leave-one-session-out (str or int, may be null)
``speaker``  speaker id (str, may be null)
``label``    emotion class, one of ``labels.json["classes"]`` (str)
``audio``    path to a sound file, or null
``text``     transcript, or null
``duration`` seconds, or null
Optional: ``gender``, ``scripted``, ``label_raw``, ``fold`` (an explicit CV fold),
``features`` (precomputed speech features: ``file.npy`` or ``store.npz#utt_id``).

Relative paths in ``audio`` and ``features`` are resolved against the manifest's folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from fdrl.errors import DataError
from fdrl.utils.io import read_json, write_json, write_jsonl

REQUIRED_KEYS = ("utt_id", "corpus", "session", "speaker", "label", "audio", "text", "duration")
OPTIONAL_KEYS = ("gender", "scripted", "label_raw", "fold", "features", "dialog")
MANIFEST_NAME = "manifest.jsonl"
_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (None when it is).

    Python keeps bytes that were not UTF-8 as surrogates: an undecodable command-line
    byte becomes U+DC80..U+DCFF (surrogateescape), a JSON ``"\\ud800"`` (valid JSON) an
    unpaired surrogate. Tokenizers and UTF-8 writers fail on both.
    """
    bad = _SURROGATE.search(text)
    if bad is None:
        return None
    code, at = ord(bad.group()), bad.start() + 1
    if 0xDC80 <= code <= 0xDCFF:
        return f"undecodable byte 0x{code - 0xDC00:02x} at character {at}"
    return f"unpaired surrogate U+{code:04X} at character {at}"
LABELS_NAME = "labels.json"


@dataclass
class Manifest:
    """Rows of a prepared corpus plus its class list (fixed order = class index)."""

    rows: list[dict[str, Any]]
    classes: list[str]
    root: Path = field(default_factory=Path)  # folder the manifest was read from
    meta: dict[str, Any] = field(default_factory=dict)  # labels.json (e.g. "speech_features")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def label_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def labels(self) -> list[int]:
        idx = self.label_index
        return [idx[r["label"]] for r in self.rows]

    def resolve(self, value: str | None) -> Path | None:
        """Resolve a path stored in a row (``audio``/``features``) against the manifest folder."""
        if value is None:
            return None
        p = Path(value.split("#", 1)[0])
        suffix = ("#" + value.split("#", 1)[1]) if "#" in value else ""
        full = p if p.is_absolute() else (self.root / p)
        return Path(str(full) + suffix)

    def has_modality(self, modality: str) -> bool:
        """True when every row has input for ``modality`` ('speech' or 'text')."""
        if modality == "text":
            return all(r.get("text") not in (None, "") for r in self.rows)
        return all(r.get("audio") or r.get("features") for r in self.rows)

    def subset(self, indices) -> "Manifest":
        return Manifest([self.rows[i] for i in indices], list(self.classes), self.root, self.meta)


def write_manifest(out_dir: str | Path, rows: list[dict[str, Any]], classes: list[str],
                   extra_labels: dict[str, Any] | None = None) -> Path:
    """Write ``manifest.jsonl`` and ``labels.json`` atomically; return the manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ordered = []
    for r in rows:
        o = {k: r.get(k) for k in REQUIRED_KEYS}
        o.update({k: v for k, v in r.items() if k not in o})
        ordered.append(o)
    counts = {c: 0 for c in classes}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    labels = {"classes": list(classes), "counts": counts}
    labels.update(extra_labels or {})
    write_jsonl(out / MANIFEST_NAME, ordered)
    write_json(out / LABELS_NAME, labels)
    return out / MANIFEST_NAME


def json_lines(lines, path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL text; a line that is
    not a JSON object is a :class:`DataError` naming ``path`` and the line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line")
        yield lineno, row


def read_manifest(path: str | Path) -> Manifest:
    """Read a prepared manifest (a folder holding manifest.jsonl + labels.json, or the file).

    Raises :class:`DataError` naming the file and line for any malformed row.
    """
    path = Path(path)
    mpath = path / MANIFEST_NAME if path.is_dir() else path
    if not mpath.is_file():
        raise DataError(f"{mpath}: manifest not found (run `fdrl prepare ...` first)")
    lpath = mpath.parent / LABELS_NAME
    rows: list[dict[str, Any]] = []
    try:
        # split on "\n" only: str.splitlines would also cut at U+2028 or U+0085, which
        # JSON written with ensure_ascii=False leaves unescaped inside transcripts
        lines = mpath.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        line = mpath.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{mpath}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"re-save it as UTF-8") from None
    for lineno, row in json_lines(lines, mpath):
        for key in ("utt_id", "label"):
            if row.get(key) in (None, ""):
                raise DataError(f"{mpath}:{lineno}: field '{key}' is missing or empty")
        for key, value in row.items():
            problem = unicode_problem(value) if isinstance(value, str) else None
            if problem is not None:  # tokenizers and UTF-8 writers would fail on it later
                raise DataError(f"{mpath}:{lineno}: field '{key}' is not valid Unicode text "
                                f"({problem}); fix the row")
        rows.append(row)
    if not rows:
        raise DataError(f"{mpath}: manifest has no rows")
    meta: dict[str, Any] = {}
    if lpath.is_file():
        try:
            meta = read_json(lpath)
            classes = list(meta["classes"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{lpath}: expected a JSON object with a 'classes' list") from None
    else:
        classes = sorted({r["label"] for r in rows})
    known = set(classes)
    seen: set[str] = set()
    for i, r in enumerate(rows, 1):
        if r["label"] not in known:
            raise DataError(f"{mpath}: row {i} ({r['utt_id']}): label '{r['label']}' "
                            f"is not one of {classes} in {lpath.name}")
        if r["utt_id"] in seen:
            raise DataError(f"{mpath}: row {i}: duplicate utt_id '{r['utt_id']}'")
        seen.add(r["utt_id"])
    return Manifest(rows=rows, classes=classes, root=mpath.parent, meta=meta)
