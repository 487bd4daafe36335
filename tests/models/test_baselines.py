"""Tests for the baselines: unimodal, concat, late fusion, multitask, MISA."""

from __future__ import annotations

import pytest
import torch

from fdrl.config import build_dataclass
from fdrl.errors import ConfigError
from fdrl.models import registry
from fdrl.models.base import InputSpec, Inputs
from fdrl.models.baselines import MISA, LateFusion, cmd

SMALL = dict(d=8, hidden=12, d_input=10, dropout=0.0, front_end_channels=6)
NAMES = ("speech-only", "text-only", "concat", "late-fusion", "misa", "multitask")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name: str, spec: InputSpec | None = None, **overrides):
    torch.manual_seed(0)
    entry = registry.get(name)
    extra = {"n_heads": 2} if name == "misa" else {}
    cfg = build_dataclass(entry.config_cls, {**SMALL, **extra, **overrides}, "model")
    return entry.build(cfg, spec or InputSpec(num_classes=4, speech_dim=9, text_dim=7,
                                              num_speakers=5))


def batch(B: int = 8, speech: bool = True, text: bool = True, seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    return Inputs(speech=torch.randn(B, 9, generator=g) if speech else None,
                  text=torch.randn(B, 7, generator=g) if text else None)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_backward_and_no_loss_without_labels(name):
    B = 8
    model = make(name)
    out = model(batch(B), labels=torch.arange(B) % 4, speakers=torch.arange(B) % 5)
    assert out.logits.shape == (B, 4) and out.loss.dim() == 0
    assert out.embeddings["emotion"].shape[0] == B
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters()), name
    model.eval()
    with torch.no_grad():
        inf = model(batch(B))
    assert inf.loss is None and inf.terms == {}


@pytest.mark.parametrize("name, keep", [("speech-only", "speech"), ("text-only", "text")])
def test_unimodal_reads_only_its_modality(name, keep):
    model = make(name).eval()
    assert model.modalities == (keep,)
    x = batch()
    other = "text" if keep == "speech" else "speech"
    alone = Inputs(**{keep: getattr(x, keep)})
    assert torch.allclose(model(x).logits, model(alone).logits)
    # works when the data have no other modality at all
    spec = InputSpec(num_classes=4, **{f"{keep}_dim": 9 if keep == "speech" else 7})
    solo = make(name, spec)
    assert solo(alone, labels=torch.arange(8) % 4).loss.dim() == 0
    with pytest.raises(ConfigError, match=f"reads {keep}"):
        make(name, InputSpec(num_classes=4, **{f"{other}_dim": 5}))


def test_bimodal_baselines_need_both_modalities():
    for name in ("concat", "late-fusion", "misa", "multitask"):
        with pytest.raises(ConfigError, match="reads text"):
            make(name, InputSpec(num_classes=4, speech_dim=9, num_speakers=5))


def test_late_fusion_averages_probabilities_and_trains_each_branch():
    model = make("late-fusion").eval()
    assert isinstance(model, LateFusion)
    x, y = batch(), torch.arange(8) % 4
    out = model(x, labels=y)
    probs = [torch.softmax(model.branches[m](x)[1], -1) for m in ("speech", "text")]
    assert torch.allclose(torch.softmax(out.logits, -1), (probs[0] + probs[1]) / 2, atol=1e-6)
    assert torch.allclose(out.loss, (out.terms["ce_speech"] + out.terms["ce_text"]) / 2)
    assert "task" in out.terms  # diagnostic only


def test_misa_terms_and_weights():
    y = torch.arange(8) % 4
    model = make("misa")
    assert isinstance(model, MISA)
    out = model(batch(), labels=y)
    assert set(out.terms) == {"task", "misa_sim", "misa_diff", "misa_recon", "total"}
    expect = out.terms["task"] + out.terms["misa_sim"] + 0.3 * out.terms["misa_diff"] + out.terms["misa_recon"]
    assert torch.allclose(out.loss, expect, atol=1e-5)
    # recon weight 0: no decoder, no term; sim weight 0: logged, not trained
    model0 = make("misa", recon_weight=0.0, sim_weight=0.0, diff_weight=0.0)
    assert model0.decoder is None
    out0 = model0(batch(), labels=y)
    assert "misa_recon" not in out0.terms and "misa_sim" in out0.terms
    assert torch.allclose(out0.loss, out0.terms["task"])
    with pytest.raises(ConfigError, match="n_heads"):
        make("misa", n_heads=3)


def test_cmd_is_zero_for_equal_samples_and_grows_with_shift():
    torch.manual_seed(0)
    x = torch.rand(64, 5)
    assert float(cmd(x, x.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(cmd(x, x + 0.1)) < float(cmd(x, x + 0.3))
    y = torch.rand(64, 5) ** 3                                  # other shape, similar range
    assert float(cmd(x, y, n_moments=5)) > float(cmd(x, y, n_moments=1))


def test_multitask_defaults_and_identity_switch():
    model = make("multitask")
    assert model.identity is not None and model.identity.method == "multitask"
    out = model(batch(), labels=torch.arange(8) % 4, speakers=torch.arange(8) % 5)
    assert "identity_speaker" in out.terms and "identity" in out.embeddings
    plain = make("multitask", identity={"method": "none"})
    assert plain.identity is None and make("multitask", identity=None).identity is None
    # a mapping without a method (e.g. model.identity.weight=0.5) keeps the multitask default
    assert make("multitask", identity={"weight": 0.5}).identity.method == "multitask"
    with pytest.raises(ConfigError, match="model.identity.methd"):
        make("multitask", identity={"methd": "adversarial"})
    with pytest.raises(ValueError, match="speaker indices"):
        model(batch(), labels=torch.arange(8) % 4)
