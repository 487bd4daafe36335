import pytest

from fdrl.encoders.acoustic import EgemapsEncoder, LogMelEncoder
from fdrl.encoders.precomputed import PrecomputedEncoder
from fdrl.encoders.registry import build_encoder, encoder_names, parse_spec
from fdrl.encoders.text import HFTextEncoder
from fdrl.errors import ConfigError


def test_names_and_none():
    assert build_encoder("speech", "none") is None and build_encoder("text", {"name": "none"}) is None
    assert {"minilm", "hf", "none"} <= set(encoder_names("text"))
    assert "minilm" not in encoder_names("speech") and "egemaps" in encoder_names("speech")
    assert isinstance(build_encoder("speech", "egemaps"), EgemapsEncoder)
    assert isinstance(build_encoder("speech", '{"name": "precomputed", "dim": 8}'), PrecomputedEncoder)


def test_spec_round_trips():
    enc = build_encoder("speech", {"name": "logmel", "n_mels": 40})
    assert isinstance(enc, LogMelEncoder) and enc.n_mels == 40
    again = build_encoder("speech", enc.spec())
    assert (again.name, again.settings()) == (enc.name, enc.settings())


def test_unknown_setting_names_the_closest():
    with pytest.raises(ConfigError, match="unknown setting 'n_mel'.*did you mean 'n_mels'"):
        build_encoder("speech", {"name": "logmel", "n_mel": 40})


def test_unknown_name_and_wrong_modality():
    with pytest.raises(ConfigError, match="unknown encoder 'egemap'.*did you mean 'egemaps'"):
        build_encoder("speech", "egemap")
    with pytest.raises(ConfigError, match="'minilm' is not a speech encoder"):
        build_encoder("speech", "minilm")
    with pytest.raises(ConfigError, match="needs 'model'"):
        build_encoder("text", {"name": "hf"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_encoder("text", "{name: minilm")
    with pytest.raises(ConfigError, match="modality"):
        build_encoder("video", "none")


def test_model_shortcuts(tiny_bert_dir):
    assert parse_spec("facebook/wav2vec2-base") == {"name": "hf", "model": "facebook/wav2vec2-base"}
    assert parse_spec({"model": "x/y"}) == {"name": "hf", "model": "x/y"}
    enc = build_encoder("text", str(tiny_bert_dir))
    assert isinstance(enc, HFTextEncoder) and enc.dim == 32
    assert build_encoder("text", enc.spec()).settings() == enc.settings()
