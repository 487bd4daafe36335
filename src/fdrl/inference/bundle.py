"""Model bundles: a self-describing checkpoint folder that predicts from raw input.

A bundle has the checkpoint format of :mod:`fdrl.checkpoint` plus a training log::

    model.safetensors   the weights
    bundle.json         model name, resolved config, classes, input spec, the encoders'
                        specs, preprocessing, toolkit version, validation metrics
    history.csv         per-epoch training log (absent in old fold checkpoints)

``fdrl train`` writes one from a whole corpus, ``fdrl export`` copies a CV fold's
checkpoint into one. Bundles are created in a hidden staging folder and renamed into
place at the end, so a bundle folder is either complete or absent, and an existing
folder is never overwritten.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdrl.checkpoint import META, WEIGHTS, read_meta
from fdrl.errors import BundleError, ConfigError
from fdrl.utils.io import read_json, write_json
from fdrl.utils.lock import acquire, release

HISTORY = "history.csv"
#: the rate every encoder takes its waveforms at (the feature cache loads audio at it)
SAMPLE_RATE = 16000


@dataclass
class Bundle:
    """A bundle's description (``bundle.json``), validated."""

    path: Path
    meta: dict[str, Any]

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def encoders(self) -> dict[str, dict | None]:
        return dict(self.meta.get("encoders") or {})

    @property
    def input(self) -> dict[str, Any]:
        return dict(self.meta["input"])

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the model reads: "speech" and/or "text"."""
        return tuple(m for m in ("speech", "text") if self.encoders.get(m))

    @property
    def max_seconds(self) -> float | None:
        return (self.meta.get("preprocessing") or {}).get("max_seconds")

    @property
    def speech_precomputed(self) -> bool:
        spec = self.encoders.get("speech")
        return bool(spec) and spec.get("name") == "precomputed"

    @property
    def compute_spec(self) -> dict | None:
        """For a bundle trained on precomputed features: the encoder spec that computes
        the same frame features from audio (``compute``, else the dump's ``source``)."""
        spec = self.encoders.get("speech") or {}
        compute = spec.get("compute") or spec.get("source")
        return dict(compute) if isinstance(compute, dict) else None


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Read and check a bundle folder (or a CV fold's ``model/`` folder).

    Raises
    ------
    BundleError
        Not a bundle, unreadable ``bundle.json``, unsupported format version, a field
        missing or of the wrong type or size (:func:`fdrl.checkpoint.check_meta`), or a
        model fine-tuned end to end (not supported by ``predict`` yet).
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    meta = read_meta(path)
    where = path / META
    encoders = meta.get("encoders")
    if not isinstance(encoders, dict) or not any(encoders.get(m) for m in ("speech", "text")):
        raise BundleError(f"{where}: field 'encoders' is missing or names no encoder; the bundle "
                          f"cannot say how to turn audio/text into model inputs")
    # types, ranges, classes and encoders are checked by read_meta's schema
    if ((meta["config"].get("features") or {}).get("finetune")
            or any((encoders.get(m) or {}).get("finetune") for m in ("speech", "text"))):
        raise BundleError(f"{where}: the model was fine-tuned end to end (features.finetune); "
                          f"predicting with such bundles is not supported yet")
    return Bundle(path=path, meta=meta)


# ---------------------------------------------------------------------------- encoders


def _constructor_params(modality: str, name: str) -> list[str] | None:
    """The settings the encoder class of ``name`` accepts, or None if unknown."""
    from fdrl.encoders import registry

    entry = registry._ENTRIES.get(name)  # noqa: SLF001 - read-only lookup of the class path
    if entry is None or modality not in entry.modalities or not entry.modalities[modality]:
        return None
    import importlib

    module, cls_name = entry.modalities[modality].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def rebuild_encoder(modality: str, spec: dict | None, where: str = "bundle", device: str = "cpu"):
    """Rebuild a frozen encoder from the spec a bundle recorded; None for no encoder.

    An encoder's ``spec()`` may record descriptive settings its constructor does not
    take (e.g. eGeMAPS's ``feature_set``): those are dropped, then the rebuilt
    encoder's own spec must agree with the recorded one on every recorded key, so an
    encoder whose output would differ is refused instead of giving silently wrong
    features.

    Raises
    ------
    BundleError
        Unknown encoder, bad settings, or settings that differ from the recorded ones.
    """
    from fdrl.encoders.registry import build_encoder

    if not spec or spec.get("name") == "none":
        return None
    spec = {k: v for k, v in spec.items() if k != "compute"}
    name = spec.get("name")
    try:
        try:
            encoder = build_encoder(modality, dict(spec), device=device)
        except ConfigError as exc:
            params = _constructor_params(modality, str(name))
            if params is None or "unknown setting" not in str(exc):
                raise
            kept = {k: v for k, v in spec.items() if k == "name" or k in params}
            encoder = build_encoder(modality, kept, device=device)
    except ConfigError as exc:
        raise BundleError(f"{where}: cannot rebuild the {modality} encoder {spec}: {exc}") from None
    rebuilt = {**encoder.settings(), **encoder.spec()}  # what the output depends on
    differ = [k for k in spec if k in rebuilt and rebuilt[k] != spec[k]
              and not (k == "dim" and spec[k] is None)]
    if differ:
        changes = ", ".join(f"{k}: {spec[k]!r} -> {rebuilt[k]!r}" for k in differ)
        raise BundleError(f"{where}: the {modality} encoder '{name}' of this fdrl version gives "
                          f"different settings ({changes}); its features would not match the "
                          f"ones the model was trained on")
    return encoder


# ---------------------------------------------------------------------------- folders


def check_new_folder(out: str | os.PathLike) -> Path:
    """Return ``out`` if nothing exists there; a bundle never overwrites a folder."""
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out}: already exists; bundles are never overwritten (choose another "
                          f"--out or remove it)")
    return out


def default_bundle_dir(name: str, parent: str | os.PathLike = "bundles") -> Path:
    """``parent/<name>-<YYYYmmdd-HHMMSS>``, with a suffix -2, -3... if that is taken."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{name}-{stamp}"
    for n in range(1, 1000):
        cand = base if n == 1 else Path(f"{base}-{n}")
        if not cand.exists():
            return cand
    raise BundleError(f"{parent}: could not find a free bundle folder name for '{name}'")


_staging_locks: dict[Path, Path] = {}  # staging folder -> the lock file of its bundle name


def staging_dir(out: Path) -> Path:
    """A hidden, unique folder next to ``out`` that :func:`publish` renames onto it.

    Takes an exclusive lock on the name ``out`` (``.<name>.lock`` next to it, released
    by :func:`publish` or :func:`abandon`, or by the operating system when the process
    ends), so a second process writing the same bundle stops at once instead of after
    its training."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_file = out.parent / f".{out.name}.lock"
    acquire(lock_file, "bundle folder (it is being written)", BundleError, folder=out)
    try:
        check_new_folder(out)  # published by another process while we waited to start
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except BaseException:
        release(lock_file, remove=True)
        raise
    _staging_locks[tmp] = lock_file
    return tmp


def abandon(staging: Path) -> None:
    """Remove an unfinished staging folder and give back its bundle name's lock."""
    shutil.rmtree(staging, ignore_errors=True)
    lock_file = _staging_locks.pop(staging, None)
    if lock_file is not None:
        release(lock_file, remove=True)


def publish(staging: Path, out: Path) -> Path:
    """Rename the finished ``staging`` folder to ``out``; error if ``out`` appeared meanwhile."""
    try:
        if out.exists():  # os.rename would silently replace an empty folder
            check_new_folder(out)
        os.rename(staging, out)
    except OSError as exc:
        raise BundleError(f"{out}: cannot create the bundle folder ({exc})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        lock_file = _staging_locks.pop(staging, None)
        if lock_file is not None:
            release(lock_file, remove=True)
    return out


# ---------------------------------------------------------------------------- export


def fold_names(run_dir: Path) -> list[str]:
    """Fold folders of a CV run that hold a finished checkpoint."""
    folds = run_dir / "folds"
    if not folds.is_dir():
        return []
    return sorted(p.name for p in folds.iterdir()
                  if (p / "model" / META).is_file() and (p / "metrics.json").is_file())


def export_fold(run_dir: str | os.PathLike, fold: str, out: str | os.PathLike | None = None) -> Path:
    """Copy a CV run's fold checkpoint into a standalone bundle folder.

    Parameters
    ----------
    run_dir : a run folder written by ``fdrl cv``.
    fold : the fold's folder name under ``RUN_DIR/folds/`` (its test group, e.g. "1").
    out : bundle folder to create (default ``bundles/<run folder name>-fold<fold>``).

    Returns
    -------
    The bundle folder.

    Raises
    ------
    BundleError
        No such run or fold, the fold did not finish, or ``out`` exists.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BundleError(f"{run_dir}: run folder not found")
    fold = str(fold)
    if not fold or Path(fold).name != fold or fold in (".", ".."):
        raise BundleError(f"--fold {fold!r}: expected a fold folder name under {run_dir}/folds "
                          f"(e.g. 1), not a path")
    fold_dir = run_dir / "folds" / fold
    src = fold_dir / "model"
    if not (src / META).is_file():
        available = fold_names(run_dir)
        raise BundleError(f"{run_dir}: no finished fold '{fold}' (expected {src}/{META}); "
                          f"folds with a checkpoint: {', '.join(available) or 'none'}")
    if not (fold_dir / "metrics.json").is_file():
        raise BundleError(f"{fold_dir}: the fold has not finished (no metrics.json); resume the "
                          f"run with `fdrl cv --resume {run_dir}` first")
    read_bundle(src)  # refuse to export something predict could not load
    out = check_new_folder(out if out is not None else
                           default_bundle_dir(f"{run_dir.name}-fold{fold}"))
    tmp = staging_dir(out)
    try:
        shutil.copy2(src / WEIGHTS, tmp / WEIGHTS)
        if (fold_dir / HISTORY).is_file():
            shutil.copy2(fold_dir / HISTORY, tmp / HISTORY)
        meta = read_json(src / META)
        meta["exported_from"] = {"run": str(run_dir.resolve()), "fold": fold,
                                 "time": _dt.datetime.now().isoformat(timespec="seconds")}
        write_json(tmp / META, meta)
    except BaseException:
        abandon(tmp)
        raise
    return publish(tmp, out)
