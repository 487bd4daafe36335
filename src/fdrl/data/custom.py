"""A user's own corpus: a CSV/TSV or JSONL table -> a validated manifest.

Columns
-------
``label`` (required) and at least one of ``audio``, ``features``, ``text`` per row.
Optional: ``utt_id`` (default: the audio file's stem, else ``row<line>``), ``speaker``,
``session``, ``duration``, ``gender``, ``fold``, ``corpus``, ``dialog``, ``scripted``,
``label_raw``. Columns starting with ``x_`` are carried into the manifest unchecked;
any other column is an error (most often a typo: the closest known name is suggested).

Paths
-----
Relative ``audio`` / ``features`` paths are resolved against the folder of the input
file and stored as *absolute* paths, so the manifest works from any output folder.

Classes
-------
The sorted unique labels after ``label_map``, unless ``classes`` is given (then each
label must be one of them and the order is kept).

Every row is checked and *all* problems are reported together, with line numbers, in
one :class:`~fdrl.errors.DataError`; nothing is written when there is any problem.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from fdrl.data.featstore import FeatureStore, split_ref
from fdrl.data.manifest import OPTIONAL_KEYS, REQUIRED_KEYS, write_manifest
from fdrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KNOWN_COLUMNS = tuple(dict.fromkeys(REQUIRED_KEYS + OPTIONAL_KEYS))
INPUT_COLUMNS = ("audio", "features", "text")
EXTRA_PREFIX = "x_"  # user columns kept as-is
MAX_LISTED = 50  # problems listed in one error; the rest are counted


def problem_report(summary: str, problems: list[str], limit: int = MAX_LISTED) -> str:
    """One summary line, then one line per problem (at most ``limit``), then 'and N more'."""
    lines = [summary] + [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def parse_label_map(value: str | os.PathLike | dict | None) -> dict[str, str | None] | None:
    """Turn a label map given as a dict, a JSON/YAML file or ``"a=b,c=d"`` into a dict.

    ``"a="`` (or a null/empty value in a file) maps ``a`` to None: those rows are dropped.

    Raises
    ------
    ConfigError
        Unreadable file, not a mapping, or a malformed ``a=b`` item.
    """
    if value is None or isinstance(value, dict):
        return _clean_map(value, "label map") if value is not None else None
    s = str(value)
    path = Path(s)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: label map file not found")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # json.JSONDecodeError or yaml.YAMLError
            raise ConfigError(f"{path}: cannot parse label map ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: label map must be a mapping old -> new, got {type(data).__name__}")
        return _clean_map(data, str(path))
    out: dict[str, str | None] = {}
    for item in filter(None, (x.strip() for x in s.split(","))):
        if "=" not in item:
            raise ConfigError(f"label map item '{item}' must look like old=new (or old= to drop)")
        old, new = (x.strip() for x in item.split("=", 1))
        if not old:
            raise ConfigError(f"label map item '{item}' has an empty old label")
        out[old] = new or None
    return out


def _clean_map(data: dict, where: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for k, v in data.items():
        if v is not None and not isinstance(v, (str, int)):
            raise ConfigError(f"{where}: label '{k}' maps to {v!r}; expected a label or null")
        out[str(k)] = None if v in (None, "") else str(v)
    return out


def _read_table(path: Path) -> tuple[dict[str, int], Iterator[tuple[int, dict[str, Any]]], list[str]]:
    """Columns (-> first line using them), ``(line number, row)`` pairs and parse problems."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"re-save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        rows = []
        for row in reader:
            extra = row.pop(None, None)  # values beyond the header
            row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
            if extra:
                row["__extra__"] = extra
            rows.append((reader.line_num, row))
        return {c: 1 for c in columns}, iter(rows), []
    if suffix in (".jsonl", ".ndjson"):
        rows, problems, columns = [], [], {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {lineno}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {lineno}: expected a JSON object, got {type(row).__name__}")
                continue
            for k in row:
                columns.setdefault(k, lineno)
            rows.append((lineno, row))
        return columns, iter(rows), problems
    raise DataError(f"{path}: unsupported corpus file type '{path.suffix}'; use .csv, .tsv or "
                    f".jsonl (one JSON object per line)")


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "")


def _as_group(v: Any) -> Any:
    """Session/fold ids: '3' -> 3 so groups sort naturally; other strings stay strings."""
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return v


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool) or v is None:
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "t"):
        return True
    if s in ("0", "false", "no", "n", "f"):
        return False
    raise ValueError(v)


