"""Atomic file writes: an output is either complete or absent, never half-written.

Each writer writes to a temporary file in the destination folder, flushes and
fsyncs it, then renames it over the destination (``os.replace`` is atomic on POSIX).
The file gets the mode a plain ``open(path, "w")`` would give it: the mode of the
file it replaces, else 0666 less the process umask (read at write time).

CSV files written for people (``fdrl plot``'s tables) go through :func:`csv_cell`,
so a spreadsheet never runs an id or a class name as a formula.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc); else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not atomic: only where /proc does not tell
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """What ``open(path, "w")`` would leave: the existing file's mode, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The caller may write the temporary path however it likes (some writers, e.g.
    safetensors, delete and recreate it); its mode is set just before the rename.
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fchmod(fh.fileno(), _new_file_mode(path))  # mkstemp made it 0600
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    lines = [json.dumps(r, default=_json_default, ensure_ascii=False) for r in rows]
    write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def write_npz(path: str | os.PathLike, compressed: bool = False, **arrays: np.ndarray) -> None:
    """Write a ``.npz`` atomically (the name keeps its ``.npz``)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    write_bytes(path, buf.getvalue())


#: a cell a spreadsheet would run as a formula starts with one of these (OWASP, "CSV
#: injection"); the full-width forms are read as formulas by some spreadsheets too
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """``value`` as a spreadsheet-safe CSV cell.

    Numbers (and strings that are plain decimal numbers, e.g. ``"-0.12500"``) are kept;
    any other text starting with ``= + - @``, a tab or a line break gets a leading
    single quote, so spreadsheets show it as text instead of running it.
    """
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(header: list[str], rows) -> str:
    """CSV text (``\n`` line ends) of ``header`` and ``rows``, every cell through
    :func:`csv_cell`."""
    # the writer ends rows with "\r\n" so that it quotes a cell holding either character
    # (with "\n" Python 3.11 leaves a bare "\r" unquoted); each row then ends with "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    lines = []
    for row in (header, *rows):
        w.writerow([csv_cell(v) for v in row])
        lines.append(buf.getvalue()[:-2] + "\n")
        buf.seek(0)
        buf.truncate()
    return "".join(lines)


def write_csv(path: str | os.PathLike, header: list[str], rows) -> None:
    """Write a spreadsheet-safe CSV atomically (see :func:`csv_cell`)."""
    write_text(path, csv_text(header, rows))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
