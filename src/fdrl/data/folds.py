"""Cross-validation folds from manifest metadata, and validation splits inside a fold.

Folds come from metadata, never from the folder layout: leave-one-session-out
(the IEMOCAP protocol), leave-one-speaker-out, or an explicit ``fold`` column.
The validation set used for model selection is always carved out of the *training*
rows of a fold; the test group is never looked at.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from fdrl.data.manifest import Manifest
from fdrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROTOCOLS = {"session": "session", "speaker": "speaker", "fold": "fold"}  # protocol -> row field
VALIDATION_STRATEGIES = ("stratified", "speaker")


@dataclass
class Fold:
    """One train/test split: train on every group but ``test_group``, test on it."""

    index: int  # 0-based position in the fold list
    name: str  # file-system safe, e.g. 'session1', 'speakerSes01_F', 'fold3'
    test_group: str  # the held-out session / speaker / fold value, as a string
    train: np.ndarray  # (N_train,) int64 row indices into the manifest, sorted
    test: np.ndarray  # (N_test,) int64 row indices, sorted


def natural_key(value: Any) -> tuple:
    """Sort key that orders 'Ses2' before 'Ses10' and 2 before 10."""
    parts = re.split(r"(\d+)", str(value))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def _groups(manifest: Manifest, field: str, indices: np.ndarray | None = None) -> np.ndarray:
    """The ``field`` value of every (selected) row as strings; DataError when some lack it."""
    idx = np.arange(len(manifest)) if indices is None else np.asarray(indices)
    values = [manifest.rows[i].get(field) for i in idx]
    missing = sum(v is None or v == "" for v in values)
    if missing:
        raise DataError(f"{missing} of {len(values)} manifest rows have no '{field}' "
                        f"(needed to group rows by {field}); add it to the manifest or choose "
                        f"another protocol")
    return np.array([str(v) for v in values], dtype=object)


def make_folds(manifest: Manifest, protocol: str = "session") -> list[Fold]:
    """Leave-one-group-out folds, groups in natural order (session 1 .. 5).

    Parameters
    ----------
    manifest : Manifest
    protocol : {'session', 'speaker', 'fold'}
        Group rows by ``session``, ``speaker`` or the explicit ``fold`` column.

    Returns
    -------
    list of Fold
        One fold per group.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown fold protocol '{protocol}'; expected one of {list(PROTOCOLS)}")
    field = PROTOCOLS[protocol]
    groups = _groups(manifest, field)  # (N,)
    unique = sorted(set(groups), key=natural_key)
    if len(unique) < 2:
        raise DataError(f"protocol '{protocol}' needs at least 2 distinct '{field}' values to hold "
                        f"one out, found {len(unique)}: {unique}")
    folds = []
    for i, g in enumerate(unique):
        test_mask = groups == g  # (N,)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{protocol}{g}")
        folds.append(Fold(index=i, name=name, test_group=g,
                          train=np.flatnonzero(~test_mask).astype(np.int64),
                          test=np.flatnonzero(test_mask).astype(np.int64)))
    return folds


def validation_split(manifest: Manifest, train_idx: np.ndarray, strategy: str = "stratified",
                     fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training rows into (train, validation); deterministic given ``seed``.

    Parameters
    ----------
    manifest : Manifest
    train_idx : np.ndarray
        (N_train,) row indices of the fold's training part; validation rows come only
        from here.
    strategy : {'stratified', 'speaker'}
        'stratified': a ``fraction`` of rows with the class proportions kept.
        'speaker': whole speakers held out, about ``fraction`` of the rows, at least one
        speaker, at least one speaker left for training.
    fraction : float
        Share of ``train_idx`` for validation, in [0, 1); 0 gives an empty validation set.
    seed : int

    Returns
    -------
    (np.ndarray, np.ndarray)
        (N_train - N_val,) and (N_val,) sorted int64 row indices.
    """
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))  # (N_train,)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    if strategy not in VALIDATION_STRATEGIES:
        raise ConfigError(f"unknown validation strategy '{strategy}'; expected one of "
                          f"{list(VALIDATION_STRATEGIES)}")
    if fraction == 0.0 or len(train_idx) == 0:
        return train_idx, np.empty(0, dtype=np.int64)
    if strategy == "speaker":
        return _speaker_split(manifest, train_idx, fraction, seed)
    labels = np.array([manifest.rows[i]["label"] for i in train_idx], dtype=object)  # (N_train,)
    n_val = max(1, int(round(fraction * len(train_idx))))
    try:
        tr, va = train_test_split(train_idx, test_size=n_val, stratify=labels, random_state=seed)
    except ValueError as exc:
        # A class with a single training row (or fewer validation rows than classes)
        # cannot be stratified; a plain random split still gives a usable validation set.
        log.warning("stratified validation split impossible (%s); using a random split", exc)
        tr, va = train_test_split(train_idx, test_size=n_val, random_state=seed)
    return np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)


def _speaker_split(manifest: Manifest, train_idx: np.ndarray, fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    speakers = _groups(manifest, "speaker", train_idx)  # (N_train,)
    unique = sorted(set(speakers), key=natural_key)
    if len(unique) < 2:
        raise DataError(f"a speaker validation split needs at least 2 speakers in the training part, "
                        f"found {len(unique)}: {unique}; use the 'stratified' strategy")
    order = np.random.default_rng(seed).permutation(len(unique))
    counts = {s: int(np.sum(speakers == s)) for s in unique}
    target = fraction * len(train_idx)
    held: list[str] = []
    n_held = 0
    for j in order:
        s = unique[j]
        # Stop before a speaker that would take us further from the target than we are now.
        if held and abs(n_held + counts[s] - target) >= abs(n_held - target):
            break
        held.append(s)
        n_held += counts[s]
        if len(held) == len(unique) - 1:
            break
    val_mask = np.isin(speakers, held)  # (N_train,)
    return train_idx[~val_mask], train_idx[val_mask]


def check_fold_classes(manifest: Manifest, train_idx: np.ndarray, fold_name: str) -> None:
    """Raise DataError when the training part of a fold lacks a class.

    ``fold_name`` starts the message, e.g. ``"fold 3 (test group 3)"``.
    """
    present = {manifest.rows[i]["label"] for i in np.asarray(train_idx)}
    missing = [c for c in manifest.classes if c not in present]
    if missing:
        which = ", ".join(f"'{c}'" for c in missing)
        raise DataError(f"{fold_name}: the training part has no {which} utterances; every class "
                        f"needs training examples (check the labels per group, or use another "
                        f"protocol / merge the rare class with a label map)")
