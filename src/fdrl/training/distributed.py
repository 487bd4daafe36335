"""torch.distributed helpers. Everything degrades to single-process behaviour when
no process group is initialised, so the same code serves ``fdrl cv`` and
``torchrun --nproc_per_node=N -m fdrl cv``.

Conventions of the toolkit under ``torchrun``:

- ``train.batch_size`` is the *global* batch size; each of the N ranks takes
  ``batch_size / N`` rows per step and DDP averages the gradients, so one step sees
  the same rows and the same mean gradient as one single-process step.
- The epoch order is one seeded permutation, cut into per-rank shards by
  :class:`torch.utils.data.DistributedSampler` (pad to a multiple of N, then stride).
- Batch normalisation (e.g. the models' per-feature input standardisation) takes its
  training statistics over the global batch (:func:`sync_batch_norms`), as a single
  process would.
- Only rank 0 writes files; the others wait at barriers. A user error raised on
  rank 0 while it works alone (:func:`run_on_main`) is re-raised on every rank, so no
  rank is left waiting for a partner that has already exited.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from fdrl.errors import ConfigError, FdrlError

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK), 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def wants_cuda(device: str) -> bool:
    """True when ``train.device`` resolves to CUDA on this machine."""
    return torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))


def init_from_env(device: str = "cpu") -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    gloo on CPU, nccl on GPU (each rank on ``cuda:LOCAL_RANK``). Returns True when
    running distributed.
    """
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if wants_cuda(device) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def shutdown() -> None:
    """Destroy the process group (at the end of a command); no-op when not distributed.

    No barrier: after an error on one rank the others may never reach it.
    """
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_objects(obj):
    """List of ``obj`` from every rank (rank order); ``[obj]`` when not distributed."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a CPU tensor goes through the GPU under nccl)."""
    if not is_dist():
        return t
    if dist.get_backend() == "nccl" and not t.is_cuda:
        u = t.cuda()
        dist.all_reduce(u, op=dist.ReduceOp.SUM)
        t.copy_(u.cpu())
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank.

    A user error (:class:`FdrlError`) on rank 0 is re-raised on every rank with the
    same message and class, so a bad file stops the whole job at once instead of
    leaving the other ranks at a barrier until the collective times out.
    """
    if not is_dist():
        return fn()
    result: Any = None
    failure: tuple[type, str] | None = None
    if is_main():
        try:
            result = fn()
        except FdrlError as exc:
            failure = (type(exc), str(exc))
    result, failure = broadcast_object((result, failure))
    if failure is not None:
        cls, msg = failure
        raise cls(msg)
    return result


def per_rank_batch(global_batch: int) -> int:
    """Rows per rank and step for a global batch of ``global_batch`` rows.

    Raises
    ------
    ConfigError
        When the global batch cannot give every rank at least one row.
    """
    w = world_size()
    if global_batch < w:
        raise ConfigError(f"train.batch_size={global_batch} is the global batch size and must be at "
                          f"least the number of processes ({w})")
    if global_batch % w:
        log.warning("train.batch_size=%d is not a multiple of %d processes: each takes %d rows, "
                    "a global batch of %d", global_batch, w, global_batch // w, global_batch // w * w)
    return global_batch // w


class _Sized:
    """Just a length, which is all DistributedSampler needs from a dataset."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def shard(order: np.ndarray) -> np.ndarray:
    """This rank's share of an epoch order (all of it when not distributed).

    Uses :class:`torch.utils.data.DistributedSampler` without its own shuffling (the
    order is already a seeded permutation): the order is padded by wrapping around to a
    multiple of the world size, then rank r takes positions r, r + N, r + 2N, ... So
    step k of every rank together covers positions k*B .. (k+1)*B - 1 of the order,
    the same rows as step k of a single process with the global batch B.
    """
    if not is_dist():
        return order
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(_Sized(len(order)), num_replicas=world_size(), rank=rank(),
                                 shuffle=False, drop_last=False)
    return order[np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))]


def shard_size(n: int) -> int:
    """Rows per rank for an epoch of ``n`` rows (with DistributedSampler padding)."""
    return math.ceil(n / world_size())


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum_(t.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum_(grad.clone())


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training statistics cover the global batch, on any
    device (torch's SyncBatchNorm is GPU-only).

    Each rank sums its rows (and squares) in float64; a differentiable all-reduce adds
    the sums of every rank, so the forward pass normalises with the global mean and
    (biased) variance and the backward pass carries every rank's gradient through
    them, which with DDP's gradient averaging gives the single-process gradient. The
    running statistics are updated as torch's BatchNorm does (unbiased variance).
    Same parameters and buffers as BatchNorm: state dicts are interchangeable.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected (N, C) or (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist()):
            return super().forward(x)
        self._check_input_dim(x)
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           xd.new_tensor([x.numel() // C])])          # (2C + 1,)
        total = _AllReduceSum.apply(local)                             # (2C + 1,) over ranks
        n = total[-1]
        mean = total[:C] / n                                           # (C,)
        var = (total[C:2 * C] / n - mean * mean).clamp_min(0.0)        # (C,) biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = [1, C] + [1] * (x.dim() - 2)
        out = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm inside ``model`` by one whose training statistics cover
    the global batch: torch's SyncBatchNorm on GPUs, :class:`GlobalBatchNorm` elsewhere.

    The new layers keep the same Parameter and buffer objects (an optimiser built
    before stays valid) and the same state-dict keys. No-op when not distributed.
    """
    if not is_dist():
        return model
    on_gpu = any(p.is_cuda for p in model.parameters())
    if on_gpu:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batch_norms(child)
    return model
