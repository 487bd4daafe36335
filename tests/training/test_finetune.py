"""End-to-end fine-tuning (the paper's setting) on tiny random transformers models."""

from __future__ import annotations

import json

import pytest
import torch

from fdrl.config import load_config
from fdrl.training.cv import prepare, run_cv
from tests.encoders.conftest import WORDS, _tiny_wav2vec2


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    bert = tmp_path_factory.mktemp("ft_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(bert / "vocab.txt")).save_pretrained(bert)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(bert)
    w2v = _tiny_wav2vec2(tmp_path_factory.mktemp("ft_w2v"), layer_norm=False)
    return w2v, bert


@pytest.fixture(scope="module")
def small_audio_corpus(tmp_path_factory):
    from fdrl.data.demo import generate_demo

    out = generate_demo(tmp_path_factory.mktemp("ft_demo"), n_utterances=40)
    return out.parent if out.is_file() else out


def test_cv_fine_tunes_fresh_backbones_per_fold(tmp_path, tiny_models, small_audio_corpus):
    w2v, bert = tiny_models
    cfg = load_config("iemocap_paper", [
        f"data.manifest={small_audio_corpus}", "data.max_seconds=1.0",
        f"features.speech={{name: hf, model: {w2v}}}", f"features.text={{name: hf, model: {bert}}}",
        "model.d=16", "model.hidden=16", "model.d_input=16", "train.epochs=1", "train.batch_size=8",
        "train.device=cpu", "train.lr=1e-3", "train.encoder_lr=1e-3", "cv.folds=[1, 2]",
        f"run.out_dir={tmp_path}", "run.tensorboard=false"])
    prep = prepare(cfg, progress=False)
    assert prep.backbones and prep.data.speech is None  # raw inputs, no cached features
    a, b = prep.fresh_spec(), prep.fresh_spec()
    assert a.speech_backbone is not b.speech_backbone  # every fold starts from the checkpoint
    pretrained = {k: v.clone() for k, v in a.text_backbone.state_dict().items()}

    run_dir, results = run_cv(cfg, prep=prep, progress=False)
    assert results["n_folds"] == 2
    bundle = json.loads((run_dir / "folds" / "1" / "model" / "bundle.json").read_text())
    assert bundle["encoders"]["speech"]["finetune"] is True
    from safetensors.torch import load_file

    tuned = load_file(str(run_dir / "folds" / "1" / "model" / "model.safetensors"))
    key = next(k for k in tuned if k.endswith("encoder.layer.0.attention.self.query.weight")
               and "text" in k)
    ref = pretrained[key.split("backbone.", 1)[1]]
    assert not torch.allclose(tuned[key], ref), "the text backbone was not fine-tuned"
