"""Classical acoustic encoders: openSMILE eGeMAPS and librosa log-mel.

Frame-level encoders pool an utterance by :func:`mean_std_pool`: the mean and the
standard deviation of every feature over the frames, concatenated (2 d values).
:class:`fdrl.encoders.precomputed.PrecomputedEncoder` pools a feature dump the same
way, so a model trained on a log-mel dump can run on new audio through
:class:`LogMelEncoder`.

openSMILE runs in C and releases the GIL, so eGeMAPS is computed on a thread pool
(about 2x on 2 cores, measured by benchmarks/encode.py); log-mel is a plain loop.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from fdrl.encoders.base import Encoded, Encoder
from fdrl.errors import ConfigError

SAMPLE_RATE = 16000


def mean_std_pool(frames: np.ndarray) -> np.ndarray:
    """(L, d) frames -> (2 d,) float32 ``[mean over frames, std over frames]``.

    The std is the population std (ddof 0), so one frame gives std 0. Zero frames
    give zeros.
    """
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"expected (frames, features), got shape {f.shape}")
    if len(f) == 0:
        return np.zeros(2 * f.shape[1], dtype=np.float32)
    return np.concatenate([f.mean(axis=0), f.std(axis=0)]).astype(np.float32)


def mean_pool(frames: np.ndarray) -> np.ndarray:
    """(L, d) frames -> (d,) float32 mean over frames (zeros for zero frames)."""
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"expected (frames, features), got shape {f.shape}")
    return (f.mean(axis=0) if len(f) else np.zeros(f.shape[1])).astype(np.float32)


#: pooling name -> (function, pooled size as a multiple of the frame size)
POOLINGS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {
    "mean_std": (mean_std_pool, 2),
    "mean": (mean_pool, 1),
}


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    return np.pad(x, (0, n - len(x))) if len(x) < n else x


class _OpenSmileEncoder(Encoder):
    """Shared openSMILE plumbing: one ``Smile`` object, a thread pool over items."""

    modality = "speech"
    #: the longest eGeMAPS analysis window (60 ms): shorter input gives NaN, not a frame
    min_samples = 960
    level = "lld"

    def __init__(self, num_workers: int | None = None):
        import opensmile

        level = (opensmile.FeatureLevel.LowLevelDescriptors if self.level == "lld"
                 else opensmile.FeatureLevel.Functionals)
        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=level)
        self.num_workers = max(1, num_workers or os.cpu_count() or 1)

    def settings(self) -> dict[str, Any]:
        return {"feature_set": "eGeMAPSv02", "level": self.level}

    def spec(self) -> dict[str, Any]:
        # the settings describe the output (cache key) but are fixed by the class; the
        # spec that rebuilds the encoder is its name alone
        return {"name": self.name}

    def cost(self, item: np.ndarray) -> int:
        return int(np.asarray(item).shape[-1])

    def _frames(self, wave: np.ndarray) -> np.ndarray:
        """(T,) 16 kHz waveform -> (frames, features) float32."""
        x = _pad_to(wave, self.min_samples)
        # openSMILE converts to int16 by x * 32768: clip so a resampling overshoot
        # above full scale cannot wrap around
        x = np.clip(x, -1.0, 32767 / 32768)
        y = self.smile(x, SAMPLE_RATE)  # (channels=1, features, frames)
        return np.ascontiguousarray(y[0].T, dtype=np.float32)

    def _map(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.num_workers == 1 or len(items) == 1:
            return [self._frames(x) for x in items]
        with ThreadPoolExecutor(min(self.num_workers, len(items))) as pool:
            return list(pool.map(self._frames, items))


class EgemapsEncoder(_OpenSmileEncoder):
    """eGeMAPSv02 low-level descriptors: 25 features per 10 ms frame.

    sequence: (frames, 25) LLDs at 100 Hz. pooled: (50,) mean and std over frames.

    Parameters
    ----------
    num_workers : threads for openSMILE (default: all cores). Does not change the output.
    """

    name = "egemaps"
    level = "lld"
    sequence_dim = 25

    @property
    def dim(self) -> int:
        return 2 * self.sequence_dim

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "pooling": "mean_std"}

    def encode(self, items: Sequence[np.ndarray], sequences: bool = False) -> list[Encoded]:
        return [Encoded(pooled=mean_std_pool(f), sequence=f if sequences else None)
                for f in self._map(items)]


class EgemapsFunctionalsEncoder(_OpenSmileEncoder):
    """eGeMAPSv02 functionals: the classical 88 utterance-level features (pooled only).

    Parameters
    ----------
    num_workers : threads for openSMILE (default: all cores). Does not change the output.
    """

    name = "egemaps-functionals"
    level = "functionals"
    sequence_dim = None

    @property
    def dim(self) -> int:
        return 88

    def encode(self, items: Sequence[np.ndarray], sequences: bool = False) -> list[Encoded]:
        if sequences:
            raise ConfigError("speech encoder 'egemaps-functionals' gives one vector per "
                              "utterance, no frame sequence; use 'egemaps' for sequences")
        return [Encoded(pooled=f[0]) for f in self._map(items)]


class LogMelEncoder(Encoder):
    """Log-mel spectrogram in dB, the recipe of the IEMOCAP log-mel dump.

    Per utterance: peak-normalise the waveform, ``librosa.feature.melspectrogram``
    (power 2, centred frames), ``librosa.power_to_db(S, ref=np.max, top_db)`` so the
    loudest bin is 0 dB and the floor is -top_db.

    sequence: (frames, n_mels) at sample_rate / hop_length frames/s (31.25 by default).
    pooled: (2 n_mels,) mean and std over frames.

    Parameters
    ----------
    sample_rate : rate the spectrogram is computed at; input is always 16 kHz and is
        resampled first when this differs.
    n_mels, n_fft, hop_length : mel bands, FFT size and hop (samples).
    top_db : dynamic range kept below the peak (dB).
    """

    modality = "speech"
    name = "logmel"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, n_fft: int = 2048,
                 hop_length: int = 512, top_db: float = 80.0):
        for key, value in (("sample_rate", sample_rate), ("n_mels", n_mels),
                           ("n_fft", n_fft), ("hop_length", hop_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"speech encoder 'logmel': '{key}' must be a positive int, "
                                  f"got {value!r}")
        self.sample_rate, self.n_mels, self.n_fft, self.hop_length = sample_rate, n_mels, n_fft, hop_length
        self.top_db = float(top_db)

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    @property
    def sequence_dim(self) -> int:
        return self.n_mels

    def settings(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "n_mels": self.n_mels, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "top_db": self.top_db}

    def cost(self, item: np.ndarray) -> int:
        return int(np.asarray(item).shape[-1])

    def frames(self, wave: np.ndarray) -> np.ndarray:
        """(T,) 16 kHz waveform -> (frames, n_mels) float32 log-mel in dB."""
        import librosa

        y = np.asarray(wave, dtype=np.float32).reshape(-1)
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            y = soxr.resample(y, SAMPLE_RATE, self.sample_rate).astype(np.float32)
        y = _pad_to(y, 1)
        peak = float(np.max(np.abs(y)))
        if peak > 0:  # silence stays silence instead of 0/0
            y = y / peak
        S = librosa.feature.melspectrogram(y=y, sr=self.sample_rate, n_fft=self.n_fft,
                                           hop_length=self.hop_length, n_mels=self.n_mels,
                                           power=2.0)  # (n_mels, frames)
        db = librosa.power_to_db(S, ref=np.max, top_db=self.top_db)  # (n_mels, frames)
        return np.ascontiguousarray(db.T, dtype=np.float32)

    def encode(self, items: Sequence[np.ndarray], sequences: bool = False) -> list[Encoded]:
        out = []
        for wave in items:
            f = self.frames(wave)
            out.append(Encoded(pooled=mean_std_pool(f), sequence=f if sequences else None))
        return out
