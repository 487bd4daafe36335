"""Trainable transformers encoders for end-to-end fine-tuning (wav2vec2-base, bert-base).

A backbone sits in front of a model: the dataset yields raw items, :meth:`HFBackbone.collate`
turns a list of them into a padded batch, and :meth:`HFBackbone.forward` gives frame /
token vectors, their mask and a masked-mean pooled vector, all differentiable:

    x, mask = backbone.collate(["a text", "another"])   # (B, L) ids, (B, L) bool
    seq, seq_mask, pooled = backbone(x, mask)            # (B, L, d), (B, L), (B, d)

Waveforms are prepared exactly as by the frozen :class:`~fdrl.encoders.speech.HFSpeechEncoder`
(per-item normalisation, zero padding, frame mask from the true lengths).
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fdrl.encoders.pooling import LayerWeighting, masked_mean
from fdrl.encoders.registry import MINILM_ID, load_pretrained, resolve_hf_model
from fdrl.encoders.speech import SAMPLE_RATE, frame_mask, prepare_waveforms, receptive_field
from fdrl.errors import ConfigError

#: spec keys accepted by :meth:`HFBackbone.from_spec`, with their defaults
SPEC_DEFAULTS: dict[str, Any] = {
    "model": None,                     # hub id, local folder, or "minilm" (text)
    "layer_weighting": False,          # learnable softmax-weighted sum of all hidden layers
    "freeze_feature_encoder": None,    # speech: freeze the CNN (None = True for speech)
    "freeze_base_model": False,        # freeze the whole transformer (only the weighting trains)
    "max_length": 128,                 # text: tokens per text after truncation
    "max_seconds": None,               # speech: crop longer waveforms
}


class HFBackbone(nn.Module):
    """A trainable wrapper around a transformers ``AutoModel``.

    Build it with :meth:`from_spec`. ``out_dim`` is the model's hidden size.

    Parameters
    ----------
    model : the loaded transformers model.
    modality : "speech" or "text".
    model_id : identity recorded in :meth:`spec` (hub id or absolute folder).
    tokenizer : the tokenizer (text).
    normalize, use_attention_mask : from the feature extractor (speech).
    layer_weighting : learnable softmax-weighted sum of the hidden layers instead of
        the last layer.
    max_length, max_seconds : truncation of texts (tokens) / waveforms (seconds).
    """

    def __init__(self, model: nn.Module, modality: str, model_id: str, tokenizer=None,
                 normalize: bool = False, use_attention_mask: bool = False,
                 layer_weighting: bool = False, max_length: int = 128,
                 max_seconds: float | None = None):
        super().__init__()
        self.model = model
        self.modality = modality
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.use_attention_mask = use_attention_mask
        self.max_length = max_length
        self.max_seconds = max_seconds
        cfg = model.config
        self.min_samples = receptive_field(cfg.conv_kernel, cfg.conv_stride) if modality == "speech" else 0
        self.out_dim = int(cfg.hidden_size)
        self.weighting = LayerWeighting(cfg.num_hidden_layers + 1) if layer_weighting else None
        self._frozen = {"feature_encoder": False, "base_model": False}

    @classmethod
    def from_spec(cls, modality: str, spec: dict | str) -> "HFBackbone":
        """Load a pretrained backbone from a spec (a model name, or a dict of SPEC_DEFAULTS keys).

        A ``name`` key ("hf" or "minilm") is accepted so encoder specs can be reused.
        """
        from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

        if modality not in ("speech", "text"):
            raise ConfigError(f"backbone modality must be 'speech' or 'text', got {modality!r}")
        spec = {"model": spec} if isinstance(spec, str) else dict(spec)
        name = spec.pop("name", "hf")
        if name == "minilm":
            spec.setdefault("model", "minilm")
        elif name != "hf":
            raise ConfigError(f"{modality} backbone: name must be 'hf' or 'minilm', got {name!r}")
        for key in spec:
            if key not in SPEC_DEFAULTS:
                close = difflib.get_close_matches(key, list(SPEC_DEFAULTS), n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{modality} backbone: unknown setting '{key}'{hint}; "
                                  f"valid: {', '.join(SPEC_DEFAULTS)}")
        opts = {**SPEC_DEFAULTS, **spec}
        if opts["model"] is None:
            raise ConfigError(f"{modality} backbone needs 'model' (a hub id or a model folder)")
        load_from, model_id = resolve_hf_model(opts["model"])
        what = f"{modality} backbone"
        model = load_pretrained(AutoModel, load_from, model_id, what)
        if modality == "text":
            if opts["freeze_feature_encoder"]:
                raise ConfigError("text backbone: 'freeze_feature_encoder' is for speech models")
            tokenizer = load_pretrained(AutoTokenizer, load_from, model_id, what)
            backbone = cls(model, "text", model_id, tokenizer=tokenizer,
                           layer_weighting=bool(opts["layer_weighting"]),
                           max_length=int(opts["max_length"]))
        else:
            if not hasattr(model.config, "conv_kernel"):
                raise ConfigError(f"speech backbone {model_id}: not a wav2vec2-style model")
            fe = load_pretrained(AutoFeatureExtractor, load_from, model_id, what)
            if getattr(fe, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
                raise ConfigError(f"speech backbone {model_id}: expects {fe.sampling_rate} Hz input")
            backbone = cls(model, "speech", model_id,
                           normalize=bool(getattr(fe, "do_normalize", False)),
                           use_attention_mask=bool(getattr(fe, "return_attention_mask", False)),
                           layer_weighting=bool(opts["layer_weighting"]),
                           max_seconds=opts["max_seconds"])
            if opts["freeze_feature_encoder"] in (None, True):
                backbone.freeze_feature_encoder()
        if opts["freeze_base_model"]:
            backbone.freeze_base_model()
        return backbone

    def spec(self) -> dict[str, Any]:
        """The spec that rebuilds this backbone with :meth:`from_spec`."""
        out: dict[str, Any] = {"name": "minilm" if self.model_id == MINILM_ID else "hf",
                               "model": self.model_id,
                               "layer_weighting": self.weighting is not None,
                               "freeze_base_model": self._frozen["base_model"]}
        if self.modality == "speech":
            out.update(freeze_feature_encoder=self._frozen["feature_encoder"],
                       max_seconds=self.max_seconds)
        else:
            out.update(max_length=self.max_length)
        return out

    def freeze_feature_encoder(self) -> None:
        """Freeze the convolutional feature encoder of a speech model (as in wav2vec2 fine-tuning)."""
        if self.modality != "speech":
            raise ConfigError("freeze_feature_encoder: only speech backbones have a CNN feature encoder")
        self.model.feature_extractor.requires_grad_(False)
        self._frozen["feature_encoder"] = True

    def freeze_base_model(self) -> None:
        """Freeze every weight of the pretrained model (the layer weighting stays trainable)."""
        self.model.requires_grad_(False)
        self._frozen["base_model"] = True
        if self.modality == "speech":
            self._frozen["feature_encoder"] = True

    def collate(self, items: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw items -> a padded batch.

        Text: strings -> token ids (B, L) long and mask (B, L) bool.
        Speech: 16 kHz waveforms -> values (B, T) float32 and mask (B, T) bool.
        """
        if self.modality == "text":
            tok = self.tokenizer([str(t) for t in items], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            return tok["input_ids"], tok["attention_mask"].bool()
        max_samples = None if self.max_seconds is None else int(self.max_seconds * SAMPLE_RATE)
        values, lengths = prepare_waveforms([np.asarray(w) for w in items], self.normalize,
                                            self.min_samples, max_samples)  # (B, T), (B,)
        mask = torch.arange(values.shape[1])[None, :] < lengths[:, None]  # (B, T)
        return values, mask

    def forward(self, x: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch from :meth:`collate` -> hidden states, their mask, the masked mean.

        x, mask: (B, L) token ids or (B, T) waveforms, and their (B, L) / (B, T) bool mask.
        Returns seq (B, L', d), seq_mask (B, L') bool, pooled (B, d).
        """
        want_layers = self.weighting is not None
        if self.modality == "text":
            out = self.model(input_ids=x, attention_mask=mask.long(), output_hidden_states=want_layers)
        else:
            kwargs = {"attention_mask": mask.long()} if self.use_attention_mask else {}
            out = self.model(x, output_hidden_states=want_layers, **kwargs)
        seq = self.weighting(out.hidden_states) if want_layers else out.last_hidden_state  # (B, L', d)
        if self.modality == "text":
            seq_mask = mask.bool()  # (B, L)
        else:
            seq_mask = frame_mask(self.model, mask.sum(dim=1), seq.shape[1]).to(seq.device)  # (B, L')
        return seq, seq_mask, masked_mean(seq, seq_mask)
