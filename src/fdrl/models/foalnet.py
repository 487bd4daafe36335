"""Foal-Net: align first, then fuse (Li et al., Interspeech 2024, arXiv 2408.09438).

The paper fuses audio and video; this implementation takes any two modalities
(``a`` = speech, ``b`` = text in this toolkit). Reads top-down:

1. inputs   ModalityInput per modality -> sequences (B, L, d) with masks; a pooled
            input becomes a length-1 sequence
2. AVEL     emotion alignment by contrastive learning: masked mean -> projection head
            -> L2 normalise -> similarities a->b, b->a over a learnable temperature;
            label-aware targets (:func:`avel_loss`)
3. fusion   ``n_layers`` layers of cross-attention in both directions (a queries b,
            b queries a), residual + LayerNorm; masked mean of each side;
            concatenation -> linear classifier (:class:`CrossAttentionFusion`)
4. MEM      cross-modal emotion label matching: own pairs (a_i, b_i) are matches; for
            each a_i a hard negative b_j of a *different* emotion is drawn with
            probability softmax(sim_ij) over those j, and the same for each b_j
            (:func:`sample_hard_negatives`); the pairs go through the same fusion and a
            2-way head predicts match / no match

Loss: ``L = L_ce + avel_weight L_AVEL + mem_weight L_MEM`` (1.0 and 0.1, the authors'
released code; the paper's weights were not readable). Terms: ``task``, ``avel``,
``mem``; switches ``use_avel`` / ``use_mem`` remove a component (its heads are not
built and its term is not computed).

Choices (the paper's equations were not readable; spec ``foalnet.md``):

- Temperature: a standard CLIP-style learnable temperature tau, initialised at 0.07,
  stored as log(tau) and clamped to [0.01, 1.0] when used; similarities are divided by
  tau. The authors' code initialises its parameter at log(1/0.07) ~ 2.66 and divides
  by it, i.e. an effective tau of ~2.66, which makes the softmax nearly flat; we do
  not copy that.
- AVEL targets: ``Y_ij = 1`` when samples i and j share the emotion label, each row
  divided by its number of positives (SupCon-style, ``avel_normalise_targets``), so
  every anchor weighs the same whatever the size of its class; the diagonal is always
  a positive. ``L_AVEL`` is the mean of the a->b and b->a losses.
- The similarities that drive MEM's negative sampling are AVEL's (detached). With
  ``use_avel = false`` the projection heads are still built for MEM but receive no
  gradient, so the sampling is then nearly uniform over different-emotion partners.
- MEM pairs: B positives (the batch's own pairs, reusing the classification pass) and
  up to 2B negatives (one per a_i, one per b_j), i.e. up to 3B pairs in the
  cross-entropy (as ALBEF's image-text matching). A sample whose batch holds no
  partner of a different emotion gets no negative (it is skipped, not replaced).
- The projection width ``proj_dim`` defaults to 128 (the authors: 512) for the small
  corpora this toolkit trains on CPU; the cross-attention blocks have no feed-forward
  sublayer (the spec names attention, residual and LayerNorm only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fdrl.errors import ConfigError
from fdrl.losses import combine, task_loss
from fdrl.models.base import check_sizes, EmotionModel, InputSpec, Inputs, ModelOutput
from fdrl.models.baselines import modality_input, modality_tensors
from fdrl.models.layers import masked_mean
from fdrl.models.registry import register


@dataclass
class FoalNetConfig:
    """Every hyperparameter of Foal-Net. Input kinds come from the data's InputSpec."""

    # --- widths ---
    d: int = 128                     # model width: sequences, cross-attention, pooled sides
    proj_dim: int = 128              # AVEL projection width (authors: 512)
    n_heads: int = 4                 # cross-attention heads (paper: 4); d must be divisible
    n_layers: int = 2                # cross-attention layers per direction (paper: 2)
    dropout: float = 0.1             # dropout in inputs, attention, projection head, classifier
    # --- sequence front-end (used when a modality arrives as (B, L, d) frames) ---
    front_end_channels: int = 128    # conv width of the frame front-end
    front_end_layers: int = 2        # number of 1-D convolutions (kernel 5); 0 = none
    front_end_stride: int = 2        # stride of the 2nd and later convolutions
    # --- components and loss weights ---
    use_avel: bool = True            # emotion alignment by contrastive learning
    use_mem: bool = True             # cross-modal emotion label matching
    avel_weight: float = 1.0         # weight of L_AVEL (authors' code: 1.0)
    mem_weight: float = 0.1          # weight of L_MEM (authors' code: 0.1)
    avel_normalise_targets: bool = True  # row-normalise Y (SupCon-style); False: sum over positives
    # --- temperature (similarities are divided by tau) ---
    temperature_init: float = 0.07   # initial tau (CLIP); the authors' code differs, see docstring
    temperature_min: float = 0.01    # tau is clamped to [min, max] when used
    temperature_max: float = 1.0
    learn_temperature: bool = True   # False: tau fixed at temperature_init
    # --- task loss ---
    class_weights: list[float] | None = None  # per-class CE weights; None = unweighted
                                              # (weights the trainer sets take precedence)


