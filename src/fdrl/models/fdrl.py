"""FDRL: Fine-grained Disentangled Representation Learning (arXiv 2312.13567).

Reads top-down, from the configuration to the whole model:

1. inputs     ModalityInput per modality -> H_a, H_t at a common width
2. encoders   E_s (shared, one set of weights), E_a, E_t (private)     eq. 3
3. alignment  GRL -> global discriminator G_d (L_g, eq. 4) and C local
              discriminators G_d^c on yhat^c * S (L_l, eq. 5), mixed by mu (eq. 6-8)
4. disparity  modality discriminator GD on P (L_p, eq. 9), orthogonality (L_d, eq. 10)
5. predictor  FP, one Linear d -> C shared by S = S_a + S_t, P_a, P_t (L_f, eq. 11)
6. fusion     self-attention over [S_a, S_t, P_a, P_t] + classifier (eq. 12-14)

Total (eq. 15): ``L = L_task + alpha [(1 - mu) L_g + mu L_l] + beta (L_p + L_d) + gamma L_f``,
weights from :class:`FDRLConfig` only; the terms are pure functions in
:mod:`fdrl.losses`, summed by :func:`fdrl.losses.combine`.

Choices the paper leaves open (all documented where they are made):

- H_a and H_t have different widths; a per-modality projection (LayerNorm + Linear,
  :class:`~fdrl.models.layers.ModalityInput`) maps both to ``d_input`` before E_s.
  The paper is silent on this.
- The local discriminators' class weights yhat_m = softmax(FP(S_m)) are *detached*:
  DAAN weights features by predicted probabilities, but letting L_l's gradient flow
  into FP through the weights would train the predictor to help (not reversed) the
  discriminators. FP is trained by L_f only.
- mu is re-estimated once per epoch from the discriminators' epoch-averaged losses
  (:meth:`FDRL.end_epoch`), starting at ``mu_init`` (DAAN's schedule).
- With only one of L_g, L_l switched on, that one gets the whole alignment weight
  alpha (mu is 0 or 1), so ablations S2/S3 remove a term without rescaling the other.
- Without L_f (ablation S6) the encoders no longer receive FP's gradient, but when the
  local discriminators are on FP is still fitted on *detached* representations, so
  their class weights remain predictions rather than a random layer's output.

The adversarial game as built (departures from the literal eq. 15, each chosen by a
diagnostic measured with :mod:`fdrl.analysis.diagnostics` on IEMOCAP fold 1,
``fdrl cv --config iemocap_features``, pooled inputs; the literal form stays available
as ``adversary: loss, shared_norm: none, local_reduction: sum, orth_reduction: sum,
mu_prior: 0, mu_momentum: 0``):

- **Bounded shared space** (``shared_norm``, :class:`SharedNorm`). Literally, the GRL
  game was won by inflating S (||S|| 169 vs ||P|| 7) while a fresh probe still told
  S_a from S_t (0.95) and replacing S by its mean cost 0.6 UAR points (dead weight).
  A LayerNorm bounded the norm (11.3) but left a mean offset of norm 4-5 between S_a
  and S_t (probe 0.99); per-modality standardisation removes it by construction.
- **Discriminators always learn at full weight** (``adversary``); alpha (1 - mu),
  alpha mu and lambda scale only what reaches the encoders, so a zero mixing weight
  no longer freezes a discriminator for an epoch (which fed mu's flip-flop).
  ``confusion`` (default): the encoders minimise the frozen discriminator's
  cross-entropy to the uniform target. With the reversed gradient (``reversed``) the
  discriminator sat *below* chance on training rows (0.46) while a fresh probe told
  the modalities apart at 0.97 there: the GRL rewards a confidently wrong
  discriminator, and the encoders chased it. Validation UAR chose confusion.
- L_l is the **mean** over classes (``local_reduction``): the sum is C x L_g and
  dominated the alignment gradient. Each class's error rate for mu counts the rows
  by yhat^c (a row discriminator c cannot see is no evidence about subdomain c).
- **mu from a smoothed, prior-regularised estimate** (``mu_prior``, ``mu_momentum``):
  eq. 8 on near-chance error rates is a ratio of noise (0.09-0.87 on fold 1, 0/1 on
  the demo); with a prior of 0.1 and momentum 0.7 it moves by < 0.02 per epoch there.
- **L_d divided by the batch size** (``orth_reduction: batch``): the sum of eq. 10 was
  about 245 and dominated, the mean 0.015 (1 % of the task's gradient at E_s); /B
  sends a gradient into E_s of the task's size (1.7-2.3 vs 2.0-2.4).
- No dropout inside E_s (``shared_dropout``): dropout shifted the statistics of S
  between training and evaluation, so the running statistics misfit.
- Measured and rejected (fold 1, validation speaker): central-moment matching of S_a
  and S_t (probe 0.81-0.94, but S became dead weight), a paired loss
  ||S_a - S_t||^2 (0.86-0.95), a speaker adversary on S (0.90), a 10x discriminator
  learning rate (0.96). What remains is mostly on unseen speakers: over 5 folds x 3
  seeds the probe is 0.90 on the validation speaker, 0.68 once that speaker's mean is
  removed, and 0.58 on the training speakers (BENCHMARKS.md).

Emotion/identity disentanglement (``identity``, spec identity.md, see
:mod:`fdrl.models.identity`): the emotion embedding is the fused vector (the
classifier's input), the shared trunk that the identity branch reads is ``[H_a; H_t]``
(the two input projections). The identity terms join the total through
:meth:`FDRL.add_extra_loss`; the adversary's GRL has its own schedule
(``identity.grl_*``), advanced by :meth:`FDRL.set_progress`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fdrl.errors import ConfigError
from fdrl.losses import (
    SPEECH,
    TEXT,
    a_distance,
    combine,
    disparity_orthogonality,
    dynamic_factor,
    global_alignment_loss,
    local_alignment_losses,
    modality_disparity_loss,
    predictor_loss,
    task_loss,
)
from fdrl.models.base import check_sizes, EmotionModel, InputSpec, Inputs, ModelOutput
from fdrl.models.identity import build_identity, parse_identity
from fdrl.models.layers import (
    MLP,
    BatchedDiscriminators,
    CrossModalFusion,
    GradientReversal,
    ModalityInput,
    dann_lambda,
    grad_reverse,
)
from fdrl.models.registry import register

#: fusion_tokens -> the representations stacked for the CMF module
FUSION_TOKENS = {
    "all": ("S_a", "S_t", "P_a", "P_t"),  # the paper
    "shared": ("S_a", "S_t"),             # "only shared representations in CMF" (S4 reading)
    "private": ("P_a", "P_t"),            # "only private representations in CMF" (S5 reading)
}


@dataclass
class FDRLConfig:
    """Every hyperparameter of FDRL. The input kinds (pooled / sequence / backbone)
    come from the data's :class:`~fdrl.models.base.InputSpec`, not from here."""

    #: what the keys added with the stable game meant before they existed: a bundle
    #: saved without them is rebuilt as it was trained (fdrl.checkpoint)
    LEGACY_DEFAULTS: ClassVar[dict] = {
        "adversary": "loss", "shared_norm": "none", "local_reduction": "sum", "mu_prior": 0.0,
        "mu_momentum": 0.0, "shared_dropout": True, "orth_reduction": "sum"}

    # --- widths ---
    d: int = 128                     # width of S_a, S_t, P_a, P_t (shared/private spaces)
    hidden: int = 256                # hidden width of the encoders E_s, E_a, E_t
    d_input: int = 256               # common width of the per-modality projections (paper silent)
    dropout: float = 0.1             # dropout in projections, encoders, discriminators, fusion
    # --- sequence front-end (used when a modality arrives as (B, L, d) frames) ---
    front_end_channels: int = 128    # conv width of the frame front-end
    front_end_layers: int = 2        # number of 1-D convolutions (kernel 5); 0 = none
    front_end_stride: int = 2        # stride of the 2nd and later convolutions
    pooling: Literal["attention", "mean"] = "attention"  # frames -> vector, masked; "mean" with
                                     # front_end_layers = 0 is the spec's masked mean of H
    # --- fusion (CMF) ---
    n_heads: int = 4                 # attention heads; d must be divisible by it
    fusion_out: Literal["flatten", "mean"] = "flatten"  # K*d (heads concatenated) or mean: d
    fusion_tokens: Literal["all", "shared", "private"] = "all"  # CMF tokens: [S_a,S_t,P_a,P_t];
                                     # [S_a,S_t] or [P_a,P_t] (ablations S4/S5, "partial" reading)
    # --- the adversarial game (departures from the literal eq. 15: module docstring) ---
    adversary: Literal["confusion", "reversed", "loss"] = "confusion"  # reversed: G_d, G_d^c learn from their own
                                     # loss at full weight; alpha (1 - mu), alpha mu and lambda scale
                                     # only the reversed gradient reaching the encoders. loss: eq. 15
                                     # literally (a weight of 0 stops that discriminator learning)
    shared_norm: Literal["modality", "layer", "none"] = "modality"  # bound S_a, S_t before the
                                     # discriminators and the fusion, so the encoders cannot win the
                                     # game by inflating S (SharedNorm): modality = standardise each
                                     # modality's S per dimension (running statistics); layer =
                                     # LayerNorm without affine; none = the paper
    local_reduction: Literal["mean", "sum"] = "mean"  # L_l over the C classes: mean (L_g's scale)
                                     # or sum (eq. 5 literally, about C x L_g)
    shared_dropout: bool = False     # dropout inside E_s. Off: with shared_norm modality, dropout
                                     # shifts the statistics of S between training and evaluation
                                     # (the running statistics then misfit and S_a, S_t drift apart)
    # --- discriminators ---
    disc_hidden: int = 128           # hidden width of G_d, G_d^c and GD
    # --- loss weights (eq. 15; paper: alpha = gamma = 1, beta = 0.5) ---
    alpha: float = 1.0               # alignment: alpha [(1 - mu) L_g + mu L_l]
    beta: float = 0.5                # disparity: beta (L_p + L_d)
    gamma: float = 1.0               # predictor: gamma L_f
    # --- component switches (paper Table 2 ablations) ---
    use_global: bool = True          # L_g, global domain discriminator
    use_local: bool = True           # L_l, per-class local subdomain discriminators
    use_modality_disc: bool = True   # L_p, global modality discriminator on P
    use_orthogonality: bool = True   # L_d, orthogonality of S and P
    orth_reduction: Literal["sum", "mean", "batch"] = "batch"  # L_d over d x d entries: sum = eq. 10;
                                     # mean = MISA's code (sum / d^2); batch = sum / B (1 when
                                     # uncorrelated at any B and d; fdrl.losses.orthogonality_loss)
    use_predictor: bool = True       # L_f reaches the encoders (False: FP fitted on detached inputs)
    # --- dynamic factor mu (eq. 6-8) ---
    mu_variant: Literal["eq8", "daan"] = "eq8"  # eq8: mu = d_g/(d_g+d_l) (paper); daan: 1 - that
    mu_error: Literal["loss", "error_rate"] = "loss"  # e in d = 2(1-2e): discriminator CE (paper;
                                     # CE >= 0.5 gives d = 0, mu then stays) or error rate
    mu_init: float = 0.5             # mu before the first epoch ends
    mu_prior: float = 0.1            # pseudo-distance added to d_g and d_l (0 = eq. 8): near chance
                                     # mu stays near 0.5 instead of flipping between 0 and 1
    mu_momentum: float = 0.7         # mu <- m mu + (1 - m) mu_epoch (0 = the epoch's estimate alone)
    mu_fixed: float | None = None    # pin mu (e.g. 0.0 for Fig. 3b "mu = 0"); None = dynamic
    # --- gradient reversal ---
    grl_schedule: Literal["dann", "constant"] = "dann"  # dann: lambda_max * (2/(1+e^(-gamma p))-1)
    grl_gamma: float = 10.0          # steepness of the DANN schedule
    grl_lambda_max: float = 1.0      # lambda at the end of training (or always, "constant")
    # --- task loss ---
    class_weights: list[float] | None = None  # per-class CE weights for L_task; None = unweighted
                                              # (weights the trainer sets take precedence)
    # --- emotion/identity disentanglement (spec identity.md; fdrl.models.identity) ---
    identity: dict | None = None     # IdentityConfig fields, e.g. {method: adversarial, weight: 0.5};
                                     # None or method none = off. Emotion embedding: the fused vector


