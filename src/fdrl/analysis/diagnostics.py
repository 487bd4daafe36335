"""Diagnostics that do not trust the model: is the shared space aligned, does each part
of a shared/private model carry information the classifier uses?

Pure functions of arrays (numpy / scikit-learn) plus, for the evaluation-time
ablation, a ``classify`` callable supplied by the caller; no files, no training state.
They are computed on the *validation* rows of a fold (never the test fold) at the
selected epoch; :func:`fdrl.training.diagnose.fold_diagnostics` is the glue that runs
the model. Keys (``diagnostic_parts = {"S": ("S_a", "S_t"), "P": ("P_a", "P_t")}``):

``probe_modality_<X>``
    accuracy of a fresh, standardised logistic regression telling ``<X>_a`` from
    ``<X>_t``, cross-validated inside the validation representations (grouped by
    utterance). 0.5 = the two modalities are indistinguishable (aligned); the
    discriminators' own error is not used: an adversary can be fooled by a moving
    target or by scale, a fresh probe cannot.
``probe_modality_<X>_speaker_centred`` (when speakers are given)
    the same probe after removing each speaker's mean (estimated on the other half of
    that speaker's rows) from each modality's rows: a
    high ``probe_modality_X`` with this near 0.5 means S_a and S_t differ by a
    speaker-level offset (an unseen speaker's voice shifts S_a, not S_t), not in
    how emotions are laid out.
``norm_<X>``
    mean L2 norm of the rows of every member of part X (both modalities).
``drop_<X>_uar``
    validation UAR of the model minus its UAR when every member of X is replaced by
    its mean over the training rows (the rest unchanged). Positive = the classifier
    uses what X carries; about 0 = X is dead weight.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from fdrl import metrics
from fdrl.analysis.measures import modality_accuracy

#: every key :func:`representation_diagnostics` returns for parts S and P, in table order
DIAGNOSTIC_KEYS = ("probe_modality_S", "probe_modality_P", "norm_S", "norm_P",
                   "drop_S_uar", "drop_P_uar")

#: key -> one line on what it shows (results.md)
DESCRIPTIONS = {
    "probe_modality_S": "fresh probe S_a vs S_t on validation (0.5 = aligned)",
    "probe_modality_P": "fresh probe P_a vs P_t on validation (1.0 = distinct)",
    "probe_modality_S_speaker_centred": "the same probe after removing each speaker's mean "
                                        "(0.5: what remains is a speaker-level offset)",
    "probe_modality_P_speaker_centred": "the P probe after removing each speaker's mean",
    "probe_modality_S_train": "the S probe on training rows (speakers the adversaries saw)",
    "probe_modality_P_train": "the P probe on training rows",
    "norm_S": "mean L2 norm of S_a, S_t",
    "norm_P": "mean L2 norm of P_a, P_t",
    "drop_S_uar": "val UAR minus UAR with S replaced by its training mean (> 0: S is used)",
    "drop_P_uar": "val UAR minus UAR with P replaced by its training mean (> 0: P is used)",
}


def mean_norm(*arrays: np.ndarray) -> float:
    """Mean L2 norm of the rows of the given (N, d) arrays, pooled."""
    rows = np.concatenate([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in arrays])
    return float(np.linalg.norm(rows, axis=1).mean())


def centre_by_group(X: np.ndarray, groups: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """``X`` (N, d) minus, on each row, the mean of its group's rows in ``fit``.

    ``fit`` (N,) bool selects the rows the means come from (default all). A probe
    should then only see rows outside ``fit``: centring rows with a mean that includes
    them ties held-out rows to training rows (each group sums to zero) and drives a
    cross-validated probe *below* chance.
    """
    X = np.asarray(X, dtype=np.float64).copy()
    groups = np.asarray(groups)
    fit = np.ones(len(X), dtype=bool) if fit is None else np.asarray(fit, dtype=bool)
    for g in np.unique(groups):
        m = groups == g
        src = m & fit
        X[m] -= X[src].mean(axis=0) if src.any() else X[m].mean(axis=0)
    return X


def ablation_drop(reps: Mapping[str, np.ndarray], labels: np.ndarray, num_classes: int,
                  replace: Mapping[str, np.ndarray],
                  classify: Callable[[dict[str, np.ndarray]], np.ndarray]) -> float:
    """UAR with ``reps`` minus UAR with the named members replaced by constant vectors.

    Parameters
    ----------
    reps : name -> (N, d) validation representations.
    labels : (N,) emotion labels.
    replace : name -> (d,) the vector (the training mean) that stands in for that member.
    classify : representations -> (N, C) logits or probabilities (the model's head).
    """
    base = metrics.uar(labels, np.asarray(classify(dict(reps))).argmax(1), num_classes)
    n = len(labels)
    ablated = {k: (np.broadcast_to(replace[k], (n, len(replace[k]))).copy() if k in replace else v)
               for k, v in reps.items()}
    return float(base - metrics.uar(labels, np.asarray(classify(ablated)).argmax(1), num_classes))


def representation_diagnostics(val: Mapping[str, np.ndarray], labels: np.ndarray, num_classes: int,
                               train_means: Mapping[str, np.ndarray],
                               parts: Mapping[str, tuple[str, ...]],
                               classify: Callable[[dict[str, np.ndarray]], np.ndarray],
                               seed: int = 0, speakers: np.ndarray | None = None
                               ) -> dict[str, float | None]:
    """Every diagnostic of the module docstring for each part.

    Parameters
    ----------
    val : name -> (N, d) validation representations (every member of every part).
    labels : (N,) validation emotion labels.
    train_means : name -> (d,) mean of that representation over the training rows.
    parts : part -> its members, e.g. ``{"S": ("S_a", "S_t"), "P": ("P_a", "P_t")}``;
        the modality probe needs exactly two members.
    classify : the model's head, representations -> (N, C) logits.
    speakers : (N,) speaker of each row; adds the speaker-centred probes.
    """
    out: dict[str, float | None] = {}
    reps = {k: np.asarray(val[k], dtype=np.float32) for members in parts.values() for k in members}
    for part, members in parts.items():
        a, b = (reps[m] for m in members[:2])
        out[f"probe_modality_{part}"] = (modality_accuracy(a, b, seed=seed)
                                         if len(members) == 2 and len(a) >= 10 else None)
        if speakers is not None and len(members) == 2 and len(a) >= 20:
            # means from the even rows, the probe on the odd rows only
            fit = np.arange(len(a)) % 2 == 0
            out[f"probe_modality_{part}_speaker_centred"] = modality_accuracy(
                centre_by_group(a, speakers, fit)[~fit], centre_by_group(b, speakers, fit)[~fit],
                seed=seed)
        out[f"norm_{part}"] = mean_norm(*(reps[m] for m in members))
        out[f"drop_{part}_uar"] = (ablation_drop(reps, labels, num_classes,
                                                 {m: train_means[m] for m in members}, classify)
                                   if len(labels) else None)
    return out


def mean_std_over_folds(per_fold: list[Mapping[str, float | None]]) -> dict[str, dict]:
    """{key: {"mean", "std", "n_folds"}} over folds for each diagnostic key present."""
    keys = [k for k in DIAGNOSTIC_KEYS if any(k in f for f in per_fold)]
    keys += sorted({k for f in per_fold for k in f} - set(keys))
    out = {}
    for key in keys:
        vals = [float(f[key]) for f in per_fold if f.get(key) is not None and np.isfinite(f[key])]
        out[key] = ({"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n_folds": len(vals)}
                    if vals else {"mean": None, "std": None, "n_folds": 0})
    return out
