"""Tests for emotion/identity disentanglement: the techniques, their weights, and the
wiring into the multitask model and FDRL."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fdrl.checkpoint import load_checkpoint, save_checkpoint
from fdrl.config import from_dict
from fdrl.errors import ConfigError
from fdrl.losses import orthogonality_loss
from fdrl.models.base import InputSpec, Inputs
from fdrl.models.fdrl import FDRLConfig, build as build_fdrl
from fdrl.models.identity import (
    IdentityConfig,
    IdentityModule,
    confusion_loss,
    parse_identity,
)

B, D_E, D_H, N_SPK = 10, 6, 8, 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def module(method: str, **overrides) -> IdentityModule:
    torch.manual_seed(0)
    cfg = IdentityConfig(method=method, hidden=7, dropout=0.0, grl_schedule="constant", **overrides)
    return IdentityModule(cfg, d_emotion=D_E, d_trunk=D_H, num_speakers=N_SPK)


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D_E, generator=g).requires_grad_(), torch.randn(B, D_H, generator=g),
            torch.arange(B) % N_SPK)


def test_parse_identity_is_strict():
    assert parse_identity(None) is None
    assert parse_identity({"method": "none"}) is None
    assert parse_identity({"method": "confusion", "weight": 0.5}).weight == 0.5
    with pytest.raises(ConfigError, match="model.identity.mode"):
        parse_identity({"mode": "adversarial"})
    with pytest.raises(ConfigError, match="model.identity.method"):
        parse_identity({"method": "adversary"})
    with pytest.raises(ConfigError, match="model.identity.method: required"):
        parse_identity({"weight": 0.5})
    assert parse_identity({"weight": 0.5}, default_method="multitask").method == "multitask"
    with pytest.raises(ConfigError, match="2 speakers"):
        IdentityModule(IdentityConfig(method="multitask"), D_E, D_H, num_speakers=1)


@pytest.mark.parametrize("method, terms", [
    ("multitask", {"identity_speaker", "identity_speaker_acc"}),
    ("adversarial", {"identity_speaker", "identity_adversarial", "identity_emotion_speaker_acc"}),
    ("confusion", {"identity_speaker", "identity_confusion_fit", "identity_confusion",
                   "identity_emotion_speaker_acc"}),
    ("orthogonality", {"identity_speaker", "identity_orthogonal", "identity_speaker_acc"}),
])
def test_each_method_logs_its_terms(method, terms):
    e, h, spk = data()
    out = module(method).losses(e, h, spk)
    assert set(out) == terms
    assert all(w == 0.0 for name, (_, w) in out.items() if name.endswith("_acc"))


def test_adversarial_reverses_the_gradient_into_the_embedding():
    m = module("adversarial", grl_lambda_max=0.7)
    e, h, spk = data()
    term, _ = m.losses(e, h, spk)["identity_adversarial"]
    (g_rev,) = torch.autograd.grad(term, e)
    e2 = e.detach().clone().requires_grad_()
    plain = torch.nn.functional.cross_entropy(m.emotion_speaker(e2), spk)
    (g_plain,) = torch.autograd.grad(plain, e2)
    assert g_plain.abs().sum() > 0
    assert torch.allclose(g_rev, -0.7 * g_plain, atol=1e-6)
    # the adversary itself still learns to identify speakers (no reversal on its weights)
    w = m.emotion_speaker.fc2.weight
    (g_w,) = torch.autograd.grad(m.losses(e, h, spk)["identity_adversarial"][0], w)
    (g_w_plain,) = torch.autograd.grad(torch.nn.functional.cross_entropy(m.emotion_speaker(e), spk), w)
    assert torch.allclose(g_w, g_w_plain, atol=1e-6)


def test_adversarial_follows_the_dann_schedule():
    m = IdentityModule(IdentityConfig(method="adversarial"), D_E, D_H, N_SPK)
    assert m.grl.lambd == 0.0 and m.state_for_log() == {"identity_grl_lambda": 0.0}
    m.set_progress(1.0)
    assert m.grl.lambd == pytest.approx(1.0, abs=1e-3)
    assert module("multitask").state_for_log() == {}


def test_confusion_loss_is_minimal_at_uniform():
    assert float(confusion_loss(torch.zeros(4, 6))) == pytest.approx(0.0, abs=1e-7)
    assert float(confusion_loss(torch.full((4, 6), 3.0))) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert float(confusion_loss(torch.randn(4, 6, generator=g))) > 0.0
    peaked = torch.zeros(1, 6)
    peaked[0, 0] = 5.0
    assert float(confusion_loss(peaked)) > float(confusion_loss(peaked / 5))


def test_confusion_trains_classifier_and_model_separately():
    m = module("confusion")
    e, h, spk = data()
    out = m.losses(e, h, spk)
    clf = list(m.emotion_speaker.parameters())
    # the confusion term moves the embedding, never the classifier
    g = torch.autograd.grad(out["identity_confusion"][0], [e, *clf], allow_unused=True)
    assert g[0] is not None and g[0].abs().sum() > 0
    assert all(x is None for x in g[1:])
    # the classifier's fit moves the classifier, never the embedding
    g = torch.autograd.grad(out["identity_confusion_fit"][0], [e, *clf], allow_unused=True)
    assert g[0] is None and all(x is not None for x in g[1:])


def test_orthogonality_term_is_the_difference_loss_and_zero_when_orthogonal():
    m = module("orthogonality")
    e, h, spk = data()
    term, w = m.losses(e, h, spk)["identity_orthogonal"]
    assert w == 1.0
    assert torch.allclose(term, orthogonality_loss(e, m.identity_embedding(h), reduction="mean"))
    # columns of a Hadamard matrix: zero-mean, mutually orthogonal, rows of equal norm
    # (the loss normalises rows, so equal row norms keep the columns orthogonal)
    H2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    H8 = torch.kron(torch.kron(H2, H2), H2)                     # (8, 8); column 0 = ones
    R, _ = torch.linalg.qr(torch.randn(3, 3))                   # a rotation within each span
    E = H8[:, 1:4] @ R                                          # (8, 3)
    Z = H8[:, 4:7] @ R.t()                                      # (8, 3), orthogonal to E's columns
    assert float(orthogonality_loss(E, Z)) == pytest.approx(0.0, abs=1e-10)
    assert float(orthogonality_loss(E, E + 0.1 * Z)) > 0.5


@pytest.mark.parametrize("method, key, private", [
    ("multitask", "speaker_weight", "speaker_head"),
    ("adversarial", "weight", "emotion_speaker"),
])
def test_zero_weight_removes_gradient_from_private_parameters(method, key, private):
    from fdrl.losses import combine

    m = module(method, **{key: 0.0})
    e, h, spk = data()
    out = m.losses(e, h, spk)
    total, named = combine({k: t for k, (t, _) in out.items()}, {k: w for k, (_, w) in out.items()})
    assert set(out) <= set(named)
    if total.requires_grad:
        total.backward()
    assert all(p.grad is None for p in getattr(m, private).parameters())


# ---------------------------------------------------------------------------------- FDRL

TINY = FDRLConfig(d=8, hidden=16, d_input=12, disc_hidden=8, front_end_channels=6, n_heads=2,
                  dropout=0.0)


def fdrl_spec(n_spk: int = 5) -> InputSpec:
    return InputSpec(num_classes=4, speech_dim=10, text_dim=7, num_speakers=n_spk)


def fdrl_batch(n: int = 6) -> Inputs:
    g = torch.Generator().manual_seed(0)
    return Inputs(speech=torch.randn(n, 10, generator=g), text=torch.randn(n, 7, generator=g))


def test_fdrl_identity_switch_adds_terms_on_the_fused_vector():
    torch.manual_seed(0)
    model = build_fdrl(replace(TINY, identity={"method": "adversarial", "weight": 0.5,
                                               "hidden": 6}), fdrl_spec())
    assert model.identity.emotion_speaker.fc1.in_features == 4 * 8   # fused = 4 tokens x d
    model.set_progress(1.0)
    assert model.state_for_log()["identity_grl_lambda"] == pytest.approx(1.0, abs=1e-3)
    y, spk = torch.arange(6) % 4, torch.arange(6) % 5
    out = model(fdrl_batch(), labels=y, speakers=spk)
    assert {"identity_speaker", "identity_adversarial", "identity_emotion_speaker_acc"} <= set(out.terms)
    out.loss.backward()
    assert all(p.grad is not None for p in model.identity.parameters())
    with pytest.raises(ValueError, match="speaker indices"):
        model(fdrl_batch(), labels=y)
    # without identity FDRL is unchanged: same total as the built-in terms
    plain = build_fdrl(replace(TINY, identity={"method": "none"}), fdrl_spec())
    assert plain.identity is None
    with pytest.raises(ConfigError, match="speakers"):
        build_fdrl(replace(TINY, identity={"method": "multitask"}), fdrl_spec(n_spk=0))


def test_fdrl_with_identity_survives_a_checkpoint(tmp_path):
    cfg = from_dict({"model": {"name": "fdrl", "d": 8, "hidden": 16, "d_input": 12,
                               "disc_hidden": 8, "n_heads": 2, "dropout": 0.0,
                               "identity": {"method": "orthogonality", "hidden": 6}}})
    torch.manual_seed(0)
    spec = fdrl_spec()
    model = build_fdrl(cfg.model, spec).eval()
    save_checkpoint(tmp_path / "ck", model, cfg, ["a", "b", "c", "d"], spec, {}, 1, {})
    loaded, meta, cfg2 = load_checkpoint(tmp_path / "ck")
    assert cfg2.model.identity["method"] == "orthogonality"
    with torch.no_grad():
        assert torch.allclose(loaded(fdrl_batch()).logits, model(fdrl_batch()).logits)