# ----------------------------------------------------------------------------------
# Pure functions: AVEL loss, hard-negative sampling


def avel_loss(z_a: torch.Tensor, z_b: torch.Tensor, labels: torch.Tensor,
              temperature: torch.Tensor | float, normalise_targets: bool = True) -> torch.Tensor:
    """Label-aware contrastive alignment loss L_AVEL, both directions averaged.

    ``sim = norm(z_a) norm(z_b)^T / tau``; ``Y_ij = [y_i == y_j]`` (row-normalised when
    ``normalise_targets``); per direction ``mean_i(-sum_j Y_ij log softmax_j(sim_ij))``
    (a->b uses the rows of sim, b->a the rows of sim^T).

    Parameters
    ----------
    z_a, z_b : (B, p) projections of the two modalities (normalised here).
    labels : (B,) emotion labels.
    temperature : tau > 0 (scalar tensor or float).
    normalise_targets : divide each row of Y by its number of positives.
    """
    z_a = F.normalize(z_a.float(), dim=-1)                         # (B, p)
    z_b = F.normalize(z_b.float(), dim=-1)                         # (B, p)
    sim = z_a @ z_b.t() / temperature                              # (B, B)
    Y = (labels.view(-1, 1) == labels.view(1, -1)).float()         # (B, B), symmetric
    if normalise_targets:
        Y = Y / Y.sum(dim=1, keepdim=True)                         # diagonal: >= 1 positive
    l_ab = -(Y * F.log_softmax(sim, dim=1)).sum(dim=1).mean()
    l_ba = -(Y * F.log_softmax(sim.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (l_ab + l_ba)


def sample_hard_negatives(sim: torch.Tensor, labels: torch.Tensor,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row i, draw a column j with ``labels[j] != labels[i]``, with probability
    ``softmax_j(sim_ij)`` over those columns (harder = more similar = more likely).

    Parameters
    ----------
    sim : (B, B) similarities (row i = anchor i of one modality, column j = sample j of
        the other); no gradient is needed.
    labels : (B,) emotion labels.
    generator : optional torch.Generator (the global RNG otherwise).

    Returns
    -------
    index : (B,) long, the drawn partner of each row (0 where ``valid`` is False).
    valid : (B,) bool, False when the batch has no sample of a different emotion.
    """
    sim = sim.detach().float()
    same = labels.view(-1, 1) == labels.view(1, -1)                # (B, B)
    valid = (~same).any(dim=1)                                     # (B,)
    logits = sim.masked_fill(same, float("-inf"))                  # (B, B)
    logits = torch.where(valid.unsqueeze(1), logits, torch.zeros_like(logits))  # no all -inf rows
    probs = torch.softmax(logits, dim=1)                           # (B, B)
    index = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
    return torch.where(valid, index, torch.zeros_like(index)), valid


# ----------------------------------------------------------------------------------
# Layers


class ProjectionHead(nn.Module):
    """AVEL's projection: ``LayerNorm(p + Dropout(Linear(GELU(p))))`` with ``p = Linear(x)``.

    Shapes: (B, d_in) -> (B, proj_dim).
    """

    def __init__(self, d_in: int, proj_dim: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(d_in, proj_dim)
        self.fc = nn.Linear(proj_dim, proj_dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)                                           # (B, proj_dim)
        return self.norm(p + self.drop(self.fc(F.gelu(p))))        # (B, proj_dim)


class CrossAttentionBlock(nn.Module):
    """One direction of one layer: ``LayerNorm(q + Dropout(MHA(q, kv, kv)))``, padded
    keys masked. Shapes: q (B, Lq, d), kv (B, Lk, d), kv_mask (B, Lk) -> (B, Lq, d)."""

    def __init__(self, d: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor | None) -> torch.Tensor:
        pad = None if kv_mask is None else ~kv_mask.bool()         # (B, Lk), True = ignore
        a, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)  # (B, Lq, d)
        return self.norm(q + self.drop(a))                         # (B, Lq, d)


class CrossAttentionFusion(nn.Module):
    """``n_layers`` layers; in each, a attends to b and b attends to a (both from the
    layer's inputs), then masked mean pooling of each side and concatenation.

    Shapes: a (B, La, d), b (B, Lb, d), masks (B, La), (B, Lb) -> (B, 2d).
    """

    def __init__(self, d: int, n_heads: int, n_layers: int, dropout: float = 0.0):
        super().__init__()
        self.a_to_b = nn.ModuleList(CrossAttentionBlock(d, n_heads, dropout) for _ in range(n_layers))
        self.b_to_a = nn.ModuleList(CrossAttentionBlock(d, n_heads, dropout) for _ in range(n_layers))

    def forward(self, a: torch.Tensor, mask_a: torch.Tensor | None, b: torch.Tensor,
                mask_b: torch.Tensor | None) -> torch.Tensor:
        for ab, ba in zip(self.a_to_b, self.b_to_a):
            a, b = ab(a, b, mask_b), ba(b, a, mask_a)              # (B, La, d), (B, Lb, d)
        return torch.cat([masked_mean(a, mask_a), masked_mean(b, mask_b)], dim=1)  # (B, 2d)


# ----------------------------------------------------------------------------------
# The model


class FoalNet(EmotionModel):
    """Foal-Net on speech (a) and text (b); see the module docstring.

    ``forward(inputs, labels=None, speakers=None) -> ModelOutput``; ``embeddings``:
    ``emotion`` (B, 2d) the fused vector (the classifier's input), ``speech`` / ``text``
    (B, d) the masked means of the input sequences and, when the projection heads
    exist, ``avel_speech`` / ``avel_text`` (B, proj_dim) the L2-normalised projections.
    """

    modalities = ("speech", "text")

    def __init__(self, cfg: FoalNetConfig, spec: InputSpec):
        super().__init__()
        self.cfg = cfg
        # the fusion reads sequences, so the input blocks' own pooling is the plain masked mean
        self.speech_in = modality_input(cfg, spec, "speech", d_out=cfg.d, pooling="mean")
        self.text_in = modality_input(cfg, spec, "text", d_out=cfg.d, pooling="mean")
        self.fusion = CrossAttentionFusion(cfg.d, cfg.n_heads, cfg.n_layers, cfg.dropout)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.d, spec.num_classes))
        if cfg.use_avel or cfg.use_mem:  # MEM samples its negatives with AVEL's similarities
            self.proj_a = ProjectionHead(cfg.d, cfg.proj_dim, cfg.dropout)
            self.proj_b = ProjectionHead(cfg.d, cfg.proj_dim, cfg.dropout)
            log_tau = torch.tensor(math.log(cfg.temperature_init))
            if cfg.learn_temperature:
                self.log_tau = nn.Parameter(log_tau)
            else:
                self.register_buffer("log_tau", log_tau)
        else:
            self.proj_a = self.proj_b = None
        self.mem_head = nn.Linear(2 * cfg.d, 2) if cfg.use_mem else None   # 1 = match
        cw = None if cfg.class_weights is None else torch.tensor(cfg.class_weights, dtype=torch.float32)
        self.register_buffer("config_class_weights", cw, persistent=False)

    def temperature(self) -> torch.Tensor:
        """tau = exp(log_tau) clamped to [temperature_min, temperature_max]."""
        return self.log_tau.exp().clamp(self.cfg.temperature_min, self.cfg.temperature_max)

    def state_for_log(self) -> dict[str, float]:
        return {} if self.proj_a is None else {"temperature": float(self.temperature().detach())}

    def forward(self, inputs: Inputs, labels: torch.Tensor | None = None,
                speakers: torch.Tensor | None = None) -> ModelOutput:
        cfg = self.cfg
        fa = self.speech_in(*modality_tensors(inputs, "speech"))
        fb = self.text_in(*modality_tensors(inputs, "text"))
        a, mask_a = fa.sequence, fa.mask                           # (B, La, d), (B, La)
        b, mask_b = fb.sequence, fb.mask                           # (B, Lb, d), (B, Lb)
        emotion = self.fusion(a, mask_a, b, mask_b)                # (B, 2d)
        logits = self.classifier(emotion)                          # (B, C)
        pooled_a, pooled_b = masked_mean(a, mask_a), masked_mean(b, mask_b)  # (B, d) each
        emb = {"emotion": emotion, "speech": pooled_a, "text": pooled_b}
        z_a = z_b = None
        if self.proj_a is not None:
            z_a = F.normalize(self.proj_a(pooled_a), dim=-1)       # (B, p)
            z_b = F.normalize(self.proj_b(pooled_b), dim=-1)       # (B, p)
            emb.update(avel_speech=z_a, avel_text=z_b)
        out = ModelOutput(logits=logits, embeddings=emb)
        if labels is None:
            return out

        cw = self.class_weights if self.class_weights is not None else self.config_class_weights
        terms = {"task": task_loss(logits, labels, cw)}
        weights = {"task": 1.0}
        tau = self.temperature() if z_a is not None else None
        if cfg.use_avel:
            terms["avel"] = avel_loss(z_a, z_b, labels, tau, cfg.avel_normalise_targets)
            weights["avel"] = cfg.avel_weight
        if cfg.use_mem:
            terms["mem"] = self._mem_loss(a, mask_a, b, mask_b, emotion, z_a, z_b, tau, labels)
            weights["mem"] = cfg.mem_weight
        out.loss, out.terms = combine(terms, weights)
        return out

    def _mem_loss(self, a, mask_a, b, mask_b, emotion, z_a, z_b, tau, labels) -> torch.Tensor:
        """Cross-entropy of the match head over own pairs and hard negatives (both ways)."""
        with torch.no_grad():
            sim = z_a @ z_b.t() / tau                              # (B, B), a_i vs b_j
            neg_b, ok_a = sample_hard_negatives(sim, labels)       # for each a_i: some b_j
            neg_a, ok_b = sample_hard_negatives(sim.t(), labels)   # for each b_j: some a_i
        ia = torch.nonzero(ok_a).squeeze(1)                        # anchors a_i with a negative
        jb = torch.nonzero(ok_b).squeeze(1)                        # anchors b_j with a negative
        a_idx = torch.cat([ia, neg_a[jb]])                         # (N,)
        b_idx = torch.cat([neg_b[ia], jb])                         # (N,)
        pairs = [emotion]                                          # (B, 2d): the positives
        if a_idx.numel():
            pairs.append(self.fusion(a[a_idx], None if mask_a is None else mask_a[a_idx],
                                     b[b_idx], None if mask_b is None else mask_b[b_idx]))  # (N, 2d)
        match = self.mem_head(torch.cat(pairs))                    # (B + N, 2)
        target = torch.cat([labels.new_ones(emotion.shape[0]), labels.new_zeros(a_idx.numel())])
        return F.cross_entropy(match.float(), target)


# ---------------------------------------------------------------------- builder
def _check(cfg: FoalNetConfig, spec: InputSpec) -> None:
    if spec.speech_dim is None or spec.text_dim is None:
        raise ConfigError("Foal-Net needs two modalities, speech and text "
                          f"(speech_dim={spec.speech_dim}, text_dim={spec.text_dim})")
    if spec.num_classes < 2:
        raise ConfigError(f"Foal-Net needs at least 2 classes, the data have {spec.num_classes}")
    check_sizes(cfg, ("d", "proj_dim", "n_heads", "n_layers", "front_end_channels",
                      "front_end_stride"), heads_divide=True)
    if not 0.0 < cfg.temperature_min <= cfg.temperature_init <= cfg.temperature_max:
        raise ConfigError("model.temperature_*: expected 0 < temperature_min <= temperature_init "
                          f"<= temperature_max, got {cfg.temperature_min}, {cfg.temperature_init}, "
                          f"{cfg.temperature_max}")
    for key in ("avel_weight", "mem_weight"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"model.{key}: expected >= 0, got {getattr(cfg, key)}")
    if cfg.class_weights is not None and len(cfg.class_weights) != spec.num_classes:
        raise ConfigError(f"model.class_weights: expected {spec.num_classes} weights "
                          f"(one per class), got {len(cfg.class_weights)}")


@register("foalnet", FoalNetConfig, doc="Foal-Net (arXiv 2408.09438): contrastive emotion "
          "alignment (AVEL), bidirectional cross-attention fusion, cross-modal emotion label "
          "matching (MEM) with hard negatives; needs speech and text")
def build(cfg: FoalNetConfig, spec: InputSpec) -> FoalNet:
    """Validate ``cfg`` against the data and build the model."""
    _check(cfg, spec)
    return FoalNet(cfg, spec)
