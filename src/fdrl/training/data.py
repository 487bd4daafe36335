"""Model-ready data: encoder outputs for a manifest, batched into :class:`Inputs`.

On the fast path (frozen encoders) every utterance's features come from the disk
cache once and live in memory as numpy arrays; batches are cut by index, which is
much faster than a DataLoader over tiny tensors. Sequences are padded per batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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


def load_feature_data(manifest: Manifest, cfg: Config, progress: bool = True) -> FeatureData:
    """Encode (or read from the cache) both modalities of ``manifest`` per ``cfg.features``."""
    from fdrl.encoders.cache import extract_features
    from fdrl.encoders.registry import build_encoder

    feats = cfg.features
    out: dict[str, ModalityArrays | None] = {}
    for modality in ("speech", "text"):
        spec = getattr(feats, modality)
        encoder = build_encoder(modality, spec)
        if encoder is None:
            out[modality] = None
            continue
        if modality == "text" and not manifest.has_modality("text"):
            missing = sum(1 for r in manifest.rows if not r.get("text"))
            raise DataError(f"{manifest.root}: {missing} rows have no text but features.text is "
                            f"'{spec.get('name')}'; set features.text.name=none for a speech-only model")
        if modality == "speech" and not manifest.has_modality("speech"):
            missing = sum(1 for r in manifest.rows if not (r.get("audio") or r.get("features")))
            raise DataError(f"{manifest.root}: {missing} rows have neither audio nor features; "
                            f"set features.speech.name=none for a text-only model")
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
