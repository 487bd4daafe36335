"""Transcripts for utterances that come without one: a transformers ASR model.

Any speech-to-text model ``AutoModelForSpeechSeq2Seq`` loads (Whisper first of all)
by hub id or local folder, or a CTC model (wav2vec2 ``...ForCTC``, greedy decoding).
The model and its processor load once; :meth:`Transcriber.transcribe` takes a batch
of 16 kHz waveforms.

Whisper reads at most 30 s per utterance; longer input is transcribed from its first
30 s (bundles crop audio to ``data.max_seconds``, 15 s by default, anyway).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fdrl.errors import ConfigError

SAMPLE_RATE = 16000


class Transcriber:
    """A frozen ASR model.

    Parameters
    ----------
    model : hub id (e.g. "openai/whisper-tiny") or a local model folder with the
        processor (feature extractor + tokenizer) files.
    device : torch device.
    language : Whisper only: force the spoken language (e.g. "en"); None lets the
        model detect it.
    max_new_tokens : upper bound on the transcript length in tokens.

    Raises
    ------
    ConfigError
        The model or its processor cannot be loaded, or is not a speech recognition model.
    """

    def __init__(self, model: str, device: str = "cpu", language: str | None = None,
                 max_new_tokens: int = 128):
        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor

        from fdrl.encoders.registry import load_pretrained, resolve_hf_model

        load_from, self.model_id = resolve_hf_model(model)
        config = load_pretrained(AutoConfig, load_from, self.model_id, "ASR model")
        archs = " ".join(getattr(config, "architectures", None) or [])
        self.ctc = "ForCTC" in archs
        loader = AutoModelForCTC if self.ctc else AutoModelForSpeechSeq2Seq
        try:
            self.model = load_pretrained(loader, load_from, self.model_id, "ASR model")
        except ConfigError as exc:
            raise ConfigError(f"{exc}; --asr needs a speech recognition model (Whisper or a "
                              f"...ForCTC model)") from None
        self.processor = load_pretrained(AutoProcessor, load_from, self.model_id, "ASR model")
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.language = language
        # the decoder cannot go past its position table (448 for Whisper); the prompt
        # (start, language, task, timestamps tokens) takes a few of those positions
        limit = getattr(config, "max_target_positions", None)
        self.max_new_tokens = int(max_new_tokens) if limit is None else \
            max(1, min(int(max_new_tokens), int(limit) - 4))
        self.is_whisper = getattr(config, "model_type", "") == "whisper"

    def spec(self) -> dict:
        return {"model": self.model_id, "language": self.language}

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        """(T_i,) float32 16 kHz waveforms -> one stripped transcript per waveform."""
        if not len(waves):
            return []
        waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
        if self.ctc:
            feats = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                   padding=True)
            values = feats["input_values"].to(self.device)  # (B, T)
            kwargs = {"attention_mask": feats["attention_mask"].to(self.device)} \
                if "attention_mask" in feats else {}
            logits = self.model(values, **kwargs).logits  # (B, L, vocab)
            ids = logits.argmax(dim=-1).cpu()  # (B, L)
            texts = self.processor.batch_decode(ids)
        else:
            # Whisper's extractor pads every item to 30 s itself (its encoder needs that)
            feats = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            inputs = feats["input_features"].to(self.device, self.model.dtype)  # (B, mels, frames)
            kwargs = {"max_new_tokens": self.max_new_tokens}
            if self.is_whisper and self.language:
                kwargs.update(language=self.language, task="transcribe")
            ids = self.model.generate(inputs, **kwargs).cpu()  # (B, L)
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [t.strip() for t in texts]
