"""Fit, evaluate, checkpoint and resume one model on one train/validation split.

Model selection uses the validation indices only; the test data never reach
:meth:`Trainer.fit`. After every epoch the full training state (weights,
optimiser, scheduler, every rank's RNG states, best weights, early-stopping counter,
history) is written atomically to ``resume_path`` so a run killed at any point
continues from the last finished epoch and ends with the same result as an
uninterrupted one (bit for bit on CPU): the epoch order is a permutation seeded by
(seed, epoch), and everything else that draws random numbers (dropout) continues
from the restored generator states.

Under ``torchrun`` the model is wrapped in DistributedDataParallel; ``batch_size``
is the global batch (see :mod:`fdrl.training.distributed`).
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fdrl import metrics
from fdrl.checkpoint import torch_save
from fdrl.config import TrainConfig
from fdrl.errors import ConfigError, RunError
from fdrl.models.base import EmotionModel, ModelOutput
from fdrl.training import distributed as D
from fdrl.training.data import FeatureData
from fdrl.utils.io import atomic_path

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """``train.device`` -> a torch device; under torchrun "auto"/"cuda" mean this rank's
    GPU (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        return torch.device("cuda", D.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' requested but CUDA is not available")
    if name == "cuda":
        return torch.device("cuda", D.local_rank())
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a device; expected auto, cpu, cuda "
                          f"or cuda:N") from None


def rng_state(device: torch.device) -> dict:
    """Python, numpy and torch generator states (and CUDA's when training on a GPU), in
    types ``torch.load(weights_only=True)`` accepts: numpy's key array as a tensor."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss,
                         cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def class_weights_for(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    return torch.tensor(w / max(w[w > 0].mean(), 1e-12), dtype=torch.float32)


@dataclass
class Predictions:
    """Model outputs on a set of rows, in the order of ``index``."""

    index: np.ndarray                 # (N,) manifest row indices
    probs: np.ndarray                 # (N, C)
    labels: np.ndarray                # (N,)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N, d)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def loss(self) -> float:
        p = np.clip(self.probs[np.arange(len(self.labels)), self.labels], 1e-12, 1.0)
        return float(-np.log(p).mean())


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict]
    stopped_early: bool


class LossOnly(torch.nn.Module):
    """What DDP wraps: the model's forward with only the loss attached to the graph.

    With ``find_unused_parameters=True`` DDP looks for the parameters that will get a
    gradient by walking the autograd graph back from the *outputs* of ``forward``. A
    model's output also holds heads whose loss weight is 0 at this step (an ablation's
    switched-off term, FDRL's local discriminators when mu is 0); DDP would count
    those as used and wait for gradients that never come. Returning the loss and
    detached logits/terms makes the walk start from the loss alone.
    """

    def __init__(self, module: EmotionModel):
        super().__init__()
        self.module = module

    def forward(self, inputs, labels=None, speakers=None) -> ModelOutput:
        out = self.module(inputs, labels=labels, speakers=speakers)
        return ModelOutput(logits=out.logits.detach(), loss=out.loss,
                           terms={k: v.detach() if torch.is_tensor(v) else v for k, v in out.terms.items()})


def _unwrap(model) -> EmotionModel:
    """The EmotionModel inside DDP(LossOnly(model)), or the model itself."""
    while isinstance(model, (LossOnly, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


@torch.no_grad()
def predict(model, data: FeatureData, indices, batch_size: int, device: torch.device,
            keep_embeddings: bool = True) -> Predictions:
    """Run ``model`` on ``indices`` (sharded over ranks when distributed, then gathered)."""
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    indices = np.asarray(indices, dtype=np.int64)
    shard = indices[D.rank()::D.world_size()]
    idx_parts, prob_parts, emb_parts = [], [], {}
    for batch in data.batches(shard, batch_size):
        out = net(batch.inputs.to(device))
        idx_parts.append(batch.index)
        prob_parts.append(torch.softmax(out.logits.float(), dim=-1).cpu().numpy())
        if keep_embeddings:
            for k, v in out.embeddings.items():
                emb_parts.setdefault(k, []).append(v.detach().float().cpu().numpy())
    net.train(was_training)
    c = data.num_classes
    local = (
        np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64),
        np.concatenate(prob_parts) if prob_parts else np.zeros((0, c), np.float32),
        {k: np.concatenate(v) for k, v in emb_parts.items()},
    )
    parts = D.all_gather_objects(local)
    index = np.concatenate([p[0] for p in parts])
    probs = np.concatenate([p[1] for p in parts])
    keys = parts[0][2].keys()
    emb = {k: np.concatenate([p[2][k] for p in parts]) for k in keys}
    lookup = {int(i): n for n, i in enumerate(index)}
    final = np.array([lookup[int(i)] for i in indices], dtype=np.int64)  # the caller's order
    return Predictions(index=index[final], probs=probs[final], labels=data.labels[index[final]],
                       embeddings={k: v[final] for k, v in emb.items()})


def _mean_over_ranks(sums: dict[str, float], n_steps: int) -> dict[str, float]:
    """Per-step means of the summed loss terms, averaged over ranks when distributed."""
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(n_steps)], dtype=torch.float64)  # (K + 1,)
    D.all_reduce_sum_(t)
    return {k: float(t[i]) / max(1.0, float(t[-1])) for i, k in enumerate(keys)}


@torch.no_grad()
def recalibrate_norms(model: EmotionModel, data: FeatureData, train_idx: np.ndarray,
                      batch_size: int, device: torch.device, max_rows: int = 2048) -> None:
    """Set the running statistics of ``model.calibration_norms()`` to the exact mean and
    (unbiased) variance of their inputs with the model in evaluation mode (dropout off)
    on up to ``max_rows`` training rows (every k-th row: deterministic, no random draw).
    Every rank computes the same figures locally, so a distributed run and a single
    process end with identical statistics."""
    norms = model.calibration_norms()
    if not norms or len(train_idx) == 0:
        return
    seen: list[list[torch.Tensor]] = [[] for _ in norms]
    hooks = [bn.register_forward_pre_hook(
        lambda module, args, i=i: seen[i].append(args[0].detach().float()))
        for i, bn in enumerate(norms)]
    was_training = model.training
    model.eval()
    try:
        rows = np.sort(train_idx)[::max(1, math.ceil(len(train_idx) / max_rows))]
        for batch in data.batches(rows, batch_size):
            model(batch.inputs.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for bn, xs in zip(norms, seen):
        x = torch.cat(xs)                                       # (N, d)
        if len(x) >= 2:
            bn.running_mean.copy_(x.mean(0).to(bn.running_mean.dtype))
            bn.running_var.copy_(x.var(0, unbiased=True).to(bn.running_var.dtype))


def term_gradient_norms(out: ModelOutput, params: list[torch.nn.Parameter]) -> dict[str, float]:
    """``{"grad_<term>": ||d (w_k L_k) / d params||}`` for each loss term of ``out``
    (``out.loss_parts``, still attached to the graph), without touching ``.grad``. Under the
    reversed adversary a discriminator's term reaches the encoder only through its
    scaled, reversed gradient, so this is exactly what each term sends into it."""
    params = [p for p in params if p.requires_grad]
    if not params or not out.loss_parts:
        return {}
    norms = {}
    for name, (term, weight) in out.loss_parts.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
        norms[f"grad_{name}"] = abs(weight) * math.sqrt(sq)
    return norms


class Trainer:
    """Trains one model. ``log_dir`` receives ``history.csv`` (+ TensorBoard events)."""

    def __init__(self, model: EmotionModel, cfg: TrainConfig, device: torch.device,
                 log_dir: Path | None = None, tensorboard: bool = False,
                 backbone_params: list[torch.nn.Parameter] | None = None, progress: bool = True):
        if device.type == "cpu" and cfg.threads > 0:
            # a feature-cache head is too small for intra-op parallelism: extra threads
            # only add synchronisation (10x slower on a busy 2-core machine)
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.device = device
        self.model = model.to(device)
        self.log_dir = Path(log_dir) if log_dir else None
        self.tensorboard = tensorboard
        self.progress = progress
        backbone_ids = {id(p) for p in (backbone_params or [])}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": head, "lr": cfg.lr}]
        enc = [p for p in (backbone_params or []) if p.requires_grad]
        if enc:
            groups.append({"params": enc, "lr": cfg.encoder_lr})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.net = self.model
        if D.is_dist():
            from torch.nn.parallel import DistributedDataParallel as DDP

            # batch statistics over the global batch, as in a single process
            self.model = D.sync_batch_norms(self.model)

            # switched-off heads (an ablation's term, a loss weight of 0) leave parameters
            # without gradients; LossOnly lets DDP find them from the loss
            self.net = DDP(LossOnly(self.model), device_ids=[device.index] if device.type == "cuda" else None,
                           find_unused_parameters=True)

    # -- helpers -------------------------------------------------------------------
    def _scheduler(self, total_steps: int):
        if self.cfg.scheduler == "none" and self.cfg.warmup_ratio <= 0:
            return None
        from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

        warm = int(self.cfg.warmup_ratio * total_steps)
        if self.cfg.scheduler == "cosine":
            return get_cosine_schedule_with_warmup(self.optimizer, warm, total_steps)
        if self.cfg.scheduler == "linear":
            return get_linear_schedule_with_warmup(self.optimizer, warm, total_steps)
        from transformers import get_constant_schedule_with_warmup

        return get_constant_schedule_with_warmup(self.optimizer, warm)

    def _score(self, pred: Predictions) -> float:
        m = self.cfg.select_metric
        if m == "loss":
            return -pred.loss()
        if m == "war":
            return metrics.war(pred.labels, pred.preds)
        return metrics.uar(pred.labels, pred.preds, pred.probs.shape[1])

    def _train_order(self, train_idx: np.ndarray, labels: np.ndarray, epoch: int) -> np.ndarray:
        """This epoch's sample order (this rank's share when distributed). Seeded by
        (seed, epoch) alone, so it is the same after a resume and on every rank."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        if self.cfg.balanced_sampling:
            counts = np.bincount(labels[train_idx])
            w = 1.0 / counts[labels[train_idx]]
            picks = torch.multinomial(torch.as_tensor(w, dtype=torch.float64), len(train_idx),
                                      replacement=True, generator=g).numpy()
            order = train_idx[picks]
        else:
            order = train_idx[torch.randperm(len(train_idx), generator=g).numpy()]
        return D.shard(order)  # (ceil(N / world),) this rank's share

    # -- fit -----------------------------------------------------------------------
    def fit(self, data: FeatureData, train_idx, val_idx, resume_path: Path | None = None,
            desc: str = "train") -> FitResult:
        cfg = self.cfg
        train_idx = np.asarray(train_idx, dtype=np.int64)
        val_idx = np.asarray(val_idx, dtype=np.int64)
        net, model = self.net, self.model
        if cfg.class_weighted:
            model.set_class_weights(class_weights_for(data.labels[train_idx], data.num_classes).to(self.device))
        batch_size = D.per_rank_batch(cfg.batch_size)  # the global batch split over ranks
        steps_per_epoch = max(1, math.ceil(D.shard_size(len(train_idx)) / batch_size))
        total_steps = steps_per_epoch * cfg.epochs
        scheduler = self._scheduler(total_steps)

        start_epoch, best_score, best_epoch, bad_epochs = 0, -math.inf, -1, 0
        stopped_early = False
        history: list[dict] = []
        best_state = copy.deepcopy(model.state_dict())
        if resume_path is not None and Path(resume_path).is_file():
            state = self._load_resume(Path(resume_path), scheduler)
            start_epoch, best_score, best_epoch = state["epoch"] + 1, state["best_score"], state["best_epoch"]
            bad_epochs, history, best_state = state["bad_epochs"], state["history"], state["best_state"]
            # a run killed after its early-stopping epoch was saved must not train on
            stopped_early = bool(state.get("stopped_early", False))
            log.info("resumed %s after epoch %d", desc, start_epoch)

        writer = None
        if self.tensorboard and self.log_dir and D.is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.log_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard not installed: logging to history.csv only")

        epochs = range(start_epoch, cfg.epochs) if not stopped_early else range(0)
        epoch_bar = tqdm(epochs, desc=desc, unit="epoch",
                         disable=not (self.progress and D.is_main()), leave=False)
        for epoch in epoch_bar:
            t0 = time.time()
            net.train()
            order = self._train_order(train_idx, data.labels, epoch)
            sums: dict[str, float] = {}
            state_sums: dict[str, float] = {}
            grad_sums: dict[str, float] = {}
            n_steps = n_diag = 0
            for step, batch in enumerate(data.batches(order, batch_size)):
                progress = (epoch * steps_per_epoch + step) / max(1, total_steps)
                model.set_progress(progress)
                for k, v in model.state_for_log().items():  # what this step uses (mu, lambda)
                    state_sums[k] = state_sums.get(k, 0.0) + float(v)
                out = net(batch.inputs.to(self.device), labels=batch.labels.to(self.device),
                          speakers=batch.speakers.to(self.device))
                self.optimizer.zero_grad(set_to_none=True)
                if cfg.diagnose and step % max(1, cfg.diagnose_every) == 0:
                    for k, v in term_gradient_norms(out, model.gradient_probe()).items():
                        grad_sums[k] = grad_sums.get(k, 0.0) + v
                    n_diag += 1
                out.loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
                sums["clipped"] = sums.get("clipped", 0.0) + float(0 < cfg.grad_clip < float(norm))
                self.optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                for k, v in out.terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
            recalibrate_norms(model, data, train_idx, cfg.eval_batch_size, self.device)
            row = {"epoch": epoch + 1}  # 1-based in logs and metrics
            row.update({f"train_{k}": v for k, v in _mean_over_ranks(sums, n_steps).items()})
            # the mu and GRL lambda this epoch used (means over its steps)
            row.update({k: v / max(1, n_steps) for k, v in state_sums.items()})
            row.update({k: v / max(1, n_diag) for k, v in grad_sums.items()})
            row.update({k: float(v) for k, v in model.end_epoch().items()})
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            val = predict(net, data, val_idx, cfg.eval_batch_size, self.device, keep_embeddings=False)
            row["val_loss"] = val.loss()
            row["val_war"] = metrics.war(val.labels, val.preds)
            row["val_uar"] = metrics.uar(val.labels, val.preds, data.num_classes)
            row["seconds"] = time.time() - t0
            score = self._score(val)
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            row["best_epoch"] = best_epoch + 1
            history.append(row)
            # the emotion loss, not the total (which holds the discriminators' own CE)
            epoch_bar.set_postfix(task_loss=f"{row.get('train_task', float('nan')):.3f}",
                                  val_uar=f"{row['val_uar']:.3f}")
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        writer.add_scalar(k, v, epoch)
            if self.log_dir and D.is_main():
                self._write_history(history)
            stopped_early = cfg.patience > 0 and bad_epochs >= cfg.patience
            if resume_path is not None:
                # every rank's generators: their dropout draws differ once batch sizes do
                rngs = D.all_gather_objects(rng_state(self.device))
                if D.is_main():
                    with atomic_path(resume_path) as tmp:  # a full disk: OSError naming the file
                        torch_save({
                            "epoch": epoch, "model": model.state_dict(),
                            "optimizer": self.optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                            "best_score": best_score, "best_epoch": best_epoch,
                            "bad_epochs": bad_epochs, "stopped_early": stopped_early,
                            "history": history, "best_state": best_state, "rng": rngs,
                        }, tmp, name=resume_path)
            D.barrier()
            if stopped_early:
                break
        if writer is not None:
            writer.close()
        model.load_state_dict(best_state)
        return FitResult(best_epoch=best_epoch, best_score=best_score, history=history,
                         stopped_early=stopped_early)

    def _load_resume(self, path: Path, scheduler) -> dict:
        """Restore model, optimiser, scheduler and RNG states from ``path``; return the
        file's contents (epoch, counters, history, best weights)."""
        try:
            # weights_only: tensors, numbers, strings and containers only; a file that holds
            # anything else (a pickled object, i.e. code) is refused, never executed
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            rngs = state["rng"]
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc).lower():
                reason = ("it holds objects other than tensors, numbers and strings, "
                          "possibly code; refused, nothing in it was run")
            else:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"{path}: cannot resume from this training state ({reason[:200]}); "
                           f"delete it to restart this fold from its first epoch") from None
        if isinstance(rngs, dict):  # a single-process state
            rngs = [rngs]
        if len(rngs) != D.world_size():
            log.warning("%s was saved by %d process(es), resumed by %d: the random draws after the "
                        "resume differ from an uninterrupted run", path, len(rngs), D.world_size())
        set_rng_state(rngs[D.rank() % len(rngs)], self.device)
        return state

    def _write_history(self, history: list[dict]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        with atomic_path(self.log_dir / "history.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(history)
