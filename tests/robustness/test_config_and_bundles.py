"""Configs and model bundles: unknown keys, wrong types, unreadable files and bundles
of another format version are one-line errors naming the key or file."""

from __future__ import annotations

import json

import pytest

from fdrl.checkpoint import FORMAT_VERSION, build_model, load_checkpoint, save_checkpoint
from fdrl.cli import main
from fdrl.config import load_config
from fdrl.errors import BundleError
from fdrl.models.base import InputSpec
from tests.robustness import FAST_CONFIG, error_line, run_fdrl, one_torch_thread  # noqa: F401


@pytest.mark.parametrize("yaml_text, words", [
    (FAST_CONFIG + "train_extra: 1\n", "unknown key 'train_extra' (did you mean 'train'?)"),
    (FAST_CONFIG.replace("patience: 0", "patience: 0, lr_rate: 0.1"),
     "unknown key 'train.lr_rate' (did you mean 'lr'?)"),
    (FAST_CONFIG.replace("epochs: 2", "epochs: ten"), "train.epochs: expected an integer, got 'ten'"),
    (FAST_CONFIG.replace("dropout: 0.0", "dropout: 0.0, alpha: 1"), "unknown key 'model.alpha'"),
    (FAST_CONFIG.replace("name: speech-only", "name: speech-onyl"),
     "unknown model 'speech-onyl' (did you mean 'speech-only'?)"),
    (FAST_CONFIG.replace("cv: {folds: [1, 2]", "cv: {folds: 1"), "cv.folds: expected list"),
    (FAST_CONFIG + "data: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping at the top level"),
], ids=["unknown-section", "unknown-key", "wrong-type", "other-models-key", "unknown-model",
        "not-a-list", "invalid-yaml", "not-a-mapping"])
def test_bad_config_file(tmp_path, capsys, yaml_text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    assert main(["cv", "--config", str(cfg), "data.manifest=x"]) == 2
    assert words in error_line(capsys.readouterr().err)


def test_invalid_yaml_first_line_names_file_line_and_problem(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(FAST_CONFIG + "data: [1, 2\n")
    assert main(["cv", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert f"{cfg}:8" in error_line(err) and "expected ','" in error_line(err)


@pytest.mark.parametrize("override, words", [
    ("train.deterministic=maybe", "train.deterministic: expected true or false, got 'maybe'"),
    ("train.select_metric=f1", "train.select_metric: expected one of ['uar', 'war', 'loss']"),
    ("train.lr", "override 'train.lr': expected key=value"),
    ("data.skip_bad=2", "data.skip_bad: expected true or false"),
])
def test_bad_override(tmp_path, capsys, override, words):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(FAST_CONFIG)
    assert main(["cv", "--config", str(cfg), override]) == 2
    assert words in error_line(capsys.readouterr().err)


def test_config_file_that_is_not_utf8_or_missing(tmp_path, capsys):
    cfg = tmp_path / "latin.yaml"
    cfg.write_bytes(FAST_CONFIG.replace("name: t", "name: caf\u00e9").encode("latin-1"))
    assert main(["cv", "--config", str(cfg)]) == 2
    assert f"{cfg}: not a UTF-8 text file" in error_line(capsys.readouterr().err)
    assert main(["cv", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file and no built-in config" in error_line(capsys.readouterr().err)


def test_command_line_mistakes_return_2_without_traceback(capsys):
    assert main(["cv", "--bogus-flag"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["cv"]) == 2
    assert "--config is required" in error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_config_error_through_a_real_subprocess(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(FAST_CONFIG.replace("patience: 0", "patience: 0, lr_rate: 0.1"))
    proc = run_fdrl("cv", "--config", str(cfg), "data.manifest=x")
    assert proc.returncode == 2
    assert "did you mean 'lr'" in error_line(proc.stderr)
    assert proc.stdout == ""


@pytest.fixture
def bundle(tmp_path):
    cfg = load_config(None, {"model.name": "text-only", "model.d": 8, "model.hidden": 16,
                             "model.d_input": 16, "features.speech": {"name": "none"}})
    spec = InputSpec(num_classes=2, text_dim=384)
    return save_checkpoint(tmp_path / "bundle", build_model(cfg, spec), cfg, ["neg", "pos"], spec,
                           {"speech": None, "text": {"name": "minilm"}}, epoch=1, metrics={})


def test_bundle_of_another_format_version(bundle, capsys):
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format version"):
        load_checkpoint(bundle)
    assert main(["predict", "--model", str(bundle), "--text", "hello there"]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(bundle / "bundle.json") in line and f"version {FORMAT_VERSION + 1}" in line
    assert f"expects {FORMAT_VERSION}" in line


def _drop_classes(b):
    meta = json.loads((b / "bundle.json").read_text())
    del meta["classes"]
    (b / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, words", [
    (lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:100]),
     "cannot read weights"),
    (lambda b: (b / "bundle.json").unlink(), "not a model bundle"),
    (lambda b: (b / "bundle.json").write_text("{half a json"), "not valid JSON"),
    (_drop_classes, "field 'classes' is missing"),
])
def test_damaged_bundle(bundle, damage, words):
    damage(bundle)
    with pytest.raises(BundleError, match=words):
        load_checkpoint(bundle)


@pytest.mark.parametrize("text, words", [
    (FAST_CONFIG.replace("features:\n", "x: &b [&a [1, *a]]\nfeatures:\n"),
     "recursive alias"),
    ("features:\n  speech: &a {name: logmel, more: [*a]}\n", "recursive alias"),
], ids=["recursive-list", "recursive-mapping"])
def test_recursive_yaml_alias_is_one_line(tmp_path, capsys, text, words):
    cfg = tmp_path / "rec.yaml"
    cfg.write_text(text)
    assert main(["cv", "--config", str(cfg), "data.manifest=x"]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(cfg) in line and words in line


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    bomb = ["features:", "  speech:", "    name: logmel",
            "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(bomb) + "\n")
    assert len(cfg.read_bytes()) < 1000
    assert main(["cv", "--config", str(cfg), "data.manifest=x"]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(cfg) in line and "expands to more than 100,000 values" in line


def test_huge_config_file_is_refused(tmp_path, capsys):
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(FAST_CONFIG + "# " + "x" * (2 << 20) + "\n")
    assert main(["cv", "--config", str(cfg), "data.manifest=x"]) == 2
    assert f"{cfg}: not a usable config: larger than 1 MiB" in error_line(capsys.readouterr().err)


def test_ordinary_yaml_aliases_still_work(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("features:\n  speech: &s {name: logmel, n_mels: 16}\n"
                   "  text: {<<: *s, name: none}\n")
    assert load_config(str(cfg)).features.speech == {"name": "logmel", "n_mels": 16}
