"""Tests for the reusable layers: GRL, MLPs, batched discriminators, pooling, inputs, fusion."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fdrl.models.layers import (
    MLP,
    AttentionPool,
    BatchedDiscriminators,
    CrossModalFusion,
    GradientReversal,
    ModalityInput,
    dann_lambda,
    grad_reverse,
    masked_mean,
)


def test_grad_reverse_identity_forward_negated_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)


def test_gradient_reversal_module_lambda_is_settable():
    grl = GradientReversal(1.0)
    grl.lambd = 2.5
    x = torch.randn(5, requires_grad=True)
    grl(x).sum().backward()
    assert torch.allclose(x.grad, torch.full((5,), -2.5))


def test_dann_lambda_endpoints_and_monotone():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(1.0) > 0.999
    assert dann_lambda(1.0, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    vals = [dann_lambda(p / 10) for p in range(11)]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    assert dann_lambda(-1.0) == 0.0 and dann_lambda(2.0) == dann_lambda(1.0)  # clipped


def test_mlp_shapes():
    assert MLP(6, 10, 3)(torch.randn(2, 5, 6)).shape == (2, 5, 3)


def _head_as_mlp(bd: BatchedDiscriminators, c: int) -> MLP:
    mlp = MLP(bd.d_in, bd.d_hidden, bd.n_out)
    with torch.no_grad():
        mlp.fc1.weight.copy_(bd.w1[c].t())
        mlp.fc1.bias.copy_(bd.b1[c])
        mlp.fc2.weight.copy_(bd.w2[c].t())
        mlp.fc2.bias.copy_(bd.b2[c])
    return mlp


def test_batched_discriminators_equal_separate_mlps():
    torch.manual_seed(0)
    C, N, d = 5, 7, 6
    bd = BatchedDiscriminators(C, d, 9, 2)
    mlps = [_head_as_mlp(bd, c) for c in range(C)]
    x = torch.randn(C, N, d)                       # one input per head
    out = bd(x)
    assert out.shape == (C, N, 2)
    for c in range(C):
        assert torch.allclose(out[c], mlps[c](x[c]), atol=1e-6)
    shared = torch.randn(N, d)                     # one input broadcast to all heads
    out2 = bd(shared)
    for c in range(C):
        assert torch.allclose(out2[c], mlps[c](shared), atol=1e-6)


def test_batched_discriminators_init_like_linear_and_heads_differ():
    bd = BatchedDiscriminators(4, 16, 8, 2)
    assert bd.w1.abs().max() <= 1 / math.sqrt(16) and bd.w2.abs().max() <= 1 / math.sqrt(8)
    assert bd.w1.std() > 0.5 / math.sqrt(3 * 16)  # not all zero / degenerate
    assert not torch.equal(bd.w1[0], bd.w1[1])
    with pytest.raises(ValueError):
        bd(torch.randn(3, 5, 16))                  # wrong number of heads


def test_masked_mean_ignores_padding():
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = masked_mean(x, mask)
    assert torch.allclose(out[0], x[0, :3].mean(0))
    assert torch.allclose(out[1], x[1].mean(0))
    x2 = x.clone()
    x2[0, 3:] = 1e6                                # garbage in the padding
    assert torch.allclose(masked_mean(x2, mask), out)
    assert torch.equal(masked_mean(x, torch.zeros(2, 5, dtype=torch.bool)), torch.zeros(2, 3))


def test_attention_pool_ignores_padding():
    torch.manual_seed(0)
    pool = AttentionPool(4)
    x = torch.randn(1, 3, 4)
    padded = torch.cat([x, torch.randn(1, 4, 4) * 100], dim=1)  # (1, 7, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(pool(padded, mask), pool(x), atol=1e-6)
    assert not torch.allclose(pool(padded), pool(x))  # the mask is what makes it equal


@pytest.mark.parametrize("pooling", ["attention", "mean"])
@pytest.mark.parametrize("layers", [0, 2, 3])
def test_sequence_input_padded_equals_unpadded(pooling, layers):
    torch.manual_seed(0)
    mi = ModalityInput(6, 8, kind="sequence", front_end_channels=5, front_end_layers=layers,
                       stride=2, pooling=pooling).eval()
    lengths = [9, 4, 13]
    L = max(lengths)
    seqs = [torch.randn(n, 6) for n in lengths]
    batch = torch.zeros(3, L, 6)
    mask = torch.zeros(3, L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
        batch[i, len(s):] = 50.0                   # padding content must not matter
        mask[i, : len(s)] = True
    out = mi(batch, mask)
    assert out.pooled.shape == (3, 8)
    assert out.sequence.shape[0] == 3 and out.sequence.shape[2] == 8
    assert out.mask.shape == out.sequence.shape[:2]
    for i, s in enumerate(seqs):
        alone = mi(s.unsqueeze(0))                 # no padding, no mask
        assert torch.allclose(out.pooled[i], alone.pooled[0], atol=1e-5)
        assert int(out.mask[i].sum()) == alone.sequence.shape[1]  # downsampled lengths agree


def test_sequence_input_downsamples_with_stride():
    mi = ModalityInput(4, 8, kind="sequence", front_end_channels=6, front_end_layers=3, stride=2)
    out = mi(torch.randn(2, 20, 4), torch.ones(2, 20, dtype=torch.bool))
    assert out.sequence.shape == (2, 5, 8)  # strides 1, 2, 2


def test_pooled_input_shapes_and_errors():
    mi = ModalityInput(10, 6, kind="pooled")
    out = mi(torch.randn(3, 10))
    assert out.pooled.shape == (3, 6)
    assert out.sequence.shape == (3, 1, 6) and out.mask.all() and out.mask.shape == (3, 1)
    with pytest.raises(ValueError, match="pooled"):
        mi(torch.randn(3, 4, 10))
    with pytest.raises(ValueError):
        ModalityInput(10, 6, kind="nope")
    with pytest.raises(ValueError):
        ModalityInput(10, 6, kind="backbone")  # no backbone given


class _FakeBackbone(nn.Module):
    """(B, T) 'waveform' -> (B, T//4, 5) frames, like a tiny trainable encoder."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 5)

    def forward(self, x, mask):
        B, T = x.shape
        seq = self.lin(x.view(B, T // 4, 4))
        seq_mask = mask[:, ::4]
        return seq, seq_mask, None


def test_backbone_input_trains_the_backbone():
    bb = _FakeBackbone()
    mi = ModalityInput(5, 7, kind="backbone", backbone=bb)
    x = torch.randn(2, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    out = mi(x, mask)
    assert out.pooled.shape == (2, 7) and out.sequence.shape == (2, 4, 7)
    out.pooled.sum().backward()
    assert bb.lin.weight.grad is not None and bb.lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("out_kind,K", [("flatten", 4), ("flatten", 2), ("mean", 4), ("mean", 2)])
def test_cross_modal_fusion_shapes(out_kind, K):
    fusion = CrossModalFusion(8, n_heads=2, out=out_kind)
    y = fusion(torch.randn(3, K, 8))
    assert y.shape == (3, fusion.out_dim(K))
    assert fusion.out_dim(K) == (K * 8 if out_kind == "flatten" else 8)
