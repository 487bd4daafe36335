"""The on-disk feature cache: encode each utterance once per encoder setting.

Layout::

    CACHE_DIR/<modality>-<name>-<sha1(name + settings)[:12]>/
        encoder.json            the encoder's spec (for humans and cache_info)
        shard-<uuid>.npz        keys (N,), ids (N,), pooled (N, d) float32 and, when
                                sequences were asked for, seq_frames (sum L_i, d') float16
                                + seq_offsets (N,) + seq_lengths (N,)

An utterance's key is a sha1 of its id and its input: the text for text; the audio
file's size and mtime_ns (plus ``max_seconds``) for speech; the features reference
and its file's size and mtime_ns for precomputed features. A changed file or text is
therefore re-encoded, an unchanged one never is.

Shards are written atomically every ``shard_size`` utterances, so a killed run resumes
from its last shard; on an ordinary exception (a bad file, Ctrl-C) what was encoded
so far is flushed first. Several processes may fill the same folder: shard names
never collide, and a key found twice is simply read once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from fdrl.data.manifest import Manifest
from fdrl.encoders.base import Encoder
from fdrl.errors import DataError
from fdrl.utils.io import read_json, write_json, write_npz

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SHARD_GLOB = "shard-*.npz"
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class FeatureTable:
    """Features of a manifest's utterances, in manifest order.

    ids:       N utterance ids.
    pooled:    (N, d) float32 pooled vectors.
    sequences: N arrays (L_i, d') float16 (float32 if a value exceeds float16's
               range), or None when sequences were not asked for.
    encoder:   the encoder's spec (rebuilds it with ``build_encoder``).
    n_encoded / n_cached: how many were computed now / read from the cache.
    seconds:   wall time of :func:`extract_features`.
    folder:    the cache folder.
    """

    ids: list[str]
    pooled: np.ndarray
    sequences: list[np.ndarray] | None
    encoder: dict[str, Any]
    n_encoded: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    folder: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Size d of the pooled vectors."""
        return int(self.pooled.shape[1])

    @property
    def sequence_dim(self) -> int | None:
        """Size d' of the sequence vectors, or None without sequences."""
        return int(self.sequences[0].shape[1]) if self.sequences else None


