"""Model-ready data: encoder outputs for a manifest, batched into :class:`Inputs`.

On the fast path (frozen encoders) every utterance's features come from the disk
cache once and live in memory as numpy arrays; batches are cut by index, which is
much faster than a DataLoader over tiny tensors. Sequences are padded per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fdrl.config import Config
from fdrl.data.manifest import Manifest
from fdrl.errors import ConfigError, DataError
from fdrl.models.base import Inputs

log = logging.getLogger(__name__)


@dataclass
class ModalityArrays:
    """One modality's features for every utterance of a manifest (manifest order).

    pooled:    (N, d) float32 vectors.
    sequences: list of (L_i, d) arrays, or None when the model takes pooled vectors.
    """

    pooled: np.ndarray
    sequences: list[np.ndarray] | None = None
    encoder: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Width of what the model receives: frame width for sequences, else pooled width
        (they differ: log-mel frames are 64-d, their mean+std pooling 128-d)."""
        if self.sequences is not None and len(self.sequences):
            return int(self.sequences[0].shape[-1])
        return int(self.pooled.shape[1])

    @property
    def is_sequence(self) -> bool:
        return self.sequences is not None


@dataclass
class Batch:
    inputs: Inputs
    labels: torch.Tensor    # (B,) long
    speakers: torch.Tensor  # (B,) long
    index: np.ndarray       # (B,) row indices into the manifest


