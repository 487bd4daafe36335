"""Prediction with a loaded bundle: inputs, errors, batches, resumable ``fdrl predict``,
single-modality bundles and bundles trained on precomputed features."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from torch import nn

import fdrl
from fdrl.checkpoint import load_checkpoint
from fdrl.cli import main
from fdrl.commands.inference import predict_manifest
from fdrl.data.manifest import read_manifest, write_manifest
from fdrl.encoders.acoustic import LogMelEncoder
from fdrl.encoders.pooling import masked_mean
from fdrl.errors import BundleError, DataError
from fdrl.inference.predict import waveform_from_array
from fdrl.models import registry
from fdrl.models.base import EmotionModel, ModelOutput
from fdrl.training.cv import prepare
from fdrl.training.trainer import predict as trainer_predict
from tests.inference import (demo_bundle, demo_config, demo_predictor, demo_root, demo_rows,
                             probs)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return demo_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return demo_predictor(tmp_path_factory)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return demo_rows(tmp_path_factory)


# ----------------------------------------------------------------------------- inputs


def test_array_input_gives_the_same_answer_as_the_file(predictor, rows):
    row = rows[3]
    from_file = predictor.predict(audio=row["audio"], text=row["text"])
    pcm, sr = sf.read(row["audio"], dtype="int16")
    assert sr == 16000
    from_int16 = predictor.predict(audio=pcm, sr=sr, text=row["text"])
    floats, _ = sf.read(row["audio"], dtype="float32")
    from_float = predictor.predict(audio=torch.from_numpy(floats), sr=sr, text=row["text"])
    stereo = predictor.predict(audio=np.stack([floats, floats], axis=1), sr=sr, text=row["text"])
    with open(row["audio"], "rb") as fh:
        from_bytes = predictor.predict(audio=fh.read(), text=row["text"])
    for other in (from_int16, from_float, stereo, from_bytes):
        np.testing.assert_allclose(probs(other, predictor.classes),
                                   probs(from_file, predictor.classes), atol=1e-6)


def test_other_sample_rates_are_resampled(predictor, rows):
    row = rows[5]
    x, sr = sf.read(row["audio"], dtype="float32")
    up = soxr.resample(x, sr, 44100, quality="HQ")
    wave = waveform_from_array(up, 44100)
    assert abs(len(wave) - len(x)) <= 1  # back at 16 kHz
    a = probs(predictor.predict(audio=up, sr=44100, text=row["text"]), predictor.classes)
    b = probs(predictor.predict(audio=x, sr=sr, text=row["text"]), predictor.classes)
    np.testing.assert_allclose(a, b, atol=0.02)  # a resampling round trip, not bit-exact


def test_bad_inputs_are_clear_errors(predictor, rows, tmp_path):
    row = rows[0]
    with pytest.raises(DataError, match=r"--text.*--asr"):
        predictor.predict(audio=row["audio"])
    with pytest.raises(DataError, match="no audio"):
        predictor.predict(text="hello")
    with pytest.raises(DataError, match="sr="):
        predictor.predict(audio=np.ones(16000, np.float32), text="hi")
    with pytest.raises(DataError, match="silent"):
        predictor.predict(audio=np.zeros(16000, np.float32), sr=16000, text="hi")
    with pytest.raises(DataError, match="NaN"):
        predictor.predict(audio=np.full(16000, np.nan, np.float32), sr=16000, text="hi")
    with pytest.raises(DataError, match="not found"):
        predictor.predict(audio=tmp_path / "missing.wav", text="hi")
    with pytest.raises(DataError, match="features"):
        predictor.predict(features=np.ones((5, 64), np.float32), text="hi")
    with pytest.raises(DataError, match="'text' must be a string"):
        predictor.predict(audio=row["audio"], text=3)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(DataError, match="corrupt.wav"):
        predictor.predict(audio=corrupt, text="hi")


def test_embeddings_on_request(predictor, rows):
    res = predictor.predict(audio=rows[0]["audio"], text=rows[0]["text"], embeddings=True)
    assert {"S_a", "S_t", "P_a", "P_t", "fused"} <= set(res["embeddings"])
    assert len(res["embeddings"]["S_a"]) == 16  # model.d of the demo config
    assert "embeddings" not in predictor.predict(audio=rows[0]["audio"], text="x")
    assert abs(sum(res["probabilities"].values()) - 1.0) < 1e-5


def test_predict_batch_skips_or_names_bad_items(predictor, rows, tmp_path):
    items = [{"utt_id": r["utt_id"], "audio": r["audio"], "text": r["text"]} for r in rows[:5]]
    items[2] = {"utt_id": "broken", "audio": str(tmp_path / "nope.wav"), "text": "x"}
    res = predictor.predict_batch(items, batch_size=2, progress=False, skip_bad=True)
    assert [r["utt_id"] for r in res] == [it["utt_id"] for it in items]
    assert "error" in res[2] and "nope.wav" in res[2]["error"]
    for i in (0, 1, 3, 4):
        single = predictor.predict(audio=items[i]["audio"], text=items[i]["text"])
        np.testing.assert_allclose(probs(res[i], predictor.classes),
                                   probs(single, predictor.classes), atol=1e-5)
    with pytest.raises(DataError, match="utterance 'broken'"):
        predictor.predict_batch(items, batch_size=2, progress=False)


# ----------------------------------------------------------------------------- CLI


def test_cli_single_prediction_prints_json(bundle, rows, capsys):
    row = rows[1]
    assert main(["predict", "--model", str(bundle), "--audio", row["audio"],
                 "--text", row["text"], "--embeddings"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] in out["probabilities"] and "fused" in out["embeddings"]
    assert main(["predict", "--model", str(bundle), "--audio", row["audio"]]) == 2
    assert "--asr" in capsys.readouterr().err


def _write_inputs(path, rows):
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps({"utt_id": r["utt_id"], "audio": r["audio"], "text": r["text"]}) + "\n")


def test_cli_batch_prediction_resumes_after_a_kill(bundle, predictor, rows, tmp_path, monkeypatch,
                                                   capsys):
    inputs, out = tmp_path / "in.jsonl", tmp_path / "preds.jsonl"
    _write_inputs(inputs, rows[:10])
    assert main(["predict", "--model", str(bundle), "--manifest", str(inputs), "--out", str(out),
                 "--batch-size", "4", "--quiet"]) == 0
    assert "10 predicted" in capsys.readouterr().err
    full = out.read_text().splitlines()
    assert [json.loads(x)["utt_id"] for x in full] == [r["utt_id"] for r in rows[:10]]

    # a kill in the middle of writing: 6 whole lines and half of the 7th are on disk
    out.write_text("\n".join(full[:6]) + "\n" + full[6][: len(full[6]) // 2])
    encoded: list[int] = []
    real_run = predictor._run
    monkeypatch.setattr(predictor, "_run", lambda items, emb: encoded.append(len(items))
                        or real_run(items, emb))
    counts = predict_manifest(predictor, inputs, out, batch_size=4, progress=False)
    assert counts == {"rows": 10, "skipped": 6, "predicted": 4, "bad": 0}
    assert sum(encoded) == 4  # only the missing rows were encoded
    again = out.read_text().splitlines()
    assert again[:6] == full[:6] and len(again) == 10
    for a, b in zip(again[6:], full[6:]):
        np.testing.assert_allclose(probs(json.loads(a), predictor.classes),
                                   probs(json.loads(b), predictor.classes), atol=1e-5)

    # lines removed from the end are recomputed; a finished file computes nothing
    out.write_text("\n".join(again[:8]) + "\n")
    encoded.clear()
    assert predict_manifest(predictor, inputs, out, batch_size=4, progress=False)["predicted"] == 2
    assert sum(encoded) == 2
    encoded.clear()
    assert predict_manifest(predictor, inputs, out, batch_size=4, progress=False)["predicted"] == 0
    assert encoded == []


def test_cli_batch_bad_rows(bundle, predictor, rows, tmp_path, capsys):
    inputs, out = tmp_path / "in.jsonl", tmp_path / "preds.jsonl"
    bad = dict(rows[3], audio=str(tmp_path / "gone.wav"))
    _write_inputs(inputs, [rows[0], rows[1], rows[2], bad, rows[4]])
    code = main(["predict", "--model", str(bundle), "--manifest", str(inputs), "--out", str(out),
                 "--batch-size", "2", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{inputs}:4" in err and rows[3]["utt_id"] in err and "gone.wav" in err
    # the rows before the bad one are kept
    assert [json.loads(x)["utt_id"] for x in out.read_text().splitlines()] == \
        [r["utt_id"] for r in rows[:3]]

    counts = predict_manifest(predictor, inputs, out, batch_size=2, skip_bad=True, progress=False)
    assert counts == {"rows": 5, "skipped": 3, "predicted": 1, "bad": 1}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[3]["utt_id"] == rows[3]["utt_id"] and "gone.wav" in lines[3]["error"]
    assert lines[4]["utt_id"] == rows[4]["utt_id"] and "label" in lines[4]


def test_cli_batch_input_errors(bundle, tmp_path, capsys):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"utt_id": "a", "text": "x"}\n{"text": "no id"}\n')
    assert main(["predict", "--model", str(bundle), "--manifest", str(inputs),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{inputs}:2" in capsys.readouterr().err
    assert main(["predict", "--model", str(bundle), "--manifest", str(inputs)]) == 2
    assert "--out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- other bundles


@dataclass
class OneModalityConfig:
    pooling: str = "mean"  # how a sequence input is pooled (masked mean)


class OneModality(EmotionModel):
    """A linear classifier on whichever single modality the data provide (test model)."""

    def __init__(self, cfg: OneModalityConfig, spec):
        super().__init__()
        self.modality = "speech" if spec.speech_dim else "text"
        self.modalities = (self.modality,)
        dim = spec.speech_dim or spec.text_dim
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, spec.num_classes)

    def forward(self, inputs, labels=None, speakers=None):
        x = inputs.speech if self.modality == "speech" else inputs.text
        mask = inputs.speech_mask if self.modality == "speech" else inputs.text_mask
        if x.dim() == 3:
            x = masked_mean(x, mask)  # (B, d)
        logits = self.head(self.norm(x))  # (B, C)
        out = ModelOutput(logits=logits, embeddings={"h": x})
        if labels is not None:
            out.loss = nn.functional.cross_entropy(logits, labels)
            out.terms = {"total": out.loss.detach()}
        return out


@pytest.fixture(scope="module")
def one_modality_model():
    registry.register("test_one_modality", OneModalityConfig)(lambda cfg, spec: OneModality(cfg, spec))
    yield "test_one_modality"
    registry._REGISTRY.pop("test_one_modality", None)


def _train(tmp_path_factory, name, **cfg):
    root, corpus = demo_root(tmp_path_factory)
    corpus = cfg.pop("corpus", corpus)
    path = demo_config(root, corpus, **cfg)
    out = root / name
    assert main(["train", "--config", str(path), "--out", str(out), "--quiet"]) == 0
    return out


def _reference(bundle):
    """The trained model's probabilities on every row, from the training features."""
    model, _, cfg = load_checkpoint(bundle)
    prep = prepare(cfg, progress=False)
    idx = np.arange(len(prep.manifest))
    return prep, trainer_predict(model, prep.data, idx, 16, torch.device("cpu"),
                                 keep_embeddings=False).probs


