"""Train one model on a whole corpus and write a model bundle (``fdrl train``).

There is no test set: every utterance is training data except a seeded, stratified
validation share (``cv.val_fraction``, ``cv.val_strategy``) used for early stopping
and model selection, exactly as inside a CV fold. The bundle is written to a hidden
staging folder and renamed into place when complete; see :mod:`fdrl.inference.bundle`.
The staging folder holds the writer's pid (``.fdrl-train.pid``) while it trains: a run
that was killed leaves its staging folder behind, and the next ``fdrl train`` into the
same parent folder removes it once that pid has ended (see :func:`clean_stale_partials`).
Under ``torchrun`` every rank trains its share of each batch (as ``fdrl cv``) and rank 0
alone writes the bundle.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdrl import metrics
from fdrl.checkpoint import build_model, save_checkpoint
from fdrl.config import Config
from fdrl.data.folds import check_fold_classes, validation_split
from fdrl.errors import ConfigError
from fdrl.inference.bundle import check_new_folder, default_bundle_dir, publish, staging_dir
from fdrl.training import distributed as D
from fdrl.training.cv import Prepared, prepare
from fdrl.training.runs import environment
from fdrl.training.trainer import Trainer, predict, resolve_device, seed_everything
from fdrl.utils.io import write_text

log = logging.getLogger(__name__)

DEFAULT_PARENT = "bundles"
#: in a staging folder: the training process's pid, host and start time
PID_FILE = ".fdrl-train.pid"
#: staging folders of fdrl.inference.bundle.staging_dir: ``.<bundle name>.partial-<8 hex>``
PARTIAL = re.compile(r"\..+\.partial-[0-9a-f]{8}")
#: a staging folder without a pid file (an export, an older fdrl) is removed only when
#: nothing in it changed for this long
ORPHAN_AGE_S = 24 * 3600


# ----------------------------------------------------------------------------- partial folders


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot; Linux), None if unknown.
    Together with the pid it names one process: a pid can be reused, this pair cannot."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22, counted from the state (field 3)
    except (OSError, IndexError):
        return None


def mark_staging(folder: Path) -> None:
    """Record in ``folder`` that this process is writing it."""
    write_text(folder / PID_FILE, json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}))


def _last_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.iterdir():
        try:
            times.append(p.lstat().st_mtime)
        except OSError:
            pass
    return max(times)


def stale_reason(folder: Path) -> str | None:
    """Why staging ``folder`` is left over from a process that has ended; None when it
    may still be in use (then it must not be touched)."""
    try:
        info = json.loads((folder / PID_FILE).read_text())
        pid, host, start = int(info["pid"]), str(info["host"]), info.get("start")
    except FileNotFoundError:
        info = None
    except (OSError, ValueError, KeyError, TypeError):
        info = None  # unreadable: judge it by its age alone
    if info is None or host != socket.gethostname():
        # no owner this host can check (an export, an older fdrl, another machine)
        age = time.time() - _last_change(folder)
        return (f"unchanged for {age / 3600:.0f} h and no running owner recorded"
                if age > ORPHAN_AGE_S else None)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"left by pid {pid}, which has ended"
    except PermissionError:
        pass  # alive, another user's
    now = _process_start(pid)
    if start is not None and now is not None and now != start:
        return f"left by pid {pid}, which has ended (the pid now names another process)"
    return None


def clean_stale_partials(parent: Path) -> list[Path]:
    """Remove the staging folders under ``parent`` that killed runs left behind.

    Only hidden folders named like a bundle's staging folder are considered, and of
    those only the ones :func:`stale_reason` finds abandoned: a folder whose writer is
    alive (on this host) is never touched. Returns the folders removed.
    """
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not PARTIAL.fullmatch(p.name) or p.is_symlink() or not p.is_dir():
            continue
        try:
            reason = stale_reason(p)
        except OSError:  # removed meanwhile by another run's cleanup
            continue
        if reason is not None:
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s, an unfinished bundle folder (%s)", p, reason)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train_full` produced."""

    bundle: Path          # the bundle folder
    val: dict             # validation metrics of the selected epoch (metrics.summary)
    best_epoch: int       # 1-based
    epochs_run: int
    n_train: int
    n_val: int


