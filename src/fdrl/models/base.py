"""What every model in the toolkit accepts and returns, so one trainer serves them all.

A model is an :class:`EmotionModel`: ``forward(inputs, labels=None, speakers=None)``
returns a :class:`ModelOutput` whose ``loss`` is ``None`` when no labels are given
(the cheap inference path). Training-time schedules reach the model through
:meth:`EmotionModel.set_progress` (called every step) and
:meth:`EmotionModel.end_epoch` (called once per epoch; returns values to log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Inputs:
    """One batch of model inputs. Missing modalities are ``None``.

    ``speech`` is one of: pooled vectors (B, d_a); frame features (B, L_a, d_a) with
    ``speech_mask`` (B, L_a), True = real frame; raw waveforms (B, T) with
    ``speech_mask`` (B, T) for a trainable backbone.
    ``text`` is pooled vectors (B, d_t), token features (B, L_t, d_t) with
    ``text_mask``, or token ids (B, L_t) (long) with ``text_mask`` for a backbone.
    """

    speech: torch.Tensor | None = None
    speech_mask: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        t = self.speech if self.speech is not None else self.text
        return int(t.shape[0])

    def to(self, device: torch.device | str) -> "Inputs":
        def mv(t):
            return None if t is None else t.to(device, non_blocking=True)

        return Inputs(mv(self.speech), mv(self.speech_mask), mv(self.text), mv(self.text_mask))


@dataclass
class ModelOutput:
    """What a model returns.

    logits:     (B, C) emotion logits.
    loss:       scalar total loss, or None when called without labels.
    terms:      named loss terms (unweighted, detached floats are fine) for logging.
    embeddings: named (B, d) representations (e.g. ``S_a``, ``P_t``, ``emotion``)
                kept for figures, probes and ``--embeddings`` at inference.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the terms ``loss`` sums, still attached to the graph, with their weights
    #: (name -> (scalar term, weight)), for the per-term gradient diagnostic
    #: (``train.diagnose``); references only, nothing is computed for it. Empty when
    #: the model does not provide them
    loss_parts: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)


class EmotionModel(nn.Module):
    """Base class. Subclasses implement ``forward``; the hooks default to no-ops."""

    #: modalities the model reads: subset of {"speech", "text"}
    modalities: tuple[str, ...] = ("speech", "text")

    def __init__(self) -> None:
        super().__init__()
        # per-class task-loss weights (C,) set by the trainer; not saved with the weights
        self.register_buffer("class_weights", None, persistent=False)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Per-class weights (C,) for the task loss, or None. Models read
        ``self.class_weights`` when they compute their cross-entropy."""
        self.class_weights = None if weights is None else weights.float()

    def set_progress(self, progress: float) -> None:
        """Training progress p in [0, 1] (for GRL lambda schedules and the like)."""

    def end_epoch(self) -> dict[str, float]:
        """Called after each training epoch; returns scalars to log (e.g. mu)."""
        return {}

    def state_for_log(self) -> dict[str, float]:
        """Scalars worth logging every step (e.g. the current GRL lambda)."""
        return {}

    #: representation parts a diagnostic may replace by their training mean, e.g.
    #: ``{"S": ("S_a", "S_t"), "P": ("P_a", "P_t")}``; models that define it also
    #: implement :meth:`classify` (see :mod:`fdrl.analysis.diagnostics`)
    diagnostic_parts: dict[str, tuple[str, ...]] = {}

    def classify(self, reps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Emotion logits (B, C) from the named representations of ``diagnostic_parts``."""
        raise NotImplementedError(f"{type(self).__name__} has no representation parts")

    def calibration_norms(self) -> list[nn.Module]:
        """Batch-norm layers whose running statistics the trainer re-estimates after
        every epoch in evaluation mode (dropout off) on training rows, so evaluation
        standardises with the statistics of what evaluation computes ("precise BN")."""
        return []

    def gradient_probe(self) -> list[nn.Parameter]:
        """Parameters whose gradient norm per loss term ``train.diagnose`` logs (FDRL:
        the shared encoder E_s); empty = no such diagnostic."""
        return []


@dataclass
class InputSpec:
    """What the data provide, so a model can size its input layers.

    ``*_dim`` is None when the modality is absent. ``*_sequence`` is True when the
    inputs are (B, L, d) sequences with a mask rather than pooled (B, d) vectors.
    ``*_backbone`` is a trainable encoder module (end-to-end fine-tuning), built
    outside the model (the model never loads weights from paths); when given, the
    inputs are raw waveforms / token ids and the backbone yields the features.
    """

    num_classes: int
    speech_dim: int | None = None
    text_dim: int | None = None
    speech_sequence: bool = False
    text_sequence: bool = False
    num_speakers: int = 0
    speech_backbone: nn.Module | None = None
    text_backbone: nn.Module | None = None


def check_sizes(cfg, positive: tuple[str, ...], heads_divide: bool = False) -> None:
    """Checks every model config shares: the named sizes are positive integers, the
    conv front-end depth is >= 0, dropout is in [0, 1) and (optionally) ``d`` is
    divisible by ``n_heads``. Raises ConfigError naming the key."""
    from fdrl.errors import ConfigError

    for key in positive:
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"model.{key}: expected a positive integer, got {getattr(cfg, key)!r}")
    if cfg.front_end_layers < 0:
        raise ConfigError(f"model.front_end_layers: expected >= 0, got {cfg.front_end_layers}")
    if heads_divide and cfg.d % cfg.n_heads:
        raise ConfigError(f"model.d: {cfg.d} is not divisible by model.n_heads={cfg.n_heads}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout: expected a value in [0, 1), got {cfg.dropout}")
