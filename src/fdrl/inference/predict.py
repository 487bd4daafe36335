"""Predict emotions with a model bundle: raw audio and text in, class probabilities out.

    import fdrl
    model = fdrl.load("bundles/demo-20250101-120000")
    model.predict(audio="a.wav", text="I can't believe it!")
    # {"label": "happy", "probabilities": {"angry": 0.1, "happy": 0.7, ...}}

:func:`load` rebuilds the frozen encoders from the specs the bundle recorded and the
model from its weights, once. Every call then runs the same steps as training did:
audio is read with :func:`fdrl.data.audio.load_audio` (16 kHz mono, cropped to the
bundle's ``max_seconds``), encoded by the same encoder, stored the way the feature
cache stores it (pooled vectors float32, sequences rounded through float16), batched
like :class:`fdrl.training.data.FeatureData` and run through the model, so a bundle
gives the probabilities the trainer saw for the same utterance.

Bundles trained on precomputed speech features (encoder "precomputed") compute the
features from new audio with the encoder their ``compute`` spec names (e.g. the
log-mel recipe of the IEMOCAP dump); without one they score given features only
(``features=`` array or ``.npy`` path).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from fdrl import __version__
from fdrl.data.manifest import unicode_problem
from fdrl.errors import BundleError, DataError, FdrlError
from fdrl.inference.bundle import SAMPLE_RATE, Bundle, read_bundle, rebuild_encoder
from fdrl.models.base import Inputs

_F16_MAX = float(np.finfo(np.float16).max)
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


# ----------------------------------------------------------------------------- text


def check_text(text: Any, name: str) -> str:
    """``text`` if it is a usable transcript, else a :class:`DataError` naming ``name``.

    Training refuses empty and whitespace-only transcripts (a model would read padding),
    so prediction does too.
    """
    if not isinstance(text, str):
        raise DataError(f"{name}: 'text' must be a string, got {type(text).__name__}")
    problem = unicode_problem(text)
    if problem is not None:
        raise DataError(f"{name}: text is not valid UTF-8 ({problem}); pass the transcript "
                        f"as UTF-8 text")
    if not text.strip():
        raise DataError(f"{name}: empty transcript {text!r}; this model reads text and was "
                        f"trained on non-empty transcripts only: pass the words spoken")
    return text


# ----------------------------------------------------------------------------- audio


def waveform_from_array(audio: Any, sr: int | None, max_seconds: float | None = None,
                        min_samples: int = 0, name: str = "<audio array>") -> np.ndarray:
    """An in-memory signal -> (T,) float32 mono at 16 kHz; the checks of ``load_audio``.

    Parameters
    ----------
    audio : (T,) or (T, channels) samples; float in [-1, 1], or int16/int32 PCM
        (scaled to [-1, 1) as libsndfile does). A torch tensor or a list works too.
    sr : its sample rate in Hz (required: an array does not know its rate).
    max_seconds : keep at most the first ``max_seconds``.
    min_samples : minimum length at 16 kHz (an encoder's receptive field).

    Raises
    ------
    DataError
        Naming ``name``: no rate, wrong shape, empty, NaN/inf, all zeros, too short.
    """
    import soxr

    if sr is None or isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise DataError(f"{name}: an audio array needs its sample rate: pass sr=<Hz> (got {sr!r})")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    x = np.asarray(audio)
    if x.dtype in _INT_SCALE:
        x = x.astype(np.float32) / _INT_SCALE[x.dtype]
    elif not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{name}: expected real-valued samples, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2 and x.shape[1] > 16:
        raise DataError(f"{name}: expected (samples,) or (samples, channels), got shape {x.shape} "
                        f"(transpose a (channels, samples) array)")
    if x.ndim not in (1, 2):
        raise DataError(f"{name}: expected (samples,) or (samples, channels), got shape {x.shape}")
    if max_seconds is not None:  # as load_audio: only what is kept is resampled
        x = x[: int(np.ceil(max_seconds * sr))]
    if x.shape[0] == 0:
        raise DataError(f"{name}: audio has no samples")
    wav = x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else x  # (T,) downmix
    if not np.all(np.isfinite(wav)):
        raise DataError(f"{name}: audio has {int(np.count_nonzero(~np.isfinite(wav)))} NaN/inf samples")
    if not np.any(wav):
        raise DataError(f"{name}: audio is silent (all {wav.shape[0]} samples are zero)")
    if int(sr) != SAMPLE_RATE:
        wav = soxr.resample(wav, int(sr), SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    if max_seconds is not None:
        wav = wav[: int(round(max_seconds * SAMPLE_RATE))]
    if wav.shape[0] < min_samples:
        raise DataError(f"{name}: audio too short: {wav.shape[0]} samples at {SAMPLE_RATE} Hz "
                        f"({wav.shape[0] / SAMPLE_RATE:.3f} s), at least {min_samples} needed")
    return np.ascontiguousarray(wav, dtype=np.float32)


def _as_cached(seq: np.ndarray) -> np.ndarray:
    """A sequence as training read it back from the feature cache (float16 when it fits)."""
    seq = np.asarray(seq)
    if seq.size and float(np.abs(seq).max()) < _F16_MAX:
        return seq.astype(np.float16).astype(np.float32)
    return seq.astype(np.float32)


# ----------------------------------------------------------------------------- predictor


@dataclass
class _Item:
    """One input, checked and loaded, waiting for encoding."""

    wave: np.ndarray | None = None      # (T,) 16 kHz, for the speech encoder and/or ASR
    features: np.ndarray | None = None  # given precomputed features (L, d) or (d,)
    text: str | None = None             # None: transcribe ``wave``
    encode_wave: bool = False           # the speech encoder reads ``wave``


class Predictor:
    """A loaded bundle: encoders + model, ready to predict. Build it with :func:`load`.

    Thread-safe: calls are serialised by a lock (the encoders and the model are
    used by one call at a time).

    Attributes
    ----------
    bundle : the bundle's description.
    classes : class names, in the model's output order.
    modalities : the inputs the model reads ("speech", "text").
    """

    def __init__(self, bundle: Bundle, model: torch.nn.Module, speech_encoder, text_encoder,
                 device: torch.device, compute_encoder=None, transcriber=None):
        self.bundle = bundle
        self.model = model
        self.speech_encoder = speech_encoder   # PrecomputedEncoder for feature bundles
        self.compute_encoder = compute_encoder  # audio -> frames, for feature bundles
        self.text_encoder = text_encoder
        self.transcriber = transcriber
        self.device = device
        self.classes = bundle.classes
        self.modalities = bundle.modalities
        self.speech_sequence = bool(bundle.input.get("speech_sequence"))
        self.text_sequence = bool(bundle.input.get("text_sequence"))
        self.max_seconds = bundle.max_seconds
        self.precomputed = bundle.speech_precomputed  # the model reads a features dump's frames
        self._dims = {m: bundle.input.get(f"{m}_dim") for m in ("speech", "text")}
        wave_encoder = compute_encoder if self.precomputed else speech_encoder
        self.min_samples = int(getattr(wave_encoder, "min_samples", 0) or 0)
        self._lock = threading.Lock()
        self._fingerprint: str | None = None  # see fingerprint
        # one helper thread encodes the text while the speech encoder runs (see _run)
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="fdrl-text")
                      if speech_encoder is not None and text_encoder is not None
                      and (os.cpu_count() or 1) > 1 else None)

    # -- description --------------------------------------------------------------
    @property
    def accepts_audio(self) -> bool:
        """True when the speech input can be computed from audio (or no speech is read)."""
        return self.speech_encoder is None or not self.precomputed \
            or self.compute_encoder is not None

    @property
    def needs_text(self) -> bool:
        """True when a call must bring a transcript (text model and no ASR)."""
        return self.text_encoder is not None and self.transcriber is None

    @property
    def fingerprint(self) -> str:
        """What the predictions depend on besides the inputs: sha256 (first 16 hex digits)
        of the bundle's ``bundle.json`` and weights, and of the ASR model's spec."""
        if self._fingerprint is None:
            from fdrl.checkpoint import META, WEIGHTS

            h = hashlib.sha256()
            for name in (META, WEIGHTS):
                path = self.bundle.path / name
                h.update(f"{name}:{path.stat().st_size}:".encode())
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
            if self.transcriber is not None:
                h.update(json.dumps(self.transcriber.spec(), sort_keys=True).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def info(self) -> dict[str, Any]:
        """Model name, classes, modalities, encoders and versions (for ``/health``)."""
        m = self.bundle.meta
        return {"model": self.bundle.model_name, "bundle": self.bundle.path.name,
                "classes": self.classes, "modalities": list(self.modalities),
                "encoders": {k: v for k, v in self.bundle.encoders.items()},
                "asr": self.transcriber.spec() if self.transcriber is not None else None,
                "fdrl_version": __version__, "bundle_fdrl_version": m.get("fdrl_version"),
                "max_seconds": self.max_seconds}

    # -- inputs -------------------------------------------------------------------
    def _load_wave(self, audio: Any, sr: int | None, name: str, min_samples: int) -> np.ndarray:
        from fdrl.data.audio import decode_audio_bytes, load_audio

        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio, SAMPLE_RATE, self.max_seconds, min_samples)
        if isinstance(audio, (bytes, bytearray)):
            return decode_audio_bytes(bytes(audio), SAMPLE_RATE, self.max_seconds, min_samples, name)
        return waveform_from_array(audio, sr, self.max_seconds, min_samples, name)

    def _load_features(self, features: Any, name: str) -> np.ndarray:
        if isinstance(features, (str, os.PathLike)):
            from fdrl.data.featstore import load_features

            return np.asarray(load_features(str(features)), dtype=np.float32)
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        try:
            return np.asarray(features, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"{name}: 'features' must be a numeric array (frames, d)") from None

    def _no_audio_error(self) -> BundleError:
        where = self.bundle.path
        return BundleError(
            f"{where}: this bundle was trained on precomputed speech features and does not say "
            f"how to compute them from audio (bundle.json encoders.speech has no 'compute' spec); "
            f"it can only score precomputed features: pass them as features=<(frames, d) array "
            f"or .npy path> (CLI: --features FILE.npy, or a 'features' column in --manifest)")

    def _prepare(self, item: dict, name: str) -> _Item:
        """Check one input dict and load its audio/features."""
        if not isinstance(item, dict):
            raise DataError(f"{name}: expected a dict with 'audio' / 'text' / 'features', "
                            f"got {type(item).__name__}")
        audio, sr = item.get("audio"), item.get("sr")
        text, features = item.get("text"), item.get("features")
        for key, value in (("audio", audio), ("features", features)):
            # a JSON "\\ud800" in a path cannot be a file name (undecodable bytes from the
            # command line, U+DC80..U+DCFF, can: the OS gets the original bytes back)
            if isinstance(value, str) and re.search("[\ud800-\udc7f\udd00-\udfff]", value):
                raise DataError(f"{name}: '{key}' path is not valid Unicode text "
                                f"({unicode_problem(value)}): {value!r}")
        out = _Item()
        if self.speech_encoder is not None:
            if features is not None:
                if not self.precomputed:
                    encoder = self.bundle.encoders["speech"].get("name")
                    raise DataError(f"{name}: 'features' given, but this bundle computes its speech "
                                    f"features from audio with '{encoder}'; pass the audio instead")
                out.features = self._load_features(features, name)
            elif audio is not None:
                if not self.accepts_audio:
                    raise self._no_audio_error()
                out.wave = self._load_wave(audio, sr, name, self.min_samples)
                out.encode_wave = True
            else:
                raise DataError(f"{name}: no audio; this model reads speech: pass audio=<path or "
                                f"array> (CLI: --audio FILE)"
                                + (" or features=..." if self.precomputed else ""))
        if self.text_encoder is not None:
            if text is not None:
                check_text(text, name)  # not empty, valid Unicode
            elif self.transcriber is None:
                raise DataError(f"{name}: no transcript; this model reads text: pass text=... "
                                f"(CLI: --text \"...\") or transcribe the audio with asr=MODEL "
                                f"(CLI: --asr openai/whisper-small or a local folder)")
            elif out.wave is None:
                if audio is None:
                    raise DataError(f"{name}: neither text nor audio to transcribe")
                out.wave = self._load_wave(audio, sr, name, 0)
            out.text = text
        return out

    # -- encoding and the model ---------------------------------------------------
    def _encode_speech(self, items: list[_Item]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Pooled (d,) and, for sequence models, (L, d') frames per item."""
        seq = self.speech_sequence
        out: list[Any] = [None] * len(items)
        wave_pos = [i for i, it in enumerate(items) if it.encode_wave]
        feat_pos = [i for i, it in enumerate(items) if not it.encode_wave]
        if wave_pos:
            waves = [items[i].wave for i in wave_pos]
            if self.precomputed:
                frames = [e.sequence for e in self.compute_encoder.encode(waves, sequences=True)]
                encoded = self.speech_encoder.encode(frames, sequences=seq)
            else:
                encoded = self.speech_encoder.encode(waves, sequences=seq)
            for i, e in zip(wave_pos, encoded):
                out[i] = e
        if feat_pos:
            encoded = self.speech_encoder.encode([items[i].features for i in feat_pos], sequences=seq)
            for i, e in zip(feat_pos, encoded):
                out[i] = e
        return [self._checked(e, "speech") for e in out]

    def _checked(self, enc, modality: str) -> tuple[np.ndarray, np.ndarray | None]:
        pooled = np.asarray(enc.pooled, dtype=np.float32).reshape(-1)  # (d,)
        if not np.all(np.isfinite(pooled)):
            raise DataError(f"{modality} encoder gave NaN/inf features for this input")
        want = self._dims[modality]
        if want is not None and pooled.shape[0] != want and not getattr(self, f"{modality}_sequence"):
            raise BundleError(f"{self.bundle.path}: the {modality} encoder gives {pooled.shape[0]} "
                              f"features, the model expects {want}")
        seq = _as_cached(enc.sequence) if enc.sequence is not None else None
        return pooled, seq

    def _tensor(self, encoded: list[tuple[np.ndarray, np.ndarray | None]], sequence: bool):
        from fdrl.training.data import pad_sequences

        if sequence:
            return pad_sequences([s for _, s in encoded])  # (B, L, d), (B, L)
        return torch.from_numpy(np.stack([p for p, _ in encoded])), None  # (B, d)

    def _encode_text(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        with torch.inference_mode():  # thread-local: set again on the helper thread
            return [self._checked(e, "text")
                    for e in self.text_encoder.encode(texts, sequences=self.text_sequence)]

    def _run(self, items: list[_Item], embeddings: bool) -> list[dict]:
        """Transcribe, encode and classify a batch of prepared items."""
        with self._lock, torch.inference_mode():
            transcripts: dict[int, str] = {}
            todo = [i for i, it in enumerate(items) if self.text_encoder is not None and it.text is None]
            if todo:
                for i, t in zip(todo, self.transcriber.transcribe([items[i].wave for i in todo])):
                    transcripts[i] = t
            speech = text = speech_mask = text_mask = None
            text_job = text_enc = None
            if self.text_encoder is not None:
                texts = [transcripts.get(i, it.text) for i, it in enumerate(items)]
                if self._pool is not None and self.speech_encoder is not None:
                    # the speech encoders run in C (openSMILE, FFTs) and release the GIL:
                    # encoding the text meanwhile hides its cost on a multi-core CPU
                    text_job = self._pool.submit(self._encode_text, texts)
                else:
                    text_enc = self._encode_text(texts)
            try:
                if self.speech_encoder is not None:
                    speech, speech_mask = self._tensor(self._encode_speech(items), self.speech_sequence)
            except BaseException:
                if text_job is not None:  # never leave it running past the lock
                    wait([text_job])
                raise
            if text_job is not None:
                text_enc = text_job.result()
            if text_enc is not None:
                text, text_mask = self._tensor(text_enc, self.text_sequence)
            out = self.model(Inputs(speech, speech_mask, text, text_mask).to(self.device))
            probs = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()  # (B, C)
            embs = ({k: v.float().cpu().numpy() for k, v in out.embeddings.items()}
                    if embeddings else {})
        results = []
        for i, p in enumerate(probs):
            r: dict[str, Any] = {"label": self.classes[int(p.argmax())],
                                 "probabilities": {c: float(q) for c, q in zip(self.classes, p)}}
            if i in transcripts:
                r["transcript"] = transcripts[i]
            if embeddings:
                r["embeddings"] = {k: v[i].tolist() for k, v in embs.items()}
            results.append(r)
        return results

    # -- public API ---------------------------------------------------------------
    def predict(self, audio: Any = None, sr: int | None = None, text: str | None = None,
                embeddings: bool = False, features: Any = None) -> dict:
        """Classify one utterance.

        Parameters
        ----------
        audio : a sound file path, the file's bytes, or a (T,) / (T, channels) array
            (then ``sr`` is required). Needed when the model reads speech (unless
            ``features`` are given to a precomputed-features bundle).
        sr : sample rate of an array ``audio`` in Hz (resampled to 16 kHz with soxr).
        text : the transcript. Needed when the model reads text, unless the predictor
            was loaded with ``asr=`` (then the audio is transcribed).
        embeddings : also return the model's named representations (lists of floats).
        features : precomputed (frames, d) features or a ``.npy`` path, for bundles
            trained on precomputed features.

        Returns
        -------
        dict
            ``{"label": str, "probabilities": {class: p}}``, plus ``"embeddings":
            {name: list}`` when asked and ``"transcript"`` when ASR made the text.

        Raises
        ------
        DataError : unreadable audio, missing input.
        BundleError : the bundle cannot score this kind of input.
        """
        item = {"audio": audio, "sr": sr, "text": text, "features": features}
        return self._run([self._prepare(item, "input")], embeddings)[0]

    def predict_batch(self, items: Sequence[dict], batch_size: int = 16, progress: bool = True,
                      embeddings: bool = False, skip_bad: bool = False) -> list[dict]:
        """Classify many utterances, ``batch_size`` at a time.

        Parameters
        ----------
        items : dicts with the keyword arguments of :meth:`predict` (``audio``, ``sr``,
            ``text``, ``features``) and optionally ``utt_id``, which is copied to the
            result.
        batch_size : items per encoder / model call.
        progress : tqdm bar (utterances/s) when writing to a terminal.
        embeddings : as in :meth:`predict`.
        skip_bad : an unusable item gives ``{"utt_id"?, "error": message}`` instead of
            raising.

        Returns
        -------
        One result dict per item, in order.

        Raises
        ------
        FdrlError
            The first unusable item (when not ``skip_bad``), naming it by ``utt_id``
            or position.
        """
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        results: list[dict | None] = [None] * len(items)
        bar = tqdm(total=len(items), unit="utt", desc="predict", disable=None if progress else True,
                   dynamic_ncols=True)
        try:
            for start in range(0, len(items), batch_size):
                ready: list[tuple[int, _Item]] = []
                for i in range(start, min(len(items), start + batch_size)):
                    try:
                        ready.append((i, self._prepare(items[i], _name(items[i], i))))
                    except FdrlError as exc:
                        results[i] = self._failed(items[i], i, exc, skip_bad)
                self._run_chunk(items, ready, results, embeddings, skip_bad)
                bar.update(min(len(items), start + batch_size) - start)
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    def _run_chunk(self, items, ready, results, embeddings: bool, skip_bad: bool) -> None:
        if not ready:
            return
        try:
            outs = self._run([it for _, it in ready], embeddings)
        except FdrlError as exc:
            if len(ready) == 1:
                i = ready[0][0]
                results[i] = self._failed(items[i], i, exc, skip_bad)
                return
            # one bad input fails its whole batch: run them one by one to find it
            for pair in ready:
                self._run_chunk(items, [pair], results, embeddings, skip_bad)
            return
        for (i, _), r in zip(ready, outs):
            utt = items[i].get("utt_id") if isinstance(items[i], dict) else None
            results[i] = ({"utt_id": utt, **r} if utt is not None else r)

    @staticmethod
    def _failed(item, i: int, exc: FdrlError, skip_bad: bool) -> dict:
        name = _name(item, i)
        msg = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
        if not skip_bad:
            raise type(exc)(msg) from None
        utt = item.get("utt_id") if isinstance(item, dict) else None
        return {"utt_id": utt, "error": msg} if utt is not None else {"error": msg}


def _name(item: Any, i: int) -> str:
    utt = item.get("utt_id") if isinstance(item, dict) else None
    return f"utterance '{utt}'" if utt is not None else f"item {i}"


def load(bundle: str | os.PathLike, device: str = "cpu", asr: Any = None,
         asr_language: str | None = None) -> Predictor:
    """Load a model bundle for prediction.

    Parameters
    ----------
    bundle : a bundle folder (``fdrl train`` / ``fdrl export``) or a CV fold's
        ``model/`` folder.
    device : torch device for the model and the encoders ("cpu", "cuda", "cuda:1").
    asr : transcribe audio that comes without text: a hub id or local folder of a
        speech recognition model (e.g. "openai/whisper-small"), or a ready
        :class:`~fdrl.inference.asr.Transcriber`. Ignored by speech-only bundles.
    asr_language : Whisper: the spoken language (e.g. "en"); None = detect.

    Returns
    -------
    Predictor

    Raises
    ------
    BundleError
        Not a bundle, an incompatible bundle, or encoders that cannot be rebuilt.
    """
    from fdrl.checkpoint import load_checkpoint

    b = read_bundle(bundle)
    dev = torch.device(device)
    model, _, _ = load_checkpoint(b.path, dev)
    where = str(b.path / "bundle.json")
    enc = b.encoders
    speech = rebuild_encoder("speech", enc.get("speech"), where, device=str(dev))
    compute = None
    if speech is not None and b.speech_precomputed and b.compute_spec:
        compute = rebuild_encoder("speech", b.compute_spec, where + " (compute)", device=str(dev))
    text = rebuild_encoder("text", enc.get("text"), where, device=str(dev))
    transcriber = None
    if asr is not None and text is not None:
        from fdrl.inference.asr import Transcriber

        transcriber = asr if isinstance(asr, Transcriber) or hasattr(asr, "transcribe") \
            else Transcriber(str(asr), device=str(dev), language=asr_language)
    return Predictor(b, model, speech, text, dev, compute_encoder=compute, transcriber=transcriber)


__all__ = ["Predictor", "check_text", "load", "waveform_from_array"]