def train_full(cfg: Config, out: str | Path | None = None, progress: bool = True,
               prep: Prepared | None = None) -> TrainResult:
    """Train ``cfg``'s model on all of ``cfg.data.manifest`` and write a bundle.

    Parameters
    ----------
    cfg : the resolved configuration (``cv.val_fraction`` > 0 is required).
    out : bundle folder to create; default ``bundles/<run.name>-<YYYYmmdd-HHMMSS>``.
        An existing folder is an error (never overwritten).
    progress : tqdm bars for feature extraction and epochs.
    prep : an already prepared corpus (features loaded), to skip :func:`prepare`.

    Returns
    -------
    TrainResult

    Raises
    ------
    BundleError : ``out`` exists.
    ConfigError / DataError : bad config or corpus (e.g. a class without utterances).
    """
    if cfg.cv.val_fraction <= 0:
        raise ConfigError("cv.val_fraction: must be > 0 for `fdrl train` (the validation share "
                          "selects the epoch to keep); e.g. cv.val_fraction=0.1")
    # under torchrun rank 0 picks (and checks) the folder and tells the others
    out = Path(D.run_on_main(lambda: str(check_new_folder(out) if out is not None
                                         else default_bundle_dir(cfg.run.name, DEFAULT_PARENT))))
    prep = prep or prepare(cfg, progress=progress)
    manifest, data = prep.manifest, prep.data
    every = np.arange(len(manifest), dtype=np.int64)  # (N,)
    check_fold_classes(manifest, every, f"corpus {manifest.root}")
    train_idx, val_idx = validation_split(manifest, every, cfg.cv.val_strategy,
                                          cfg.cv.val_fraction, cfg.train.seed)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, prep.spec)
    tmp = None
    if D.is_main():  # only rank 0 writes
        clean_stale_partials(out.parent)
        tmp = staging_dir(out)
    try:
        if tmp is not None:
            mark_staging(tmp)
        # the staging folder receives history.csv; TensorBoard events stay out of bundles
        trainer = Trainer(model, cfg.train, device, log_dir=tmp, tensorboard=False, progress=progress)
        fit = trainer.fit(data, train_idx, val_idx, resume_path=None, desc="train")
        val = predict(trainer.net, data, val_idx, cfg.train.eval_batch_size, device,
                      keep_embeddings=False)  # every rank: the rows are gathered
        val_metrics = metrics.summary(val.labels, val.preds, manifest.classes)
        rows = manifest.rows
        if not D.is_main():
            D.barrier()  # wait for rank 0 to publish the bundle
            return TrainResult(bundle=out, val=val_metrics, best_epoch=fit.best_epoch + 1,
                               epochs_run=len(fit.history), n_train=int(len(train_idx)),
                               n_val=int(len(val_idx)))
        save_checkpoint(tmp, model, cfg, manifest.classes, prep.spec, prep.encoders,
                        fit.best_epoch + 1, {"val": val_metrics}, extra={
                            "kind": "bundle",
                            "trained_on": {
                                "corpus": rows[0].get("corpus"),
                                "manifest": str(Path(cfg.data.manifest).resolve()),
                                "n_utterances": len(manifest), "n_train": int(len(train_idx)),
                                "n_val": int(len(val_idx)), "val_strategy": cfg.cv.val_strategy,
                                "val_fraction": cfg.cv.val_fraction,
                            },
                            "epochs_run": len(fit.history), "stopped_early": fit.stopped_early,
                            "config_sha256": cfg.sha256(),
                            "created": _dt.datetime.now().isoformat(timespec="seconds"),
                            "environment": environment(),
                        })
        (tmp / PID_FILE).unlink()  # not part of the bundle
        publish(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    D.barrier()
    log.info("bundle written to %s", out)
    return TrainResult(bundle=out, val=val_metrics, best_epoch=fit.best_epoch + 1,
                       epochs_run=len(fit.history), n_train=int(len(train_idx)),
                       n_val=int(len(val_idx)))
