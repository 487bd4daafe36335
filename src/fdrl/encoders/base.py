"""The encoder contract used by feature extraction, training and inference.

An encoder turns raw items (16 kHz mono float32 waveforms for speech, strings for
text) into a sequence of frame/token vectors and a pooled vector per item. Its
``name`` plus ``settings()`` identify its output exactly: they key the feature
cache and are stored in model bundles so ``predict`` can rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Encoded:
    """One encoded item.

    pooled:   (d,) float32 masked-mean (or the encoder's own) pooled vector.
    sequence: (L, d) float16/float32 frame/token vectors, or None if not requested.
    """

    pooled: np.ndarray
    sequence: np.ndarray | None = None


class Encoder:
    """Base class for encoders. Subclasses set ``modality`` and implement the rest."""

    modality: str = "speech"  # "speech" or "text"
    name: str = "base"
    #: smallest waveform length (samples at 16 kHz) the encoder accepts (speech only)
    min_samples: int = 0
    #: True for encoders that cannot encode new raw input (precomputed features)
    precomputed: bool = False

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-able settings that, with ``name``, fully determine the output."""
        return {}

    def spec(self) -> dict[str, Any]:
        """The config dict that rebuilds this encoder via ``build_encoder``."""
        return {"name": self.name, **self.settings()}

    def encode(self, items: Sequence[Any], sequences: bool = False) -> list[Encoded]:
        """Encode a batch. ``items`` are waveforms (speech) or strings (text)."""
        raise NotImplementedError

    def cost(self, item: Any) -> int:
        """Length used to sort items into batches with little padding."""
        return len(item)
