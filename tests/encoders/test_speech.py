import numpy as np
import pytest
import torch

from fdrl.encoders.speech import HFSpeechEncoder, prepare_waveforms, receptive_field

from .conftest import sine


def test_receptive_field_of_wav2vec2_conv_stack_is_400():
    assert receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == 400
    assert receptive_field((10, 3), (5, 2)) == 20


def test_prepare_waveforms_normalises_real_samples_only():
    short, long = sine(0.01), sine(0.05, seed=1)
    values, lengths = prepare_waveforms([short, long], normalize=True, min_samples=200)
    assert values.shape == (2, 800) and lengths.tolist() == [200, 800]
    # the short one was normalised before its padding: its first 160 samples have mean 0, std 1
    x = values[0, :160].numpy()
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3
    assert torch.equal(values[0, 200:], torch.zeros(600))
    _, lengths = prepare_waveforms([long], normalize=False, max_samples=100)
    assert lengths.tolist() == [100]


def test_group_norm_model_frame_mask_from_lengths(tiny_w2v_dir):
    enc = HFSpeechEncoder(str(tiny_w2v_dir))
    assert not enc.use_attention_mask and enc.min_samples == 20 and enc.dim == 16
    waves = [sine(0.05), sine(0.2, seed=1), np.zeros(10, np.float32) + 0.1]
    out = enc.encode(waves, sequences=True)
    expected = [int(enc.model._get_feat_extract_output_lengths(max(len(w), 20))) for w in waves]
    assert [o.sequence.shape[0] for o in out] == expected
    for o in out:
        np.testing.assert_allclose(o.pooled, o.sequence.mean(0), atol=1e-5)


def test_attention_mask_model_ignores_padding(tiny_w2v_ln_dir):
    enc = HFSpeechEncoder(str(tiny_w2v_ln_dir), batch_size=4)
    assert enc.use_attention_mask
    waves = [sine(0.05), sine(0.3, seed=1)]
    together = enc.encode(waves)
    alone = [enc.encode([w])[0] for w in waves]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.pooled, b.pooled, atol=1e-4)


def test_max_seconds_crops(tiny_w2v_dir):
    enc = HFSpeechEncoder(str(tiny_w2v_dir), max_seconds=0.1)
    out = enc.encode([sine(0.5)], sequences=True)[0]
    assert out.sequence.shape[0] == int(enc.model._get_feat_extract_output_lengths(1600))
    assert enc.settings() == {"model": str(tiny_w2v_dir.resolve()), "layer": -1, "max_seconds": 0.1}


def test_not_a_speech_model(tiny_bert_dir):
    from fdrl.errors import ConfigError

    with pytest.raises(ConfigError):
        HFSpeechEncoder(str(tiny_bert_dir))
