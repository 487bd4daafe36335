"""Tests for Foal-Net: shapes, switches and weights, the AVEL loss, the MEM sampler."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from fdrl.errors import ConfigError
from fdrl.models import registry
from fdrl.models.base import InputSpec, Inputs
from fdrl.models.foalnet import (
    FoalNet,
    FoalNetConfig,
    avel_loss,
    build,
    sample_hard_negatives,
)

TINY = FoalNetConfig(d=8, proj_dim=6, n_heads=2, n_layers=2, dropout=0.0, front_end_channels=6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spec(C: int = 4, sequence: bool = False) -> InputSpec:
    return InputSpec(num_classes=C, speech_dim=10, text_dim=7, speech_sequence=sequence,
                     text_sequence=sequence)


def pooled_batch(B: int = 8, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    return Inputs(speech=torch.randn(B, 10, generator=g), text=torch.randn(B, 7, generator=g))


def make(C: int = 4, sequence: bool = False, **overrides) -> FoalNet:
    torch.manual_seed(0)
    return build(replace(TINY, **overrides), spec(C, sequence))


def test_registered_and_builder_checks():
    entry = registry.get("foalnet")
    assert entry.config_cls is FoalNetConfig and entry.doc
    with pytest.raises(ConfigError, match="speech and text"):
        entry.build(TINY, InputSpec(num_classes=4, speech_dim=10))
    with pytest.raises(ConfigError, match="n_heads"):
        build(replace(TINY, n_heads=3), spec())
    with pytest.raises(ConfigError, match="temperature"):
        build(replace(TINY, temperature_init=2.0), spec())


def test_shapes_backward_and_inference_path():
    B, C = 8, 4
    model = make(C)
    out = model(pooled_batch(B), labels=torch.arange(B) % C)
    assert out.logits.shape == (B, C)
    assert out.embeddings["emotion"].shape == (B, 16)
    assert out.embeddings["avel_speech"].shape == (B, 6)
    assert set(out.terms) == {"task", "avel", "mem", "total"}
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert torch.allclose(out.loss, out.terms["task"] + out.terms["avel"] + 0.1 * out.terms["mem"])
    model.eval()
    with torch.no_grad():
        inf = model(pooled_batch(B))
    assert inf.loss is None and inf.terms == {} and inf.logits.shape == (B, C)


def test_sequence_inputs_ignore_padding():
    torch.manual_seed(0)
    model = make(3, sequence=True).eval()
    B = 3
    speech, smask = torch.randn(B, 20, 10), torch.ones(B, 20, dtype=torch.bool)
    smask[0, 9:] = False
    text, tmask = torch.randn(B, 6, 7), torch.ones(B, 6, dtype=torch.bool)
    tmask[0, 4:] = False
    out = model(Inputs(speech, smask, text, tmask), labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (B, 3) and torch.isfinite(out.loss)
    with torch.no_grad():
        alone = model(Inputs(speech[:1, :9], None, text[:1, :4], None))
    assert torch.allclose(alone.logits[0], out.logits[0], atol=1e-5)


def test_switches_remove_components():
    y = torch.arange(8) % 4
    off = make(use_avel=False, use_mem=False)
    assert off.proj_a is None and off.mem_head is None
    assert set(off(pooled_batch(), labels=y).terms) == {"task", "total"}
    # MEM alone: projections exist for the sampler but never receive gradient
    mem_only = make(use_avel=False)
    out = mem_only(pooled_batch(), labels=y)
    assert set(out.terms) == {"task", "mem", "total"}
    out.loss.backward()
    assert all(p.grad is None for p in mem_only.proj_a.parameters())
    assert mem_only.log_tau.grad is None
    assert all(p.grad is not None for p in mem_only.mem_head.parameters())


@pytest.mark.parametrize("weight_key, term, private", [
    ("avel_weight", "avel", "proj_a"), ("mem_weight", "mem", "mem_head")])
def test_zero_weight_drops_term_from_total_and_gradient(weight_key, term, private):
    y = torch.arange(8) % 4
    # with the other component off, the term's own parameters feed nothing else
    other = {"avel_weight": {"use_mem": False}, "mem_weight": {"use_avel": False}}[weight_key]
    model = make(**{weight_key: 0.0}, **other)
    out = model(pooled_batch(), labels=y)
    assert term in out.terms                                    # logged as a diagnostic
    assert torch.allclose(out.loss, out.terms["task"])
    out.loss.backward()
    assert all(p.grad is None for p in getattr(model, private).parameters())
    model2 = make(**{weight_key: 2.0}, **other)
    out2 = model2(pooled_batch(), labels=y)
    assert torch.allclose(out2.loss, out2.terms["task"] + 2.0 * out2.terms[term], atol=1e-5)


def test_temperature_starts_at_007_and_is_clamped():
    model = make()
    assert float(model.temperature().detach()) == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        model.log_tau.fill_(math.log(1e-4))
    assert float(model.temperature().detach()) == pytest.approx(0.01)
    with torch.no_grad():
        model.log_tau.fill_(math.log(50.0))
    assert float(model.temperature().detach()) == pytest.approx(1.0)
    fixed = make(learn_temperature=False)
    assert "log_tau" not in dict(fixed.named_parameters())


def test_avel_loss_matches_definition_and_prefers_alignment():
    torch.manual_seed(0)
    B, p = 6, 5
    za, zb = torch.randn(B, p), torch.randn(B, p)
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    tau = 0.5
    sim = torch.nn.functional.normalize(za, dim=1) @ torch.nn.functional.normalize(zb, dim=1).t() / tau
    Y = (y[:, None] == y[None, :]).float()
    Yn = Y / Y.sum(1, keepdim=True)
    ref = 0.5 * (-(Yn * sim.log_softmax(1)).sum(1).mean() - (Yn * sim.t().log_softmax(1)).sum(1).mean())
    assert torch.allclose(avel_loss(za, zb, y, tau), ref, atol=1e-6)
    unnorm = 0.5 * (-(Y * sim.log_softmax(1)).sum(1).mean() - (Y * sim.t().log_softmax(1)).sum(1).mean())
    assert torch.allclose(avel_loss(za, zb, y, tau, normalise_targets=False), unnorm, atol=1e-6)

    # aligned pairs (b_i close to a_i) score lower than pairs shuffled across samples
    B, p = 32, 16
    wins = 0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (B,), generator=g)
        za = torch.randn(B, p, generator=g)
        zb = za + 0.3 * torch.randn(B, p, generator=g)
        shuffled = zb[torch.randperm(B, generator=g)]
        wins += float(avel_loss(za, zb, y, 0.1)) < float(avel_loss(za, shuffled, y, 0.1))
    assert wins == 20


def test_sampler_never_picks_the_same_emotion():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        B = int(torch.randint(1, 12, (1,), generator=g))
        C = int(torch.randint(1, 4, (1,), generator=g))
        y = torch.randint(0, C, (B,), generator=g)
        sim = 5 * torch.randn(B, B, generator=g)
        idx, valid = sample_hard_negatives(sim, y, generator=g)
        has_other = torch.tensor([(y != y[i]).any() for i in range(B)])
        assert torch.equal(valid, has_other)
        assert (y[idx][valid] != y[valid]).all()


def test_sampler_prefers_hard_negatives():
    # anchor 0 (label 0); candidates 1..4 (label 1) with rising similarity
    y = torch.tensor([0, 1, 1, 1, 1])
    sim = torch.zeros(5, 5)
    sim[0, 1:] = torch.tensor([0.0, 0.5, 1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(4000):
        idx, _ = sample_hard_negatives(sim, y, generator=g)
        counts[idx[0]] += 1
    assert counts[0] == 0                                       # never itself / same emotion
    assert counts[1] < counts[2] < counts[3] < counts[4]        # harder = picked more often
    expected = torch.softmax(sim[0, 1:], 0) * 4000
    assert torch.allclose(counts[1:], expected, rtol=0.15)


def test_mem_without_negatives_uses_positives_only():
    model = make(use_avel=False)
    out = model(pooled_batch(), labels=torch.zeros(8, dtype=torch.long))  # one emotion only
    assert torch.isfinite(out.terms["mem"])
    out.loss.backward()