def pad_sequences(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (L_i, d) arrays to (B, L_max, d) float32 and a (B, L_max) bool mask."""
    lengths = [max(len(s), 1) for s in seqs]
    d = seqs[0].shape[-1]
    out = np.zeros((len(seqs), max(lengths), d), dtype=np.float32)
    mask = np.zeros((len(seqs), max(lengths)), dtype=bool)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = s
            mask[i, : len(s)] = True
        else:  # an empty sequence keeps one zero frame so pooling stays defined
            mask[i, 0] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


@dataclass
class FeatureData:
    """Everything a model needs for one corpus, indexable by manifest row."""

    manifest: Manifest
    speech: ModalityArrays | None
    text: ModalityArrays | None
    labels: np.ndarray       # (N,) int64 class indices
    speakers: np.ndarray     # (N,) int64 speaker indices
    speaker_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    def subset_labels(self, idx) -> np.ndarray:
        return self.labels[np.asarray(idx)]

    def _modality(self, arr: ModalityArrays | None, idx: np.ndarray):
        if arr is None:
            return None, None
        if arr.sequences is not None:
            return pad_sequences([arr.sequences[i].astype(np.float32) for i in idx])
        return torch.from_numpy(arr.pooled[idx]), None

    def batch(self, idx) -> Batch:
        idx = np.asarray(idx, dtype=np.int64)
        speech, speech_mask = self._modality(self.speech, idx)
        text, text_mask = self._modality(self.text, idx)
        return Batch(
            inputs=Inputs(speech, speech_mask, text, text_mask),
            labels=torch.from_numpy(self.labels[idx]),
            speakers=torch.from_numpy(self.speakers[idx]),
            index=idx,
        )

    def batches(self, indices, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        indices = np.asarray(indices, dtype=np.int64)
        if shuffle:
            perm = torch.randperm(len(indices), generator=generator).numpy()
            indices = indices[perm]
        elif self.speech is not None and self.speech.is_sequence:
            # evaluation: length-sorted batches waste less padding; order is restored by index
            lengths = np.array([len(self.speech.sequences[i]) for i in indices])
            indices = indices[np.argsort(lengths, kind="stable")]
        stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            chunk = indices[start:start + batch_size]
            if len(chunk):
                yield self.batch(chunk)


def _speaker_index(manifest: Manifest) -> tuple[np.ndarray, list[str]]:
    names = sorted({str(r.get("speaker")) for r in manifest.rows})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[str(r.get("speaker"))] for r in manifest.rows], dtype=np.int64), names


def encoder_specs(cfg: Config) -> dict[str, dict]:
    """The configured encoder spec of each modality that is switched on."""
    from fdrl.encoders.registry import parse_spec

    specs = {m: parse_spec(getattr(cfg.features, m)) for m in ("speech", "text")}
    return {m: s for m, s in specs.items() if s["name"] != "none"}


def build_encoders(cfg: Config) -> dict[str, object]:
    """Build each switched-on encoder once (loading a transformers model takes seconds)."""
    from fdrl.encoders.registry import build_encoder

    return {m: build_encoder(m, spec) for m, spec in encoder_specs(cfg).items()}


def _bad(manifest: Manifest, i: int, reason: str) -> dict:
    return {"row": i + 1, "utt_id": str(manifest.rows[i]["utt_id"]), "reason": reason}


def missing_inputs(manifest: Manifest, cfg: Config) -> list[dict]:
    """Rows that lack what the configured encoders read, found without decoding anything.

    A text encoder needs a non-blank transcript (empty and whitespace-only ones count
    as missing: a model would learn from the padding); a speech encoder needs an
    existing ``audio`` file, or an existing ``features`` file for ``precomputed``.

    Returns
    -------
    list of dict
        ``{"row": 1-based manifest row, "utt_id", "reason"}`` in manifest order.

    Raises
    ------
    DataError
        When *no* row has the input (a configuration problem, not a few bad rows).
    """
    from fdrl.data.featstore import split_ref

    specs = encoder_specs(cfg)
    bad: dict[int, dict] = {}
    if "text" in specs:
        blank = [i for i, r in enumerate(manifest.rows)
                 if not isinstance(r.get("text"), str) or not r["text"].strip()]
        if len(blank) == len(manifest):
            raise DataError(f"{manifest.root}: no row has a transcript but features.text is "
                            f"'{specs['text']['name']}'; set features.text.name=none (and a "
                            f"speech-only model) to train without text")
        for i in blank:
            text = manifest.rows[i].get("text")
            bad[i] = _bad(manifest, i, "no transcript (text is null)" if text is None
                          else f"empty transcript {text!r}")
    if "speech" in specs:
        field = "features" if specs["speech"]["name"] == "precomputed" else "audio"
        if not any(r.get(field) for r in manifest.rows):
            hint = (" (the rows have precomputed 'features': use features.speech.name=precomputed)"
                    if field == "audio" and any(r.get("features") for r in manifest.rows) else
                    "; set features.speech.name=none (and a text-only model) to train without speech")
            raise DataError(f"{manifest.root}: no row has '{field}' for speech encoder "
                            f"'{specs['speech']['name']}'{hint}")
        for i, r in enumerate(manifest.rows):
            if i in bad:
                continue
            if not r.get(field):
                bad[i] = _bad(manifest, i, f"no '{field}' for speech encoder '{specs['speech']['name']}'")
                continue
            path = manifest.resolve(r[field]) if field == "audio" else split_ref(str(manifest.resolve(r[field])))[0]
            if not Path(path).is_file():
                bad[i] = _bad(manifest, i, f"{field} file not found: {path}")
    return [bad[i] for i in sorted(bad)]


def unreadable_inputs(manifest: Manifest, cfg: Config, encoders: dict[str, object],
                      progress: bool = True, sample_rate: int | None = None) -> list[dict]:
    """Rows whose speech input cannot be decoded, found by reading every file once.

    Each audio file goes through the same checks as feature extraction (corrupt,
    truncated, empty, silent, NaN/inf, too short for the encoder); each precomputed
    features reference through :func:`fdrl.data.featstore.load_features`. Costs one
    read of the corpus, so it runs only when a problem is known to exist, or for
    fine-tuning where audio is read during training.

    ``sample_rate`` is the rate audio is decoded at (default: the feature cache's; the
    "too short for the encoder" check depends on it).

    Returns
    -------
    list of dict
        ``{"row", "utt_id", "reason"}`` in manifest order; the reason names the file.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from fdrl.data.audio import load_audio
    from fdrl.data.featstore import load_features
    from fdrl.encoders.cache import SAMPLE_RATE

    sample_rate = sample_rate or SAMPLE_RATE
    enc = encoders.get("speech")
    if enc is None:
        return []
    precomputed = bool(getattr(enc, "precomputed", False))
    max_seconds = cfg.data.max_seconds or getattr(enc, "max_seconds", None)
    min_samples = int(getattr(enc, "min_samples", 0) or 0)

    def check(i: int) -> dict | None:
        row = manifest.rows[i]
        try:
            if precomputed:
                load_features(str(manifest.resolve(row["features"])))
            else:
                load_audio(manifest.resolve(row["audio"]), sample_rate, max_seconds, min_samples)
        except DataError as exc:
            return _bad(manifest, i, str(exc))
        return None

    # decoding releases the GIL: threads overlap file reads
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(tqdm(pool.map(check, range(len(manifest))), total=len(manifest),
                          desc="checking inputs", unit="utt", disable=None if progress else True))
    return [b for b in found if b is not None]


def renumber(bad: list[dict], manifest: Manifest) -> list[dict]:
    """``bad`` with ``row`` numbers of ``manifest`` (found on a subset of it), sorted."""
    row_of = {str(r["utt_id"]): i + 1 for i, r in enumerate(manifest.rows)}
    return sorted(({**b, "row": row_of[b["utt_id"]]} for b in bad), key=lambda b: b["row"])


def drop_rows(manifest: Manifest, bad: list[dict]) -> Manifest:
    """``manifest`` without the rows whose utt_id is in ``bad``."""
    ids = {b["utt_id"] for b in bad}
    return manifest.subset([i for i, r in enumerate(manifest.rows) if str(r["utt_id"]) not in ids])


def bad_rows_error(manifest: Manifest, bad: list[dict], what: str) -> DataError:
    """One summary line that names the first bad utterance, then one line per row."""
    from fdrl.data.custom import problem_report

    first = bad[0]
    summary = (f"{manifest.root / 'manifest.jsonl'}: {len(bad)} of {len(manifest)} utterances have "
               f"{what}, first row {first['row']} ('{first['utt_id']}'): {first['reason']}; fix or "
               f"remove them, or use --skip-bad (data.skip_bad=true) to leave them out of the run")
    return DataError(problem_report(summary, [f"row {b['row']} ({b['utt_id']}): {b['reason']}"
                                              for b in bad[1:]], limit=20))


def load_usable(manifest: Manifest, cfg: Config, progress: bool = True
                ) -> tuple[Manifest, FeatureData, list[dict]]:
    """Load the features of every usable row; stop on unusable ones unless skipping.

    Without ``data.skip_bad`` a row with missing or unreadable input is a
    :class:`DataError` naming it (and counting the others). With it, such rows are
    left out with a warning and returned, so the run can record them. The result is
    the same on every call for the same files (what is skipped depends on the files
    alone, not on the cache), which keeps a resumed run's rows identical.

    Returns
    -------
    (manifest without the skipped rows, its features, skipped rows)
    """
    skip = cfg.data.skip_bad
    bad = missing_inputs(manifest, cfg)
    if bad and not skip:
        raise bad_rows_error(manifest, bad, "missing input")
    full = manifest
    manifest = drop_rows(manifest, bad)
    encoders = build_encoders(cfg)
    try:
        data = load_feature_data(manifest, cfg, progress=progress, encoders=encoders)
    except DataError:
        # extraction stops at the first bad file; name them all (or skip them all)
        unreadable = unreadable_inputs(manifest, cfg, encoders, progress)
        if not unreadable:
            raise  # not a per-utterance problem
        if not skip:
            raise bad_rows_error(manifest, unreadable, "unreadable input") from None
        bad = renumber(bad + unreadable, full)
        manifest = drop_rows(full, bad)
        data = load_feature_data(manifest, cfg, progress=progress, encoders=encoders)
    if bad:
        if len(bad) == len(full):
            raise DataError(f"{full.root}: every utterance was skipped as unusable, first: "
                            f"{bad[0]['utt_id']}: {bad[0]['reason']}")
        log.warning("skipped %d of %d utterances with unusable input (data.skip_bad), first: %s: %s",
                    len(bad), len(full), bad[0]["utt_id"], bad[0]["reason"])
    return manifest, data, bad


def load_feature_data(manifest: Manifest, cfg: Config, progress: bool = True,
                      encoders: dict[str, object] | None = None) -> FeatureData:
    """Encode (or read from the cache) both modalities of ``manifest`` per ``cfg.features``.

    ``encoders`` (modality -> encoder, from :func:`build_encoders`) avoids building
    them again; by default they are built here.
    """
    from fdrl.encoders.cache import extract_features

    feats = cfg.features
    bad = missing_inputs(manifest, cfg)
    if bad:
        raise bad_rows_error(manifest, bad, "missing input")
    encoders = build_encoders(cfg) if encoders is None else encoders
    out: dict[str, ModalityArrays | None] = {}
    for modality in ("speech", "text"):
        encoder = encoders.get(modality)
        if encoder is None:
            out[modality] = None
            continue
        table = extract_features(manifest, encoder, feats.cache_dir, sequences=feats.sequences,
                                 batch_size=feats.batch_size, max_seconds=cfg.data.max_seconds,
                                 progress=progress)
        out[modality] = ModalityArrays(pooled=np.asarray(table.pooled, dtype=np.float32),
                                       sequences=table.sequences if feats.sequences else None,
                                       encoder=table.encoder)
    if out["speech"] is None and out["text"] is None:
        raise ConfigError("features: both features.speech and features.text are 'none'")
    speakers, speaker_names = _speaker_index(manifest)
    return FeatureData(manifest, out["speech"], out["text"],
                       np.asarray(manifest.labels(), dtype=np.int64), speakers, speaker_names)


class RawData(FeatureData):
    """Raw inputs for end-to-end fine-tuning: waveforms and texts, collated per batch by
    trainable backbones (:class:`fdrl.encoders.backbone.HFBackbone`).

    Audio is read from disk for every batch (a corpus of waveforms does not fit in
    memory); the backbones only tokenize / pad here, their weights live in the model.
    """

    def __init__(self, manifest: Manifest, collators: dict[str, object], sample_rate: int,
                 max_seconds: float | None, min_samples: int = 0):
        speakers, names = _speaker_index(manifest)
        super().__init__(manifest, None, None, np.asarray(manifest.labels(), dtype=np.int64),
                         speakers, names)
        self.collators = collators
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.min_samples = min_samples

    def _wave(self, i: int) -> np.ndarray:
        from fdrl.data.audio import load_audio

        row = self.manifest.rows[i]
        return load_audio(self.manifest.resolve(row["audio"]), self.sample_rate, self.max_seconds,
                          self.min_samples)

    def batch(self, idx) -> Batch:
        idx = np.asarray(idx, dtype=np.int64)
        speech = speech_mask = text = text_mask = None
        if "speech" in self.collators:
            speech, speech_mask = self.collators["speech"].collate([self._wave(i) for i in idx])
        if "text" in self.collators:
            text, text_mask = self.collators["text"].collate(
                [self.manifest.rows[i].get("text") or "" for i in idx])
        return Batch(inputs=Inputs(speech, speech_mask, text, text_mask),
                     labels=torch.from_numpy(self.labels[idx]),
                     speakers=torch.from_numpy(self.speakers[idx]), index=idx)

    def batches(self, indices, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        indices = np.asarray(indices, dtype=np.int64)
        if shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator).numpy()]
        elif "speech" in self.collators:  # evaluation: sort by duration to limit padding
            dur = np.array([self.manifest.rows[i].get("duration") or 0.0 for i in indices])
            indices = indices[np.argsort(dur, kind="stable")]
        stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            if len(chunk := indices[start:start + batch_size]):
                yield self.batch(chunk)
