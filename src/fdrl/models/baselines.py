"""Baselines in the same harness as FDRL: unimodal, early and late fusion, multitask
(emotion + speaker identity) and MISA.

Every model here starts the same way: one :class:`~fdrl.models.layers.ModalityInput`
per modality it reads (pooled vector, frame sequence or backbone -> ``d_input``), so a
comparison changes the fusion and the losses, not the input layers. Each model puts
its emotion embedding (the classifier's input) under ``embeddings["emotion"]`` for
probes and figures.

==============  ====================================================================
``speech-only`` ModalityInput(speech) -> MLP -> e -> classifier; reads only speech
``text-only``   the same on text
``concat``      early fusion: [h_a; h_t] -> MLP -> e -> classifier
``multitask``   ``concat`` + a speaker-identification branch and the identity
                techniques of :mod:`fdrl.models.identity` (``model.identity.method``)
``late-fusion`` one unimodal model per modality, each trained with its own CE
                (loss = mean of the two); prediction = average of the two
                probability vectors
``misa``        MISA (Hazarika et al., ACM MM 2020) on speech + text: shared and
                private encoders, CMD similarity, difference and reconstruction
                losses, attention fusion over [S_a, S_t, P_a, P_t]
==============  ====================================================================

The unimodal models set ``modalities`` to the one they read and ignore the other
input when it is present, so a comparison can reuse one prepared data set (the same
features for every model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fdrl.errors import ConfigError
from fdrl.losses import combine, orthogonality_loss, task_loss
from fdrl.models.base import check_sizes, EmotionModel, InputSpec, Inputs, ModelOutput
from fdrl.models.identity import IdentityModule, build_identity
from fdrl.models.layers import MLP, CrossModalFusion, ModalityInput
from fdrl.models.registry import register

MODALITIES = ("speech", "text")


# ----------------------------------------------------------------------------------
# Configs


@dataclass
class BaselineConfig:
    """Input blocks and encoder widths shared by every baseline."""

    d: int = 128                     # width of the emotion embedding e (per branch)
    hidden: int = 256                # hidden width of the encoder MLP(s)
    d_input: int = 256               # common width of the per-modality input projections
    dropout: float = 0.1             # dropout in input projections, encoders, classifier
    # --- sequence front-end (used when a modality arrives as (B, L, d) frames) ---
    front_end_channels: int = 128    # conv width of the frame front-end
    front_end_layers: int = 2        # number of 1-D convolutions (kernel 5); 0 = none
    front_end_stride: int = 2        # stride of the 2nd and later convolutions
    pooling: Literal["attention", "mean"] = "attention"  # frames -> vector, masked


@dataclass
class MultitaskConfig(BaselineConfig):
    """``concat`` plus emotion/identity disentanglement (see :mod:`fdrl.models.identity`)."""

    identity: dict | None = field(default_factory=lambda: {"method": "multitask"})  # IdentityConfig
                                     # fields: method (none|multitask|adversarial|confusion|
                                     # orthogonality; default multitask), weight, speaker_weight,
                                     # hidden, d, ...; null = none (plain concat)


@dataclass
class MISAConfig(BaselineConfig):
    """MISA's encoders, loss weights and fusion."""

    sim_weight: float = 1.0          # weight of L_sim (CMD between S_a and S_t)
    diff_weight: float = 0.3         # weight of L_diff (orthogonality S/P and P_a/P_t)
    recon_weight: float = 1.0        # weight of L_recon (MSE of h_m from S_m + P_m)
    cmd_moments: int = 5             # central moments compared by CMD (MISA: 5)
    orth_reduction: Literal["sum", "mean"] = "mean"  # L_diff entries: mean as MISA's code
    n_heads: int = 4                 # attention heads of the fusion; d must be divisible
    fusion_out: Literal["flatten", "mean"] = "flatten"  # 4*d (MISA concatenates) or mean: d


# ----------------------------------------------------------------------------------
# Shared pieces


