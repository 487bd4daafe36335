"""Features computed elsewhere (a manifest's ``features`` column), pooled like ours.

The items are the arrays already loaded by :func:`fdrl.data.featstore.load_features`.
Frame features (L, d) are pooled by the same function as the frame-level acoustic
encoders (``mean_std`` by default, as :class:`~fdrl.encoders.acoustic.LogMelEncoder`),
so a model trained on a log-mel dump can be applied to new audio with ``logmel``.
Utterance vectors (d,) are taken as they are (``pooling="none"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fdrl.encoders.acoustic import POOLINGS
from fdrl.encoders.base import Encoded, Encoder
from fdrl.errors import ConfigError, DataError


class PrecomputedEncoder(Encoder):
    """Pool precomputed features; it cannot encode new raw audio.

    Parameters
    ----------
    dim : feature size d of the stored frames / vectors; None = taken from the first
        item encoded (then fixed: every later item must match).
    pooling : "mean_std" (pooled (2 d,)), "mean" (pooled (d,)) for (L, d) frames, or
        "none" for stored (d,) utterance vectors (no sequence).
    source : the spec of the encoder that made the features (e.g. ``{"name": "logmel",
        ...}``, see :func:`dump_source`) when known; recorded in :meth:`spec` so a bundle
        can say which encoder computes the same features from audio.
    """

    modality = "speech"
    name = "precomputed"
    precomputed = True

    def __init__(self, dim: int | None = None, pooling: str = "mean_std",
                 source: dict | None = None):
        if pooling not in (*POOLINGS, "none"):
            raise ConfigError(f"precomputed encoder: 'pooling' must be one of "
                              f"{[*POOLINGS, 'none']}, got {pooling!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ConfigError(f"precomputed encoder: 'dim' must be a positive int, got {dim!r}")
        if source is not None and not isinstance(source, dict):
            raise ConfigError(f"precomputed encoder: 'source' must be an encoder spec dict, got {source!r}")
        self.feature_dim = dim
        self.pooling = pooling
        self.source = source

    @property
    def dim(self) -> int:
        if self.feature_dim is None:
            raise ConfigError("precomputed encoder: 'dim' is unknown until features are read")
        return self.feature_dim * (POOLINGS[self.pooling][1] if self.pooling != "none" else 1)

    @property
    def sequence_dim(self) -> int | None:
        return None if self.pooling == "none" else self.feature_dim

    def settings(self) -> dict[str, Any]:
        # dim and source are descriptions, not settings: the features and the pooling
        # alone determine the output, so neither may change the cache key
        return {"pooling": self.pooling}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.feature_dim, **self.settings(), "source": self.source}

    def cost(self, item: np.ndarray) -> int:
        return int(np.asarray(item).shape[0])

    def _check(self, x: np.ndarray, i: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        want_ndim = 1 if self.pooling == "none" else 2
        if x.ndim != want_ndim:
            shape = "(d,) utterance vectors" if want_ndim == 1 else "(frames, d) frame features"
            raise DataError(f"precomputed features item {i}: expected {shape} for pooling "
                            f"'{self.pooling}', got shape {x.shape}")
        if self.feature_dim is None:
            self.feature_dim = int(x.shape[-1])
        elif x.shape[-1] != self.feature_dim:
            raise DataError(f"precomputed features item {i}: feature size {x.shape[-1]}, "
                            f"expected {self.feature_dim}")
        if not np.isfinite(x).all():
            raise DataError(f"precomputed features item {i}: contains NaN or inf")
        return x

    def encode(self, items: Sequence[np.ndarray], sequences: bool = False) -> list[Encoded]:
        """Pool loaded feature arrays; ``sequences`` returns the (L, d) frames as given."""
        if sequences and self.pooling == "none":
            raise ConfigError("precomputed encoder with pooling 'none' has no sequences")
        out = []
        for i, item in enumerate(items):
            x = self._check(item, i)
            if self.pooling == "none":
                out.append(Encoded(pooled=x))
            else:
                out.append(Encoded(pooled=POOLINGS[self.pooling][0](x),
                                   sequence=x if sequences else None))
        return out


def dump_source(data_dir: str | Path) -> dict | None:
    """The ``speech_features`` spec a prepared feature dump stored in its labels.json, if any."""
    from fdrl.data.manifest import LABELS_NAME
    from fdrl.utils.io import read_json

    path = Path(data_dir)
    labels = (path if path.is_dir() else path.parent) / LABELS_NAME
    if not labels.is_file():
        return None
    spec = read_json(labels).get("speech_features")
    return dict(spec) if isinstance(spec, dict) else None
