"""Tests for the FDRL model: shapes, switches, the local discriminators' inputs, mu."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fdrl.errors import ConfigError
from fdrl.losses import dynamic_factor, global_alignment_loss, predictor_loss
from fdrl.models import registry
from fdrl.models.base import InputSpec, Inputs
from fdrl.models.fdrl import FDRL, FDRLConfig, FDRLOutput, build

TINY = FDRLConfig(d=8, hidden=16, d_input=12, disc_hidden=8, front_end_channels=6,
                  n_heads=2, dropout=0.0)
ALL_OFF = dict(use_global=False, use_local=False, use_modality_disc=False,
               use_orthogonality=False, use_predictor=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add overhead (and contention on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pooled_spec(C: int = 4) -> InputSpec:
    return InputSpec(num_classes=C, speech_dim=10, text_dim=7)


def pooled_batch(B: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return Inputs(speech=torch.randn(B, 10, generator=g), text=torch.randn(B, 7, generator=g))


def make(C: int = 4, **overrides) -> FDRL:
    torch.manual_seed(0)
    return build(replace(TINY, **overrides), pooled_spec(C))


def test_registered_and_builder_rejects_missing_modality():
    entry = registry.get("fdrl")
    assert entry.config_cls is FDRLConfig and entry.doc
    with pytest.raises(ConfigError, match="needs both speech and text"):
        entry.build(TINY, InputSpec(num_classes=4, speech_dim=10))
    with pytest.raises(ConfigError, match="fusion_tokens"):
        build(replace(TINY, fusion_tokens="both"), pooled_spec())
    with pytest.raises(ConfigError, match="class_weights"):
        build(replace(TINY, class_weights=[1.0, 2.0]), pooled_spec())
    with pytest.raises(ConfigError, match="n_heads"):
        build(replace(TINY, n_heads=3), pooled_spec())


def test_forward_shapes_pooled_and_inference_path():
    C, B = 4, 6
    model = make(C)
    out = model(pooled_batch(B), labels=torch.arange(B) % C)
    assert isinstance(out, FDRLOutput)
    assert out.logits.shape == (B, C)
    for name in ("S_a", "S_t", "P_a", "P_t"):
        assert getattr(out, name).shape == (B, 8) and out.embeddings[name].shape == (B, 8)
    assert out.embeddings["fused"].shape == (B, 4 * 8)
    assert out.global_logits.shape == (2 * B, 2) and out.modality_logits.shape == (2 * B, 2)
    assert out.local_logits.shape == (C, 2 * B, 2)
    assert {k: v.shape for k, v in out.predictor_logits.items()} == {
        "S": (B, C), "P_a": (B, C), "P_t": (B, C)}
    assert set(out.terms) == {"task", "predictor", "align_global", "align_local",
                              "align_global_confusion", "align_local_confusion",
                              "disparity_modality", "disparity_orthogonal", "total"}
    assert out.loss.dim() == 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        inf = model(pooled_batch(B))
    assert inf.loss is None and inf.terms == {} and inf.local_logits is None
    assert inf.logits.shape == (B, C)


def test_forward_sequence_inputs_and_padding_invariance():
    spec = InputSpec(num_classes=3, speech_dim=5, text_dim=4, speech_sequence=True,
                     text_sequence=True)
    torch.manual_seed(0)
    model = build(TINY, spec).eval()
    B = 3
    speech = torch.randn(B, 20, 5)
    smask = torch.ones(B, 20, dtype=torch.bool)
    smask[0, 11:] = False
    text = torch.randn(B, 9, 4)
    tmask = torch.ones(B, 9, dtype=torch.bool)
    tmask[1, 3:] = False
    out = model(Inputs(speech, smask, text, tmask), labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (B, 3) and out.local_logits.shape == (3, 2 * B, 2)
    out.loss.backward()
    with torch.no_grad():  # sample 0 alone, unpadded, gives the same logits
        alone = model(Inputs(speech[:1, :11], None, text[:1], None))
    assert torch.allclose(alone.logits[0], out.logits[0], atol=1e-5)


def test_local_discriminators_see_S_weighted_by_class_probabilities():
    C, B = 3, 5
    model = make(C).eval()  # no dropout; labels given -> all heads run
    seen = {}
    def hook(module, inp, output):
        seen["x"] = inp[0]                                              # returns None

    model.local_disc.register_forward_hook(hook)
    out = model(pooled_batch(B), labels=torch.arange(B) % C)
    S = torch.cat([out.S_a, out.S_t])                                   # (2B, d)
    yhat = torch.softmax(model.predictor(S), dim=-1)                    # (2B, C)
    assert seen["x"].shape == (C, 2 * B, 8)
    for c in range(C):
        assert torch.allclose(seen["x"][c], yhat[:, c:c + 1] * S, atol=1e-6)


def test_grl_reverses_alignment_gradient_and_follows_schedule():
    # adversary "loss": eq. 15 literally, G_d(GRL_lambda(S))
    model = make(use_local=False, use_modality_disc=False, use_orthogonality=False,
                 use_predictor=False, mu_fixed=0.0, adversary="loss").eval()
    assert model.grl.lambd == 0.0                         # DANN schedule starts at 0
    model.set_progress(1.0)
    assert model.grl.lambd == pytest.approx(0.99991, abs=1e-4)
    model.set_progress(0.5)
    out = model(pooled_batch(), labels=torch.arange(6) % 4)
    lg = global_alignment_loss(out.global_logits[:6], out.global_logits[6:])
    g_S = torch.cat(torch.autograd.grad(lg, [out.S_a, out.S_t]))         # (2B, d)
    # the same discriminator without the GRL
    S = torch.cat([out.S_a, out.S_t]).detach().requires_grad_()
    ref = global_alignment_loss(*model.global_disc(S).split(6))
    g_ref = torch.autograd.grad(ref, S)[0]
    assert g_ref.abs().sum() > 0
    assert torch.allclose(g_S, -model.grl.lambd * g_ref, atol=1e-6)
    model.cfg.grl_schedule = "constant"
    model.set_progress(0.0)
    assert model.grl.lambd == 1.0


def test_predictor_is_one_linear_shared_by_its_three_inputs():
    model = make()
    assert isinstance(model.predictor, torch.nn.Linear)
    out = model(pooled_batch(), labels=torch.arange(6) % 4)
    fp = out.predictor_logits
    assert torch.allclose(fp["S"], model.predictor(out.S_a + out.S_t), atol=1e-6)
    assert torch.allclose(fp["P_a"], model.predictor(out.P_a), atol=1e-6)
    assert torch.allclose(fp["P_t"], model.predictor(out.P_t), atol=1e-6)
    y = torch.arange(6) % 4
    for key, enc in (("S", model.shared), ("P_a", model.private_a), ("P_t", model.private_t)):
        loss = torch.nn.functional.cross_entropy(fp[key], y)
        g_fp, g_enc = torch.autograd.grad(loss, [model.predictor.weight, enc.fc2.weight],
                                          retain_graph=True)
        assert g_fp.abs().sum() > 0 and g_enc.abs().sum() > 0


@pytest.mark.parametrize("tokens,K", [("all", 4), ("shared", 2), ("private", 2)])
@pytest.mark.parametrize("fusion_out", ["flatten", "mean"])
def test_fusion_token_variants(tokens, K, fusion_out):
    model = make(fusion_tokens=tokens, fusion_out=fusion_out)
    out = model(pooled_batch())
    width = K * 8 if fusion_out == "flatten" else 8
    assert out.embeddings["fused"].shape == (6, width) and out.logits.shape == (6, 4)
    assert model.classifier[-1].in_features == width


def test_switched_off_components_contribute_nothing():
    model = make(**ALL_OFF)
    assert model.global_disc is None and model.local_disc is None and model.predictor is None
    out = model(pooled_batch(), labels=torch.arange(6) % 4)
    assert set(out.terms) == {"task", "total"}
    assert torch.allclose(out.loss, out.terms["task"])
    # S6: FP is still fitted (for yhat) but its loss no longer reaches the encoders
    s6 = make(use_predictor=False, use_global=False, use_modality_disc=False,
              use_orthogonality=False)
    y = torch.arange(6) % 4
    out = s6(pooled_batch(), labels=y)
    assert "predictor" in out.terms
    pl = predictor_loss(*out.predictor_logits.values(), y)
    g_fp, g_enc = torch.autograd.grad(pl, [s6.predictor.weight, s6.shared.fc2.weight],
                                      allow_unused=True)
    assert g_fp.abs().sum() > 0 and g_enc is None


def test_zero_mu_removes_local_gradient_and_one_sided_alignment():
    model = make(mu_fixed=0.0, adversary="loss")          # eq. 15 literally
    out = model(pooled_batch(), labels=torch.arange(6) % 4)
    out.loss.backward()
    assert model.local_disc.w1.grad is None               # weight alpha * mu = 0: skipped
    assert model.global_disc.fc1.weight.grad is not None
    assert model.effective_mu() == 0.0
    assert make(use_global=False).effective_mu() == 1.0   # local only: full alpha on L_l
    assert make(use_local=False).effective_mu() == 0.0


def test_only_task_still_trains_and_overfits_toy_batch():
    torch.manual_seed(0)
    C, B = 3, 12
    y = torch.arange(B) % C
    centres_a, centres_t = torch.randn(C, 10) * 3, torch.randn(C, 7) * 3
    batch = Inputs(speech=centres_a[y] + 0.1 * torch.randn(B, 10),
                   text=centres_t[y] + 0.1 * torch.randn(B, 7))
    for overrides in (ALL_OFF, {}):
        model = make(C, **overrides)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        first = None
        for step in range(30):
            model.set_progress(step / 30)
            out = model(batch, labels=y)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            first = float(out.terms["task"]) if first is None else first
        assert float(out.terms["task"]) < 0.5 * first, overrides


def test_mu_is_a_checkpointed_buffer_updated_by_end_epoch():
    C = 2
    model = make(C, mu_prior=0.0, mu_momentum=0.0)       # eq. 8 alone
    assert "mu" in model.state_dict() and float(model.state_dict()["mu"]) == 0.5
    model.train()
    model(pooled_batch(), labels=torch.tensor([0, 1, 0, 1, 0, 1]))
    model(pooled_batch(), labels=torch.tensor([0, 1, 0, 1, 0, 1]))
    assert float(model._acc[0]) == 12
    # hand-set epoch sums [n, g_loss, g_err, l_loss (C), l_wrong (C), l_weight (C)]: per-sample,
    # per-modality losses e_g = 0.1, e_l = [0.2, 0.3]
    model._acc = torch.tensor([10.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 10.0, 10.0])
    stats = model.end_epoch()
    assert stats["mu_next"] == pytest.approx(dynamic_factor(0.1, [0.2, 0.3]))
    assert float(model.mu) == pytest.approx(stats["mu_next"])
    assert stats["d_global"] == pytest.approx(1.6) and stats["d_local"] == pytest.approx(1.0)
    assert {"disc_global_error", "disc_local_loss", "mu_estimate"} <= set(stats)
    assert model._acc is None                             # accumulators reset
    # no discriminator beats chance -> mu kept
    model._acc = torch.tensor([1.0, 0.69, 0.5, 0.69, 0.69, 0.5, 0.5, 1.0, 1.0])
    assert model.end_epoch()["mu_next"] == pytest.approx(stats["mu_next"])
    # error-rate convention: e_g = 0.1, e_l = [0.4, 0.4] -> d_g = 1.6, d_l = 0.4
    model.cfg.mu_error = "error_rate"
    model._acc = torch.tensor([10.0, 9.0, 1.0, 9.0, 9.0, 4.0, 4.0, 10.0, 10.0])
    assert model.end_epoch()["mu_next"] == pytest.approx(1.6 / 2.0)
    # round trip through a state dict
    other = make(C)
    other.load_state_dict(model.state_dict())
    assert float(other.mu) == pytest.approx(0.8)
    assert model.state_for_log()["mu"] == pytest.approx(0.8)
    # an epoch with no training steps changes nothing
    assert make(C).end_epoch()["mu_next"] == 0.5


def test_mu_fixed_pins_mu_and_eval_does_not_accumulate():
    model = make(mu_fixed=0.0)
    model.eval()
    model(pooled_batch(), labels=torch.arange(6) % 4)
    assert model._acc is None
    model._acc = torch.tensor([10.0, 1.0, 0.0] + [2.0] * 4 + [0.0] * 4 + [10.0] * 4)
    assert model.end_epoch()["mu_next"] == 0.0 and float(model.mu) == 0.0


def test_many_classes_and_class_weights():
    model = make(16, class_weights=[1.0] * 15 + [5.0])
    out = model(pooled_batch(8), labels=torch.arange(8))
    assert out.local_logits.shape == (16, 16, 2)
    out.loss.backward()


def test_extra_loss_hook_joins_the_total():
    model = make(**ALL_OFF)
    model.add_extra_loss(lambda m, out, y, spk: {"extra": (out.S_a.pow(2).mean(), 2.0)})
    out = model(pooled_batch(), labels=torch.arange(6) % 4, speakers=torch.zeros(6))
    assert "extra" in out.terms
    assert torch.allclose(out.loss, out.terms["task"] + 2.0 * out.terms["extra"])
    with pytest.raises(ConfigError, match="identity"):
        build(replace(TINY, identity={"mode": "adversarial"}), pooled_spec())
