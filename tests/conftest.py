"""Shared fixtures: small generated corpora (no data files are committed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fdrl.data.manifest import write_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny test models are fastest single-threaded, and 2-core CI machines are often shared
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

CLASSES = ["ang", "hap", "neu", "sad"]
WORDS = {
    "ang": ["furious", "hate", "stop", "enough"],
    "hap": ["great", "love", "wonderful", "yes"],
    "neu": ["okay", "the", "table", "monday"],
    "sad": ["miss", "lost", "alone", "sorry"],
}


def make_tiny_corpus(root: Path, per_class_speaker: int = 3, sessions: int = 5, dim: int = 8,
                     frames: int = 12, seed: int = 0) -> Path:
    """A bimodal corpus: speech as precomputed (frames, dim) .npy, text as sentences.

    Emotion is planted in both modalities (class-dependent feature means, class
    words), speaker identity in the features too, so models can learn in a few epochs.
    """
    rng = np.random.default_rng(seed)
    feat_dir = root / "feats"
    feat_dir.mkdir(parents=True, exist_ok=True)
    class_means = rng.normal(0, 1.0, (len(CLASSES), dim))
    rows = []
    n = 0
    for s in range(1, sessions + 1):
        for g in ("F", "M"):
            spk_shift = rng.normal(0, 0.5, dim)
            for c, label in enumerate(CLASSES):
                for _ in range(per_class_speaker):
                    utt = f"Ses{s:02d}{g}_{n:04d}"
                    length = int(rng.integers(frames // 2, frames + 1))
                    x = class_means[c] + spk_shift + rng.normal(0, 0.8, (length, dim))
                    np.save(feat_dir / f"{utt}.npy", x.astype(np.float32))
                    words = list(rng.choice(WORDS[label], 2)) + list(rng.choice(WORDS["neu"], 2))
                    rng.shuffle(words)
                    rows.append({"utt_id": utt, "corpus": "tiny", "session": s,
                                 "speaker": f"Ses{s:02d}_{g}", "label": label, "audio": None,
                                 "text": " ".join(words).capitalize() + ".", "duration": None,
                                 "features": f"feats/{utt}.npy", "gender": g})
                    n += 1
    write_manifest(root, rows, CLASSES)
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache shared by the whole session (encoders run once per corpus)."""
    return tmp_path_factory.mktemp("feature_cache")


def tiny_overrides(corpus: Path, cache: Path, out: Path, **extra) -> list[str]:
    """Config overrides for a fast CV run on the tiny corpus."""
    base = {
        "data.manifest": str(corpus), "features.speech": "{name: precomputed}",
        "features.text": "{name: minilm}", "features.cache_dir": str(cache),
        "model.d": 16, "model.hidden": 32, "train.epochs": 3, "train.batch_size": 16,
        "train.patience": 0, "run.out_dir": str(out), "run.name": "tiny",
        "run.tensorboard": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
