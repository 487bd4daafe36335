"""Transcription of audio that comes without text, with a tiny random Whisper built
offline (a byte-level tokenizer from a 256-symbol vocabulary, no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fdrl.cli import main
from fdrl.errors import ConfigError
from fdrl.inference.asr import Transcriber
from fdrl.inference.predict import load
from tests.inference import demo_bundle, demo_rows, probs

LETTERS = "abcdefghijklmnopqrstuvwxyz "


def make_tiny_whisper(folder) -> str:
    """Save a random 1-layer Whisper + processor to ``folder``; it can only emit letters
    (and end), at most 64 tokens."""
    from transformers import (WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # one token per byte
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    eos = "<|endoftext|>"
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=eos,
                           bos_token=eos, eos_token=eos, pad_token=eos,
                           additional_special_tokens=["<|startoftranscript|>", "<|en|>",
                                                      "<|transcribe|>", "<|notimestamps|>"])
    eos_id, sot_id = tok.convert_tokens_to_ids([eos, "<|startoftranscript|>"])
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=16, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=64,
                        pad_token_id=eos_id, bos_token_id=eos_id, eos_token_id=eos_id,
                        decoder_start_token_id=sot_id)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id = sot_id, eos_id, eos_id
    allowed = {vocab["Ġ" if c == " " else c] for c in LETTERS} | {eos_id}  # "Ġ": a space
    gen.suppress_tokens = [i for i in range(len(tok)) if i not in allowed]
    gen.begin_suppress_tokens = [eos_id]  # at least one letter
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


def test_transcriber_gives_text_for_a_batch(whisper):
    tr = Transcriber(whisper, max_new_tokens=6)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000).astype(np.float32),
             0.1 * rng.standard_normal(24000).astype(np.float32)]
    texts = tr.transcribe(waves)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert set("".join(texts)) <= set(LETTERS)
    assert tr.transcribe(waves[:1]) == texts[:1]  # deterministic, batch-independent
    assert tr.transcribe([]) == []


def test_transcriber_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Transcriber(str(tmp_path / "no_such_model"))
    with pytest.raises(ConfigError, match="speech recognition"):
        Transcriber("minilm")  # a text encoder, not ASR


def test_predictor_transcribes_missing_text(whisper, tmp_path_factory, capsys):
    bundle = demo_bundle(tmp_path_factory)
    rows = demo_rows(tmp_path_factory)
    # fdrl.load takes (bundle, device); the asr option is on fdrl.inference.predict.load
    p = load(bundle, asr=Transcriber(whisper, max_new_tokens=6))
    assert not p.needs_text
    res = p.predict(audio=rows[0]["audio"])
    assert res["transcript"] and set(res["transcript"]) <= set(LETTERS)
    same = p.predict(audio=rows[0]["audio"], text=res["transcript"])
    assert "transcript" not in same  # a given text is used as it is
    np.testing.assert_allclose(probs(res, p.classes), probs(same, p.classes), atol=1e-5)

    # a batch mixing given and missing transcripts
    items = [{"utt_id": "a", "audio": rows[1]["audio"]},
             {"utt_id": "b", "audio": rows[2]["audio"], "text": rows[2]["text"]}]
    out = p.predict_batch(items, progress=False)
    assert "transcript" in out[0] and "transcript" not in out[1]

    # the CLI: --asr with a folder
    capsys.readouterr()
    assert main(["predict", "--model", str(bundle), "--audio", rows[3]["audio"],
                 "--asr", whisper]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["transcript"] and printed["label"] in p.classes
