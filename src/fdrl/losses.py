"""FDRL's loss terms as pure functions, plus one combiner.

Every function takes tensors and returns a scalar tensor (or a (C,) tensor of
per-class terms); none holds state. Equation numbers refer to the FDRL paper
(arXiv 2312.13567). Modality labels: speech = 0, text = 1.

Reductions: each cross-entropy is a mean over the batch; sums over modalities and
classes follow the paper's equations (eq. 4, 5, 9 sum over the two modalities, eq. 5
also over classes; eq. 9 and eq. 11 carry their 1/2 and 1/3 factors).

The combiner :func:`combine` is the only place where terms are weighted and summed;
the weights come from the model's configuration.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

SPEECH, TEXT = 0, 1  # modality labels y_m


def _modality_targets(logits: torch.Tensor, label: int) -> torch.Tensor:
    return torch.full(logits.shape[:-1], label, dtype=torch.long, device=logits.device)


def domain_ce(logits_a: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Modality cross-entropy summed over the two modalities.

    ``CE(logits_a, speech) + CE(logits_t, text)``, each CE a mean over the batch: a sum
    over modalities as in eq. 4 and 9 (so a chance-level discriminator scores
    ``2 ln 2``, and ``domain_ce / 2`` is the per-sample, per-modality loss).

    Parameters
    ----------
    logits_a, logits_t : (B, 2) discriminator logits for speech and text samples.
    """
    la = F.cross_entropy(logits_a.float(), _modality_targets(logits_a, SPEECH))
    lt = F.cross_entropy(logits_t.float(), _modality_targets(logits_t, TEXT))
    return la + lt


