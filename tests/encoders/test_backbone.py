import pytest
import torch

from fdrl.encoders.backbone import HFBackbone
from fdrl.errors import ConfigError

from .conftest import sine


def test_text_backbone_forward_backward_with_layer_weighting(tiny_bert_dir):
    bb = HFBackbone.from_spec("text", {"model": str(tiny_bert_dir), "layer_weighting": True})
    assert bb.out_dim == 32 and bb.weighting.n_layers == 3
    x, mask = bb.collate(["yes", "i love this great day", ""])
    assert x.dtype == torch.long and mask.dtype == torch.bool and mask.sum(1).tolist() == [3, 7, 2]
    seq, seq_mask, pooled = bb(x, mask)
    assert seq.shape == (3, 7, 32) and torch.equal(seq_mask, mask) and pooled.shape == (3, 32)
    pooled.pow(2).sum().backward()
    assert bb.weighting.logits.grad is not None
    assert bb.model.embeddings.word_embeddings.weight.grad is not None
    assert bb.spec()["layer_weighting"] is True


def test_speech_backbone_freezes_cnn_and_masks_frames(tiny_w2v_dir):
    bb = HFBackbone.from_spec("speech", {"model": str(tiny_w2v_dir), "layer_weighting": True})
    assert all(not p.requires_grad for p in bb.model.feature_extractor.parameters())
    x, mask = bb.collate([sine(0.05), sine(0.2, seed=1)])
    assert x.shape == (2, 3200) and mask.sum(1).tolist() == [800, 3200]
    seq, seq_mask, pooled = bb(x, mask)
    frames = bb.model._get_feat_extract_output_lengths(torch.tensor([800, 3200]))
    assert seq.shape[:2] == seq_mask.shape and seq_mask.sum(1).tolist() == frames.tolist()
    assert pooled.shape == (2, 16)
    pooled.sum().backward()
    assert bb.weighting.logits.grad is not None
    assert bb.model.encoder.layers[0].attention.q_proj.weight.grad is not None
    assert bb.spec()["freeze_feature_encoder"] is True


def test_freeze_base_model_leaves_only_the_weighting(tiny_w2v_dir):
    bb = HFBackbone.from_spec("speech", {"model": str(tiny_w2v_dir), "layer_weighting": True,
                                         "freeze_base_model": True})
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trainable == ["weighting.logits"]


def test_backbone_spec_errors(tiny_bert_dir):
    with pytest.raises(ConfigError, match="did you mean 'layer_weighting'"):
        HFBackbone.from_spec("text", {"model": str(tiny_bert_dir), "layer_weigting": True})
    with pytest.raises(ConfigError, match="for speech models"):
        HFBackbone.from_spec("text", {"model": str(tiny_bert_dir), "freeze_feature_encoder": True})
