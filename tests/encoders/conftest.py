"""Tiny random transformers models saved to disk, loaded through the hub-id code path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

WORDS = ["the", "a", "i", "you", "love", "hate", "this", "that", "great", "sad", "okay", "no",
         "yes", "stop", "please", "table", "monday", "why", "what", "is", "it", "so", "very",
         "happy", "angry", "good", "bad", "day", "night", "home"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a 35-token word-level vocab, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(out / "vocab.txt")).save_pretrained(out)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out)
    return out


def _tiny_wav2vec2(root: Path, layer_norm: bool) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="layer" if layer_norm else "group",
                         do_stable_layer_norm=layer_norm)
    Wav2Vec2Model(cfg).save_pretrained(root)
    # as on the hub: only layer-norm models take an attention mask (wav2vec2-base does not)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=layer_norm).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_w2v_dir(tmp_path_factory) -> Path:
    """Group-norm wav2vec2 (like wav2vec2-base): no attention mask."""
    return _tiny_wav2vec2(tmp_path_factory.mktemp("tiny_w2v_group"), layer_norm=False)


@pytest.fixture(scope="session")
def tiny_w2v_ln_dir(tmp_path_factory) -> Path:
    """Layer-norm wav2vec2 (like wav2vec2-large-lv60): takes an attention mask."""
    return _tiny_wav2vec2(tmp_path_factory.mktemp("tiny_w2v_ln"), layer_norm=True)


def sine(seconds: float, freq: float = 220.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A sine with a little noise and a slow amplitude change, float32 in [-1, 1]."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.4 * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)) * np.sin(2 * np.pi * freq * t)
    return (x + rng.normal(0, 0.01, t.shape)).astype(np.float32)
