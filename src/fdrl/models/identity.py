"""Emotion vs. speaker identity: a speaker-identification head and three ways to keep
identity out of the emotion embedding (spec ``identity.md``, after Peri et al.,
ICASSP 2021, arXiv 2102.06269, of which only the abstract could be read).

Reads top-down:

1. :class:`IdentityConfig`  the switch (``method``) and its weights;
2. pure loss terms: :func:`confusion_loss` (KL from uniform);
3. :class:`IdentityModule`  the heads and the terms for one model.

The picture, for a model with a shared trunk ``h`` and an emotion embedding ``e``::

    h ──> ... ──> e ──> emotion classifier                (the model's own path)
    h ──> identity encoder ──> z ──> speaker head         ("multitask": L_speaker)
                                e ──> technique          (one of the three below)

``method`` picks what is added (each includes the ones above it in this list):

``none``
    nothing: a plain emotion model.
``multitask``
    the identity branch ``z = E_id(h)`` (two-layer MLP) and a speaker-identification
    head on ``z``, trained with cross-entropy (term ``identity_speaker``, weight
    ``speaker_weight``). This is the multitask baseline: the trunk learns both tasks.
``adversarial``
    multitask + a speaker classifier on ``GRL(e)`` (term ``identity_adversarial``,
    weight ``weight``): the classifier learns to identify speakers from ``e``, the
    reversed gradient trains everything before ``e`` to defeat it. The GRL factor
    follows the DANN schedule (``grl_schedule``), like FDRL's discriminators.
``confusion``
    multitask + a speaker classifier fitted on ``e.detach()`` (term
    ``identity_confusion_fit``, weight 1; it only moves the classifier), while the
    model is trained to make that classifier's output on ``e`` uniform (term
    ``identity_confusion`` = KL(uniform || p(speaker | e)), weight ``weight``; the
    classifier's weights are detached in that pass, so the term moves only the model).
    Maximum entropy rather than a reversed cross-entropy: the model is not rewarded
    for pointing the classifier at a *wrong* speaker, which would still carry identity.
``orthogonality``
    multitask + the difference loss between ``e`` and ``z`` (term
    ``identity_orthogonal``, weight ``weight``), the same form as FDRL's L_d
    (:func:`fdrl.losses.orthogonality_loss`: centred columns, unit rows, squared
    Frobenius norm of ``e^T z``, averaged over its entries by default), so ``e`` and the
    identity embedding span different directions.

Every method other than ``none`` also logs ``identity_emotion_speaker_acc``: the
batch accuracy of a speaker classifier on ``e`` (the adversary / confusion classifier
when there is one; weight 0, a diagnostic). Models pass ``speakers`` (B,) long
indices into ``forward``; ``spec.num_speakers`` sizes the heads. Under
leave-one-session-out the test speakers are never seen in training: the heads are
sized for every speaker of the corpus and simply never trained on the test ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fdrl.errors import ConfigError
from fdrl.losses import orthogonality_loss
from fdrl.models.layers import MLP, GradientReversal, dann_lambda

METHODS = ("none", "multitask", "adversarial", "confusion", "orthogonality")


@dataclass
class IdentityConfig:
    """Emotion/identity disentanglement switches (``model.identity`` in a config)."""

    method: Literal["none", "multitask", "adversarial", "confusion", "orthogonality"] = "none"
    weight: float = 1.0              # weight of the technique's term (adversarial / confusion / orthogonal)
    speaker_weight: float = 1.0      # weight of the multitask speaker-ID cross-entropy on z
    hidden: int = 128                # hidden width of the identity encoder and speaker classifiers
    d: int | None = None             # width of the identity embedding z; None = the emotion embedding's
    dropout: float = 0.1             # dropout inside the identity encoder and classifiers
    orth_reduction: Literal["sum", "mean"] = "mean"  # as FDRL's L_d: mean = ||e^T z||_F^2 / (d_e d_z)
                                     # (MISA's code); sum grows with the batch and, at weight 1,
                                     # swamped the emotion loss on the demo corpus
    grl_schedule: Literal["dann", "constant"] = "dann"  # adversarial GRL factor over training
    grl_gamma: float = 10.0          # steepness of the DANN schedule
    grl_lambda_max: float = 1.0      # GRL factor at the end of training (or always, "constant")


def parse_identity(value: Mapping | IdentityConfig | None, key: str = "model.identity",
                   default_method: str | None = None) -> IdentityConfig | None:
    """A validated :class:`IdentityConfig` from a config mapping; None when absent or
    ``method: none``. Unknown keys and bad values raise :class:`ConfigError` naming ``key``.

    A mapping without ``method`` (e.g. from the override ``model.identity.weight=0.5``,
    which replaces the whole default mapping) takes ``default_method``; without one it
    is an error rather than a silent ``none``.
    """
    from fdrl.config import build_dataclass  # config imports the model registry: import late

    if value is None:
        return None
    if isinstance(value, IdentityConfig):
        cfg = value
    else:
        cfg = build_dataclass(IdentityConfig, value, key)  # unknown keys named first
        if "method" not in value:
            if default_method is None:
                raise ConfigError(f"{key}.method: required when {key} is set (one of "
                                  f"{list(METHODS)}), got only {sorted(value)}")
            cfg = replace(cfg, method=default_method)
    if cfg.method not in METHODS:
        raise ConfigError(f"{key}.method: expected one of {list(METHODS)}, got {cfg.method!r}")
    if cfg.hidden < 1 or (cfg.d is not None and cfg.d < 1):
        raise ConfigError(f"{key}: hidden and d must be positive (got hidden={cfg.hidden}, d={cfg.d})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"{key}.dropout: expected a value in [0, 1), got {cfg.dropout}")
    if cfg.weight < 0 or cfg.speaker_weight < 0:
        raise ConfigError(f"{key}: weights must be >= 0 (weight={cfg.weight}, "
                          f"speaker_weight={cfg.speaker_weight})")
    return None if cfg.method == "none" else cfg


# ----------------------------------------------------------------------------------
# Pure loss terms


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform || softmax(logits)), averaged over the batch; 0 exactly at uniform.

    ``= -log K - mean_k log p_k``: the cross-entropy against the uniform distribution
    minus its minimum ``log K``, so the term reads as a distance from maximum entropy.

    Parameters
    ----------
    logits : (B, K) speaker-classifier logits.
    """
    logp = F.log_softmax(logits.float(), dim=-1)              # (B, K)
    return (-math.log(logits.shape[-1]) - logp.mean(dim=-1)).mean()