def global_alignment_loss(logits_a: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """L_g (eq. 4): the global domain discriminator's modality CE, summed over a and t.

    The logits must come from ``G_d(GRL(S_m))``: the gradient reversal lives in the
    model, so minimising L_g trains G_d and, reversed, aligns S_a with S_t.

    Parameters
    ----------
    logits_a, logits_t : (B, 2) logits of G_d on S_a and on S_t.
    """
    return domain_ce(logits_a, logits_t)


def local_alignment_losses(logits_a: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Per-class local subdomain losses L_l^c (eq. 5); ``L_l = local.sum()``.

    ``L_l^c = CE(G_d^c(yhat_a^c GRL(S_a)), speech) + CE(G_d^c(yhat_t^c GRL(S_t)), text)``,
    each CE a batch mean, for every class c at once.

    Parameters
    ----------
    logits_a, logits_t : (C, B, 2) logits of the C local discriminators.

    Returns
    -------
    (C,) the per-class losses L_l^c.
    """
    C, B = logits_a.shape[:2]
    la = F.cross_entropy(logits_a.float().reshape(C * B, 2),
                         _modality_targets(logits_a, SPEECH).reshape(C * B), reduction="none")
    lt = F.cross_entropy(logits_t.float().reshape(-1, 2),
                         _modality_targets(logits_t, TEXT).reshape(-1), reduction="none")
    return la.view(C, B).mean(dim=1) + lt.view(C, -1).mean(dim=1)  # (C,)


def modality_disparity_loss(logits_a: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """L_p (eq. 9): ``1/2 sum_m CE(GD(P_m), y_m)``, the global modality discriminator.

    No gradient reversal: the private encoders and GD both minimise L_p, so the private
    spaces stay distinguishable by modality.

    Parameters
    ----------
    logits_a, logits_t : (B, 2) logits of GD on P_a and on P_t.
    """
    return 0.5 * domain_ce(logits_a, logits_t)


def orthogonality_loss(S: torch.Tensor, P: torch.Tensor, reduction: str = "sum",
                       eps: float = 1e-6) -> torch.Tensor:
    """One modality's term of L_d (eq. 10): ``||S^T P||_F^2`` on normalised features.

    As MISA's difference loss: each column is centred over the batch and each row is
    L2-normalised before the product, so the term cannot be lowered by shrinking the
    features (rescaling S or P leaves it unchanged). It is 0 exactly when every column
    of the centred, row-normalised S is orthogonal (as a B-vector) to every column of
    the centred, row-normalised P (for rows of equal norm, the centred columns).

    Parameters
    ----------
    S, P : (B, d) shared and private representations of one modality.
    reduction : ``"sum"`` over the d x d entries of S^T P, the squared Frobenius norm of
        eq. 10 (default); ``"mean"`` divides by d_S * d_P, as MISA's released code does;
        ``"batch"`` divides by the batch size B. With unit rows,
        ``||S^T P||_F^2 = sum_ij (s_i . s_j)(p_i . p_j)`` holds B diagonal terms equal
        to 1, so ``"sum"`` grows with B (about 245 at B = 32, d = 128 on IEMOCAP) and
        ``"mean"`` shrinks with d^2 (about 0.015); ``"batch"`` is 1 for uncorrelated S,
        P at any B and d and rises towards B when they share directions.
    """
    if reduction not in ("sum", "mean", "batch"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'batch', got {reduction!r}")
    S = S.float() - S.float().mean(dim=0, keepdim=True)        # (B, d) centred columns
    P = P.float() - P.float().mean(dim=0, keepdim=True)        # (B, d)
    S = F.normalize(S, dim=1, eps=eps)                         # (B, d) unit rows
    P = F.normalize(P, dim=1, eps=eps)                         # (B, d)
    sq = (S.t() @ P).pow(2)                                    # (d, d)
    if reduction == "batch":
        return sq.sum() / S.shape[0]
    return sq.sum() if reduction == "sum" else sq.mean()


def disparity_orthogonality(S_a: torch.Tensor, P_a: torch.Tensor, S_t: torch.Tensor,
                            P_t: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """L_d (eq. 10): ``||S_a^T P_a||_F^2 + ||S_t^T P_t||_F^2`` (see :func:`orthogonality_loss`)."""
    return (orthogonality_loss(S_a, P_a, reduction=reduction)
            + orthogonality_loss(S_t, P_t, reduction=reduction))


def predictor_loss(logits_S: torch.Tensor, logits_Pa: torch.Tensor, logits_Pt: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """L_f (eq. 11): ``1/3 [CE(FP(S), y) + CE(FP(P_a), y) + CE(FP(P_t), y)]``, S = S_a + S_t.

    Parameters
    ----------
    logits_S, logits_Pa, logits_Pt : (B, C) outputs of the fine-grained predictor FP.
    y : (B,) emotion labels.
    """
    return (F.cross_entropy(logits_S.float(), y) + F.cross_entropy(logits_Pa.float(), y)
            + F.cross_entropy(logits_Pt.float(), y)) / 3.0


def task_loss(logits: torch.Tensor, y: torch.Tensor,
              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_task (eq. 14): emotion cross-entropy of the fused classifier.

    Parameters
    ----------
    logits : (B, C). y : (B,) labels. class_weights : (C,) or None (unweighted).
    """
    w = None if class_weights is None else class_weights.to(device=logits.device,
                                                             dtype=torch.float32)
    return F.cross_entropy(logits.float(), y, weight=w)


# ----------------------------------------------------------------------------------
# Dynamic factor (eq. 6-8)


def a_distance(error: float) -> float:
    """A-distance proxy ``2 (1 - 2 e)`` (eq. 6 / 7), clamped at 0.

    A discriminator at chance (or worse) has ``e >= 0.5`` and proves no distance, hence
    the clamp: a negative "distance" would let mu leave [0, 1].
    """
    return max(0.0, 2.0 * (1.0 - 2.0 * float(error)))


def dynamic_factor(L_g: float | torch.Tensor, L_l_per_class: Sequence[float] | torch.Tensor,
                   variant: str = "eq8", error: str = "loss", prior: float = 0.0,
                   eps: float = 1e-8) -> float | None:
    """The dynamic factor mu that weighs local against global alignment (eq. 8).

    ``d_g = 2 (1 - 2 e_g)``, ``d_l^c = 2 (1 - 2 e_l^c)`` (each clamped at 0), then

    - ``variant="eq8"`` (the paper): ``mu = d_g / (d_g + mean_c d_l^c)``;
    - ``variant="daan"`` (the public DAAN code): ``mu = 1 - d_g / (d_g + mean_c d_l^c)``.

    The alignment term is ``(1 - mu) L_g + mu L_l``.

    What the error e is (the ``error`` argument names the convention; the caller
    passes the values):

    - ``"loss"`` (default, what the paper plugs in): the discriminator's cross-entropy
      averaged per modality and per sample, i.e. ``L_g / 2`` and ``L_l^c / 2`` averaged
      over an epoch. In nats a chance-level discriminator scores ln 2 > 0.5, so d is 0
      until the discriminator beats ``CE = 0.5``.
    - ``"error_rate"``: the discriminator's misclassification rate, the A-distance
      proxy proper (Ben-David et al.); values must lie in [0, 1].

    Parameters
    ----------
    L_g : global error e_g (scalar).
    L_l_per_class : (C,) per-class errors e_l^c.
    variant : "eq8" or "daan".
    error : "loss" or "error_rate".
    prior : a pseudo-distance added to both ``d_g`` and ``mean_c d_l^c`` (default 0,
        the paper). Near chance both distances are ~0 and eq. 8 is a ratio of noise
        that flips between 0 and 1 (measured on the demo); with a prior, weak evidence
        gives mu near 0.5 and only a clear difference moves it.

    Returns
    -------
    mu in [0, 1], or None when ``d_g + mean_c d_l^c`` is ~0 (no discriminator beats
    chance): the caller then keeps its previous mu.
    """
    if variant not in ("eq8", "daan"):
        raise ValueError(f"variant must be 'eq8' or 'daan', got {variant!r}")
    if error not in ("loss", "error_rate"):
        raise ValueError(f"error must be 'loss' or 'error_rate', got {error!r}")
    e_g = float(L_g)
    e_l = [float(v) for v in (L_l_per_class.tolist() if torch.is_tensor(L_l_per_class)
                              else L_l_per_class)]
    if not e_l:
        raise ValueError("L_l_per_class is empty: need one error per class")
    if error == "error_rate" and not all(0.0 <= e <= 1.0 for e in [e_g, *e_l]):
        raise ValueError(f"error rates must lie in [0, 1], got e_g={e_g}, e_l={e_l}")
    d_g = a_distance(e_g) + prior
    d_l = sum(a_distance(e) for e in e_l) / len(e_l) + prior
    den = d_g + d_l
    if den < eps:
        return None
    mu = d_g / den
    if variant == "daan":
        mu = 1.0 - mu
    return min(1.0, max(0.0, mu))


# ----------------------------------------------------------------------------------
# Combiner


def combine(terms: Mapping[str, torch.Tensor],
            weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of named loss terms, and the named values for logging.

    ``total = sum_k weights[k] * terms[k]`` over the terms whose weight is non-zero.
    A zero weight skips the term entirely (it is not multiplied by 0), so the term
    sends no gradient and a NaN/inf in it cannot leak into the total. Terms without a
    weight are logged but not added (diagnostics).

    Parameters
    ----------
    terms : name -> scalar tensor (unweighted).
    weights : name -> float. A weight for a name missing from ``terms`` is an error.

    Returns
    -------
    total : scalar tensor (float32).
    named : name -> detached 0-d float32 tensor, for every term and for ``"total"``.
        Detached tensors rather than Python floats so that logging does not force a
        device synchronisation each step; ``float(v)`` / ``v.item()`` both work.
    """
    unknown = [k for k, w in weights.items() if k not in terms and w != 0]
    if unknown:
        raise KeyError(f"weights given for unknown loss terms {unknown}; "
                       f"terms are {sorted(terms)}")
    total = None
    for name, term in terms.items():
        w = float(weights.get(name, 0.0))
        if w == 0.0:
            continue
        part = term.float() if w == 1.0 else w * term.float()
        total = part if total is None else total + part
    if total is None:  # nothing weighted: a constant zero (no gradient to anything)
        ref = next(iter(terms.values()), None)
        total = torch.zeros((), device=None if ref is None else ref.device)
    named = {k: v.detach().float() for k, v in terms.items()}
    named["total"] = total.detach()
    return total, named
