"""Shared, built-once fixtures for the inference tests.

Training a bundle takes seconds, so one demo bundle (log-mel + MiniLM, trained with
``fdrl train`` through the CLI on a generated 40-utterance demo corpus) and one
loaded predictor serve every test module of the session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from fdrl.cli import main

_CACHE: dict[str, object] = {}


def demo_config(root: Path, corpus: Path, model: str = "fdrl", model_args: dict | None = None,
                **features) -> Path:
    """A tiny, fast config for the demo corpus: log-mel speech + MiniLM text, 2 epochs.

    ``features`` override keys of the features section (e.g. ``text={"name": "none"}``).
    """
    cfg = {
        "data": {"manifest": str(corpus)},
        "features": {"speech": {"name": "logmel"}, "text": {"name": "minilm"},
                     "cache_dir": str(root / "cache"), **features},
        "model": {"name": model, **({"d": 16, "hidden": 32} if model_args is None else model_args)},
        "train": {"epochs": 2, "batch_size": 16, "patience": 0, "seed": 0},
        "run": {"name": "demo", "tensorboard": False},
    }
    path = root / f"config-{len(list(root.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def demo_root(tmp_path_factory) -> tuple[Path, Path]:
    """(session folder, demo corpus folder): a 40-utterance generated corpus."""
    if "root" not in _CACHE:
        from fdrl.data.demo import generate_demo

        root = tmp_path_factory.mktemp("inference")
        generate_demo(root / "demo", n_utterances=40)
        _CACHE["root"] = root
    root = _CACHE["root"]
    return root, root / "demo"


def demo_bundle(tmp_path_factory) -> Path:
    """The session's demo bundle, trained once with ``fdrl train``."""
    if "bundle" not in _CACHE:
        root, corpus = demo_root(tmp_path_factory)
        cfg = demo_config(root, corpus)
        out = root / "bundle"
        assert main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
        _CACHE["bundle"] = out
    return _CACHE["bundle"]


def demo_predictor(tmp_path_factory):
    """The demo bundle loaded once (encoders and model)."""
    if "predictor" not in _CACHE:
        import fdrl

        _CACHE["predictor"] = fdrl.load(demo_bundle(tmp_path_factory))
    return _CACHE["predictor"]


def demo_rows(tmp_path_factory) -> list[dict]:
    """The demo manifest rows with absolute audio paths."""
    from fdrl.data.manifest import read_manifest

    _, corpus = demo_root(tmp_path_factory)
    m = read_manifest(corpus)
    return [{**r, "audio": str(m.resolve(r["audio"]))} for r in m.rows]


def probs(result: dict, classes: list[str]) -> np.ndarray:
    return np.array([result["probabilities"][c] for c in classes])