def _frozen_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with the module's parameters detached: the gradient reaches ``x``
    only (the confusion term must not move the classifier it is fooling)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return functional_call(module, params, (x,))


# ----------------------------------------------------------------------------------
# The module


class IdentityModule(nn.Module):
    """The identity branch, the speaker heads and the disentanglement terms of one model.

    Parameters
    ----------
    cfg : the switches (``method`` must not be ``"none"``; see :func:`parse_identity`).
    d_emotion : width of the emotion embedding ``e``.
    d_trunk : width of the shared trunk ``h`` the identity branch reads.
    num_speakers : number of speaker classes (``spec.num_speakers``).

    Call :meth:`losses` in the model's training path; it returns
    ``{name: (term, weight)}`` (the format of ``FDRL.add_extra_loss``).
    """

    def __init__(self, cfg: IdentityConfig, d_emotion: int, d_trunk: int, num_speakers: int):
        super().__init__()
        if cfg.method not in METHODS[1:]:
            raise ValueError(f"IdentityModule needs a method in {METHODS[1:]}, got {cfg.method!r}")
        if num_speakers < 2:
            raise ConfigError(f"model.identity.method={cfg.method}: needs at least 2 speakers, "
                              f"the data have {num_speakers}")
        self.cfg, self.method = cfg, cfg.method
        d_id = cfg.d or d_emotion
        # multitask: z = E_id(h) and a linear speaker head on z
        self.encoder = MLP(d_trunk, cfg.hidden, d_id, cfg.dropout)           # E_id
        self.speaker_head = nn.Linear(d_id, num_speakers)
        # a speaker classifier on the emotion embedding (adversary / confused classifier)
        self.emotion_speaker = (MLP(d_emotion, cfg.hidden, num_speakers, cfg.dropout)
                                if cfg.method in ("adversarial", "confusion") else None)
        self.grl = GradientReversal(self._grl_lambda(0.0))

    def _grl_lambda(self, progress: float) -> float:
        if self.cfg.grl_schedule == "constant":
            return self.cfg.grl_lambda_max
        return self.cfg.grl_lambda_max * dann_lambda(progress, self.cfg.grl_gamma)

    def set_progress(self, progress: float) -> None:
        """Training progress p in [0, 1] -> the adversary's GRL factor."""
        self.grl.lambd = self._grl_lambda(progress)

    def state_for_log(self) -> dict[str, float]:
        """The adversary's current GRL factor (adversarial method only)."""
        return {"identity_grl_lambda": self.grl.lambd} if self.method == "adversarial" else {}

    def identity_embedding(self, trunk: torch.Tensor) -> torch.Tensor:
        """z = E_id(h): (B, d_trunk) -> (B, d_id)."""
        return self.encoder(trunk)

    def losses(self, emotion: torch.Tensor, trunk: torch.Tensor, speakers: torch.Tensor | None
               ) -> dict[str, tuple[torch.Tensor, float]]:
        """The switched-on identity terms and their weights.

        Parameters
        ----------
        emotion : (B, d_emotion) the emotion embedding e.
        trunk : (B, d_trunk) the shared trunk h.
        speakers : (B,) long speaker indices.

        Returns
        -------
        ``{name: (scalar term, weight)}``; weight-0 entries are diagnostics.
        """
        if speakers is None:
            raise ValueError(f"identity method '{self.method}' needs speaker indices: call "
                             f"forward(inputs, labels, speakers=...)")
        cfg, spk = self.cfg, speakers.long().to(emotion.device)
        z = self.identity_embedding(trunk)                                   # (B, d_id)
        out: dict[str, tuple[torch.Tensor, float]] = {
            "identity_speaker": (F.cross_entropy(self.speaker_head(z).float(), spk),
                                 cfg.speaker_weight)}
        probe_logits = None
        if self.method == "adversarial":
            adv = self.emotion_speaker(self.grl(emotion))                    # (B, S)
            out["identity_adversarial"] = (F.cross_entropy(adv.float(), spk), cfg.weight)
            probe_logits = adv
        elif self.method == "confusion":
            fit = self.emotion_speaker(emotion.detach())                     # (B, S), trains the classifier
            fooled = _frozen_call(self.emotion_speaker, emotion)            # (B, S), trains the model
            out["identity_confusion_fit"] = (F.cross_entropy(fit.float(), spk), 1.0)
            out["identity_confusion"] = (confusion_loss(fooled), cfg.weight)
            probe_logits = fit
        elif self.method == "orthogonality":
            out["identity_orthogonal"] = (
                orthogonality_loss(emotion, z, reduction=cfg.orth_reduction), cfg.weight)
        if probe_logits is None:  # multitask / orthogonality: no classifier on e to ask
            probe_logits = self.speaker_head(z)
            name = "identity_speaker_acc"
        else:
            name = "identity_emotion_speaker_acc"
        acc = (probe_logits.detach().argmax(-1) == spk).float().mean()
        out[name] = (acc, 0.0)
        return out

    def extra_repr(self) -> str:
        return f"method={self.method}"


def build_identity(value, d_emotion: int, d_trunk: int, num_speakers: int,
                   key: str = "model.identity", default_method: str | None = None
                   ) -> IdentityModule | None:
    """Parse ``value`` (a config mapping) and build the module; None for ``method: none``."""
    cfg = parse_identity(value, key, default_method)
    if cfg is None:
        return None
    return IdentityModule(cfg, d_emotion, d_trunk, num_speakers)