def _sha1(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def cache_folder(cache_dir: str | os.PathLike, encoder: Encoder) -> Path:
    """The folder of ``encoder``'s entries: ``<modality>-<name>-<sha1(name+settings)[:12]>``."""
    digest = _sha1([encoder.name, encoder.settings()])[:12]
    return Path(cache_dir) / f"{encoder.modality}-{encoder.name}-{digest}"


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Input:
    """What the cache needs to know about one row before encoding it."""

    utt_id: str
    key: str
    cost: float  # sort key for length-sorted batches (larger = longer)
    load: Callable[[], Any]  # returns the encoder's item


def _stat(path: Path, utt_id: str, what: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise DataError(f"utterance '{utt_id}': {what} file not found: {path}") from None


def _inputs(manifest: Manifest, encoder: Encoder, max_seconds: float | None) -> list[_Input]:
    """Keys, costs and loaders for every row; fails on the first unusable row."""
    out: list[_Input] = []
    if encoder.modality == "text":
        for row in manifest.rows:
            utt, text = str(row["utt_id"]), row.get("text")
            if text is None:
                raise DataError(f"utterance '{utt}': 'text' is null, but a text encoder "
                                f"('{encoder.name}') was asked for; use --text none for speech only")
            if not isinstance(text, str):
                raise DataError(f"utterance '{utt}': 'text' must be a string, got {type(text).__name__}")
            out.append(_Input(utt, _sha1([utt, "text", text]), encoder.cost(text), lambda t=text: t))
        return out
    if encoder.precomputed:
        from fdrl.data.featstore import load_features

        for row in manifest.rows:
            utt, ref = str(row["utt_id"]), row.get("features")
            if not ref:
                raise DataError(f"utterance '{utt}': no 'features' reference; the precomputed "
                                f"encoder reads features only (use e.g. --speech egemaps for audio)")
            full = str(manifest.resolve(ref))
            st = _stat(Path(full.split("#", 1)[0]), utt, "features")
            key = _sha1([utt, "features", full, st.st_size, st.st_mtime_ns])
            # costs do not matter: pooling precomputed frames is trivial, keep file order
            out.append(_Input(utt, key, 0.0, lambda r=full: load_features(r)))
        return out
    from fdrl.data.audio import load_audio

    for row in manifest.rows:
        utt, audio = str(row["utt_id"]), row.get("audio")
        if not audio:
            hint = (" (it has precomputed 'features': use --speech precomputed)"
                    if row.get("features") else "")
            raise DataError(f"utterance '{utt}': no 'audio' for speech encoder '{encoder.name}'{hint}")
        path = manifest.resolve(audio)
        st = _stat(path, utt, "audio")
        key = _sha1([utt, "audio", st.st_size, st.st_mtime_ns, max_seconds])
        # the file size orders files of one format by duration without decoding them
        out.append(_Input(utt, key, float(st.st_size),
                          lambda p=path: load_audio(p, SAMPLE_RATE, max_seconds, encoder.min_samples)))
    return out


# ----------------------------------------------------------------------------- shards


@dataclass
class _Shard:
    """One shard's arrays, in memory."""

    pooled: np.ndarray  # (n, d)
    has_seq: bool = False  # the file holds sequences (loaded only when asked for)
    frames: np.ndarray | None = None  # (sum L, d')
    offsets: np.ndarray | None = None  # (n,)
    lengths: np.ndarray | None = None  # (n,)

    def sequence(self, row: int) -> np.ndarray | None:
        if self.frames is None:
            return None
        o = int(self.offsets[row])
        return self.frames[o:o + int(self.lengths[row])]


@dataclass
class _Index:
    """key -> (shard number, row) over every shard read or written in this run."""

    shards: list[_Shard] = field(default_factory=list)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, shard: _Shard, keys: list[str]) -> None:
        s = len(self.shards)
        self.shards.append(shard)
        for row, key in enumerate(keys):
            old = self.where.get(key)
            # an entry with sequences beats one without; otherwise the first one stays
            if old is None or (shard.has_seq and not self.shards[old[0]].has_seq):
                self.where[key] = (s, row)

    def has(self, key: str, sequences: bool) -> bool:
        loc = self.where.get(key)
        return loc is not None and (not sequences or self.shards[loc[0]].has_seq)


def _read_shards(folder: Path, sequences: bool) -> _Index:
    """Index every shard of ``folder``; sequence frames are read only when ``sequences``."""
    index = _Index()
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = z["keys"].tolist()
                shard = _Shard(pooled=z["pooled"], has_seq="seq_frames" in z.files)
                if shard.has_seq and sequences:
                    shard.frames, shard.offsets, shard.lengths = (
                        z["seq_frames"], z["seq_offsets"], z["seq_lengths"])
        except Exception as exc:  # a damaged shard costs a re-encode, never a crash
            _set_aside(path, exc)
            continue
        index.add(shard, keys)
    return index


def _set_aside(path: Path, exc: Exception) -> None:
    """Move an unreadable shard out of the cache (``<name>.corrupt``, which no glob of a
    shard matches), so its utterances are encoded again in this run and it is warned
    about once, not on every run. Where the folder is read-only it is only ignored."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process moved it aside first
        return
    except OSError as err:
        log.warning("%s: unreadable cache shard ignored (%s); cannot move it aside (%s)",
                    path, exc, err)
        return
    log.warning("%s: unreadable cache shard (%s) moved to %s; its utterances are encoded again",
                path, str(exc)[:200], aside.name)


def _write_shard(folder: Path, keys: list[str], ids: list[str], pooled: list[np.ndarray],
                 seqs: list[np.ndarray] | None) -> _Shard:
    shard = _Shard(pooled=np.stack(pooled).astype(np.float32), has_seq=seqs is not None)  # (n, d)
    arrays = {"keys": np.array(keys), "ids": np.array(ids), "pooled": shard.pooled}
    if seqs is not None:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # (n,)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # (n,)
        frames = np.concatenate(seqs, axis=0)  # (sum L, d')
        # float16 halves the disk and memory of sequences; keep float32 if it would overflow
        if frames.size == 0 or float(np.abs(frames).max()) < _F16_MAX:
            frames = frames.astype(np.float16)
        shard.frames, shard.offsets, shard.lengths = frames, offsets, lengths
        arrays.update(seq_frames=frames, seq_offsets=offsets, seq_lengths=lengths)
    write_npz(folder / f"shard-{uuid.uuid4().hex}.npz", **arrays)
    return shard


def _prefetch(batches: list[list[_Input]], workers: int) -> Iterator[tuple[list[_Input], list[Any]]]:
    """Yield (batch, loaded items), loading the next batch on threads meanwhile.

    Decoding and resampling (soundfile, soxr) release the GIL, so reading overlaps
    encoding.
    """
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def load(batch: list[_Input]) -> list[Any]:
            if workers == 1:
                return [inp.load() for inp in batch]
            return list(pool.map(lambda inp: inp.load(), batch))

        with ThreadPoolExecutor(max_workers=1) as ahead:
            nxt = ahead.submit(load, batches[0])
            for k, batch in enumerate(batches):
                items = nxt.result()
                if k + 1 < len(batches):
                    nxt = ahead.submit(load, batches[k + 1])
                yield batch, items


# ----------------------------------------------------------------------------- public API


def extract_features(manifest: Manifest, encoder: Encoder, cache_dir: str | os.PathLike,
                     sequences: bool = False, batch_size: int = 16,
                     max_seconds: float | None = None, progress: bool = True,
                     shard_size: int = 256) -> FeatureTable:
    """Encode every row of ``manifest`` with ``encoder``, through the cache.

    Parameters
    ----------
    manifest : the rows; text rows need ``text``, speech rows ``audio`` (or
        ``features`` for a precomputed encoder).
    encoder : a speech or text :class:`~fdrl.encoders.base.Encoder`.
    cache_dir : cache root (the config's ``features.cache_dir``).
    sequences : also return (and cache) the frame/token sequences; cached entries
        without them are re-encoded.
    batch_size : items per ``encoder.encode`` call; items are sorted by length first
        (``encoder.cost`` for text, file size for audio) so batches waste little padding.
    max_seconds : speech: keep only the first ``max_seconds`` of each file (default:
        the encoder's own ``max_seconds`` if it has one).
    progress : show a tqdm bar (utterances/s) when writing to a terminal.
    shard_size : utterances per shard file: at most this many are lost by a kill.

    Returns
    -------
    FeatureTable in manifest order.

    Raises
    ------
    DataError
        A row lacks the input, a file is missing or unreadable (before any encoding
        for missing inputs), or the encoder returns NaN/inf or a wrong size.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if max_seconds is None:
        max_seconds = getattr(encoder, "max_seconds", None)
    inputs = _inputs(manifest, encoder, max_seconds)
    folder = cache_folder(cache_dir, encoder)
    folder.mkdir(parents=True, exist_ok=True)
    index = _read_shards(folder, sequences)
    todo = [inp for inp in inputs if not index.has(inp.key, sequences)]
    todo.sort(key=lambda inp: -inp.cost)  # longest first: a memory problem shows at once
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]

    pending: dict[str, list] = {"keys": [], "ids": [], "pooled": [], "seqs": []}

    def flush() -> None:
        if pending["keys"]:
            shard = _write_shard(folder, pending["keys"], pending["ids"], pending["pooled"],
                                 pending["seqs"] if sequences else None)
            index.add(shard, pending["keys"])
            for v in pending.values():
                v.clear()

    dim: int | None = None  # pooled size, fixed by the first result
    workers = 1 if encoder.modality == "text" else min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(todo), unit="utt", desc=f"{encoder.modality} {encoder.name}",
               disable=None if progress else True, dynamic_ncols=True)
    try:
        for batch, items in _prefetch(batches, workers):
            encoded = encoder.encode(items, sequences=sequences)
            if len(encoded) != len(batch):
                raise RuntimeError(f"encoder '{encoder.name}' returned {len(encoded)} results "
                                   f"for {len(batch)} items")
            for inp, enc in zip(batch, encoded):
                pooled = np.asarray(enc.pooled, dtype=np.float32).reshape(-1)
                dim = pooled.shape[0] if dim is None else dim
                if pooled.shape[0] != dim or not np.all(np.isfinite(pooled)):
                    raise DataError(f"utterance '{inp.utt_id}': encoder '{encoder.name}' gave a "
                                    f"pooled vector of size {pooled.shape[0]} (expected {dim}) "
                                    f"or with NaN/inf values")
                if sequences and enc.sequence is None:
                    raise RuntimeError(f"encoder '{encoder.name}' returned no sequence")
                pending["keys"].append(inp.key)
                pending["ids"].append(inp.utt_id)
                pending["pooled"].append(pooled)
                pending["seqs"].append(np.asarray(enc.sequence) if sequences else None)
            if len(pending["keys"]) >= shard_size:
                flush()
            bar.update(len(batch))
    finally:
        bar.close()
        flush()  # keep the work done before an error or Ctrl-C
    if todo or not (folder / "encoder.json").is_file():  # a no-op run writes nothing
        write_json(folder / "encoder.json", {"modality": encoder.modality, "spec": encoder.spec(),
                                             "settings": encoder.settings()})
    table = _assemble(inputs, index, encoder, sequences)
    table.n_encoded, table.n_cached = len(todo), len(inputs) - len(todo)
    table.seconds, table.folder = time.perf_counter() - t0, folder
    log.info("%s %s: %d encoded, %d from cache (%s) in %.1f s", encoder.modality, encoder.name,
             table.n_encoded, table.n_cached, folder, table.seconds)
    return table


def _assemble(inputs: list[_Input], index: _Index, encoder: Encoder, sequences: bool) -> FeatureTable:
    """Gather the rows' entries from the shards, vectorised per shard."""
    locs = [index.where[inp.key] for inp in inputs]
    dims = {index.shards[s].pooled.shape[1] for s, _ in locs}
    if len(dims) > 1:
        raise DataError(f"feature cache for '{encoder.name}' holds vectors of sizes {sorted(dims)}; "
                        f"delete its folder and run again")
    pooled = np.empty((len(inputs), dims.pop() if dims else 0), dtype=np.float32)  # (N, d)
    by_shard: dict[int, tuple[list[int], list[int]]] = {}
    for i, (s, r) in enumerate(locs):
        out_rows, shard_rows = by_shard.setdefault(s, ([], []))
        out_rows.append(i)
        shard_rows.append(r)
    for s, (out_rows, shard_rows) in by_shard.items():
        pooled[out_rows] = index.shards[s].pooled[shard_rows]
    seqs = [index.shards[s].sequence(r) for s, r in locs] if sequences else None
    return FeatureTable(ids=[inp.utt_id for inp in inputs], pooled=pooled, sequences=seqs,
                        encoder=encoder.spec())


def cache_info(cache_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Describe each encoder folder of a cache.

    Returns
    -------
    One dict per folder: ``folder``, ``modality``, ``spec``, ``entries`` (distinct
    utterance keys), ``with_sequences``, ``shards``, ``bytes``.
    """
    out = []
    root = Path(cache_dir)
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        shards = sorted(folder.glob(SHARD_GLOB))
        meta_path = folder / "encoder.json"
        meta = read_json(meta_path) if meta_path.is_file() else {}
        keys: set[str] = set()
        seq_keys: set[str] = set()
        for path in shards:
            try:
                with np.load(path, allow_pickle=False) as z:
                    k = z["keys"].tolist()
                    keys.update(k)
                    if "seq_frames" in z.files:
                        seq_keys.update(k)
            except Exception as exc:
                log.warning("%s: unreadable cache shard (%s)", path, exc)
        out.append({"folder": str(folder), "modality": meta.get("modality"),
                    "spec": meta.get("spec"), "entries": len(keys),
                    "with_sequences": len(seq_keys), "shards": len(shards),
                    "bytes": sum(p.stat().st_size for p in shards)})
    return out