def test_speech_only_and_text_only_bundles(tmp_path_factory, one_modality_model, rows):
    speech = _train(tmp_path_factory, "speech_only", model=one_modality_model, model_args={},
                    text={"name": "none"})
    p = fdrl.load(speech)
    assert p.modalities == ("speech",) and not p.needs_text
    _, ref = _reference(speech)
    res = p.predict(audio=rows[2]["audio"])  # no text needed
    np.testing.assert_allclose(probs(res, p.classes), ref[2], atol=1e-5)

    # text only, with token sequences: the sequence path (padding, cache rounding)
    text = _train(tmp_path_factory, "text_only", model=one_modality_model, model_args={},
                  speech={"name": "none"}, sequences=True)
    p = fdrl.load(text)
    assert p.modalities == ("text",) and p.text_sequence
    _, ref = _reference(text)
    res = p.predict_batch([{"text": r["text"]} for r in rows[:6]], batch_size=4, progress=False)
    np.testing.assert_allclose(np.stack([probs(r, p.classes) for r in res]), ref[:6], atol=1e-5)
    with pytest.raises(DataError, match="no transcript"):
        p.predict(audio=rows[0]["audio"])


def test_precomputed_bundle_computes_its_features_from_audio(tmp_path_factory, rows):
    """A bundle trained on a log-mel dump whose labels.json names the recipe scores raw
    audio through that recipe, and matches the model on the dumped features."""
    root, _ = demo_root(tmp_path_factory)
    dump = root / "logmel_dump"
    (dump / "feats").mkdir(parents=True)
    enc = LogMelEncoder()
    dumped = []
    for r in rows:
        frames = enc.frames(waveform_from_array(*sf.read(r["audio"], dtype="float32")))
        np.save(dump / "feats" / f"{r['utt_id']}.npy", frames)
        dumped.append({**r, "audio": None, "features": f"feats/{r['utt_id']}.npy"})
    write_manifest(dump, dumped, read_manifest(root / "demo").classes,
                   extra_labels={"speech_features": enc.spec()})
    bundle = _train(tmp_path_factory, "precomputed", corpus=dump, speech={"name": "precomputed"})
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["encoders"]["speech"]["compute"] == enc.spec()
    p = fdrl.load(bundle)
    _, ref = _reference(bundle)
    for i in (0, 9):
        from_audio = p.predict(audio=rows[i]["audio"], text=rows[i]["text"])
        from_feats = p.predict(features=dump / "feats" / f"{rows[i]['utt_id']}.npy",
                               text=rows[i]["text"])
        np.testing.assert_allclose(probs(from_audio, p.classes), ref[i], atol=1e-5)
        np.testing.assert_allclose(probs(from_feats, p.classes), ref[i], atol=1e-5)

    # without the recipe the same bundle can only score features, and says how
    meta["encoders"]["speech"].pop("compute")
    meta["encoders"]["speech"]["source"] = None
    (bundle / "bundle.json").write_text(json.dumps(meta))
    p = fdrl.load(bundle)
    assert not p.accepts_audio
    with pytest.raises(BundleError, match=r"features=.*--features"):
        p.predict(audio=rows[0]["audio"], text="x")