def prepare_custom(file: str | os.PathLike, out: str | os.PathLike,
                   label_map: str | os.PathLike | dict | None = None, corpus: str | None = None,
                   classes: list[str] | None = None) -> Path:
    """Validate a user's corpus table and write ``OUT/manifest.jsonl`` + ``OUT/labels.json``.

    Parameters
    ----------
    file : str or PathLike
        ``.csv``, ``.tsv`` or ``.jsonl`` (UTF-8) with the columns in the module docstring.
    out : str or PathLike
        Output folder.
    label_map : dict, path or str, optional
        Rename labels (see :func:`parse_label_map`); a label mapped to null/"" drops the row.
    corpus : str, optional
        Corpus name for rows without a ``corpus`` value; default: the file's stem.
    classes : list of str, optional
        Explicit class order; default: sorted unique labels after mapping.

    Returns
    -------
    Path
        ``OUT/manifest.jsonl``.

    Raises
    ------
    DataError
        Listing every problem with its line number; nothing is written.
    """
    path = Path(file).resolve()
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    mapping = parse_label_map(label_map)
    base = path.parent
    corpus = corpus or path.stem
    columns, table, problems = _read_table(path)

    known = set(KNOWN_COLUMNS)
    for col, first_line in columns.items():
        if col in known or col.startswith(EXTRA_PREFIX):
            continue
        close = difflib.get_close_matches(col, KNOWN_COLUMNS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known columns: {', '.join(KNOWN_COLUMNS)}"
        problems.append(f"line {first_line}: unknown column '{col}' ({hint}; prefix custom columns with "
                        f"'{EXTRA_PREFIX}' to keep them)")
    if "label" not in columns:
        problems.append("line 1: no 'label' column")
    if not set(INPUT_COLUMNS) & set(columns):
        problems.append(f"line 1: needs at least one of the columns {', '.join(INPUT_COLUMNS)}")

    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    dropped = 0
    stores: dict[Path, FeatureStore | None] = {}
    n_rows = 0
    for lineno, raw in table:
        n_rows += 1
        where = f"line {lineno}"
        if "__extra__" in raw:
            problems.append(f"{where}: {len(raw.pop('__extra__'))} more values than header columns")
        row = {k: (None if _blank(v) else v) for k, v in raw.items() if k in known or k.startswith(EXTRA_PREFIX)}
        label = row.get("label")
        if label is None:
            problems.append(f"{where}: empty label")
        else:
            label = str(label)
            if mapping and label in mapping:
                if mapping[label] is None:
                    dropped += 1
                    continue
                row["label_raw"] = row.get("label_raw") or label
                label = mapping[label]
            row["label"] = label
            if classes is not None and label not in classes:
                problems.append(f"{where}: label '{label}' is not one of the classes {classes}")
        if not any(row.get(c) is not None for c in INPUT_COLUMNS):
            problems.append(f"{where}: none of {', '.join(INPUT_COLUMNS)} is given")
        if row.get("audio") is not None:
            audio = Path(str(row["audio"]))
            audio = audio if audio.is_absolute() else base / audio
            if not audio.is_file():
                problems.append(f"{where}: audio file not found: {audio}")
            row["audio"] = str(audio)
        if row.get("features") is not None:
            problems.extend(f"{where}: {p}" for p in _check_features_ref(row, base, stores))
        if row.get("duration") is not None:
            try:
                row["duration"] = float(row["duration"])
            except (TypeError, ValueError):
                row["duration"] = -1.0
            if not row["duration"] >= 0:  # also catches NaN
                problems.append(f"{where}: duration must be a non-negative number of seconds, "
                                f"got {raw['duration']!r}")
        if row.get("scripted") is not None:
            try:
                row["scripted"] = _as_bool(row["scripted"])
            except ValueError:
                problems.append(f"{where}: scripted must be true/false, got {row['scripted']!r}")
        row["session"] = _as_group(row.get("session"))
        if "fold" in row:
            row["fold"] = _as_group(row["fold"])
        if row.get("speaker") is not None:
            row["speaker"] = str(row["speaker"])
        utt = row.get("utt_id")
        if utt is None:
            utt = Path(row["audio"]).stem if row.get("audio") else f"row{lineno}"
        utt = str(utt)
        if utt in seen:
            how = "" if row.get("utt_id") is not None else " (derived from the audio file name; add an utt_id column)"
            problems.append(f"{where}: duplicate utt_id '{utt}' (first on line {seen[utt]}){how}")
        else:
            seen[utt] = lineno
        row["utt_id"] = utt
        row["corpus"] = row.get("corpus") or corpus
        for key in ("speaker", "text", "duration"):
            row.setdefault(key, None)
        row.setdefault("audio", None)
        rows.append(row)

    if not problems and not rows:
        problems.append("no rows left" + (f" ({dropped} dropped by the label map)" if dropped else ""))
    for store in stores.values():
        if store is not None:
            store.close()
    if problems:
        raise DataError(problem_report(f"{path}: {len(problems)} problem(s) in {n_rows} rows; "
                                       f"nothing was written", problems))
    if dropped:
        log.info("%d rows dropped by the label map (mapped to null)", dropped)
    class_list = list(classes) if classes is not None else sorted({r["label"] for r in rows})
    return write_manifest(out, rows, class_list, {"source": {"file": str(path),
                                                             "label_map": mapping}})


def _check_features_ref(row: dict[str, Any], base: Path,
                        stores: dict[Path, FeatureStore | None]) -> list[str]:
    """Resolve ``row['features']`` against ``base`` (in place); return problems found."""
    fpath, key = split_ref(str(row["features"]))
    fpath = fpath if fpath.is_absolute() else base / fpath
    row["features"] = str(fpath) + (f"#{key}" if key is not None else "")
    if not fpath.is_file():
        return [f"features file not found: {fpath}"]
    if fpath.suffix == ".npz":
        if key is None:
            return [f"features '{fpath.name}' is an .npz store: write it as {fpath.name}#<utt_id>"]
        if fpath not in stores:
            try:
                stores[fpath] = FeatureStore(fpath)
            except DataError as exc:
                stores[fpath] = None
                return [str(exc)]
        store = stores[fpath]
        if store is not None and key not in store:
            return [f"no utterance '{key}' in feature store {fpath}"]
    return []
