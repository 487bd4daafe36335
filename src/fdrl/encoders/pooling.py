"""Pooling over time and over layers, shared by encoders, backbones and models.

All functions take a boolean mask with True = real frame/token; padded positions
never contribute to a result.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from fdrl.errors import ConfigError


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real positions of each sequence.

    Parameters
    ----------
    x : (B, L, d) tensor
    mask : (B, L) bool (or 0/1) tensor, True = real position

    Returns
    -------
    (B, d) tensor. A row whose mask is all False gives zeros (not NaN), so a
    fully padded item cannot poison a batch.
    """
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    total = (x * m).sum(dim=1)  # (B, d)
    count = m.sum(dim=1).clamp(min=1.0)  # (B, 1); clamp: all-masked rows divide by 1
    return total / count


def stack_layers(hidden_states: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Stack a tuple of per-layer (B, L, d) tensors into (n_layers, B, L, d)."""
    if isinstance(hidden_states, torch.Tensor):
        return hidden_states
    return torch.stack(tuple(hidden_states), dim=0)


class LayerWeighting(nn.Module):
    """Learnable softmax-weighted sum of hidden layers (as in SUPERB-style probing).

    The weights start equal (all logits zero), i.e. as the plain mean of the layers.

    Parameters
    ----------
    n_layers : number of hidden-state tensors that will be given (for a transformers
        model with ``output_hidden_states=True`` this is ``num_hidden_layers + 1``:
        the embedding/CNN output plus every transformer layer).
    """

    def __init__(self, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        self.logits = nn.Parameter(torch.zeros(n_layers))

    @property
    def weights(self) -> torch.Tensor:
        """(n_layers,) the current softmax weights."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, hidden_states: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """(n_layers x (B, L, d)) -> (B, L, d)."""
        h = stack_layers(hidden_states)  # (n, B, L, d)
        if h.shape[0] != self.n_layers:
            raise ValueError(f"expected {self.n_layers} hidden layers, got {h.shape[0]}")
        w = self.weights.to(h.dtype).view(-1, 1, 1, 1)  # (n, 1, 1, 1)
        return (w * h).sum(dim=0)  # (B, L, d)


class AttentionPooling(nn.Module):
    """Masked attention pooling: a learned score per position, softmax over the real ones.

    score_i = w^T tanh(W x_i) (one hidden layer, as in common SER attention pooling);
    padded positions get -inf before the softmax. A row with no real position pools
    to zeros.

    Parameters
    ----------
    dim : input feature size d
    hidden : size of the scoring layer (default d)
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_weights: bool = False):
        """(B, L, d), (B, L) -> (B, d) [and the (B, L) attention weights]."""
        s = self.score(torch.tanh(self.proj(x))).squeeze(-1)  # (B, L)
        if mask is None:
            mask = torch.ones(s.shape, dtype=torch.bool, device=s.device)
        mask = mask.bool()
        s = s.masked_fill(~mask, float("-inf"))
        # an all-masked row would softmax to NaN: give it zero weights instead
        empty = ~mask.any(dim=1, keepdim=True)  # (B, 1)
        s = s.masked_fill(empty, 0.0)
        w = torch.softmax(s, dim=1) * (~empty).to(x.dtype)  # (B, L)
        pooled = torch.bmm(w.unsqueeze(1), x).squeeze(1)  # (B, d)
        return (pooled, w) if return_weights else pooled


def check_layer(layer: Any, n_hidden: int, what: str) -> int | str:
    """Validate a ``layer`` setting against ``n_hidden`` hidden-state tensors.

    ``layer`` is an int index into the hidden states (0 = embeddings/CNN output,
    -1 = last layer) or ``"mean"`` (plain mean of all hidden states).
    """
    if layer == "mean":
        return layer
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"{what}: 'layer' must be an int or \"mean\", got {layer!r}")
    if not -n_hidden <= layer < n_hidden:
        raise ConfigError(f"{what}: 'layer' {layer} is out of range: the model has "
                          f"{n_hidden} hidden states (embeddings + {n_hidden - 1} layers)")
    return layer


def select_layer(out, layer: int | str) -> torch.Tensor:
    """Pick the (B, L, d) hidden states for ``layer`` from a transformers model output."""
    if layer == -1:
        return out.last_hidden_state
    hs = out.hidden_states  # tuple of (B, L, d), embeddings first
    if layer == "mean":
        return torch.stack(hs, dim=0).mean(dim=0)
    return hs[layer]
