"""Checkpoints saved before a model key existed load as the model they were saved from."""

from __future__ import annotations

import json

import torch

from fdrl.checkpoint import build_model, load_checkpoint, save_checkpoint
from fdrl.config import load_config
from fdrl.models.base import InputSpec, Inputs
from fdrl.models.fdrl import FDRLConfig


def test_a_bundle_without_the_new_fdrl_keys_loads_as_the_legacy_model(tmp_path):
    legacy = FDRLConfig.LEGACY_DEFAULTS
    cfg = load_config("demo", ["model.d=8", "model.hidden=16", "model.d_input=12", "model.n_heads=2",
                               *(f"model.{k}={v}" for k, v in legacy.items())])
    spec = InputSpec(num_classes=4, speech_dim=10, text_dim=7)
    torch.manual_seed(0)
    model = build_model(cfg, spec).eval()
    folder = save_checkpoint(tmp_path / "old", model, cfg, ["a", "b", "c", "d"], spec,
                             {"speech": None, "text": None}, 1, {})
    meta = json.loads((folder / "bundle.json").read_text())
    for key in legacy:                                  # as written before the keys existed
        meta["config"]["model"].pop(key)
    (folder / "bundle.json").write_text(json.dumps(meta))

    loaded, _, loaded_cfg = load_checkpoint(folder)
    assert {k: getattr(loaded_cfg.model, k) for k in legacy} == legacy
    x = Inputs(speech=torch.randn(3, 10), text=torch.randn(3, 7))
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits)
