"""Tests for the pure FDRL loss terms, the dynamic factor and the combiner."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fdrl.losses import (
    a_distance,
    combine,
    disparity_orthogonality,
    domain_ce,
    dynamic_factor,
    global_alignment_loss,
    local_alignment_losses,
    modality_disparity_loss,
    orthogonality_loss,
    predictor_loss,
    task_loss,
)


def test_domain_ce_sums_modalities_and_chance_is_2ln2():
    la, lt = torch.randn(5, 2), torch.randn(5, 2)
    expect = F.cross_entropy(la, torch.zeros(5, dtype=torch.long)) + \
        F.cross_entropy(lt, torch.ones(5, dtype=torch.long))
    assert torch.allclose(domain_ce(la, lt), expect)
    assert torch.allclose(global_alignment_loss(la, lt), expect)
    assert torch.allclose(modality_disparity_loss(la, lt), 0.5 * expect)
    zeros = torch.zeros(5, 2)
    assert domain_ce(zeros, zeros).item() == pytest.approx(2 * math.log(2))


def test_local_alignment_losses_per_class_match_a_loop():
    C, B = 3, 4
    la, lt = torch.randn(C, B, 2), torch.randn(C, B, 2)
    per_class = local_alignment_losses(la, lt)
    assert per_class.shape == (C,)
    for c in range(C):
        assert torch.allclose(per_class[c], domain_ce(la[c], lt[c]))


def _orthogonal_pair(d: int = 5):
    """S, P whose centred columns span orthogonal subspaces of R^B, equal row norms."""
    H = torch.tensor([[1.0]])
    for _ in range(3):                                  # 8 x 8 Hadamard matrix
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    Q1 = torch.linalg.qr(torch.randn(d, 2))[0].t()      # (2, d) orthonormal rows
    Q2 = torch.linalg.qr(torch.randn(d, 2))[0].t()
    S = H[:, 1:3] @ Q1                                  # (8, d), columns orthogonal to ones
    P = H[:, 3:5] @ Q2
    return S, P


def test_orthogonality_zero_for_orthogonal_and_positive_otherwise():
    torch.manual_seed(0)
    S, P = _orthogonal_pair()
    assert orthogonality_loss(S, P).item() < 1e-8
    assert orthogonality_loss(S + 3.0, P - 2.0).item() < 1e-8  # column offsets are centred away
    assert orthogonality_loss(S, S).item() > 1.0
    assert orthogonality_loss(torch.randn(8, 5), torch.randn(8, 5)).item() > 0.1


def test_orthogonality_invariant_to_rescaling():
    torch.manual_seed(1)
    S, P = torch.randn(8, 6), torch.randn(8, 6)
    base = orthogonality_loss(S, P)
    assert torch.allclose(orthogonality_loss(10.0 * S, P), base, rtol=1e-5)
    assert torch.allclose(orthogonality_loss(S, 0.01 * P), base, rtol=1e-5)
    assert torch.allclose(orthogonality_loss(S, P, reduction="mean"), base / 36, rtol=1e-5)
    S2, P2 = torch.randn(8, 6), torch.randn(8, 6)
    assert torch.allclose(disparity_orthogonality(S, P, S2, P2),
                          base + orthogonality_loss(S2, P2))


def test_orthogonality_cannot_be_minimised_by_shrinking():
    S = torch.randn(8, 4, requires_grad=True)
    P = torch.randn(8, 4)
    orthogonality_loss(S, P).backward()
    # the gradient is orthogonal to S's centred rows' scale direction: d/dalpha L(alpha S) = 0
    Sc = S.detach() - S.detach().mean(0)
    assert abs(float((S.grad * Sc).sum())) < 1e-4


def test_predictor_and_task_losses():
    y = torch.tensor([0, 2, 1, 1])
    a, b, c = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    expect = (F.cross_entropy(a, y) + F.cross_entropy(b, y) + F.cross_entropy(c, y)) / 3
    assert torch.allclose(predictor_loss(a, b, c, y), expect)
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(task_loss(a, y), F.cross_entropy(a, y))
    assert torch.allclose(task_loss(a, y, w), F.cross_entropy(a, y, weight=w))


def test_dynamic_factor_matches_eq8_and_daan_is_the_complement():
    # d_g = 2(1 - 0.2) = 1.6; d_l = [1.2, 0.8], mean 1.0 -> mu = 1.6 / 2.6
    mu = dynamic_factor(0.1, [0.2, 0.3])
    assert mu == pytest.approx(1.6 / 2.6)
    assert dynamic_factor(0.1, torch.tensor([0.2, 0.3]), variant="daan") == pytest.approx(1 - 1.6 / 2.6)
    assert dynamic_factor(0.1, [0.2, 0.3], error="error_rate") == pytest.approx(mu)
    assert a_distance(0.1) == pytest.approx(1.6) and a_distance(0.7) == 0.0


def test_dynamic_factor_clamps_and_returns_none_without_signal():
    # a local d below zero is clamped: d_l = [0, 2] -> mean 1; d_g = 1 -> 0.5
    assert dynamic_factor(0.25, [0.9, 0.0]) == pytest.approx(0.5)
    assert dynamic_factor(0.7, [0.6, 0.69]) is None        # all at/below chance
    assert dynamic_factor(0.6, [0.1]) == 0.0                 # global at chance
    assert dynamic_factor(0.1, [0.6]) == 1.0
    g = torch.Generator().manual_seed(0)
    for _ in range(200):                                     # adversarial random inputs
        e_g = float(torch.rand(1, generator=g) * 1.5)
        e_l = (torch.rand(4, generator=g) * 1.5).tolist()
        for variant in ("eq8", "daan"):
            mu = dynamic_factor(e_g, e_l, variant=variant)
            assert mu is None or 0.0 <= mu <= 1.0


def test_dynamic_factor_validates_arguments():
    with pytest.raises(ValueError):
        dynamic_factor(0.1, [0.2], variant="other")
    with pytest.raises(ValueError):
        dynamic_factor(0.1, [1.3], error="error_rate")     # a rate above 1
    with pytest.raises(ValueError):
        dynamic_factor(0.1, [])


def test_combine_respects_weights_and_zero_weight_drops_the_gradient():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    terms = {"x": a ** 2, "y": b ** 2, "diag": a * 0 + 7.0}
    total, named = combine(terms, {"x": 0.5, "y": 0.0})
    assert total.item() == pytest.approx(0.5 * 4.0)
    total.backward()
    assert a.grad.item() == pytest.approx(0.5 * 2 * 2.0)
    assert b.grad is None                                   # never touched
    assert set(named) == {"x", "y", "diag", "total"}
    assert float(named["y"]) == pytest.approx(9.0) and float(named["total"]) == pytest.approx(2.0)
    assert not any(v.requires_grad for v in named.values())


def test_combine_zero_weight_keeps_nan_out():
    a = torch.tensor(1.0, requires_grad=True)
    total, _ = combine({"x": a * 3, "bad": a * torch.tensor(float("nan"))}, {"x": 1.0, "bad": 0.0})
    total.backward()
    assert torch.isfinite(total) and a.grad.item() == pytest.approx(3.0)


def test_combine_rejects_weights_for_unknown_terms():
    with pytest.raises(KeyError, match="unknown"):
        combine({"x": torch.tensor(1.0)}, {"x": 1.0, "typo": 1.0})
