import pytest
import torch

from fdrl.encoders.pooling import AttentionPooling, LayerWeighting, check_layer, masked_mean
from fdrl.errors import ConfigError


def _batch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)  # (B, L, d)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    return x, mask


def test_masked_mean_ignores_padding():
    x, mask = _batch()
    out = masked_mean(x, mask)  # (B, d)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out[0], x[0].mean(0))
    torch.testing.assert_close(out[1], x[1, :3].mean(0))
    # garbage in the padded positions changes nothing ...
    x2 = x.clone()
    x2[1, 3:] = 1e6
    torch.testing.assert_close(masked_mean(x2, mask), out)
    # ... while an unmasked mean would see it
    assert not torch.allclose(x[1].mean(0), out[1])


def test_masked_mean_all_masked_row_is_zero_not_nan():
    x, mask = _batch()
    out = masked_mean(x, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(4))


def test_layer_weighting_starts_as_mean_and_learns():
    layers = [torch.randn(2, 3, 4) for _ in range(3)]
    lw = LayerWeighting(3)
    torch.testing.assert_close(lw(layers), torch.stack(layers).mean(0))
    lw(layers).pow(2).sum().backward()
    assert lw.logits.grad is not None and lw.logits.grad.abs().sum() > 0
    assert torch.isclose(lw.weights.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="expected 3 hidden layers"):
        lw(layers[:2])


def test_attention_pooling_masks_padding():
    x, mask = _batch()
    pool = AttentionPooling(4)
    out, w = pool(x, mask, return_weights=True)
    assert out.shape == (3, 4) and w.shape == (3, 5)
    torch.testing.assert_close(w[:2].sum(1), torch.ones(2))
    assert torch.equal(w[1, 3:], torch.zeros(2))
    assert torch.equal(out[2], torch.zeros(4)) and torch.isfinite(out).all()
    x2 = x.clone()
    x2[1, 3:] = 50.0
    torch.testing.assert_close(pool(x2, mask), out)
    out.sum().backward()
    assert pool.score.weight.grad is not None


def test_check_layer():
    assert check_layer(-1, 3, "m") == -1
    assert check_layer("mean", 3, "m") == "mean"
    with pytest.raises(ConfigError, match="out of range"):
        check_layer(3, 3, "m")
    with pytest.raises(ConfigError, match="must be an int"):
        check_layer("last", 3, "m")
