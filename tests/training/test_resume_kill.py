"""Never lose work: a run killed at any point resumes and ends exactly where an
uninterrupted run ends (CPU); a killed feature extraction keeps its finished shards.

- The trainer resumed from the state saved after *every* epoch (a kill anywhere in
  epoch k+1, or while its state is written, leaves exactly that state on disk)
  reproduces the uninterrupted weights, history and model selection bit for bit, with
  dropout, a warm-up + cosine schedule, class weights, balanced sampling and early
  stopping all on.
- A real ``fdrl cv`` subprocess killed with SIGKILL in its second fold, then
  ``fdrl cv --resume``, gives the same results.json figures as an uninterrupted run.
- A real ``fdrl features`` subprocess killed after its first shard, then run again,
  gives the same features as an uninterrupted extraction.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fdrl.cli import main
from fdrl.config import load_config
from fdrl.data.manifest import Manifest, read_manifest, write_manifest
from fdrl.models.base import InputSpec
from fdrl.training import trainer as trainer_mod
from fdrl.training.data import FeatureData, ModalityArrays
from fdrl.training.trainer import Trainer, predict, seed_everything
from tests.conftest import tiny_overrides
from tests.robustness import one_torch_thread  # noqa: F401  (tiny models: one thread is faster)

REPO = Path(__file__).resolve().parents[2]


def _child_env() -> dict:
    # same thread count as this process: CPU reductions are bitwise reproducible per count
    n = str(torch.get_num_threads())
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "TOKENIZERS_PARALLELISM": "false"}


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the child exited (code {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------- trainer


def _random_data(n: int = 160, seed: int = 0) -> FeatureData:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = rng.normal(0, 0.6, (3, 10))
    speech = (centers[labels] + rng.normal(0, 1.0, (n, 10))).astype(np.float32)  # (N, 10)
    text = (centers[labels][:, :6] + rng.normal(0, 1.2, (n, 6))).astype(np.float32)  # (N, 6)
    classes = ["a", "b", "c"]
    rows = [{"utt_id": f"u{i}", "label": classes[y], "speaker": f"s{i % 4}", "session": i % 4}
            for i, y in enumerate(labels)]
    return FeatureData(Manifest(rows, classes), ModalityArrays(speech), ModalityArrays(text),
                       labels.astype(np.int64), np.arange(n) % 4, ["s0", "s1", "s2", "s3"])


def _fit(data, cfg, resume_path: Path):
    seed_everything(cfg.train.seed)
    from fdrl.checkpoint import build_model

    model = build_model(cfg, InputSpec(num_classes=3, speech_dim=10, text_dim=6, num_speakers=4))
    tr = Trainer(model, cfg.train, torch.device("cpu"), log_dir=resume_path.parent, progress=False)
    idx = np.arange(len(data.labels))
    result = tr.fit(data, idx[:128], idx[128:], resume_path=resume_path)
    probs = predict(model, data, idx[128:], 64, torch.device("cpu")).probs
    return result, {k: v.clone() for k, v in model.state_dict().items()}, probs


def _history(h):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in h]


def test_trainer_resumed_after_any_epoch_matches_uninterrupted(tmp_path, monkeypatch):
    cfg = load_config("demo", {"model.d": 16, "model.hidden": 32, "model.dropout": 0.3,
                               "train.epochs": 12, "train.batch_size": 16, "train.patience": 2,
                               "train.scheduler": "cosine", "train.warmup_ratio": 0.2,
                               "train.class_weighted": True, "train.balanced_sampling": True})
    data = _random_data()

    # record the resume file as it is on disk after every epoch
    snaps: list[Path] = []
    real_atomic = trainer_mod.atomic_path

    @contextlib.contextmanager
    def recording_atomic_path(path):
        with real_atomic(path) as tmp:
            yield tmp
        if Path(path).name == "resume.pt":
            snaps.append(tmp_path / f"after-epoch-{len(snaps) + 1}.pt")
            shutil.copy(path, snaps[-1])

    monkeypatch.setattr(trainer_mod, "atomic_path", recording_atomic_path)
    ref, ref_state, ref_probs = _fit(data, cfg, tmp_path / "ref" / "resume.pt")
    monkeypatch.setattr(trainer_mod, "atomic_path", real_atomic)
    assert ref.stopped_early and 3 <= len(ref.history) < cfg.train.epochs  # early stopping is exercised
    assert len(snaps) == len(ref.history)

    for k, snap in enumerate(snaps, 1):  # killed anywhere after epoch k's state was written
        run = tmp_path / f"resumed-{k}"
        run.mkdir()
        shutil.copy(snap, run / "resume.pt")
        res, state, probs = _fit(data, cfg, run / "resume.pt")
        assert _history(res.history) == _history(ref.history), f"after epoch {k}"
        assert (res.best_epoch, res.stopped_early) == (ref.best_epoch, ref.stopped_early)
        assert all(torch.equal(state[n], ref_state[n]) for n in ref_state), f"after epoch {k}"
        np.testing.assert_array_equal(probs, ref_probs)


def test_damaged_training_state_is_a_clear_error(tmp_path):
    from fdrl.errors import RunError

    cfg = load_config("demo", {"model.d": 16, "model.hidden": 32, "train.epochs": 2})
    (tmp_path / "resume.pt").write_bytes(b"\x80\x04 not a torch file")
    with pytest.raises(RunError, match="cannot resume from this training state.*delete it"):
        _fit(_random_data(), cfg, tmp_path / "resume.pt")


# ----------------------------------------------------------------------------- fdrl cv

EPOCHS = 10  # long enough to kill the child inside fold 2


def _cv_args(corpus, cache, out):
    return ["cv", "--config", "demo", "--quiet",
            *tiny_overrides(corpus, cache, out, **{"train.epochs": EPOCHS}), "cv.folds=[1, 2]"]


def _figures(run_dir: Path) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    return {"mean": {m: r[m] for m in ("war", "uar", "macro_f1", "weighted_f1")},
            "folds": [{k: f[k] for k in ("test_group", "war", "uar", "macro_f1", "best_epoch",
                                           "confusion", "n_test")} for f in r["folds"]]}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_corpus, feature_cache):
    out = tmp_path_factory.mktemp("reference")
    assert main([*_cv_args(tiny_corpus, feature_cache, out), "--run-dir", str(out / "run")]) == 0
    return out / "run"


@pytest.mark.slow
def test_cv_killed_with_sigkill_in_fold_2_resumes_to_the_same_results(tmp_path, tiny_corpus,
                                                                     feature_cache, reference_run):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fdrl", *_cv_args(tiny_corpus, feature_cache, tmp_path),
                             "--run-dir", str(run_dir)], env=_child_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = run_dir / "folds" / "2" / "history.csv"
    # fold 1 finished, fold 2 three epochs in: the kill lands in epoch 4 or its save
    _wait_for(lambda: history.is_file() and len(history.read_text().splitlines()) >= 4, proc,
              "fold 2 had run 3 epochs")
    _kill(proc)

    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.json").is_file()
    assert (run_dir / "folds" / "1" / "metrics.json").is_file()
    assert (run_dir / "folds" / "2" / "resume.pt").is_file()
    assert not (run_dir / "folds" / "2" / "metrics.json").exists()
    assert not (run_dir / "results.json").exists()

    assert main(["cv", "--resume", str(run_dir), "--quiet"]) == 0
    assert _figures(run_dir) == _figures(reference_run)
    assert not list(run_dir.rglob("resume.pt")) and not list(run_dir.rglob(".*.tmp"))


def test_run_killed_before_run_json_resumes(tmp_path, reference_run):
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    shutil.copy(reference_run / "config.yaml", run_dir / "config.yaml")  # all it had written
    assert main(["cv", "--resume", str(run_dir), "--quiet"]) == 0
    assert _figures(run_dir) == _figures(reference_run)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["config_sha256"] == json.loads((reference_run / "run.json").read_text())["config_sha256"]


def test_resume_refuses_a_changed_corpus(tmp_path, reference_run, capsys):
    run_dir = tmp_path / "changed"
    shutil.copytree(reference_run, run_dir)
    (run_dir / "results.json").unlink()
    shutil.rmtree(run_dir / "folds" / "2")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["manifest_sha256"] = "0" * 64  # as if rows had been added since the start
    (run_dir / "run.json").write_text(json.dumps(meta))
    assert main(["cv", "--resume", str(run_dir), "--quiet"]) == 2
    assert "the corpus changed since the run started" in capsys.readouterr().err
    assert not (run_dir / "results.json").exists()


# ----------------------------------------------------------------------------- fdrl features


def _wav_corpus(root: Path, n: int) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True)
    rows = []
    for i in range(n):
        t = np.arange(4000) / 16000  # 0.25 s
        x = (0.3 * np.sin(2 * np.pi * (150 + i) * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32)
        sf.write(str(root / "wav" / f"u{i:04d}.wav"), x, 16000)
        rows.append({"utt_id": f"u{i:04d}", "corpus": "w", "session": i % 2, "speaker": "a",
                     "label": "ab"[i % 2], "audio": f"wav/u{i:04d}.wav", "text": None, "duration": 0.25})
    write_manifest(root, rows, ["a", "b"])
    return root


@pytest.mark.slow
def test_feature_extraction_killed_after_a_shard_resumes_to_the_same_features(tmp_path, capsys):
    from fdrl.encoders.cache import SHARD_GLOB, extract_features
    from fdrl.encoders.registry import build_encoder

    n = 400  # shards hold 256 utterances: one is flushed, 144 remain when the kill comes
    corpus = _wav_corpus(tmp_path / "corpus", n)
    spec = '{"name": "logmel", "n_mels": 16, "n_fft": 512, "hop_length": 256}'
    killed, fresh = tmp_path / "cache-killed", tmp_path / "cache-fresh"

    def args(cache):
        return ["features", str(corpus), "--speech", spec, "--text", "none", "--cache-dir", str(cache)]

    proc = subprocess.Popen([sys.executable, "-m", "fdrl", *args(killed)], env=_child_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(killed.glob(f"*/{SHARD_GLOB}")), proc, "the first shard was written")
    _kill(proc)
    (folder,) = killed.iterdir()
    assert len(list(folder.glob(SHARD_GLOB))) == 1 and not (folder / "encoder.json").exists()

    assert main(args(killed)) == 0  # continues: only the utterances not in the shard
    assert f"{n - 256} encoded, 256 from cache" in capsys.readouterr().out
    assert main(args(fresh)) == 0  # uninterrupted
    capsys.readouterr()

    encoder = build_encoder("speech", json.loads(spec))
    manifest = read_manifest(corpus)
    a = extract_features(manifest, encoder, killed, progress=False, max_seconds=15.0)
    b = extract_features(manifest, encoder, fresh, progress=False, max_seconds=15.0)
    assert a.n_encoded == b.n_encoded == 0 and a.ids == b.ids
    np.testing.assert_array_equal(a.pooled, b.pooled)