def modality_input(cfg, spec: InputSpec, modality: str, d_out: int | None = None,
                   pooling: str | None = None) -> ModalityInput:
    """The input block of one modality, its kind chosen by what the data provide.

    ``cfg`` needs the fields of :class:`BaselineConfig` (``d_input``, ``dropout``,
    ``front_end_*``, ``pooling``); ``d_out`` / ``pooling`` override ``d_input`` /
    ``cfg.pooling``.
    """
    dim = getattr(spec, f"{modality}_dim")
    backbone = getattr(spec, f"{modality}_backbone")
    sequence = getattr(spec, f"{modality}_sequence")
    kind = "backbone" if backbone is not None else ("sequence" if sequence else "pooled")
    return ModalityInput(dim, d_out or cfg.d_input, kind=kind, backbone=backbone,
                         dropout=cfg.dropout, front_end_channels=cfg.front_end_channels,
                         front_end_layers=cfg.front_end_layers, stride=cfg.front_end_stride,
                         pooling=pooling or cfg.pooling)


def modality_tensors(inputs: Inputs, modality: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, mask)`` of one modality; a clear error when the batch lacks it."""
    x = getattr(inputs, modality)
    if x is None:
        raise ValueError(f"this model reads {modality} but the batch has no {modality} input")
    return x, getattr(inputs, f"{modality}_mask")


def check_common(cfg: BaselineConfig, spec: InputSpec, name: str,
                 needs: tuple[str, ...]) -> None:
    """Raise ConfigError for a missing modality or an invalid shared field."""
    for m in needs:
        if getattr(spec, f"{m}_dim") is None:
            raise ConfigError(f"model '{name}' reads {m}, but the data have no {m} features "
                              f"(features.{m}.name is none?)")
    if spec.num_classes < 2:
        raise ConfigError(f"model '{name}' needs at least 2 classes, the data have {spec.num_classes}")
    check_sizes(cfg, ("d", "hidden", "d_input", "front_end_channels", "front_end_stride"))
    if cfg.pooling not in ("attention", "mean"):
        raise ConfigError(f"model.pooling: expected 'attention' or 'mean', got {cfg.pooling!r}")


class Branch(nn.Module):
    """One modality's encoder: ModalityInput -> MLP -> e, and a linear classifier.

    Shapes: x (B, d_in) | (B, L, d_in) -> e (B, d), logits (B, C).
    """

    def __init__(self, cfg: BaselineConfig, spec: InputSpec, modality: str):
        super().__init__()
        self.modality = modality
        self.inp = modality_input(cfg, spec, modality)
        self.encoder = MLP(cfg.d_input, cfg.hidden, cfg.d, cfg.dropout)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d, spec.num_classes))

    def forward(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = modality_tensors(inputs, self.modality)
        e = self.encoder(self.inp(x, mask).pooled)                # (B, d)
        return e, self.classifier(e)                              # (B, d), (B, C)


# ----------------------------------------------------------------------------------
# Unimodal


class Unimodal(EmotionModel):
    """One modality only: ModalityInput -> MLP -> emotion embedding -> classifier.

    The other modality, when present in the batch, is ignored.
    """

    def __init__(self, cfg: BaselineConfig, spec: InputSpec, modality: str):
        super().__init__()
        self.cfg = cfg
        self.modalities = (modality,)
        self.branch = Branch(cfg, spec, modality)

    def forward(self, inputs: Inputs, labels: torch.Tensor | None = None,
                speakers: torch.Tensor | None = None) -> ModelOutput:
        e, logits = self.branch(inputs)                           # (B, d), (B, C)
        out = ModelOutput(logits=logits, embeddings={"emotion": e})
        if labels is not None:
            out.loss, out.terms = combine({"task": task_loss(logits, labels, self.class_weights)},
                                          {"task": 1.0})
        return out


@register("speech-only", BaselineConfig, doc="speech only: input block -> MLP -> classifier "
          "(ignores text)")
def build_speech_only(cfg: BaselineConfig, spec: InputSpec) -> Unimodal:
    check_common(cfg, spec, "speech-only", ("speech",))
    return Unimodal(cfg, spec, "speech")


@register("text-only", BaselineConfig, doc="text only: input block -> MLP -> classifier "
          "(ignores speech)")
def build_text_only(cfg: BaselineConfig, spec: InputSpec) -> Unimodal:
    check_common(cfg, spec, "text-only", ("text",))
    return Unimodal(cfg, spec, "text")


# ----------------------------------------------------------------------------------
# Early fusion (and the multitask model built on it)


class Concat(EmotionModel):
    """Early fusion: ``e = MLP([h_a; h_t])``, ``logits = Linear(e)``.

    With an :class:`~fdrl.models.identity.IdentityModule` (the ``multitask`` model)
    the identity branch reads the trunk ``h = [h_a; h_t]`` and the techniques act on
    ``e``; ``embeddings`` then also holds ``identity`` (z).
    """

    modalities = MODALITIES

    def __init__(self, cfg: BaselineConfig, spec: InputSpec,
                 identity: IdentityModule | None = None):
        super().__init__()
        self.cfg = cfg
        self.speech_in = modality_input(cfg, spec, "speech")
        self.text_in = modality_input(cfg, spec, "text")
        self.encoder = MLP(2 * cfg.d_input, cfg.hidden, cfg.d, cfg.dropout)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d, spec.num_classes))
        self.identity = identity

    def set_progress(self, progress: float) -> None:
        if self.identity is not None:
            self.identity.set_progress(progress)

    def state_for_log(self) -> dict[str, float]:
        return {} if self.identity is None else self.identity.state_for_log()

    def forward(self, inputs: Inputs, labels: torch.Tensor | None = None,
                speakers: torch.Tensor | None = None) -> ModelOutput:
        h_a = self.speech_in(*modality_tensors(inputs, "speech")).pooled   # (B, d_input)
        h_t = self.text_in(*modality_tensors(inputs, "text")).pooled       # (B, d_input)
        h = torch.cat([h_a, h_t], dim=1)                                   # (B, 2 d_input)
        e = self.encoder(h)                                                # (B, d)
        logits = self.classifier(e)                                        # (B, C)
        out = ModelOutput(logits=logits, embeddings={"emotion": e})
        if self.identity is not None:
            out.embeddings["identity"] = self.identity.identity_embedding(h)  # (B, d_id)
        if labels is None:
            return out
        terms = {"task": task_loss(logits, labels, self.class_weights)}
        weights = {"task": 1.0}
        if self.identity is not None:
            for name, (term, w) in self.identity.losses(e, h, speakers).items():
                terms[name], weights[name] = term, w
        out.loss, out.terms = combine(terms, weights)
        return out


@register("concat", BaselineConfig, doc="early fusion: [speech; text] input blocks -> MLP -> "
          "classifier")
def build_concat(cfg: BaselineConfig, spec: InputSpec) -> Concat:
    check_common(cfg, spec, "concat", MODALITIES)
    return Concat(cfg, spec)


@register("multitask", MultitaskConfig, doc="concat + speaker-identification branch; "
          "identity.method = multitask | adversarial | confusion | orthogonality | none "
          "(emotion/identity disentanglement)")
def build_multitask(cfg: MultitaskConfig, spec: InputSpec) -> Concat:
    check_common(cfg, spec, "multitask", MODALITIES)
    identity = build_identity(cfg.identity, d_emotion=cfg.d, d_trunk=2 * cfg.d_input,
                              num_speakers=spec.num_speakers, default_method="multitask")
    return Concat(cfg, spec, identity)


# ----------------------------------------------------------------------------------
# Late fusion


class LateFusion(EmotionModel):
    """One :class:`Branch` per modality; the prediction averages their probabilities.

    ``logits = log(mean_m softmax(logits_m))``, so ``softmax(logits)`` is exactly the
    average of the two probability vectors. Loss: ``(CE_a + CE_t) / 2``, each branch
    trained on its own prediction (terms ``ce_speech``, ``ce_text``); ``task`` (the CE
    of the averaged prediction) is logged, not trained.
    """

    modalities = MODALITIES

    def __init__(self, cfg: BaselineConfig, spec: InputSpec):
        super().__init__()
        self.cfg = cfg
        self.branches = nn.ModuleDict({m: Branch(cfg, spec, m) for m in MODALITIES})

    def forward(self, inputs: Inputs, labels: torch.Tensor | None = None,
                speakers: torch.Tensor | None = None) -> ModelOutput:
        embs, logits_m = {}, {}
        for m, branch in self.branches.items():
            embs[m], logits_m[m] = branch(inputs)                  # (B, d), (B, C)
        probs = torch.stack([torch.softmax(v.float(), -1) for v in logits_m.values()]).mean(0)  # (B, C)
        logits = probs.clamp_min(1e-12).log()                      # (B, C)
        out = ModelOutput(logits=logits, embeddings={
            "emotion": torch.cat([embs["speech"], embs["text"]], dim=1), **embs})  # (B, 2d)
        if labels is None:
            return out
        cw = self.class_weights
        terms = {f"ce_{m}": task_loss(v, labels, cw) for m, v in logits_m.items()}
        w = None if cw is None else cw.to(logits.device)
        terms["task"] = F.nll_loss(logits, labels, weight=w)   # diagnostic: not trained
        out.loss, out.terms = combine(terms, {"ce_speech": 0.5, "ce_text": 0.5})
        return out


@register("late-fusion", BaselineConfig, doc="late fusion: a speech and a text model, each "
          "with its own CE; prediction = mean of their probabilities")
def build_late_fusion(cfg: BaselineConfig, spec: InputSpec) -> LateFusion:
    check_common(cfg, spec, "late-fusion", MODALITIES)
    return LateFusion(cfg, spec)


# ----------------------------------------------------------------------------------
# MISA


def cmd(x: torch.Tensor, y: torch.Tensor, n_moments: int = 5) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al., ICLR 2017), as MISA's L_sim.

    ``||E x - E y||_2 + sum_{k=2..K} ||E (x - E x)^k - E (y - E y)^k||_2``. As in MISA's
    released code the moments are not divided by the feature range ((b - a)^k); MISA's
    encoders end in a sigmoid, so features lie in [0, 1] and the higher moments stay small.

    Parameters
    ----------
    x, y : (B, d) samples of two distributions. n_moments : K >= 1.
    """
    x, y = x.float(), y.float()
    mx, my = x.mean(0), y.mean(0)                                  # (d,)
    total = (mx - my).norm()
    cx, cy = x - mx, y - my                                        # (B, d)
    for k in range(2, n_moments + 1):
        total = total + (cx.pow(k).mean(0) - cy.pow(k).mean(0)).norm()
    return total


