"""Fit, evaluate, checkpoint and resume one model on one train/validation split.

Model selection uses the validation indices only; the test data never reach
:meth:`Trainer.fit`. After every epoch the full training state (weights,
optimiser, scheduler, RNG states, best weights, history) is written atomically to
``resume_path`` so a killed run continues from the last finished epoch and ends
with the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fdrl import metrics
from fdrl.config import TrainConfig
from fdrl.models.base import EmotionModel
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
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(__import__("os").environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from fdrl.errors import ConfigError

        raise ConfigError(f"train.device: '{name}' requested but CUDA is not available")
    return torch.device(name)


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


def _unwrap(model) -> EmotionModel:
    return model.module if hasattr(model, "module") else model


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


class Trainer:
    """Trains one model. ``log_dir`` receives ``history.csv`` (+ TensorBoard events)."""

    def __init__(self, model: EmotionModel, cfg: TrainConfig, device: torch.device,
                 log_dir: Path | None = None, tensorboard: bool = False,
                 backbone_params: list[torch.nn.Parameter] | None = None, progress: bool = True):
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

            # switched-off heads (e.g. S2 without L_g) leave parameters without gradients
            self.net = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None,
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
        (seed, epoch), so it is the same after a resume."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        if self.cfg.balanced_sampling:
            counts = np.bincount(labels[train_idx])
            w = 1.0 / counts[labels[train_idx]]
            picks = torch.multinomial(torch.as_tensor(w, dtype=torch.float64), len(train_idx),
                                      replacement=True, generator=g).numpy()
            order = train_idx[picks]
        else:
            order = train_idx[torch.randperm(len(train_idx), generator=g).numpy()]
        if D.is_dist():  # DistributedSampler semantics: pad to a multiple, then stride
            w_size, r = D.world_size(), D.rank()
            n = math.ceil(len(order) / w_size) * w_size
            order = np.concatenate([order, order[: n - len(order)]])[r::w_size]
        return order

    # -- fit -----------------------------------------------------------------------
    def fit(self, data: FeatureData, train_idx, val_idx, resume_path: Path | None = None,
            desc: str = "train") -> FitResult:
        cfg = self.cfg
        train_idx = np.asarray(train_idx, dtype=np.int64)
        val_idx = np.asarray(val_idx, dtype=np.int64)
        net, model = self.net, self.model
        if cfg.class_weighted:
            model.set_class_weights(class_weights_for(data.labels[train_idx], data.num_classes).to(self.device))
        per_rank = math.ceil(len(train_idx) / D.world_size())
        steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
        total_steps = steps_per_epoch * cfg.epochs
        scheduler = self._scheduler(total_steps)

        start_epoch, best_score, best_epoch, bad_epochs = 0, -math.inf, -1, 0
        history: list[dict] = []
        best_state = copy.deepcopy(model.state_dict())
        if resume_path is not None and Path(resume_path).is_file():
            state = torch.load(resume_path, map_location=self.device, weights_only=False)
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, best_score, best_epoch = state["epoch"] + 1, state["best_score"], state["best_epoch"]
            bad_epochs, history, best_state = state["bad_epochs"], state["history"], state["best_state"]
            random.setstate(state["rng"]["python"])
            np.random.set_state(state["rng"]["numpy"])
            torch.set_rng_state(state["rng"]["torch"])
            log.info("resumed %s at epoch %d", desc, start_epoch)

        writer = None
        if self.tensorboard and self.log_dir and D.is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.log_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard not installed: logging to history.csv only")

        stopped_early = False
        epoch_bar = tqdm(range(start_epoch, cfg.epochs), desc=desc, unit="epoch",
                         disable=not (self.progress and D.is_main()), leave=False)
        for epoch in epoch_bar:
            t0 = time.time()
            net.train()
            order = self._train_order(train_idx, data.labels, epoch)
            sums: dict[str, float] = {}
            n_steps = 0
            for step, batch in enumerate(data.batches(order, cfg.batch_size)):
                progress = (epoch * steps_per_epoch + step) / max(1, total_steps)
                model.set_progress(progress)
                out = net(batch.inputs.to(self.device), labels=batch.labels.to(self.device),
                          speakers=batch.speakers.to(self.device))
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                for k, v in out.terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
            row = {"epoch": epoch + 1}  # 1-based in logs and metrics
            row.update({f"train_{k}": v / max(1, n_steps) for k, v in sums.items()})
            row.update({k: float(v) for k, v in model.state_for_log().items()})
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
            epoch_bar.set_postfix(loss=f"{row.get('train_total', float('nan')):.3f}",
                                  val_uar=f"{row['val_uar']:.3f}")
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        writer.add_scalar(k, v, epoch)
            if self.log_dir and D.is_main():
                self._write_history(history)
            stop = cfg.patience > 0 and bad_epochs >= cfg.patience
            if resume_path is not None and D.is_main():
                with atomic_path(resume_path) as tmp:
                    torch.save({
                        "epoch": epoch, "model": model.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "best_score": best_score, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                        "history": history, "best_state": best_state,
                        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                "torch": torch.get_rng_state()},
                    }, tmp)
            D.barrier()
            if stop:
                stopped_early = True
                break
        if writer is not None:
            writer.close()
        model.load_state_dict(best_state)
        return FitResult(best_epoch=best_epoch, best_score=best_score, history=history,
                         stopped_early=stopped_early)

    def _write_history(self, history: list[dict]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        with atomic_path(self.log_dir / "history.csv") as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=keys)
                w.writeheader()
                w.writerows(history)
