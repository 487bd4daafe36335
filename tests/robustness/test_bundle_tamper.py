"""Edited or damaged bundles: ``bundle.json`` is checked against a schema and the
weights against the model it describes before anything is built, so wrong types,
wrong or enormous sizes, class lists that do not match the outputs and NaN weights
are one-line errors naming the file and the field, never a traceback, a huge
allocation or NaN probabilities."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import fdrl
from fdrl.checkpoint import build_model, load_checkpoint, save_checkpoint
from fdrl.cli import main
from fdrl.config import load_config
from fdrl.errors import BundleError
from fdrl.models.base import InputSpec
from tests.robustness import error_line, one_torch_thread  # noqa: F401

CLASSES = ["neg", "neu", "pos"]


@pytest.fixture
def bundle(tmp_path):
    cfg = load_config(None, {"model.name": "text-only", "model.d": 8, "model.hidden": 16,
                             "model.d_input": 16, "features.speech": {"name": "none"}})
    spec = InputSpec(num_classes=3, text_dim=384)
    return save_checkpoint(tmp_path / "bundle", build_model(cfg, spec), cfg, CLASSES, spec,
                           {"speech": None, "text": {"name": "minilm"}}, epoch=1, metrics={})


def _edit(bundle, **fields):
    """Set dotted fields of bundle.json (``input__text_dim=7`` sets input.text_dim)."""
    path = bundle / "bundle.json"
    meta = json.loads(path.read_text())
    for dotted, value in fields.items():
        *parents, last = dotted.split("__")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(json.dumps(meta))


CASES = {
    # wrong types
    "input-list": ({"input": []}, "field 'input': expected an object, got []"),
    "input-null": ({"input": None}, "field 'input': expected an object, got null"),
    "config-list": ({"config": []}, "field 'config': expected an object, got []"),
    "config-model-list": ({"config__model": [1]}, "field 'config.model': expected an object or null"),
    "classes-null": ({"classes": None}, "field 'classes': expected a list of 2 to 1000 class names, got null"),
    "class-name-number": ({"classes": ["neg", 1, "pos"]}, "field 'classes[1]': expected a non-empty string"),
    "encoders-list": ({"encoders": []}, "field 'encoders': expected an object or null, got []"),
    "encoder-list": ({"encoders__text": ["minilm"]}, "field 'encoders.text': expected an object or null"),
    "num-classes-string": ({"input__num_classes": "3"}, "field 'input.num_classes': expected an integer"),
    "sequence-string": ({"input__text_sequence": "no"}, "field 'input.text_sequence': expected true or false"),
    "model-name": ({"model_name": "fdrl"}, "field 'model_name': expected the model of config.model.name"),
    "max-seconds-huge": ({"preprocessing__max_seconds": 1e308},
                         "field 'preprocessing.max_seconds': expected null or a number of seconds in (0, 3600], got 1e+308"),
    "max-seconds-text": ({"preprocessing__max_seconds": "abc"},
                         "field 'preprocessing.max_seconds': expected null or a number of seconds in (0, 3600], got \"abc\""),
    # classes and outputs
    "duplicate-class": ({"classes": ["neg", "pos", "neg"]},
                        "field 'classes': class names must be unique; \"neg\" is both classes[0] and classes[2]"),
    "fewer-classes": ({"classes": ["neg", "pos"]},
                      "field 'classes': lists 2 names but the model has 3 outputs (input.num_classes)"),
    "fewer-classes-and-outputs": ({"classes": ["neg", "pos"], "input__num_classes": 2},
                                  "tensor 'branch.classifier.1.weight' is [3, 8] in the file, the model needs [2, 8]"),
    # sizes that do not fit the weights
    "text-dim": ({"input__text_dim": 385}, "weights do not fit the model bundle.json describes: tensor"),
    "hidden": ({"config__model__hidden": 32}, "weights do not fit the model bundle.json describes: tensor"),
    "speech-dim-zero": ({"input__speech_dim": 0}, "field 'input.speech_dim': expected an integer in [1, 65536], got 0"),
    # negative and enormous sizes: refused before anything is allocated
    "d-negative": ({"config__model__d": -4}, "field 'config.model.d': expected a positive integer, got -4"),
    "d-float": ({"config__model__d": 1e9}, "field 'config.model.d': expected an integer, got 1000000000.0"),
    "d-enormous": ({"config__model__d": 10**9}, "field 'config.model.d': expected an integer of at most 65536, got 1000000000"),
    "layers-enormous": ({"config__model__front_end_layers": 10**6},
                        "field 'config.model.front_end_layers': expected an integer of at most 64"),
    "text-dim-enormous": ({"input__text_dim": 10**9}, "field 'input.text_dim': expected an integer in [1, 65536]"),
    "too-many-parameters": ({"config__model__hidden": 65536, "config__model__d_input": 65536},
                            "parameters, more than the 1,000,000,000 fdrl loads"),
    "dropout-nan": ({"config__model__dropout": float("nan")}, "field 'config.model.dropout'"),
}


@pytest.mark.parametrize("fields, words", list(CASES.values()), ids=list(CASES))
def test_tampered_bundle_json_is_a_one_line_error(bundle, capsys, fields, words):
    _edit(bundle, **fields)
    start = time.perf_counter()
    with pytest.raises(BundleError) as info:
        load_checkpoint(bundle)
    assert time.perf_counter() - start < 5  # nothing enormous was built
    msg = str(info.value)
    assert msg.startswith(f"{bundle / 'bundle.json'}: ") or msg.startswith(f"{bundle / 'model.safetensors'}: ")
    assert words in msg and "\n" not in msg
    assert main(["predict", "--model", str(bundle), "--text", "hello there"]) == 2
    assert words in error_line(capsys.readouterr().err)


def test_bundle_json_that_is_not_an_object(bundle, capsys):
    (bundle / "bundle.json").write_text("[]")
    assert main(["predict", "--model", str(bundle), "--text", "hi"]) == 2
    assert "bundle.json: expected a JSON object at the top level, got []" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_weights_are_refused_not_predicted(bundle, capsys, value):
    weights = bundle / "model.safetensors"
    state = load_file(str(weights))
    state["branch.classifier.1.weight"][0, 0] = value
    save_file(state, str(weights))
    with pytest.raises(BundleError, match=r"tensor 'branch.classifier.1.weight' holds 1 NaN/inf value"):
        fdrl.load(bundle) if hasattr(fdrl, "load") else load_checkpoint(bundle)
    assert main(["predict", "--model", str(bundle), "--text", "hello there"]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{weights}: tensor 'branch.classifier.1.weight' holds 1 NaN/inf value(s)" in line
    assert capsys.readouterr().out == ""


def test_untouched_bundle_still_loads(bundle):
    model, meta, cfg = load_checkpoint(bundle)
    assert meta["classes"] == CLASSES and cfg.model_name == "text-only"
    assert not any(p.is_meta for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
