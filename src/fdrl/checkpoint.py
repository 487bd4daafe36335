"""Self-describing checkpoints (the on-disk format of fold checkpoints and model bundles).

A checkpoint is a folder::

    model.safetensors   the weights (safetensors: no pickle, safe to load)
    bundle.json         everything needed to rebuild and use the model: format and
                        toolkit version, model name, the resolved config, the class
                        names, the input spec (dims, pooled or sequence), the
                        encoders' specs, preprocessing (sample rate, max duration),
                        epoch and metrics

so ``load_checkpoint`` rebuilds the model from the folder alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from fdrl import __version__
from fdrl.config import Config, from_dict
from fdrl.errors import BundleError, FdrlError
from fdrl.models import registry
from fdrl.models.base import EmotionModel, InputSpec
from fdrl.utils.io import atomic_path, read_json, write_json

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "bundle.json"


def build_model(cfg: Config, spec: InputSpec) -> EmotionModel:
    """Instantiate the configured model for the given inputs."""
    return registry.get(cfg.model_name).build(cfg.model, spec)


def input_meta(spec: InputSpec) -> dict:
    d = dataclasses.asdict(dataclasses.replace(spec, speech_backbone=None, text_backbone=None))
    d.pop("speech_backbone"), d.pop("text_backbone")
    return d


def save_checkpoint(folder: str | Path, model: EmotionModel, cfg: Config, classes: list[str],
                    spec: InputSpec, encoders: dict[str, dict | None], epoch: int,
                    metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/bundle.json`` atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    meta = {
        "format_version": FORMAT_VERSION,
        "fdrl_version": __version__,
        "model_name": cfg.model_name,
        "config": cfg.to_dict(),
        "classes": list(classes),
        "input": input_meta(spec),
        "encoders": encoders,
        "preprocessing": {"sample_rate": cfg.data.sample_rate, "max_seconds": cfg.data.max_seconds},
        "epoch": epoch,
        "metrics": metrics,
    }
    meta.update(extra or {})
    write_json(folder / META, meta)
    return folder


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise BundleError(f"{folder}: not a model bundle (expected {META} and {WEIGHTS})")
    try:
        meta = read_json(folder / META)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder / META}: not valid JSON ({exc})") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{folder / META}: bundle format version {version!r} is not supported by "
                          f"fdrl {__version__} (expects {FORMAT_VERSION}); re-export it with a "
                          f"matching fdrl version")
    for key in ("model_name", "config", "classes", "input"):
        if key not in meta:
            raise BundleError(f"{folder / META}: field '{key}' is missing")
    return meta


def with_legacy_defaults(config: Any) -> Any:
    """A bundle's config with the model keys it predates filled with the values that
    reproduce the model it was saved from (the config class's ``LEGACY_DEFAULTS``):
    a key that did not exist then meant the behaviour of that time, not today's default."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return config
    try:
        legacy = getattr(registry.get(str(model.get("name", "fdrl"))).config_cls, "LEGACY_DEFAULTS", {})
    except Exception:  # noqa: BLE001 - an unknown model name is reported by from_dict
        return config
    return {**config, "model": {**{k: v for k, v in legacy.items() if k not in model}, **model}}


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu",
                    backbones: dict[str, torch.nn.Module] | None = None
                    ) -> tuple[EmotionModel, dict, Config]:
    """Rebuild the model from a checkpoint folder; returns (model in eval mode, meta, config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    try:
        cfg = from_dict(with_legacy_defaults(meta["config"]))
    except FdrlError as exc:
        raise BundleError(f"{folder / META}: config does not match this fdrl version: {exc}") from None
    fields = {f.name for f in dataclasses.fields(InputSpec)}
    spec = InputSpec(**{k: v for k, v in meta["input"].items() if k in fields},
                     speech_backbone=(backbones or {}).get("speech"),
                     text_backbone=(backbones or {}).get("text"))
    model = build_model(cfg, spec)
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, Exception) as exc:  # corrupt or truncated file
        raise BundleError(f"{folder / WEIGHTS}: cannot read weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(f"{folder / WEIGHTS}: weights do not fit the model "
                          f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    model.to(device).eval()
    return model, meta, cfg
