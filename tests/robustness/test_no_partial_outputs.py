"""A failure leaves no half-written output: a failed prepare writes nothing (and keeps
an earlier manifest intact), a failed extraction leaves only complete cache shards, a
failed run keeps config.yaml + run.json and its finished folds but has no results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fdrl.cli import main
from fdrl.data.manifest import read_manifest
from fdrl.encoders.cache import SHARD_GLOB
from tests.robustness import audio_corpus, cv_args, error_line, write_wav
from tests.robustness import one_torch_thread  # noqa: F401  (autouse fixture)


def test_failed_prepare_keeps_the_previous_manifest(tmp_path, capsys):
    write_wav(tmp_path / "a.wav")
    good = tmp_path / "good.csv"
    good.write_text("utt_id,label,audio\nu1,neg,a.wav\nu2,pos,a.wav\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "manifest", str(good), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("utt_id,label,audio\nu1,neg,a.wav\nu2,,missing.wav\n")
    assert main(["prepare", "manifest", str(bad), "--out", str(out)]) == 2
    assert "2 problem(s)" in error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_extraction_leaves_only_complete_shards(tmp_path, capsys):
    bad = tmp_path / "corpus" / "wav" / "bad.wav"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"RIFF" + bytes(100))
    corpus = audio_corpus(tmp_path / "corpus", extra=[{"utt_id": "bad", "audio": str(bad)}])
    cache = tmp_path / "cache"
    args = ["features", str(corpus), "--speech", '{"name": "logmel", "n_mels": 16}', "--text", "none",
            "--cache-dir", str(cache)]
    assert main(args) == 2
    assert str(bad) in error_line(capsys.readouterr().err)
    (folder,) = cache.iterdir()
    files = sorted(p.name for p in folder.iterdir())
    assert files and all(n.startswith("shard-") and n.endswith(".npz") for n in files), files
    encoded = 0
    for shard in folder.glob(SHARD_GLOB):
        with np.load(shard) as z:  # complete: every array readable, consistent lengths
            assert len(z["keys"]) == len(z["ids"]) == len(z["pooled"])
            assert "bad" not in z["ids"].tolist()
            encoded += len(z["keys"])
    assert encoded > 0  # the work done before the bad file was kept

    # without the bad row the next extraction only encodes what was not flushed
    manifest = corpus / "manifest.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                if '"bad"' not in line))
    assert main(args) == 0
    assert f"{24 - encoded} encoded, {encoded} from cache" in capsys.readouterr().out


class _Boom(RuntimeError):
    pass


def test_failed_run_keeps_finished_folds_and_writes_no_results(tmp_path, capsys, monkeypatch):
    from fdrl.training import trainer

    corpus = audio_corpus(tmp_path / "corpus")
    real_fit, calls = trainer.Trainer.fit, []

    def fit(self, *a, **kw):  # fold 2 dies (a crash, an out-of-memory, a power cut...)
        calls.append(1)
        if len(calls) == 2:
            raise _Boom("fold 2 crashed")
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    with pytest.raises(_Boom):
        main(cv_args(tmp_path, corpus))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.json").is_file()
    assert (run_dir / "folds" / "1" / "metrics.json").is_file()
    assert not (run_dir / "folds" / "2" / "metrics.json").exists()
    assert not (run_dir / "results.json").exists() and not (run_dir / "results.md").exists()
    assert not list(run_dir.rglob(".*.tmp"))

    monkeypatch.setattr(trainer.Trainer, "fit", real_fit)
    assert main(["cv", "--resume", str(run_dir), "--quiet"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert [f["test_group"] for f in results["folds"]] == ["1", "2"]
    assert len(read_manifest(corpus)) == 24


def test_run_folder_is_never_overwritten_by_the_library(tmp_path, tiny_corpus):
    from fdrl.errors import RunError
    from fdrl.training.cv import Prepared, start_run

    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    prep = Prepared(read_manifest(tiny_corpus), None, None, {})
    from fdrl.config import load_config

    with pytest.raises(RunError, match="never overwritten"):
        start_run(load_config("demo"), prep, run_dir)
    assert (run_dir / "notes.txt").read_text() == "mine" and len(list(run_dir.iterdir())) == 1
