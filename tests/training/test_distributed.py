"""``torchrun --nproc_per_node=2 -m fdrl cv`` (gloo on CPU) trains with DDP and gives the
single-process result: ``train.batch_size`` is the global batch, split over the ranks,
and DDP averages the gradients, so each step sees the same rows and the same mean
gradient. Only rank 0 writes; a user error on rank 0 stops every rank."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fdrl.cli import main
from tests.conftest import tiny_overrides
from tests.robustness import one_torch_thread  # noqa: F401  (tiny models: one thread is faster)

REPO = Path(__file__).resolve().parents[2]

# Per-sample losses only: without dropout (whose masks differ once the rows are spread
# over two processes) and without the orthogonality term (computed over the batch, not
# per row), two ranks with half batches compute exactly the single-process gradient.
EXACT = ["model.dropout=0", "model.use_orthogonality=false", "cv.folds=[1, 2]"]


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "fdrl", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _probs(run_dir: Path, fold: str) -> np.ndarray:
    lines = (run_dir / "folds" / fold / "predictions.jsonl").read_text().splitlines()
    return np.array([list(json.loads(line)["probs"].values()) for line in lines])  # (N, C)


def _history(run_dir: Path, fold: str, key: str) -> np.ndarray:
    with open(run_dir / "folds" / fold / "history.csv") as fh:
        return np.array([float(row[key]) for row in csv.DictReader(fh)])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, tiny_corpus, feature_cache):
    args = ["cv", "--config", "demo", "--quiet", *EXACT]
    single = tmp_path / "single"
    assert main([*args, *tiny_overrides(tiny_corpus, feature_cache, single)]) == 0
    proc = _torchrun(*args, *tiny_overrides(tiny_corpus, feature_cache, tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fdrl: error" not in proc.stderr
    (ddp_run,) = (tmp_path / "ddp").iterdir()  # rank 0 made one folder and told rank 1
    (single_run,) = single.iterdir()
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports

    files = sorted(str(p.relative_to(ddp_run)) for p in ddp_run.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(single_run)) for p in single_run.rglob("*") if p.is_file())
    for fold in ("1", "2"):
        np.testing.assert_allclose(_probs(ddp_run, fold), _probs(single_run, fold), atol=1e-5)
        for key in ("train_total", "train_task", "val_loss", "mu"):
            np.testing.assert_allclose(_history(ddp_run, fold, key), _history(single_run, fold, key),
                                       rtol=1e-5, err_msg=f"fold {fold} {key}")
    a = json.loads((ddp_run / "results.json").read_text())
    b = json.loads((single_run / "results.json").read_text())
    for fa, fb in zip(a["folds"], b["folds"]):
        assert abs(fa["war"] - fb["war"]) <= 1 / fa["n_test"] + 1e-9
    run_meta = json.loads((ddp_run / "run.json").read_text())  # one experiment, another out_dir
    assert run_meta["experiment_sha256"] == json.loads((single_run / "run.json").read_text())["experiment_sha256"]


@pytest.mark.slow
def test_fdrl_train_under_torchrun_writes_one_bundle(tmp_path, tiny_corpus, feature_cache):
    """Two ranks train one model; rank 0 alone writes (and reports) the bundle."""
    out = tmp_path / "bundles" / "b"
    proc = _torchrun("train", "--config", "demo", "--quiet", "--out", str(out),
                     *tiny_overrides(tiny_corpus, feature_cache, tmp_path / "runs"), "train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("bundle:") == 1
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["b"]  # no staging left
    assert (out / "bundle.json").is_file() and (out / "history.csv").is_file()


@pytest.mark.slow
def test_an_error_on_rank_0_stops_every_rank(tmp_path, tiny_corpus, feature_cache):
    proc = _torchrun("cv", "--config", "demo", "--quiet",
                     *tiny_overrides(tmp_path / "missing", feature_cache, tmp_path / "runs"), timeout=240)
    assert proc.returncode != 0
    # each rank reports the error once; torchrun may stop the second rank before it
    # prints (it terminates the others when one fails), and two ranks' lines can interleave
    n_errors = proc.stderr.count("fdrl: error: ")
    assert 1 <= n_errors <= 2, proc.stderr[-3000:]
    assert proc.stderr.count("manifest not found") >= n_errors, proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists()


def test_global_batch_is_split_over_ranks(monkeypatch):
    from fdrl.errors import ConfigError
    from fdrl.training import distributed as D

    monkeypatch.setattr(D, "world_size", lambda: 4)
    assert D.per_rank_batch(32) == 8 and D.shard_size(10) == 3
    with pytest.raises(ConfigError, match="at least the number of processes"):
        D.per_rank_batch(2)


def test_distributed_sampler_shards_cover_the_single_process_batches():
    """Step k of every rank together holds the rows of single-process step k."""
    from torch.utils.data import DistributedSampler

    from fdrl.training.distributed import _Sized

    order = np.random.default_rng(0).permutation(86)
    world, batch = 2, 16
    shards = [order[list(DistributedSampler(_Sized(86), num_replicas=world, rank=r, shuffle=False))]
              for r in range(world)]
    per_rank = batch // world
    for k in range(int(np.ceil(86 / batch))):
        together = np.concatenate([s[k * per_rank:(k + 1) * per_rank] for s in shards])
        assert sorted(together) == sorted(order[k * batch:(k + 1) * batch])


def test_cuda_device_under_torchrun_is_this_ranks_gpu(monkeypatch):
    from fdrl.training.trainer import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("switch_off", ["model.mu_fixed=0.0", "model.alpha=0", "model.gamma=0"])
def test_ddp_trains_with_heads_whose_loss_weight_is_zero(tmp_path, switch_off):
    """A head that runs in forward but whose term has weight 0 gets no gradient; DDP must
    not wait for one (a one-process gloo group has the same reducer as N processes)."""
    import torch.distributed as dist

    from fdrl.checkpoint import build_model
    from fdrl.config import load_config
    from fdrl.models.base import InputSpec
    from fdrl.training import distributed as D
    from fdrl.training.trainer import Trainer
    from tests.training.test_resume_kill import _random_data

    key, value = switch_off.split("=")
    cfg = load_config("demo", {"model.d": 16, "model.hidden": 32, "train.epochs": 2, key: float(value)})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert D.is_dist()
        model = build_model(cfg, InputSpec(num_classes=3, speech_dim=10, text_dim=6, num_speakers=4))
        trainer = Trainer(model, cfg.train, torch.device("cpu"), progress=False)
        assert isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel)
        idx = np.arange(160)
        fit = trainer.fit(_random_data(), idx[:128], idx[128:])
        assert len(fit.history) == 2 and np.isfinite(fit.history[-1]["train_total"])
    finally:
        dist.destroy_process_group()
    assert not D.is_dist()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_global_batch_norm_matches_batch_norm(tmp_path, momentum):
    """With one process the global batch is the local one: forward, gradients and
    running statistics must be BatchNorm's; sync_batch_norms keeps parameters and keys."""
    import torch.distributed as dist

    from fdrl.training import distributed as D

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6, momentum=momentum))
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6, momentum=momentum))
    net.load_state_dict(ref.state_dict())
    params = list(net.parameters())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        D.sync_batch_norms(net)
        assert isinstance(net[1], D.GlobalBatchNorm) and list(net.parameters()) == params
        assert net.state_dict().keys() == ref.state_dict().keys()
        for step in range(3):
            x = torch.randn(16, 5) * 3 + 1
            y_ref, y = ref(x), net(x)
            torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
            (y_ref ** 3).sum().backward()
            (y ** 3).sum().backward()
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(net.state_dict()[k], v, rtol=1e-5, atol=1e-6)
        net.eval(), ref.eval()
        x = torch.randn(4, 5)
        torch.testing.assert_close(net(x), ref(x))
    finally:
        dist.destroy_process_group()
