"""Frozen self-supervised speech encoder: wav2vec2 / HuBERT / WavLM by hub id or folder.

Waveforms are normalised one by one (zero mean, unit variance when the feature
extractor says ``do_normalize``), then zero-padded to the longest in the batch. The
model gets an attention mask only when its feature extractor asks for one
(``return_attention_mask``: the layer-norm models such as wav2vec2-large-lv60);
group-norm models such as wav2vec2-base were trained on zero-padded batches without
a mask. Either way the *frame* mask is computed from the true lengths through the
conv stack, so the masked mean ignores padded frames.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from fdrl.encoders.base import Encoded, Encoder
from fdrl.encoders.pooling import check_layer, masked_mean, select_layer
from fdrl.encoders.registry import load_pretrained, resolve_hf_model
from fdrl.errors import ConfigError

SAMPLE_RATE = 16000


def receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Samples one output frame of a conv stack sees (400 for wav2vec2's 7 layers)."""
    field, jump = 1, 1
    for k, s in zip(conv_kernel, conv_stride):
        field += (k - 1) * jump
        jump *= s
    return field


def prepare_waveforms(waves: Sequence[np.ndarray], normalize: bool, min_samples: int = 0,
                      max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise, crop/pad each waveform, and zero-pad the batch.

    Parameters
    ----------
    waves : B mono float waveforms (T_i,) at 16 kHz
    normalize : zero-mean unit-variance per waveform (the transformers recipe,
        computed on the real samples only, never on padding)
    min_samples : shorter waveforms are zero-padded to this length first
    max_samples : longer waveforms are cropped to their first ``max_samples``

    Returns
    -------
    values (B, T) float32 and lengths (B,) long.
    """
    prepped = []
    for w in waves:
        x = np.asarray(w, dtype=np.float32).reshape(-1)
        if max_samples is not None:
            x = x[:max_samples]
        if normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        if len(x) < min_samples:
            x = np.pad(x, (0, min_samples - len(x)))
        prepped.append(x)
    lengths = torch.tensor([len(x) for x in prepped], dtype=torch.long)  # (B,)
    values = torch.zeros(len(prepped), int(lengths.max()) if prepped else 0)  # (B, T)
    for i, x in enumerate(prepped):
        values[i, : len(x)] = torch.from_numpy(x)
    return values, lengths


def frame_mask(model, lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B,) sample lengths -> (B, n_frames) bool mask of the frames inside each waveform."""
    frames = model._get_feat_extract_output_lengths(lengths)  # (B,)
    return torch.arange(n_frames, device=frames.device)[None, :] < frames[:, None]


class HFSpeechEncoder(Encoder):
    """A frozen wav2vec2-style speech encoder.

    Parameters
    ----------
    model : hub id (e.g. "facebook/wav2vec2-base") or a local model folder.
    layer : hidden state to pool: -1 = last transformer layer, 0 = the CNN feature
        projection, or "mean" for the plain mean of all hidden states.
    max_seconds : crop longer waveforms to their first ``max_seconds`` (memory).
    batch_size : waveforms per forward pass when :meth:`encode` gets more.
    device : torch device for the model.
    """

    modality = "speech"
    name = "hf"

    def __init__(self, model: str, layer: int | str = -1, max_seconds: float | None = None,
                 batch_size: int = 8, device: str = "cpu"):
        from transformers import AutoFeatureExtractor, AutoModel

        load_from, self.model_id = resolve_hf_model(model)
        self.device = torch.device(device)
        self.model = load_pretrained(AutoModel, load_from, self.model_id, "speech encoder")
        self.model.to(self.device).eval()
        self.model.requires_grad_(False)
        cfg = self.model.config
        if not hasattr(cfg, "conv_kernel"):
            raise ConfigError(f"speech encoder {self.model_id}: not a wav2vec2-style model "
                              f"(model_type '{cfg.model_type}' has no conv feature encoder)")
        self.feature_extractor = load_pretrained(AutoFeatureExtractor, load_from, self.model_id,
                                                 "speech encoder")
        sr = getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE)
        if sr != SAMPLE_RATE:
            raise ConfigError(f"speech encoder {self.model_id}: expects {sr} Hz input; "
                              f"the toolkit feeds {SAMPLE_RATE} Hz")
        self.min_samples = receptive_field(cfg.conv_kernel, cfg.conv_stride)
        self.layer = check_layer(layer, cfg.num_hidden_layers + 1, f"speech encoder {self.model_id}")
        if max_seconds is not None and max_seconds <= 0:
            raise ConfigError(f"speech encoder: 'max_seconds' must be > 0, got {max_seconds}")
        self.max_seconds = max_seconds
        self.batch_size = int(batch_size)
        self.normalize = bool(getattr(self.feature_extractor, "do_normalize", False))
        self.use_attention_mask = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        self._dim = int(cfg.hidden_size)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def sequence_dim(self) -> int:
        return self._dim

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_id, "layer": self.layer, "max_seconds": self.max_seconds}

    def cost(self, item: np.ndarray) -> int:
        return int(np.asarray(item).shape[-1])

    @torch.inference_mode()
    def encode(self, items: Sequence[np.ndarray], sequences: bool = False) -> list[Encoded]:
        """Encode 16 kHz mono waveforms: pooled (d,) and optionally (frames, d) float32."""
        max_samples = None if self.max_seconds is None else int(self.max_seconds * SAMPLE_RATE)
        out: list[Encoded] = []
        for start in range(0, len(items), self.batch_size):
            values, lengths = prepare_waveforms(items[start:start + self.batch_size], self.normalize,
                                                self.min_samples, max_samples)
            values = values.to(self.device)  # (B, T)
            sample_mask = (torch.arange(values.shape[1])[None, :] < lengths[:, None])  # (B, T)
            kwargs = ({"attention_mask": sample_mask.long().to(self.device)}
                      if self.use_attention_mask else {})
            res = self.model(values, output_hidden_states=self.layer != -1, **kwargs)
            h = select_layer(res, self.layer).float()  # (B, L, d)
            mask = frame_mask(self.model, lengths, h.shape[1]).to(h.device)  # (B, L)
            pooled = masked_mean(h, mask).cpu().numpy()  # (B, d)
            if sequences:
                h_np, m_np = h.cpu().numpy(), mask.cpu().numpy()
                seqs = [h_np[i][m_np[i]] for i in range(len(h_np))]  # (L_i, d)
            else:
                seqs = [None] * len(pooled)
            out.extend(Encoded(pooled=p.astype(np.float32), sequence=s) for p, s in zip(pooled, seqs))
        return out