class MISA(EmotionModel):
    """MISA (Hazarika et al., ACM MM 2020, arXiv 2005.03545) on speech + text.

    - ``S_m = sigmoid(E_s(h_m))`` (one shared encoder), ``P_m = sigmoid(E_m(h_m))``
      (private per modality), two-layer MLPs ending in a sigmoid as in MISA.
    - ``L_sim = CMD(S_a, S_t)`` (central moment discrepancy, K = ``cmd_moments``; we use
      CMD, MISA's choice, not a moment MSE).
    - ``L_diff = orth(S_a, P_a) + orth(S_t, P_t) + orth(P_a, P_t)``: MISA's difference
      loss (shared/private of each modality, and the two private spaces), computed with
      :func:`fdrl.losses.orthogonality_loss` (centred, row-normalised).
    - ``L_recon = mean_m MSE(D(S_m + P_m), h_m)`` with one shared decoder D (Linear),
      the target ``h_m`` (the modality's input projection) detached so the input layer
      cannot shrink its output to make reconstruction trivial (our choice).
    - Fusion: self-attention over [S_a, S_t, P_a, P_t] (:class:`CrossModalFusion`),
      flattened (MISA concatenates the transformer outputs), then the classifier.
    ``L = L_task + sim_weight L_sim + diff_weight L_diff + recon_weight L_recon``.
    """

    modalities = MODALITIES

    def __init__(self, cfg: MISAConfig, spec: InputSpec):
        super().__init__()
        self.cfg = cfg
        self.speech_in = modality_input(cfg, spec, "speech")
        self.text_in = modality_input(cfg, spec, "text")
        self.shared = MLP(cfg.d_input, cfg.hidden, cfg.d, cfg.dropout)
        self.private = nn.ModuleDict({m: MLP(cfg.d_input, cfg.hidden, cfg.d, cfg.dropout)
                                      for m in MODALITIES})
        self.decoder = nn.Linear(cfg.d, cfg.d_input) if cfg.recon_weight != 0 else None
        self.fusion = CrossModalFusion(cfg.d, cfg.n_heads, cfg.dropout, cfg.fusion_out)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout),
                                        nn.Linear(self.fusion.out_dim(4), spec.num_classes))

    def forward(self, inputs: Inputs, labels: torch.Tensor | None = None,
                speakers: torch.Tensor | None = None) -> ModelOutput:
        cfg = self.cfg
        h_a = self.speech_in(*modality_tensors(inputs, "speech")).pooled   # (B, d_input)
        h_t = self.text_in(*modality_tensors(inputs, "text")).pooled       # (B, d_input)
        B = h_a.shape[0]
        S_a, S_t = torch.sigmoid(self.shared(torch.cat([h_a, h_t]))).split(B)  # (B, d) each
        P_a = torch.sigmoid(self.private["speech"](h_a))                  # (B, d)
        P_t = torch.sigmoid(self.private["text"](h_t))                     # (B, d)
        fused = self.fusion(torch.stack([S_a, S_t, P_a, P_t], dim=1))      # (B, 4d) | (B, d)
        logits = self.classifier(fused)                                    # (B, C)
        out = ModelOutput(logits=logits, embeddings={
            "emotion": fused, "S_a": S_a, "S_t": S_t, "P_a": P_a, "P_t": P_t})
        if labels is None:
            return out
        terms = {"task": task_loss(logits, labels, self.class_weights)}
        weights = {"task": 1.0}
        terms["misa_sim"], weights["misa_sim"] = cmd(S_a, S_t, cfg.cmd_moments), cfg.sim_weight
        r = cfg.orth_reduction
        terms["misa_diff"] = (orthogonality_loss(S_a, P_a, r) + orthogonality_loss(S_t, P_t, r)
                              + orthogonality_loss(P_a, P_t, r))
        weights["misa_diff"] = cfg.diff_weight
        if self.decoder is not None:
            rec = self.decoder(torch.cat([S_a + P_a, S_t + P_t]))         # (2B, d_input)
            terms["misa_recon"] = F.mse_loss(rec.float(), torch.cat([h_a, h_t]).detach().float())
            weights["misa_recon"] = cfg.recon_weight
        out.loss, out.terms = combine(terms, weights)
        out.loss_parts = {k: (t, weights[k]) for k, t in terms.items() if weights.get(k, 0.0)}
        return out

    #: shared/private parts for the validation diagnostics (fdrl.analysis.diagnostics)
    diagnostic_parts = {"S": ("S_a", "S_t"), "P": ("P_a", "P_t")}

    @torch.no_grad()
    def classify(self, reps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Emotion logits (B, C) from given S_a, S_t, P_a, P_t (the fusion and classifier)."""
        tokens = torch.stack([reps[k] for k in ("S_a", "S_t", "P_a", "P_t")], dim=1)  # (B, 4, d)
        return self.classifier(self.fusion(tokens))

    def gradient_probe(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())


@register("misa", MISAConfig, doc="MISA (arXiv 2005.03545): shared/private encoders, CMD "
          "similarity, difference and reconstruction losses, attention fusion")
def build_misa(cfg: MISAConfig, spec: InputSpec) -> MISA:
    check_common(cfg, spec, "misa", MODALITIES)
    if cfg.d % cfg.n_heads:
        raise ConfigError(f"model.d: {cfg.d} is not divisible by model.n_heads={cfg.n_heads}")
    if cfg.cmd_moments < 1:
        raise ConfigError(f"model.cmd_moments: expected >= 1, got {cfg.cmd_moments}")
    for key in ("sim_weight", "diff_weight", "recon_weight"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"model.{key}: expected >= 0, got {getattr(cfg, key)}")
    return MISA(cfg, spec)
