"""Precomputed speech features: ``.npy`` files and ``.npz`` stores, plus a reader for dumps.

A manifest row's ``features`` field is a reference:

``path/utt.npy``
    one array, (L, d) frames or (d,) an utterance-level vector.
``path/store.npz#key``
    one utterance inside an npz store, in either layout:

    (a) *one array per key*: ``store[key]`` is the utterance;
    (b) *offset layout* (e.g. ``iemocap4_mel/mel64.npz``): arrays ``utt_id`` (N),
        ``offset`` (N), ``length`` (N) and ``frames`` (total, d); utterance i is
        ``frames[offset[i]:offset[i] + length[i]]``. Optional ``label`` (N).

Opening a store is cached per process, so the frames array of an offset store (tens
of MB) is read once, not once per utterance. :func:`prepare_feature_dump` turns a store
(+ optional transcripts) into a manifest.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from fdrl.data.iemocap import parse_utt_id
from fdrl.data.manifest import write_manifest
from fdrl.errors import DataError

log = logging.getLogger(__name__)

OFFSET_KEYS = ("utt_id", "offset", "length", "frames")
_CACHE_SIZE = 4  # open stores kept per process; a run uses one or two


class FeatureStore:
    """An opened ``.npz`` feature store, either layout (see the module docstring).

    The index (utt_id -> position) is built at open time; the offset layout's frames
    array is read on first access and kept.

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: feature store not found")
        self._frames: np.ndarray | None = None
        self.dim: int | None = None  # feature dimension when known without reading every array
        self.labels: dict[str, str] | None = None  # utt_id -> label when the store has `label`
        try:
            self._npz = np.load(self.path, allow_pickle=False)
            if not isinstance(self._npz, np.lib.npyio.NpzFile):
                raise ValueError("this is a single array, not an .npz archive")
            files = set(self._npz.files)
            self.offset_layout = set(OFFSET_KEYS) <= files
            if self.offset_layout:
                self._open_offset(files)
            else:
                self._keys = list(self._npz.files)
                self._index = {k: i for i, k in enumerate(self._keys)}
        except (OSError, ValueError, KeyError) as exc:
            # Not a zip, object arrays (pickles are refused), a member that is not .npy ...
            raise DataError(f"{self.path}: not a readable .npz feature store ({exc})") from None

    def _open_offset(self, files: set[str]) -> None:
        ids = self._npz["utt_id"]
        offset = np.asarray(self._npz["offset"], dtype=np.int64)  # (N,)
        length = np.asarray(self._npz["length"], dtype=np.int64)  # (N,)
        n = ids.shape[0]
        if ids.ndim != 1 or offset.shape != (n,) or length.shape != (n,):
            raise DataError(f"{self.path}: offset layout needs 1-D 'utt_id', 'offset', 'length' of "
                            f"equal length, got {ids.shape}, {offset.shape}, {length.shape}")
        fshape = self._member_shape("frames")
        if len(fshape) != 2:
            raise DataError(f"{self.path}: 'frames' must be 2-D (total_frames, dim), got shape {fshape}")
        if n and (offset.min() < 0 or length.min() < 0 or (offset + length).max() > fshape[0]):
            raise DataError(f"{self.path}: offsets/lengths point outside 'frames' ({fshape[0]} frames)")
        self._keys = [str(u) for u in ids]
        self._index = {k: i for i, k in enumerate(self._keys)}
        if len(self._index) != n:
            raise DataError(f"{self.path}: 'utt_id' has duplicate ids")
        self._offset, self._length = offset, length
        self.dim = int(fshape[1])
        if "label" in files:
            lab = self._npz["label"]
            if lab.shape != (n,):
                raise DataError(f"{self.path}: 'label' has shape {lab.shape}, expected ({n},)")
            self.labels = {k: str(v) for k, v in zip(self._keys, lab)}

    def _member_shape(self, name: str) -> tuple[int, ...]:
        """Shape of an npz member from its header only (the frames array stays on disk)."""
        fmt = np.lib.format
        with self._npz.zip.open(f"{name}.npy") as fh:
            major, _ = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            return tuple(read(fh)[0])

    def close(self) -> None:
        """Release the open file (arrays already read stay usable)."""
        self._npz.close()

    def keys(self) -> list[str]:
        """Utterance ids in store order."""
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def length(self, key: str) -> int:
        """Number of frames of ``key`` (1 for a vector); cheap for the offset layout."""
        if self.offset_layout:
            return int(self._length[self._position(key)])
        arr = self._npz[key]
        return int(arr.shape[0]) if arr.ndim == 2 else 1

    def get(self, key: str) -> np.ndarray:
        """Return utterance ``key`` as float32, (L, d) or (d,).

        Raises
        ------
        DataError
            The key is not in the store, or its array is not 1-/2-D or holds NaN/inf.
        """
        i = self._position(key)
        if self.offset_layout:
            if self._frames is None:
                self._frames = self._npz["frames"]  # (total, d), read once
            o, n = self._offset[i], self._length[i]
            arr = self._frames[o:o + n]  # (L, d)
        else:
            arr = self._npz[key]
        return check_features(arr, f"{self.path}#{key}")

    def _position(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise DataError(f"{self.path}: no utterance '{key}' in this feature store "
                            f"({len(self._keys)} keys, e.g. {self._keys[:3]})") from None


def check_features(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate one utterance's features and return them as float32.

    Returns
    -------
    np.ndarray
        (L, d) or (d,) float32.
    """
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise DataError(f"{name}: features must be (frames, dim) or (dim,), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name}: features must be numeric, got dtype {arr.dtype}")
    out = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise DataError(f"{name}: features contain NaN/inf values")
    return out


_stores: collections.OrderedDict[tuple, FeatureStore] = collections.OrderedDict()
_lock = threading.Lock()


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open an npz store through the per-process cache (reopened when the file changes)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"{p}: feature store not found") from None
    key = (str(p), st.st_mtime_ns, st.st_size)
    with _lock:
        store = _stores.get(key)
        if store is not None:
            _stores.move_to_end(key)
            return store
        store = FeatureStore(p)
        _stores[key] = store
        while len(_stores) > _CACHE_SIZE:
            _stores.popitem(last=False)
        return store


def clear_cache() -> None:
    """Forget every opened store (tests; long-lived services after a dump is replaced)."""
    with _lock:
        _stores.clear()


def split_ref(ref: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``'store.npz#key'`` into ``(Path('store.npz'), 'key')``; ``'x.npy'`` -> ``(x.npy, None)``."""
    s = str(ref)
    if "#" in s:
        path, key = s.split("#", 1)
        return Path(path), key
    return Path(s), None


def load_features(ref: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """Load the features an ``features`` reference points to.

    Parameters
    ----------
    ref : str or PathLike
        ``file.npy`` or ``store.npz#utt_id`` (absolute, or relative to the working dir;
        use :meth:`fdrl.data.manifest.Manifest.resolve` for manifest rows).
    dim : int, optional
        Expected feature dimension d; a mismatch raises DataError.

    Returns
    -------
    np.ndarray
        (L, d) frame sequence or (d,) vector, float32.
    """
    path, key = split_ref(ref)
    if key is not None or path.suffix == ".npz":
        if key is None:
            raise DataError(f"{ref}: an .npz features reference needs '#utt_id' after the file name")
        arr = open_store(path).get(key)
    else:
        if not path.is_file():
            raise DataError(f"{path}: features file not found")
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy features file ({exc})") from None
        if not isinstance(raw, np.ndarray):
            raise DataError(f"{path}: expected one array (.npy), found an archive; use store.npz#key")
        arr = check_features(raw, str(path))
    if dim is not None and arr.shape[-1] != dim:
        raise DataError(f"{ref}: features have dimension {arr.shape[-1]}, expected {dim}")
    return arr


# ----------------------------------------------------------------------------- dumps -> manifest

_META_KEYS = ("session", "speaker", "gender", "dialog", "scripted", "label_raw", "duration")


def _read_transcripts(path: Path) -> dict[str, dict[str, Any]]:
    """Read a transcripts JSONL (utt_id, text, label and metadata per line)."""
    if not path.is_file():
        raise DataError(f"{path}: transcripts file not found")
    rows: dict[str, dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict) or row.get("utt_id") in (None, ""):
                    raise DataError(f"{path}:{lineno}: expected a JSON object with an 'utt_id'")
                if row["utt_id"] in rows:
                    raise DataError(f"{path}:{lineno}: duplicate utt_id '{row['utt_id']}'")
                rows[str(row["utt_id"])] = row
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return rows


def prepare_feature_dump(npz: str | os.PathLike, transcripts: str | os.PathLike | None = None, *,
                         out: str | os.PathLike, encoder_spec: dict[str, Any] | None = None,
                         corpus: str | None = None, require_text: bool = False) -> Path:
    """Build a manifest for a precomputed feature dump (+ optional transcripts).

    Each row gets ``features = "<absolute npz path>#<utt_id>"``; text and metadata come
    from ``transcripts`` (a JSONL like ``iemocap4_text/iemocap4.jsonl``). The label is the
    store's ``label`` array when present, else the transcript's. Classes are the sorted
    unique labels.

    Parameters
    ----------
    npz : str or PathLike
        Feature store, either layout.
    transcripts : str or PathLike, optional
        JSONL with ``utt_id``, ``text``, ``label`` and optional session, speaker, gender,
        dialog, scripted, label_raw, duration.
    out : str or PathLike
        Output folder (manifest.jsonl + labels.json).
    encoder_spec : dict, optional
        How the features were computed (e.g. ``{"name": "logmel", "sample_rate": 16000,
        "n_mels": 64, "n_fft": 2048, "hop_length": 512}``); stored in labels.json under
        ``"speech_features"`` so new audio can be turned into the same features.
    corpus : str, optional
        Corpus name; default: the transcripts' ``corpus`` field, else the npz file stem.
    require_text : bool
        Drop utterances without a transcript (logged with a count) instead of keeping
        them with ``text = null``.

    Returns
    -------
    Path
        ``OUT/manifest.jsonl``.
    """
    npz_path = Path(npz).resolve()
    store = FeatureStore(npz_path)  # not the cache: only the index is needed here
    texts = _read_transcripts(Path(transcripts)) if transcripts is not None else {}
    spec = dict(encoder_spec or {})
    hop, sr = spec.get("hop_length"), spec.get("sample_rate")

    rows, unlabelled, dropped, disagree = [], [], 0, 0
    for utt in store.keys():
        t = texts.get(utt)
        text = t.get("text") if t else None
        if require_text and text in (None, ""):
            dropped += 1
            continue
        label = store.labels.get(utt) if store.labels else None
        if label is None:
            label = t.get("label") if t else None
        elif t and t.get("label") not in (None, label):
            disagree += 1
        if label in (None, ""):
            unlabelled.append(utt)
            continue
        row: dict[str, Any] = {"utt_id": utt, "label": str(label), "audio": None, "text": text,
                               "features": f"{npz_path}#{utt}"}
        row.update(_fallback_meta(utt))
        if t:
            row.update({k: t[k] for k in _META_KEYS if t.get(k) is not None})
        row.setdefault("label_raw", row["label"])
        if row.get("duration") is None and hop and sr:
            row["duration"] = round(store.length(utt) * float(hop) / float(sr), 4)
        row["corpus"] = corpus or (t.get("corpus") if t else None) or npz_path.stem
        rows.append(row)
    store.close()
    if unlabelled:
        raise DataError(f"{npz_path}: {len(unlabelled)} utterances have no label (the store has no "
                        f"'label' array and the transcripts lack them), e.g. {unlabelled[:5]}")
    if not rows:
        raise DataError(f"{npz_path}: no utterances left (require_text={require_text}, "
                        f"{len(texts)} transcripts, {len(store)} utterances in the store)")
    if dropped:
        log.warning("%d of %d utterances have no transcript and were dropped (require_text)",
                    dropped, len(store))
    if disagree:
        log.warning("%d utterances have a different label in the transcripts than in %s; "
                    "the store's label is used", disagree, npz_path.name)
    n_text = sum(r["text"] not in (None, "") for r in rows)
    if transcripts is not None and n_text < len(rows):
        log.warning("%d of %d utterances have no transcript (text = null)", len(rows) - n_text, len(rows))
    classes = sorted({r["label"] for r in rows})
    extra: dict[str, Any] = {"source": {"npz": str(npz_path),
                                        "transcripts": str(Path(transcripts).resolve()) if transcripts else None}}
    if store.dim is not None:
        extra["feature_dim"] = store.dim
    if spec:
        extra["speech_features"] = spec
    return write_manifest(out, rows, classes, extra)


def _fallback_meta(utt: str) -> dict[str, Any]:
    """Session/speaker/gender/dialog from an IEMOCAP-style id, for rows without a transcript."""
    return parse_utt_id(utt) or {}

