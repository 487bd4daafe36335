"""FDRL's adversarial game: discriminators that keep learning, a shared space that
cannot be inflated, a mu that does not flip, and the history's mu being the one used."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fdrl.losses import dynamic_factor
from fdrl.models.base import InputSpec, Inputs
from fdrl.models.fdrl import FDRLConfig, build

TINY = FDRLConfig(d=8, hidden=16, d_input=12, disc_hidden=8, n_heads=2, dropout=0.0)


def make(**overrides):
    torch.manual_seed(0)
    return build(replace(TINY, **overrides), InputSpec(num_classes=3, speech_dim=10, text_dim=7))


def batch(B: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (Inputs(speech=torch.randn(B, 10, generator=g), text=torch.randn(B, 7, generator=g)),
            torch.arange(B) % 3)


def disc_grad(model, disc) -> float:
    return sum(float(p.grad.abs().sum()) for p in disc.parameters() if p.grad is not None)


@pytest.mark.parametrize("adversary", ["reversed", "confusion"])
def test_a_discriminator_keeps_learning_when_its_mixing_weight_is_0(adversary):
    x, y = batch()
    # mu = 1: the global term's weight alpha (1 - mu) is 0; mu = 0: the local one's
    for mu, disc in ((1.0, "global_disc"), (0.0, "local_disc")):
        model = make(adversary=adversary, mu_fixed=mu)
        model.set_progress(0.5)
        model(x, labels=y).loss.backward()
        assert disc_grad(model, getattr(model, disc)) > 0, (adversary, mu)
    # the literal eq. 15 drops the zero-weight term: that discriminator stops learning
    model = make(adversary="loss", mu_fixed=1.0)
    model(x, labels=y).loss.backward()
    assert disc_grad(model, model.global_disc) == 0


def test_at_weight_0_no_alignment_gradient_reaches_the_encoders():
    x, y = batch()
    model = make(mu_fixed=1.0, use_predictor=False, use_modality_disc=False,
                 use_orthogonality=False)              # mu = 1: the global weight is 0
    model.set_progress(0.5)
    out = model(x, labels=y)
    term, weight = out.loss_parts["align_global"]
    g = torch.autograd.grad(weight * term, list(model.shared.parameters()),
                            allow_unused=True)
    assert all(t is None or float(t.abs().sum()) == 0 for t in g)


def test_reversed_gradient_scales_with_alpha_mu_and_lambda():
    x, y = batch()
    norms = {}
    # the encoders' share of the game: the reversed gradient, or the confusion term
    for adversary, term in (("reversed", "align_global"), ("confusion", "align_global_confusion")):
        for alpha in (1.0, 2.0):
            model = make(alpha=alpha, mu_fixed=0.25, use_local=False, use_predictor=False,
                         use_modality_disc=False, use_orthogonality=False, adversary=adversary)
            model.set_progress(0.5)
            out = model(x, labels=y)
            t, w = out.loss_parts[term]
            g = torch.autograd.grad(w * t, list(model.shared.parameters()))
            norms[alpha] = float(torch.sqrt(sum(t.pow(2).sum() for t in g)))
        assert norms[2.0] == pytest.approx(2 * norms[1.0], rel=1e-4), adversary
        # the discriminator itself learns at full weight, whatever alpha, mu and lambda
        assert out.loss_parts["align_global"][1] == 1.0


def test_the_bounded_shared_space_cannot_be_inflated():
    x, y = batch()
    for kind in ("modality", "layer"):
        model = make(shared_norm=kind)
        with torch.no_grad():
            model.shared.fc2.weight.mul_(1000.0)
            model.shared.fc2.bias.mul_(1000.0)
        out = model(x, labels=y)
        for S in (out.S_a, out.S_t):                        # d = 8: mean ||S||^2 = d
            assert float(S.detach().pow(2).sum(1).mean()) == pytest.approx(8.0, rel=1e-3), kind
            if kind == "layer":                             # every row, not only on average
                assert torch.allclose(S.norm(dim=1), torch.full((len(S),), 8 ** 0.5), rtol=1e-3)
    # modality: each modality's S has mean 0 per dimension, so their means agree
    out = make(shared_norm="modality")(x, labels=y)
    assert torch.allclose(out.S_a.mean(0), out.S_t.mean(0), atol=1e-4)
    free = make(shared_norm="none")
    with torch.no_grad():
        free.shared.fc2.weight.mul_(1000.0)
    assert float(free(x, labels=y).S_a.norm(dim=1).mean()) > 100


def test_local_loss_is_on_the_global_scale():
    x, y = batch()
    mean, total = make(local_reduction="mean"), make(local_reduction="sum")
    lm, ls = float(mean(x, labels=y).terms["align_local"]), float(total(x, labels=y).terms["align_local"])
    assert ls == pytest.approx(3 * lm, rel=1e-5)                # C = 3 classes
    assert 0.5 < lm / float(mean(x, labels=y).terms["align_global"]) < 2


def test_mu_estimate_is_stable_on_a_fixed_sequence_of_batches():
    """Near-chance discriminators with small noise: eq. 8 alone flips between 0 and 1,
    the prior and the momentum keep mu within 0.2 from epoch to epoch."""
    g = torch.Generator().manual_seed(0)
    # per epoch: e_g, e_l (3 classes), error rates around chance
    epochs = [(0.5 + 0.03 * float(torch.randn(1, generator=g)),
               [0.5 + 0.03 * float(v) for v in torch.randn(3, generator=g)]) for _ in range(30)]
    literal = [dynamic_factor(e_g, e_l, error="error_rate") for e_g, e_l in epochs]
    literal = [m for m in literal if m is not None]
    assert max(abs(a - b) for a, b in zip(literal, literal[1:])) > 0.5   # the flip-flop

    model = make(mu_error="error_rate", mu_prior=0.1, mu_momentum=0.7)
    C, mus = 3, []
    for e_g, e_l in epochs:
        n = 100.0
        model._acc = torch.tensor([n, 0.0, e_g * n] + [0.0] * C + [e * n for e in e_l] + [n] * C)
        stats = model.end_epoch()
        mus.append(stats["mu_next"])
    assert max(abs(a - b) for a, b in zip(mus, mus[1:])) <= 0.2
    assert all(0.0 <= m <= 1.0 for m in mus)


def test_history_logs_the_mu_used_in_the_epoch():
    model = make(mu_error="error_rate")
    assert model.state_for_log()["mu"] == 0.5                  # used by the first epoch
    model._acc = torch.tensor([10.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0, 4.0, 4.0, 10.0, 10.0, 10.0])
    stats = model.end_epoch()
    assert "mu" not in stats and stats["mu_next"] == pytest.approx(float(model.mu))


def test_recalibrated_statistics_standardise_S_in_evaluation_mode():
    """Dropout before E_s shifts S between training and evaluation; after the trainer's
    re-estimation in evaluation mode, each modality's S has mean 0 and variance 1 there."""
    from types import SimpleNamespace

    from fdrl.training.trainer import recalibrate_norms

    g = torch.Generator().manual_seed(1)
    speech, text = torch.randn(64, 10, generator=g) + 2.0, torch.randn(64, 7, generator=g)

    class Rows:
        def batches(self, idx, batch_size):
            for i in range(0, len(idx), batch_size):
                j = torch.as_tensor(idx[i:i + batch_size])
                yield SimpleNamespace(inputs=Inputs(speech=speech[j], text=text[j]))

    model = make(dropout=0.5)
    model.train()
    for _ in range(5):                                          # running statistics under dropout
        model(Inputs(speech=speech, text=text))
    recalibrate_norms(model, Rows(), torch.arange(64).numpy(), 64, torch.device("cpu"))
    assert model.training                                       # mode restored
    model.eval()
    with torch.no_grad():
        out = model(Inputs(speech=speech, text=text))
    for S in (out.S_a, out.S_t):
        assert S.mean(0).abs().max() < 1e-4
        assert torch.allclose(S.var(0, unbiased=False), torch.ones(8), atol=3e-2)  # (n-1)/n
