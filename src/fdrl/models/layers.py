"""Reusable building blocks for the toolkit's models (FDRL, Foal-Net, baselines, MISA).

Contents, from the smallest part up:

- gradient reversal: :class:`GradReverse`, :func:`grad_reverse`, :class:`GradientReversal`
  and the DANN schedule :func:`dann_lambda`;
- :class:`MLP`: two fully connected layers with a ReLU (the FDRL paper's encoders and
  discriminators);
- :class:`BatchedDiscriminators`: C independent two-layer MLPs run as one batched
  matrix product (FDRL's per-class local discriminators);
- padding-aware pooling: :func:`masked_mean`, :class:`AttentionPool`;
- :class:`ModalityInput`: one modality's input (pooled vector, frame/token sequence or
  a trainable backbone) mapped to a common width;
- :class:`CrossModalFusion`: self-attention over a few stacked representation tokens.

Masks follow the toolkit's convention everywhere: ``True`` = a real frame/token,
``False`` = padding. These layers never import from ``fdrl.encoders``: models must not
depend on the feature-extraction side of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------
# Gradient reversal (Ganin et al., DANN)


class GradReverse(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``-lambd`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        # view_as: a new tensor node, so autograd routes the gradient through backward()
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambd * grad_output, None  # no gradient for lambd


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Gradient reversal: ``y = x`` forward, ``dL/dx = -lambd * dL/dy`` backward."""
    return GradReverse.apply(x, lambd)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`; set ``.lambd`` from a schedule at each step."""

    def __init__(self, lambd: float = 1.0):
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd:g}"


def dann_lambda(p: float, gamma: float = 10.0) -> float:
    """DANN schedule ``lambda(p) = 2 / (1 + exp(-gamma p)) - 1``.

    Rises from 0 at ``p = 0`` to about 1 at ``p = 1`` (0.99991 for gamma = 10), so the
    adversarial signal is off while the discriminators are still random.

    Parameters
    ----------
    p : training progress in [0, 1] (values outside are clipped).
    gamma : steepness (Ganin et al. use 10).
    """
    p = min(max(float(p), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


# ----------------------------------------------------------------------------------
# Perceptrons


class MLP(nn.Module):
    """Two fully connected layers with a ReLU in between: ``fc2(drop(relu(fc1(x))))``.

    The output is linear (no final activation), so an encoder's output can take any
    sign and a discriminator's output are logits.

    Shapes: (..., d_in) -> (..., d_out).
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class BatchedDiscriminators(nn.Module):
    """``n_heads`` independent two-layer MLPs evaluated as one batched operation.

    Head c computes ``relu(x_c @ w1[c] + b1[c]) @ w2[c] + b2[c]``: the same function as
    an :class:`MLP` whose ``fc1.weight`` is ``w1[c].T`` and ``fc2.weight`` is
    ``w2[c].T``. Running the C heads as one ``bmm`` instead of a Python loop keeps the
    cost of FDRL's local discriminators nearly flat in the number of classes.

    Parameters
    ----------
    n_heads : number of heads C.
    d_in, d_hidden, n_out : layer widths, the same for every head.
    dropout : dropout after the hidden ReLU.

    Shapes
    ------
    input:  (C, N, d_in), a different input per head, or (N, d_in), shared by all heads.
    output: (C, N, n_out).
    """

    def __init__(self, n_heads: int, d_in: int, d_hidden: int, n_out: int,
                 dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.d_in, self.d_hidden, self.n_out = n_heads, d_in, d_hidden, n_out
        self.w1 = nn.Parameter(torch.empty(n_heads, d_in, d_hidden))
        self.b1 = nn.Parameter(torch.empty(n_heads, d_hidden))
        self.w2 = nn.Parameter(torch.empty(n_heads, d_hidden, n_out))
        self.b2 = nn.Parameter(torch.empty(n_heads, n_out))
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init (kaiming_uniform with a = sqrt(5)) amounts to
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases alike.
        for w, b, fan_in in ((self.w1, self.b1, self.d_in), (self.w2, self.b2, self.d_hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:                                       # (N, d_in), shared input
            h = torch.einsum("nd,cdh->cnh", x, self.w1)       # (C, N, d_hidden)
        elif x.dim() == 3 and x.shape[0] == self.n_heads:      # (C, N, d_in)
            h = torch.bmm(x, self.w1)                          # (C, N, d_hidden)
        else:
            raise ValueError(f"BatchedDiscriminators expects (N, {self.d_in}) or "
                             f"({self.n_heads}, N, {self.d_in}), got {tuple(x.shape)}")
        h = self.drop(F.relu(h + self.b1.unsqueeze(1)))        # (C, N, d_hidden)
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)  # (C, N, n_out)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, d_in={self.d_in}, d_hidden={self.d_hidden}, "
                f"n_out={self.n_out}")


# ----------------------------------------------------------------------------------
# Padding-aware pooling


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of the real frames only.

    Parameters
    ----------
    x : (B, L, d) frames.
    mask : (B, L) bool, True = real frame; None = all frames real.

    Returns
    -------
    (B, d). A row with no real frame gives zeros (not NaN).
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1).to(x.dtype)                        # (B, L, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)   # (B, d)


class AttentionPool(nn.Module):
    """Masked attention pooling: ``sum_t softmax_t(w . x_t) x_t`` over real frames only.

    Padded frames get zero weight, so padding a sequence does not change the output.
    Shapes: x (B, L, d), mask (B, L) or None -> (B, d).
    """

    def __init__(self, d: int):
        super().__init__()
        self.score = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = self.score(x).squeeze(-1)                          # (B, L)
        if mask is not None:
            s = s.masked_fill(~mask.bool(), float("-inf"))
        w = torch.softmax(s, dim=-1)                           # (B, L)
        w = torch.nan_to_num(w, nan=0.0)                       # all-padding row -> zeros
        return torch.einsum("bl,bld->bd", w, x)                # (B, d)


def make_pool(kind: str, d: int) -> nn.Module | None:
    """``"attention"`` -> :class:`AttentionPool`; ``"mean"`` -> None (use masked_mean)."""
    if kind == "attention":
        return AttentionPool(d)
    if kind == "mean":
        return None
    raise ValueError(f"pooling must be 'mean' or 'attention', got {kind!r}")


# ----------------------------------------------------------------------------------
# One modality's input -> common width


@dataclass
class ModalityFeatures:
    """One modality after :class:`ModalityInput`.

    pooled:   (B, d_model) one vector per utterance.
    sequence: (B, L', d_model) frames/tokens (for models that attend over time), or None.
    mask:     (B, L') bool, True = real frame, or None.
    """

    pooled: torch.Tensor
    sequence: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class FeatureStandardizer(nn.Module):
    """Per-feature standardisation with running statistics (BatchNorm over the feature
    axis, computed on real frames only).

    Hand-crafted features mix scales (eGeMAPS: F0 in semitones next to loudness and
    jitter), so a per-sample LayerNorm is dominated by the largest features; a classical
    pipeline z-scores every feature on the training set, which is what this does while
    training and what its running statistics do at evaluation and inference (they are
    saved with the weights). A batch of one sample uses the running statistics.
    """

    def __init__(self, d: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2:                                       # (B, d)
            flat = x
        else:                                                  # (B, L, d) -> (N_real, d)
            flat = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])
        if self.training and flat.shape[0] < 2:
            out = F.batch_norm(flat, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                               self.bn.bias, training=False, eps=self.bn.eps)
        else:
            out = self.bn(flat)                                # (N, d)
        if x.dim() == 2:
            return out
        if mask is None:
            return out.reshape(x.shape)
        full = torch.zeros_like(x)                             # (B, L, d), padding = 0
        full[mask] = out
        return full


class ModalityInput(nn.Module):
    """Maps one modality's input to the common width ``d_model``.

    Three kinds of input (chosen by the data, see :class:`fdrl.models.base.InputSpec`):

    ``"pooled"``
        (B, d_in) utterance vectors -> LayerNorm -> dropout -> Linear -> (B, d_model).
        No activation: the next block (an encoder MLP) starts with Linear + ReLU, so
        this layer only changes the width. ``sequence`` is ``pooled.unsqueeze(1)`` with
        an all-True mask.
    ``"sequence"``
        (B, L, d_in) frame features (log-mel (B, L, 64), eGeMAPS LLDs (B, L, 25)) or
        token vectors, with a (B, L) mask. A small trainable front-end: per-frame
        LayerNorm, ``front_end_layers`` 1-D convolutions (kernel ``kernel_size``; the
        first with stride 1, the others with stride ``stride``; each followed by a
        per-frame LayerNorm, GELU and dropout), a per-frame Linear to d_model, then
        masked pooling (attention or mean). It stands in for the fine-tuned upper
        layers of wav2vec2 / BERT in the paper when only frame features are at hand.
        With ``front_end_layers = 0`` it is per-frame LayerNorm + Linear + pooling
        (masked mean pooling of H, the spec's default, with ``pooling="mean"``).
    ``"backbone"``
        Raw waveforms / token ids. ``backbone(x, mask)`` (an ``nn.Module`` built
        elsewhere, e.g. a trainable wav2vec2) returns ``(seq, seq_mask, pooled)`` with
        widths d_in; seq and pooled go through LayerNorm -> dropout -> Linear. When the
        backbone returns ``pooled = None`` the masked mean of ``seq`` is used.

    Padding must be at the end of each row (right-padding) for the ``"sequence"`` kind;
    padded frames are zeroed before every convolution and the mask is down-sampled
    with each stride, so a padded and an unpadded batch give the same output.

    Parameters
    ----------
    d_in : input width (feature width, or the backbone's output width).
    d_model : output width.
    kind : "pooled", "sequence" or "backbone".
    backbone : the trainable module for ``kind="backbone"``.
    dropout : dropout rate.
    front_end_channels : convolution width for ``kind="sequence"``.
    front_end_layers : number of convolutions for ``kind="sequence"`` (0 allowed).
    kernel_size : convolution kernel (odd).
    stride : stride of the second and later convolutions.
    pooling : "attention" or "mean" (sequence kind).
    input_norm : "batch" (per-feature standardisation with running statistics, the
        default for features) or "layer" (per-sample LayerNorm). Backbones always use
        LayerNorm.
    """

    KINDS = ("pooled", "sequence", "backbone")

    def __init__(self, d_in: int, d_model: int, kind: str = "pooled",
                 backbone: nn.Module | None = None, dropout: float = 0.0,
                 front_end_channels: int = 128, front_end_layers: int = 2,
                 kernel_size: int = 5, stride: int = 2, pooling: str = "attention",
                 input_norm: str = "batch"):
        super().__init__()
        if input_norm not in ("batch", "layer"):
            raise ValueError(f"input_norm must be 'batch' or 'layer', got {input_norm!r}")
        if kind not in self.KINDS:
            raise ValueError(f"ModalityInput kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "backbone" and backbone is None:
            raise ValueError("ModalityInput(kind='backbone') needs a backbone module")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (centred frames), got {kernel_size}")
        self.kind, self.d_in, self.d_model = kind, d_in, d_model
        self.backbone = backbone if kind == "backbone" else None
        self.drop = nn.Dropout(dropout)
        # features are standardised per dimension; backbone outputs are already well scaled
        self.norm = (FeatureStandardizer(d_in) if input_norm == "batch" and kind != "backbone"
                     else nn.LayerNorm(d_in))
        if kind in ("pooled", "backbone"):
            self.proj = nn.Linear(d_in, d_model)
            return
        # sequence: conv front-end
        self.strides = [1 if i == 0 else stride for i in range(front_end_layers)]
        widths = [d_in] + [front_end_channels] * front_end_layers
        self.convs = nn.ModuleList(
            nn.Conv1d(widths[i], widths[i + 1], kernel_size, stride=s, padding=kernel_size // 2)
            for i, s in enumerate(self.strides))
        self.conv_norms = nn.ModuleList(nn.LayerNorm(front_end_channels) for _ in self.strides)
        self.proj = nn.Linear(widths[-1], d_model)
        self.pool = make_pool(pooling, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> ModalityFeatures:
        if self.kind == "pooled":
            if x.dim() != 2:
                raise ValueError(f"ModalityInput(kind='pooled') expects (B, {self.d_in}) "
                                 f"vectors, got shape {tuple(x.shape)}")
            pooled = self.proj(self.drop(self.norm(x)))        # (B, d_model)
            ones = torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
            return ModalityFeatures(pooled, pooled.unsqueeze(1), ones)
        if self.kind == "backbone":
            seq, seq_mask, pooled = self.backbone(x, mask)     # (B, L', d_in), (B, L'), (B, d_in)
            if pooled is None:
                pooled = masked_mean(seq, seq_mask)            # (B, d_in)
            pooled = self.proj(self.drop(self.norm(pooled)))  # (B, d_model)
            seq = self.proj(self.drop(self.norm(seq)))        # (B, L', d_model)
            return ModalityFeatures(pooled, seq, seq_mask)
        return self._sequence(x, mask)

    def _sequence(self, x: torch.Tensor, mask: torch.Tensor | None) -> ModalityFeatures:
        if x.dim() != 3:
            raise ValueError(f"ModalityInput(kind='sequence') expects (B, L, {self.d_in}) "
                             f"frames, got shape {tuple(x.shape)}")
        mask = (torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None
                else mask.bool())
        h = (self.norm(x, mask) if isinstance(self.norm, FeatureStandardizer)
             else self.norm(x)) * mask.unsqueeze(-1)           # (B, L, d_in), padding = 0
        for conv, norm, s in zip(self.convs, self.conv_norms, self.strides):
            h = conv(h.transpose(1, 2)).transpose(1, 2)        # (B, L', C)
            # output t is centred on input t*s (odd kernel, padding k//2): it is real
            # iff that input frame is; this also holds for masks with holes
            mask = mask[:, ::s]                                # (B, L')
            h = self.drop(F.gelu(norm(h))) * mask.unsqueeze(-1)  # (B, L', C), padding = 0
        seq = self.proj(h)                                     # (B, L', d_model)
        pooled = masked_mean(seq, mask) if self.pool is None else self.pool(seq, mask)  # (B, d_model)
        return ModalityFeatures(pooled, seq, mask)


# ----------------------------------------------------------------------------------
# Fusion


class CrossModalFusion(nn.Module):
    """Multi-head self-attention over K stacked representation tokens (Q = K = V).

    FDRL's CMF module (paper eq. 12-13): the tokens are e.g. [S_a, S_t, P_a, P_t]. The
    attention output gets a residual connection and LayerNorm (our addition: the paper
    only says the heads are concatenated), then is flattened to (B, K*d) or averaged
    over the tokens to (B, d) as the classifier input.

    Shapes: tokens (B, K, d) -> (B, K*d) for ``out="flatten"``, (B, d) for ``"mean"``.
    """

    def __init__(self, d: int, n_heads: int = 4, dropout: float = 0.0, out: str = "flatten"):
        super().__init__()
        if out not in ("flatten", "mean"):
            raise ValueError(f"CrossModalFusion out must be 'flatten' or 'mean', got {out!r}")
        self.d, self.out = d, out
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def out_dim(self, n_tokens: int) -> int:
        """Width of the output for ``n_tokens`` input tokens."""
        return n_tokens * self.d if self.out == "flatten" else self.d

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(tokens, tokens, tokens, need_weights=False)  # (B, K, d)
        h = self.norm(tokens + self.drop(a))                           # (B, K, d)
        return h.flatten(1) if self.out == "flatten" else h.mean(dim=1)  # (B, K*d) | (B, d)
