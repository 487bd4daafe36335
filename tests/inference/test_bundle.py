"""Model bundles: ``fdrl train`` writes one, ``fdrl export`` copies a CV fold into one,
and a loaded bundle predicts what the trained model predicts."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

import fdrl
from fdrl.checkpoint import load_checkpoint
from fdrl.cli import main
from fdrl.data.manifest import read_manifest
from fdrl.errors import BundleError
from fdrl.inference.bundle import read_bundle
from fdrl.training.cv import prepare
from fdrl.training.trainer import predict as trainer_predict
from tests.conftest import tiny_overrides
from tests.inference import demo_bundle, demo_predictor, demo_root, probs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return demo_bundle(tmp_path_factory)


def test_train_writes_a_self_describing_bundle(bundle):
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "history.csv",
                                                        "model.safetensors"]
    assert not [p for p in bundle.parent.iterdir() if ".partial-" in p.name]  # staging removed
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model_name"] == "fdrl" and meta["fdrl_version"] == fdrl.__version__
    assert meta["classes"] == ["angry", "happy", "neutral", "sad"]
    assert meta["encoders"]["speech"]["name"] == "logmel"
    assert meta["encoders"]["speech"]["n_mels"] == 64
    assert meta["encoders"]["text"]["name"] == "minilm"
    assert meta["preprocessing"] == {"sample_rate": 16000, "max_seconds": 15.0}
    assert meta["config"]["features"]["speech"] == {"name": "logmel"}
    trained = meta["trained_on"]
    assert trained["n_utterances"] == 40 and trained["n_train"] + trained["n_val"] == 40
    assert trained["n_val"] == 4  # cv.val_fraction 0.1 of all 40 rows
    assert 0.0 <= meta["metrics"]["val"]["uar"] <= 1.0
    with open(bundle / "history.csv") as fh:
        history = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert 1 <= meta["epoch"] <= 2


def test_bundle_predicts_what_the_trained_model_predicts(bundle, tmp_path_factory):
    """Audio + text through the bundle == the training pipeline's features through the
    checkpointed model (the trainer's own predict on the same rows)."""
    model, meta, cfg = load_checkpoint(bundle)
    prep = prepare(cfg, progress=False)  # the features training used (from the cache)
    idx = np.arange(len(prep.manifest))
    ref = trainer_predict(model, prep.data, idx, 16, torch.device("cpu"), keep_embeddings=False)
    predictor = demo_predictor(tmp_path_factory)
    rows = prep.manifest.rows
    items = [{"utt_id": r["utt_id"], "audio": str(prep.manifest.resolve(r["audio"])),
              "text": r["text"]} for r in rows]
    batch = predictor.predict_batch(items, batch_size=16, progress=False)
    got = np.stack([probs(r, predictor.classes) for r in batch])  # (40, 4)
    np.testing.assert_allclose(got, ref.probs, atol=1e-5)
    assert [r["utt_id"] for r in batch] == [r["utt_id"] for r in rows]
    for i in (0, 17):  # single calls agree too
        one = predictor.predict(audio=items[i]["audio"], text=items[i]["text"])
        np.testing.assert_allclose(probs(one, predictor.classes), ref.probs[i], atol=1e-5)
        assert one["label"] == predictor.classes[int(ref.probs[i].argmax())]


def test_train_never_overwrites_a_folder(bundle, tmp_path_factory, capsys):
    root, corpus = demo_root(tmp_path_factory)
    target = root / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    cfg = next(root.glob("config-*.yaml"))
    assert main(["train", "--config", str(cfg), "--out", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "never overwritten" in err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, tiny_corpus, feature_cache):
    out = tmp_path_factory.mktemp("cv_runs")
    assert main(["cv", "--config", "demo", "--quiet",
                 *tiny_overrides(tiny_corpus, feature_cache, out), "cv.folds=[2]"]) == 0
    (run_dir,) = list(out.iterdir())
    return run_dir


def test_export_copies_a_fold_into_a_standalone_bundle(cv_run, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(cv_run), "--fold", "2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "history.csv",
                                                     "model.safetensors"]
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["exported_from"]["fold"] == "2" and meta["test_group"] == "2"
    assert meta["encoders"]["speech"]["name"] == "precomputed"
    src = cv_run / "folds" / "2" / "model" / "model.safetensors"
    assert (out / "model.safetensors").read_bytes() == src.read_bytes()

    # the tiny corpus has precomputed features and no recipe: features in, same answers
    predictor = fdrl.load(out)
    manifest = read_manifest(tiny_corpus)
    by_id = {r["utt_id"]: r for r in manifest.rows}
    lines = [json.loads(x) for x in (cv_run / "folds/2/predictions.jsonl").read_text().splitlines()]
    for line in lines[:6]:
        row = by_id[line["utt_id"]]
        res = predictor.predict(features=str(manifest.resolve(row["features"])), text=row["text"])
        np.testing.assert_allclose(probs(res, predictor.classes),
                                   [line["probs"][c] for c in predictor.classes], atol=1e-5)
        assert res["label"] == line["pred"]
    with pytest.raises(BundleError, match="features="):
        predictor.predict(audio=np.ones(16000, np.float32), sr=16000, text="hello")

    # never overwritten; an unknown fold lists the available ones
    assert main(["export", str(cv_run), "--fold", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(cv_run), "--fold", "7", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no finished fold '7'" in err and "2" in err
    assert not (tmp_path / "x").exists()
    assert main(["export", str(cv_run), "--fold", "../2", "--out", str(tmp_path / "y")]) == 2
    assert "not a path" in capsys.readouterr().err


def test_export_refuses_an_unfinished_fold(cv_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cv_run, run)
    (run / "folds" / "2" / "metrics.json").unlink()
    assert main(["export", str(run), "--fold", "2", "--out", str(tmp_path / "b")]) == 2
    assert "not finished" in capsys.readouterr().err


def test_read_bundle_errors_are_clear(bundle, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        read_bundle(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="not a model bundle"):
        read_bundle(empty)
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    meta["format_version"] = 99
    (old / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format version 99"):
        fdrl.load(old)
    meta["format_version"] = 1
    meta["encoders"] = {"speech": None, "text": None}
    (old / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="encoders"):
        fdrl.load(old)
    meta["encoders"] = {"speech": {"name": "logmel", "n_mels": "many"}, "text": None}
    (old / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="speech encoder"):
        fdrl.load(old)


def test_encoders_are_rebuilt_from_their_recorded_specs():
    from fdrl.encoders.acoustic import EgemapsEncoder, LogMelEncoder
    from fdrl.inference.bundle import rebuild_encoder

    # eGeMAPS records descriptive settings its constructor does not take
    spec = EgemapsEncoder().spec()
    assert rebuild_encoder("speech", spec).spec() == spec
    spec = LogMelEncoder(n_mels=40).spec()
    assert rebuild_encoder("speech", spec).spec() == spec
    assert rebuild_encoder("text", None) is None
    assert rebuild_encoder("text", {"name": "none"}) is None
    # a recorded setting this version would compute differently is refused
    with pytest.raises(BundleError, match="feature_set"):
        rebuild_encoder("speech", {**EgemapsEncoder().spec(), "feature_set": "ComParE_2016"})
    with pytest.raises(BundleError, match="cannot rebuild"):
        rebuild_encoder("speech", {"name": "wav2vec9"})