class SharedNorm(nn.Module):
    """The bounded shared space: S_a, S_t (B, d) -> (B, d), no parameters.

    ``"modality"`` standardises every dimension of S_m with that modality's own batch
    statistics (running statistics at evaluation; modality-specific batch
    normalisation, Chang et al. 2019): each S_m then has mean 0 and variance 1 per
    dimension, so ||S|| is about sqrt(d) and the first two moments of S_a and S_t
    agree by construction. Measured on IEMOCAP fold 1 (`fdrl cv --config
    iemocap_features`): with a LayerNorm the GRL game left a mean offset of norm 4-5
    between S_a and S_t that a fresh linear probe used (0.99 on validation) while the
    discriminators sat at chance; the
    adversaries are left to align what standardisation cannot (the class-conditional
    structure, eq. 5). ``"layer"``: LayerNorm without affine (||S|| = sqrt(d) per
    row). ``"none"``: the paper (unbounded).
    """

    def __init__(self, d: int, kind: str = "modality"):
        super().__init__()
        self.kind = kind
        if kind == "modality":
            self.norms = nn.ModuleList(nn.BatchNorm1d(d, affine=False) for _ in range(2))
        elif kind == "layer":
            self.norm = nn.LayerNorm(d, elementwise_affine=False)

    def forward(self, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.kind == "none":
            return tuple(parts)
        if self.kind == "layer":
            return tuple(self.norm(x) for x in parts)
        out = []
        for bn, x in zip(self.norms, parts):                   # (B, d) each
            if bn.training and x.shape[0] < 2:                 # one row: running statistics
                x = F.batch_norm(x, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
            else:
                x = bn(x)
            out.append(x)
        return tuple(out)


@dataclass
class FDRLOutput(ModelOutput):
    """FDRL's output: :class:`ModelOutput` plus every intermediate the losses use.

    ``embeddings`` holds ``S_a, S_t, P_a, P_t`` (B, d) and ``fused`` (B, fusion width).
    The discriminator and predictor logits are filled only when labels are given (the
    inference path skips those heads); in them rows ``[:B]`` are speech, ``[B:]`` text.

    S_a, S_t, P_a, P_t: (B, d) shared / private representations.
    H_a, H_t:           (B, d_input) the input projections (the identity branch's trunk).
    global_logits:      (2B, 2) G_d on GRL([S_a; S_t]), or None.
    local_logits:       (C, 2B, 2) G_d^c on yhat^c * GRL([S_a; S_t]), or None.
    modality_logits:    (2B, 2) GD on [P_a; P_t], or None.
    predictor_logits:   {"S", "P_a", "P_t"} -> (B, C) FP outputs, or None.
    """

    S_a: torch.Tensor | None = None
    S_t: torch.Tensor | None = None
    P_a: torch.Tensor | None = None
    P_t: torch.Tensor | None = None
    H_a: torch.Tensor | None = None
    H_t: torch.Tensor | None = None
    global_logits: torch.Tensor | None = None
    local_logits: torch.Tensor | None = None
    modality_logits: torch.Tensor | None = None
    predictor_logits: dict[str, torch.Tensor] | None = None


#: an extra loss: fn(model, out, labels, speakers) -> {name: (scalar loss, weight)}
ExtraLoss = Callable[["FDRL", FDRLOutput, torch.Tensor, "torch.Tensor | None"],
                     Mapping[str, "tuple[torch.Tensor, float]"]]


def _modality_input(cfg: FDRLConfig, dim: int, sequence: bool,
                    backbone: nn.Module | None) -> ModalityInput:
    """The input block of one modality; its kind follows what the data provide."""
    kind = "backbone" if backbone is not None else ("sequence" if sequence else "pooled")
    return ModalityInput(dim, cfg.d_input, kind=kind, backbone=backbone, dropout=cfg.dropout,
                         front_end_channels=cfg.front_end_channels,
                         front_end_layers=cfg.front_end_layers,
                         stride=cfg.front_end_stride, pooling=cfg.pooling)


class FDRL(EmotionModel):
    """The FDRL model; see the module docstring for the structure and the choices.

    ``forward(inputs, labels=None, speakers=None) -> FDRLOutput``. Without labels only
    the representations, the fusion and the classifier run (``loss`` is None).
    Training schedules: :meth:`set_progress` sets the GRL lambda each step;
    :meth:`end_epoch` re-estimates mu from the epoch's discriminator losses.
    """

    modalities = ("speech", "text")

    def __init__(self, cfg: FDRLConfig, spec: InputSpec):
        super().__init__()
        self.cfg = cfg
        self.num_classes = C = spec.num_classes
        # 1. inputs -> common width (paper silent: H_a, H_t differ in width)
        self.speech_in = _modality_input(cfg, spec.speech_dim, spec.speech_sequence,
                                         spec.speech_backbone)
        self.text_in = _modality_input(cfg, spec.text_dim, spec.text_sequence,
                                       spec.text_backbone)
        # 2. encoders (eq. 3): one shared E_s for both modalities, one private per modality
        self.shared = MLP(cfg.d_input, cfg.hidden, cfg.d,                   # E_s
                          cfg.dropout if cfg.shared_dropout else 0.0)
        self.private_a = MLP(cfg.d_input, cfg.hidden, cfg.d, cfg.dropout)   # E_a
        self.private_t = MLP(cfg.d_input, cfg.hidden, cfg.d, cfg.dropout)   # E_t
        # bounded shared space: every S row has mean 0 and norm sqrt(d) (no parameters,
        # so the encoders cannot grow S to push the reversed gradient around)
        self.shared_norm = SharedNorm(cfg.d, cfg.shared_norm)
        # 3. fine-grained alignment: one GRL in front of every alignment discriminator
        self.grl = GradientReversal(self._grl_lambda(0.0))
        self.global_disc = (MLP(cfg.d, cfg.disc_hidden, 2, cfg.dropout)     # G_d
                            if cfg.use_global else None)
        self.local_disc = (BatchedDiscriminators(C, cfg.d, cfg.disc_hidden, 2, cfg.dropout)
                           if cfg.use_local else None)                       # G_d^1..C
        mu0 = cfg.mu_init if cfg.mu_fixed is None else cfg.mu_fixed
        self.register_buffer("mu", torch.tensor(float(mu0)))                # checkpointed
        # 4. fine-grained disparity: GD, no gradient reversal
        self.modality_disc = (MLP(cfg.d, cfg.disc_hidden, 2, cfg.dropout)
                              if cfg.use_modality_disc else None)
        # 5. fine-grained predictor FP: one layer, shared by S, P_a, P_t (and yhat for L_l)
        self.predictor = (nn.Linear(cfg.d, C)
                          if cfg.use_predictor or cfg.use_local else None)
        # 6. cross-modal fusion + classifier
        self.fusion_tokens = FUSION_TOKENS[cfg.fusion_tokens]
        self.fusion = CrossModalFusion(cfg.d, cfg.n_heads, cfg.dropout, cfg.fusion_out)
        self.classifier = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(self.fusion.out_dim(len(self.fusion_tokens)), C))

        # class weights from the config; weights set by the trainer through
        # EmotionModel.set_class_weights (self.class_weights) take precedence
        cw = None if cfg.class_weights is None else torch.tensor(cfg.class_weights,
                                                                  dtype=torch.float32)
        self.register_buffer("config_class_weights", cw, persistent=False)
        # epoch sums for mu, laid out [n, g_loss, g_err, l_loss (C), l_wrong (C), l_weight (C)]:
        # sample count, per-modality discriminator losses (L_g / 2, L_l^c / 2) and the global
        # error rate times samples, then each class's yhat-weighted errors and weights. A plain attribute, not a buffer: DDP would overwrite
        # buffers with rank 0's at every forward; end_epoch all-reduces instead.
        self._acc: torch.Tensor | None = None
        self.extra_losses: list[ExtraLoss] = []
        # emotion/identity disentanglement: heads + terms through the extra-loss hook
        self.identity = build_identity(cfg.identity, d_emotion=self.fusion.out_dim(
            len(self.fusion_tokens)), d_trunk=2 * cfg.d_input, num_speakers=spec.num_speakers)
        if self.identity is not None:
            self.add_extra_loss(_identity_loss)

    # ------------------------------------------------------------------ schedules
    def _grl_lambda(self, progress: float) -> float:
        if self.cfg.grl_schedule == "constant":
            return self.cfg.grl_lambda_max
        return self.cfg.grl_lambda_max * dann_lambda(progress, self.cfg.grl_gamma)

    def set_progress(self, progress: float) -> None:
        """Set the GRL lambda from training progress p in [0, 1]."""
        self.grl.lambd = self._grl_lambda(progress)
        if self.identity is not None:
            self.identity.set_progress(progress)

    def effective_mu(self) -> float:
        """mu as used in the loss: the buffer when both L_g and L_l are on, else 0 / 1."""
        if self.cfg.use_global and self.cfg.use_local:
            return float(self.mu)
        return 1.0 if self.cfg.use_local else 0.0

    def state_for_log(self) -> dict[str, float]:
        state = {"mu": self.effective_mu(), "grl_lambda": self.grl.lambd}
        if self.identity is not None:
            state.update(self.identity.state_for_log())
        return state

    def add_extra_loss(self, fn: ExtraLoss) -> None:
        """Extension point: ``fn(model, out, labels, speakers)`` returns
        ``{name: (scalar loss, weight)}``, added to the total and to ``out.terms``.
        Modules the loss needs must be attached to the model before the optimizer is
        built (e.g. ``model.add_module("identity_head", head)``)."""
        self.extra_losses.append(fn)

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: Inputs, labels: torch.Tensor | None = None,
                speakers: torch.Tensor | None = None) -> FDRLOutput:
        if inputs.speech is None or inputs.text is None:
            raise ValueError("FDRL needs both speech and text inputs in every batch")
        h_a = self.speech_in(inputs.speech, inputs.speech_mask).pooled  # (B, d_input)
        h_t = self.text_in(inputs.text, inputs.text_mask).pooled        # (B, d_input)
        B = h_a.shape[0]
        S_a, S_t = self.shared_norm(self.shared(torch.cat([h_a, h_t])).split(B))  # (B, d) each
        P_a = self.private_a(h_a)                                       # (B, d)
        P_t = self.private_t(h_t)                                       # (B, d)
        reps = {"S_a": S_a, "S_t": S_t, "P_a": P_a, "P_t": P_t}
        fused, logits = self._head(reps)                                # (B, K*d), (B, C)
        out = FDRLOutput(logits=logits, embeddings={**reps, "fused": fused}, H_a=h_a, H_t=h_t,
                         **reps)
        if labels is None:
            return out  # inference: no discriminators, no predictor
        terms, weights = self._losses(out, labels)
        for fn in self.extra_losses:
            for name, (term, w) in fn(self, out, labels, speakers).items():
                if name in terms:
                    raise ValueError(f"extra loss '{name}' clashes with a built-in term")
                terms[name], weights[name] = term, float(w)
        out.loss, out.terms = combine(terms, weights)
        out.loss_parts = {k: (t, weights[k]) for k, t in terms.items() if weights.get(k, 0.0)}
        return out

    def calibration_norms(self) -> list[nn.Module]:
        """The per-modality statistics of S (shared_norm: modality). Dropout before E_s
        (input blocks, conv front-end) makes the training-mode statistics differ from
        evaluation's: on IEMOCAP sequences a fresh probe told S_a from S_t at 1.0 on the
        training rows in evaluation mode with the running statistics."""
        return list(self.shared_norm.norms) if self.cfg.shared_norm == "modality" else []

    def gradient_probe(self) -> list[nn.Parameter]:
        """E_s: the encoder every alignment, disparity and predictor term competes for."""
        return list(self.shared.parameters())

    def _head(self, reps: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion (eq. 12-13) and classifier (eq. 14) on the representations."""
        tokens = torch.stack([reps[k] for k in self.fusion_tokens], dim=1)     # (B, K, d)
        fused = self.fusion(tokens)                                     # (B, K*d) or (B, d)
        return fused, self.classifier(fused)                            # (B, C)

    def _adversary(self, disc: nn.Module, x: torch.Tensor, coef: float
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A discriminator's logits on ``x`` and, for ``adversary: confusion``, the
        encoders' confusion term.

        - ``loss``: ``disc(GRL_lambda(x))``, weights on the losses (eq. 15 literally);
        - ``reversed``: ``disc(GRL_coef(x))``: the discriminator learns at full weight,
          the encoders get ``-coef`` times its gradient;
        - ``confusion``: the discriminator learns on ``x.detach()``; the encoders
          minimise the CE of the *frozen* discriminator against the uniform target
          (Tzeng et al. 2015), i.e. they move S towards its decision boundary instead
          of across it (the reversed gradient rewards a confidently *wrong*
          discriminator, which on IEMOCAP left it below chance while a fresh probe
          told S_a from S_t at 0.97 on the same training rows).
        """
        mode = self.cfg.adversary
        if mode == "loss":
            return disc(grad_reverse(x, self.grl.lambd)), None
        if mode == "reversed":
            return disc(grad_reverse(x, coef)), None
        logits = disc(x.detach())
        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        enc = torch.func.functional_call(disc, frozen, (x,))             # same shape
        return logits, -F.log_softmax(enc.float(), dim=-1).mean()       # CE to uniform

    #: the parts an evaluation-time ablation replaces (fdrl.analysis.diagnostics)
    diagnostic_parts = {"S": ("S_a", "S_t"), "P": ("P_a", "P_t")}

    @torch.no_grad()
    def classify(self, reps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Emotion logits (B, C) from given ``S_a, S_t, P_a, P_t`` (B, d): the head
        alone, so a diagnostic can replace a part by its training mean."""
        return self._head(reps)[1]

    def _losses(self, out: FDRLOutput, y: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """All switched-on loss terms (unweighted) and their weights (eq. 15)."""
        cfg, B = self.cfg, y.shape[0]
        cw = getattr(self, "class_weights", None)                     # set by the trainer
        cw = cw if cw is not None else self.config_class_weights
        terms = {"task": task_loss(out.logits, y, cw)}
        weights = {"task": 1.0}
        S = torch.cat([out.S_a, out.S_t])                               # (2B, d): speech, text
        y_mod = torch.cat([S.new_full((B,), SPEECH, dtype=torch.long),
                           S.new_full((B,), TEXT, dtype=torch.long)])   # (2B,)
        mu = self.effective_mu()

        # 5. fine-grained predictor (eq. 11): one call on [S_a + S_t; P_a; P_t]
        if self.predictor is not None:
            fp_in = torch.cat([out.S_a + out.S_t, out.P_a, out.P_t])    # (3B, d)
            if not cfg.use_predictor:
                fp_in = fp_in.detach()  # ablation S6: fit FP for yhat, leave encoders alone
            f_S, f_Pa, f_Pt = self.predictor(fp_in).split(B)            # (B, C) each
            out.predictor_logits = {"S": f_S, "P_a": f_Pa, "P_t": f_Pt}
            terms["predictor"] = predictor_loss(f_S, f_Pa, f_Pt, y)
            weights["predictor"] = cfg.gamma

        # 3. fine-grained alignment (eq. 4-5); the GRL makes the encoders fight G_d, G_d^c.
        # adversary "reversed": each discriminator minimises its own CE at weight 1 while
        # the encoders receive -lambda alpha (1 - mu) (global) / -lambda alpha mu (local)
        # times its gradient; "loss": eq. 15 literally, the weights on the losses.
        lam = self.grl.lambd
        literal = cfg.adversary == "loss"
        g_err = l_err = per_class = None
        if self.global_disc is not None:
            w = cfg.alpha * (1.0 - mu)
            g, conf = self._adversary(self.global_disc, S, lam * w)         # (2B, 2)
            out.global_logits = g
            terms["align_global"] = global_alignment_loss(g[:B], g[B:])
            weights["align_global"] = w if literal else 1.0
            if conf is not None:
                terms["align_global_confusion"], weights["align_global_confusion"] = conf, lam * w
            g_err = (g.detach().argmax(-1) != y_mod).float().mean()     # ()
        if self.local_disc is not None:
            w = cfg.alpha * mu
            with torch.no_grad():  # yhat detached: L_l must not train FP through the weights
                yhat = torch.softmax(self.predictor(S), dim=-1)         # (2B, C)
            x = yhat.t().unsqueeze(-1) * S.unsqueeze(0)                 # (C, 2B, d), eq. 5
            loc, conf = self._adversary(self.local_disc, x, lam * w)    # (C, 2B, 2)
            out.local_logits = loc
            per_class = local_alignment_losses(loc[:, :B], loc[:, B:])  # (C,)
            reduce = torch.mean if cfg.local_reduction == "mean" else torch.sum
            terms["align_local"] = reduce(per_class)
            weights["align_local"] = w if literal else 1.0
            if conf is not None:
                terms["align_local_confusion"], weights["align_local_confusion"] = conf, lam * w
            # each class's error counts the rows by their weight yhat^c: a row the
            # discriminator c cannot see (yhat^c ~ 0) is no evidence about subdomain c
            wrong = (loc.detach().argmax(-1) != y_mod).float()         # (C, 2B)
            wt = yhat.t()                                               # (C, 2B)
            l_err = ((wrong * wt).sum(1), wt.sum(1))                    # (C,) numerator, weight

        # 4. fine-grained disparity (eq. 9-10)
        if self.modality_disc is not None:
            m = self.modality_disc(torch.cat([out.P_a, out.P_t]))       # (2B, 2), no GRL
            out.modality_logits = m
            terms["disparity_modality"] = modality_disparity_loss(m[:B], m[B:])
            weights["disparity_modality"] = cfg.beta
        if cfg.use_orthogonality:
            terms["disparity_orthogonal"] = disparity_orthogonality(
                out.S_a, out.P_a, out.S_t, out.P_t, reduction=cfg.orth_reduction)
            weights["disparity_orthogonal"] = cfg.beta

        if self.training:
            self._accumulate(B, terms.get("align_global"), g_err, per_class, l_err)
        return terms, weights

    # ------------------------------------------------------------------ mu (eq. 6-8)
    @torch.no_grad()
    def _accumulate(self, B: int, L_g, g_err, per_class, l_err) -> None:
        """Add this batch's per-modality, per-sample discriminator losses and errors.

        ``l_err`` is ``(sum_i yhat_i^c wrong_i^c, sum_i yhat_i^c)`` per class: numerator
        and weight are summed separately (over batches and ranks), so the epoch's
        weighted error rate does not depend on how the rows were split."""
        C = self.num_classes
        row = self.mu.new_zeros(3 + 3 * C)                  # layout of self._acc
        row[0] = B
        if L_g is not None:
            row[1] = L_g.detach() / 2 * B                   # L_g sums two modality means
            row[2] = g_err * B
        if per_class is not None:
            row[3:3 + C] = per_class.detach() / 2 * B       # (C,)
            row[3 + C:3 + 2 * C] = l_err[0]                  # (C,) weighted wrong
            row[3 + 2 * C:] = l_err[1]                       # (C,) weights
        self._acc = row if self._acc is None else self._acc.to(row.device) + row

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        """Re-estimate mu from the epoch's discriminator losses, reset the accumulators.

        Returns mu, grl_lambda and, when the discriminators ran this epoch, d_global /
        d_local (the clamped A-distance proxies) and the discriminators' mean losses
        and error rates.
        """
        cfg, C = self.cfg, self.num_classes
        acc = self._acc if self._acc is not None else self.mu.new_zeros(3 + 3 * C)
        self._acc = None
        if dist.is_available() and dist.is_initialized():
            acc = acc.to(self.mu.device)
            dist.all_reduce(acc)  # sums over ranks, so the means cover the whole epoch
        acc = acc.double().cpu()
        n = float(acc[0])
        stats: dict[str, float] = {}
        if n > 0:
            g_loss, g_err = float(acc[1]) / n, float(acc[2]) / n
            l_loss, w = acc[3:3 + C] / n, acc[3 + 2 * C:]                   # (C,) each
            l_err = torch.where(w > 0, acc[3 + C:3 + 2 * C] / w.clamp_min(1e-12), 0.5)  # (C,)
            use_err = cfg.mu_error == "error_rate"
            e_g, e_l = (g_err, l_err) if use_err else (g_loss, l_loss)
            if cfg.use_global:
                stats.update(disc_global_loss=g_loss, disc_global_error=g_err,
                             d_global=a_distance(e_g))
            if cfg.use_local:
                stats.update(disc_local_loss=float(l_loss.mean()),
                             disc_local_error=float(l_err.mean()),
                             d_local=sum(a_distance(e) for e in e_l.tolist()) / C)
            if cfg.use_global and cfg.use_local and cfg.mu_fixed is None:
                mu = dynamic_factor(e_g, e_l, variant=cfg.mu_variant, error=cfg.mu_error,
                                    prior=cfg.mu_prior)
                if mu is not None:  # None: no discriminator beats chance, keep mu
                    stats["mu_estimate"] = mu
                    m = cfg.mu_momentum
                    self.mu.fill_(m * float(self.mu) + (1.0 - m) * mu)
        # the mu the *next* epoch uses; the trainer logs the one this epoch used as "mu"
        stats["mu_next"] = self.effective_mu()
        return stats


# ---------------------------------------------------------------------- builder
def _check(cfg: FDRLConfig, spec: InputSpec) -> None:
    """Raise ConfigError naming the first invalid field."""
    if spec.speech_dim is None or spec.text_dim is None:
        raise ConfigError("FDRL needs both speech and text "
                          f"(speech_dim={spec.speech_dim}, text_dim={spec.text_dim})")
    choices = {"fusion_out": ("flatten", "mean"), "fusion_tokens": tuple(FUSION_TOKENS),
               "pooling": ("attention", "mean"), "mu_variant": ("eq8", "daan"),
               "mu_error": ("loss", "error_rate"), "grl_schedule": ("dann", "constant"),
               "orth_reduction": ("sum", "mean", "batch"), "adversary": ("reversed", "confusion", "loss"),
               "shared_norm": ("modality", "layer", "none"), "local_reduction": ("mean", "sum")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"model.{key}: expected one of {list(allowed)}, "
                              f"got {getattr(cfg, key)!r}")
    check_sizes(cfg, ("d", "hidden", "d_input", "front_end_channels", "n_heads", "disc_hidden",
                      "front_end_stride"), heads_divide=True)
    if not 0.0 <= cfg.mu_init <= 1.0:
        raise ConfigError(f"model.mu_init: expected a value in [0, 1], got {cfg.mu_init}")
    if cfg.mu_fixed is not None and not 0.0 <= cfg.mu_fixed <= 1.0:
        raise ConfigError(f"model.mu_fixed: expected null or a value in [0, 1], got {cfg.mu_fixed}")
    if not 0.0 <= cfg.mu_momentum < 1.0:
        raise ConfigError(f"model.mu_momentum: expected a value in [0, 1), got {cfg.mu_momentum}")
    if cfg.mu_prior < 0:
        raise ConfigError(f"model.mu_prior: expected a value >= 0, got {cfg.mu_prior}")
    if spec.num_classes < 2:
        raise ConfigError(f"FDRL needs at least 2 classes, the data have {spec.num_classes}")
    if cfg.class_weights is not None and len(cfg.class_weights) != spec.num_classes:
        raise ConfigError(f"model.class_weights: expected {spec.num_classes} weights "
                          f"(one per class), got {len(cfg.class_weights)}")
    identity = parse_identity(cfg.identity)  # ConfigError naming model.identity.<key>
    if identity is not None and spec.num_speakers < 2:
        raise ConfigError(f"model.identity.method={identity.method}: needs speaker labels for at "
                          f"least 2 speakers, the data have {spec.num_speakers}")


def _identity_loss(model: "FDRL", out: FDRLOutput, labels: torch.Tensor,
                   speakers: torch.Tensor | None) -> dict[str, tuple[torch.Tensor, float]]:
    """The identity terms (extra loss): emotion embedding = fused, trunk = [H_a; H_t]."""
    trunk = torch.cat([out.H_a, out.H_t], dim=1)                       # (B, 2 d_input)
    return model.identity.losses(out.embeddings["fused"], trunk, speakers)


@register("fdrl", FDRLConfig, doc="FDRL (arXiv 2312.13567): shared/private encoders, "
          "fine-grained alignment (global + per-class adversarial, dynamic mu), disparity "
          "(modality discriminator + orthogonality), fine-grained predictor, attention fusion; "
          "needs speech and text")
def build(cfg: FDRLConfig, spec: InputSpec) -> FDRL:
    """Validate ``cfg`` against the data and build the model."""
    _check(cfg, spec)
    return FDRL(cfg, spec)
