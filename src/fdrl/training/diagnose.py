"""Run a trained model's representation diagnostics on one fold's validation rows.

The glue between the model and the pure functions of :mod:`fdrl.analysis.diagnostics`:
embed the training rows (for the parts' means) and the validation rows, and hand the
model's head to the evaluation-time ablation. The test fold is never touched here.
"""

from __future__ import annotations

import numpy as np
import torch

from fdrl.analysis.diagnostics import representation_diagnostics
from fdrl.analysis.measures import modality_accuracy
from fdrl.training.data import FeatureData
from fdrl.training.trainer import Predictions, _unwrap, predict


def fold_diagnostics(net, data: FeatureData, train_idx, val: Predictions, batch_size: int,
                     device: torch.device, seed: int = 0) -> dict | None:
    """Diagnostics of the model in ``net`` at its current (selected) weights, or None when
    the model has no shared/private parts or there are no validation rows.

    ``val`` holds the validation predictions *with* embeddings.
    """
    model = _unwrap(net)
    parts = getattr(model, "diagnostic_parts", {})
    if not parts or len(val.labels) == 0:
        return None
    train = predict(net, data, train_idx, batch_size, device)
    members = [m for ms in parts.values() for m in ms]
    train_means = {m: train.embeddings[m].astype(np.float64).mean(axis=0) for m in members}
    was_training = model.training
    model.eval()

    def classify(reps: dict[str, np.ndarray]) -> np.ndarray:
        out = []
        n = len(next(iter(reps.values())))
        for i in range(0, n, batch_size):
            chunk = {k: torch.as_tensor(v[i:i + batch_size], dtype=torch.float32, device=device)
                     for k, v in reps.items()}
            out.append(model.classify(chunk).float().cpu().numpy())
        return np.concatenate(out)

    try:
        out = representation_diagnostics({m: val.embeddings[m] for m in members}, val.labels,
                                         data.num_classes, train_means, parts, classify, seed=seed,
                                         speakers=data.speakers[val.index])
    finally:
        model.train(was_training)
    # the same probe on the training rows (speakers the adversaries saw): where the
    # game was played, as against the unseen validation speakers above
    for part, ms in parts.items():
        if len(ms) == 2:
            out[f"probe_modality_{part}_train"] = modality_accuracy(
                train.embeddings[ms[0]], train.embeddings[ms[1]], seed=seed)
    return out
