"""Audio loading: any file libsndfile reads -> one float32 mono waveform at a fixed rate.

Every check that can fail on a user's file (missing, corrupt, truncated, empty, silent,
NaN, too short) raises :class:`~fdrl.errors.DataError` naming the file, so a bad wav
in a 5000-file corpus is reported by name instead of as a NaN loss three hours later.

The same checks run on uploaded bytes (:func:`decode_audio_bytes`) for the HTTP service.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from fdrl.errors import DataError

# libsndfile logs "data : 32000 (should be 15978)" when a WAV header promises more
# sample bytes than the file holds: the file was cut off while being copied or written.
_TRUNCATED_RE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers that never rewrote the header leave a placeholder size; not truncation.
_PLACEHOLDER_SIZES = {0, 0x7FFFFFFF, 0xFFFFFFFF}


@dataclass(frozen=True)
class AudioInfo:
    """What a sound file's header says, read without decoding the samples."""

    duration: float  # seconds
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel
    format: str  # container, e.g. 'WAV', 'FLAC'


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read duration, sample rate and channels from the header (no decoding).

    Raises
    ------
    DataError
        The file is missing or libsndfile cannot open it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise DataError(f"{path}: unreadable audio file ({_short(exc)})") from None
    return AudioInfo(duration=float(info.duration), sample_rate=int(info.samplerate),
                     channels=int(info.channels), frames=int(info.frames), format=str(info.format))


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, max_seconds: float | None = None,
               min_samples: int = 0) -> np.ndarray:
    """Load a sound file as a mono float32 waveform at ``sample_rate``.

    Channels are averaged (downmix), the signal is resampled with soxr (quality "HQ"),
    and when ``max_seconds`` is given only the *first* ``max_seconds`` are kept (the
    start of an utterance carries the onset; cropping the start instead would lose it).

    Parameters
    ----------
    path : str or PathLike
        Any format libsndfile reads (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1).
    sample_rate : int
        Target rate in Hz.
    max_seconds : float, optional
        Keep at most this many seconds from the start.
    min_samples : int
        Minimum length after resampling (e.g. the receptive field of a speech encoder).

    Returns
    -------
    np.ndarray
        (T,) float32, T <= max_seconds * sample_rate when cropped.

    Raises
    ------
    DataError
        Naming the file: not found, unreadable/corrupt/truncated, empty, all zeros,
        NaN/inf samples, or shorter than ``min_samples``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    return _decode(str(path), str(path), sample_rate, max_seconds, min_samples)


def decode_audio_bytes(data: bytes, sample_rate: int = 16000, max_seconds: float | None = None,
                       min_samples: int = 0, name: str = "<uploaded audio>") -> np.ndarray:
    """Decode an in-memory sound file (e.g. an HTTP upload); same checks as :func:`load_audio`.

    ``name`` is used in error messages in place of a path.

    Returns
    -------
    np.ndarray
        (T,) float32 mono waveform at ``sample_rate``.
    """
    if not data:
        raise DataError(f"{name}: empty upload (0 bytes)")
    return _decode(io.BytesIO(data), name, sample_rate, max_seconds, min_samples)


def _decode(source: str | BinaryIO, name: str, sample_rate: int, max_seconds: float | None,
            min_samples: int) -> np.ndarray:
    if sample_rate <= 0:
        raise DataError(f"{name}: sample_rate must be positive, got {sample_rate}")
    try:
        with sf.SoundFile(source) as fh:
            sr = int(fh.samplerate)
            _check_truncated(fh, name)
            # Read only what is kept: a 10-minute file cropped to 8 s decodes 8 s.
            frames = -1 if max_seconds is None else int(np.ceil(max_seconds * sr))
            wav = fh.read(frames=frames, dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise DataError(f"{name}: unreadable or corrupt audio file ({_short(exc)})") from None
    if wav.shape[0] == 0:
        raise DataError(f"{name}: audio has no samples (empty file)")
    wav = wav.mean(axis=1, dtype=np.float32)  # (T,) downmix to mono
    if not np.all(np.isfinite(wav)):
        bad = int(np.count_nonzero(~np.isfinite(wav)))
        raise DataError(f"{name}: audio has {bad} NaN/inf samples")
    if not np.any(wav):
        raise DataError(f"{name}: audio is silent (all {wav.shape[0]} samples are zero)")
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)  # (T',)
    if max_seconds is not None:
        wav = wav[: int(round(max_seconds * sample_rate))]  # (T'',) exact length after resampling
    if wav.shape[0] < min_samples:
        raise DataError(f"{name}: audio too short: {wav.shape[0]} samples at {sample_rate} Hz "
                        f"({wav.shape[0] / sample_rate:.3f} s), at least {min_samples} needed")
    return np.ascontiguousarray(wav)


def _check_truncated(fh: sf.SoundFile, name: str) -> None:
    """Raise when a WAV header declares more sample data than the file holds."""
    try:
        log = fh.extra_info
    except (AttributeError, RuntimeError):
        return
    m = _TRUNCATED_RE.search(log or "")
    if m:
        declared, actual = int(m.group(1)), int(m.group(2))
        if declared > actual and declared not in _PLACEHOLDER_SIZES:
            raise DataError(f"{name}: truncated audio file (header declares {declared} data bytes, "
                            f"file holds {actual})")


def _short(exc: BaseException) -> str:
    """libsndfile messages repeat the file name; keep the part after the last colon."""
    msg = str(exc).strip()
    return msg.rsplit(": ", 1)[-1] if ": " in msg else msg
