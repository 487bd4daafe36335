"""Self-describing checkpoints (the on-disk format of fold checkpoints and model bundles).

A checkpoint is a folder::

    model.safetensors   the weights (safetensors: no pickle, safe to load)
    bundle.json         everything needed to rebuild and use the model: format and
                        toolkit version, model name, the resolved config, the class
                        names, the input spec (dims, pooled or sequence), the
                        encoders' specs, preprocessing (sample rate, max duration),
                        epoch and metrics

so ``load_checkpoint`` rebuilds the model from the folder alone.

A folder is data, not code, and may have been edited: ``bundle.json`` is checked
against a schema (types, ranges with upper bounds, one unique class name per output)
and the weights' shapes against a model built on the meta device (no memory) before
anything is allocated; NaN/inf weights are refused. Every problem is a one-line
:class:`BundleError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

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

# Bounds a bundle.json is held to (far above any real model, far below what would
# exhaust memory or time while building one)
MAX_CLASSES = 1000
MAX_DIM = 1 << 16             # input feature widths and model widths
MAX_COUNT = 64                # counts: layers, heads, CMD moments, strides
MAX_SPEAKERS = 1 << 20
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32
MAX_SECONDS = 3600.0          # preprocessing.max_seconds
_COUNT_WORDS = ("layers", "heads", "moments", "stride")
_SECTIONS = ("data", "features", "model", "train", "cv", "run")


# ---------------------------------------------------------------------------- writing


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError that names ``path`` (its errno kept)."""
    if exc.filename is not None and Path(exc.filename) == path:
        return exc
    code = exc.errno if exc.errno is not None else errno.EIO
    return OSError(code, exc.strerror or str(exc), str(path))


def write_via(path: str | Path, write: Callable[[Any], None], name: str | Path | None = None) -> None:
    """Write ``path`` through ``write(Python file object)``; an OSError names ``name``
    (default ``path``; the final name when ``path`` is an atomic write's temporary file).

    Writers get a Python file object, never a path: torch's C++ writer turns an
    operating-system error (a full disk) into a RuntimeError without errno or file
    name; through a file object it stays an OSError (the CLI prints it as one line,
    exit code 1).
    """
    try:
        with open(path, "wb") as fh:
            write(fh)
    except OSError as exc:
        raise _naming(exc, Path(name if name is not None else path)) from exc


def write_atomic(path: str | Path, write: Callable[[Any], None]) -> Path:
    """:func:`write_via` into a temporary file renamed onto ``path`` (``atomic_path``)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            write_via(tmp, write, name=path)
    except OSError as exc:
        raise _naming(exc, path) from exc
    return path


def torch_save(obj: Any, path: str | Path, name: str | Path | None = None) -> None:
    """``torch.save(obj, path)`` through a Python file object (see :func:`write_via`)."""
    write_via(path, lambda fh: torch.save(obj, fh), name=name)


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically, with disk errors as OSErrors naming ``path``."""
    return write_atomic(path, lambda fh: torch.save(obj, fh))


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
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # serialised in memory, then written by Python: a full disk is an OSError naming the
    # file (safetensors' own file writer may not report it)
    data = save(state, metadata={"format": "pt"})
    write_atomic(folder / WEIGHTS, lambda fh: fh.write(data))
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
    """Read ``folder/bundle.json`` and check it against the schema (:func:`check_meta`)."""
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise BundleError(f"{folder}: not a model bundle (expected {META} and {WEIGHTS})")
    try:
        meta = read_json(folder / META)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{folder / META}: not valid JSON ({exc})") from None
    check_meta(meta, folder / META)
    return meta


def _show(value: Any) -> str:
    """A value as bundle.json spells it (null, [], "abc"), cut to 60 characters."""
    try:
        text = json.dumps(value, allow_nan=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_error(where: Path | str, name: str, expected: str, value: Any) -> BundleError:
    return BundleError(f"{where}: field '{name}': expected {expected}, got {_show(value)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(where, name: str, v: Any, lo: int, hi: int) -> None:
    if not _is_int(v) or not lo <= v <= hi:
        raise _field_error(where, name, f"an integer in [{lo}, {hi}]", v)


def _check_mapping(where, name: str, v: Any, optional: bool = False) -> None:
    if not (isinstance(v, dict) or (optional and v is None)):
        raise _field_error(where, name, "an object" + (" or null" if optional else ""), v)


def check_meta(meta: Any, where: Path | str) -> None:
    """Check a parsed ``bundle.json`` against the schema: types, ranges with upper bounds,
    one unique class name per model output.

    Raises
    ------
    BundleError
        ``<where>: field 'input.num_classes': expected ..., got ...`` for the first problem.
    """
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: expected a JSON object at the top level, got {_show(meta)}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format version {version!r} is not supported by "
                          f"fdrl {__version__} (expects {FORMAT_VERSION}); re-export it with a "
                          f"matching fdrl version")
    for key in ("model_name", "config", "classes", "input"):
        if key not in meta:
            raise BundleError(f"{where}: field '{key}' is missing")
    for key in ("model_name",) + (("fdrl_version",) if "fdrl_version" in meta else ()):
        if not isinstance(meta[key], str) or not meta[key]:
            raise _field_error(where, key, "a non-empty string", meta[key])
    _check_mapping(where, "config", meta["config"])
    for section in _SECTIONS:
        if section in meta["config"]:
            _check_mapping(where, f"config.{section}", meta["config"][section], optional=True)
    model_cfg = meta["config"].get("model") or {}
    if "name" in model_cfg and model_cfg["name"] != meta["model_name"]:
        raise _field_error(where, "model_name", f"the model of config.model.name "
                           f"({_show(model_cfg['name'])})", meta["model_name"])
    # classes: one unique name per output
    classes = meta["classes"]
    if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
        raise _field_error(where, "classes", f"a list of 2 to {MAX_CLASSES} class names", classes)
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip():
            raise _field_error(where, f"classes[{i}]", "a non-empty string", c)
    seen: dict[str, int] = {}
    for i, c in enumerate(classes):
        if c in seen:
            raise BundleError(f"{where}: field 'classes': class names must be unique; "
                              f"{_show(c)} is both classes[{seen[c]}] and classes[{i}]")
        seen[c] = i
    # input: what the model reads and how many outputs it has
    spec = meta["input"]
    _check_mapping(where, "input", spec)
    _check_int(where, "input.num_classes", spec.get("num_classes"), 2, MAX_CLASSES)
    if spec["num_classes"] != len(classes):
        raise BundleError(f"{where}: field 'classes': lists {len(classes)} names but the model has "
                          f"{spec['num_classes']} outputs (input.num_classes); expected one name "
                          f"per output")
    for m in ("speech", "text"):
        dim = spec.get(f"{m}_dim")
        if dim is not None:
            _check_int(where, f"input.{m}_dim", dim, 1, MAX_DIM)
        if not isinstance(spec.get(f"{m}_sequence", False), bool):
            raise _field_error(where, f"input.{m}_sequence", "true or false", spec[f"{m}_sequence"])
    if spec.get("speech_dim") is None and spec.get("text_dim") is None:
        raise _field_error(where, "input.speech_dim", "an integer (speech_dim and text_dim are "
                           "both null: the model reads nothing)", None)
    if "num_speakers" in spec:
        _check_int(where, "input.num_speakers", spec["num_speakers"], 0, MAX_SPEAKERS)
    # encoders: one per model input
    if "encoders" in meta:
        encoders = meta["encoders"]
        _check_mapping(where, "encoders", encoders, optional=True)
        for m in ("speech", "text"):
            enc = (encoders or {}).get(m)
            _check_mapping(where, f"encoders.{m}", enc, optional=True)
            if enc is None:
                continue
            if not isinstance(enc.get("name"), str) or not enc["name"]:
                raise _field_error(where, f"encoders.{m}.name", "an encoder name", enc.get("name"))
            for key in ("compute", "source"):
                if key in enc:
                    _check_mapping(where, f"encoders.{m}.{key}", enc[key], optional=True)
    # preprocessing
    if "preprocessing" in meta:
        pre = meta["preprocessing"]
        _check_mapping(where, "preprocessing", pre, optional=True)
        pre = pre or {}
        if "sample_rate" in pre:
            _check_int(where, "preprocessing.sample_rate", pre["sample_rate"], 1000, 384000)
        max_s = pre.get("max_seconds")
        if max_s is not None and not (_is_number(max_s) and math.isfinite(max_s)
                                      and 0 < max_s <= MAX_SECONDS):
            raise _field_error(where, "preprocessing.max_seconds",
                               f"null or a number of seconds in (0, {MAX_SECONDS:g}]", max_s)
    if meta.get("epoch") is not None:
        _check_int(where, "epoch", meta["epoch"], 0, 10**9)
    if "metrics" in meta:
        _check_mapping(where, "metrics", meta["metrics"], optional=True)


def _config_error(exc: FdrlError, where: Path | str) -> BundleError:
    """A config error of a bundle's config as a bundle.json field error."""
    msg = str(exc)
    m = re.match(r"([A-Za-z_][\w.\[\]]*): (.*)", msg, re.S)
    if m and m.group(1).split(".")[0] in _SECTIONS:
        return BundleError(f"{where}: field 'config.{m.group(1)}': {m.group(2)}")
    return BundleError(f"{where}: config does not match this fdrl version: {msg}")


def check_model_config(cfg: Config, where: Path | str) -> None:
    """Upper bounds on the model's sizes and finite numbers in its config (the model's
    own checks give the lower bounds when it is built)."""
    def walk(value: Any, name: str) -> None:
        last = name.rsplit(".", 1)[-1]
        if _is_int(value):
            hi = MAX_COUNT if any(w in last for w in _COUNT_WORDS) else MAX_DIM
            if value > hi:
                raise _field_error(where, name, f"an integer of at most {hi}", value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise _field_error(where, name, "a finite number", value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}[{i}]")

    for f in dataclasses.fields(cfg.model):
        walk(getattr(cfg.model, f.name), f"config.model.{f.name}")
    max_s = cfg.data.max_seconds
    if not (math.isfinite(max_s) and 0 <= max_s <= MAX_SECONDS):
        raise _field_error(where, "config.data.max_seconds", f"a number of seconds in [0, {MAX_SECONDS:g}]",
                           max_s)


def expected_shapes(cfg: Config, spec: InputSpec, where: Path | str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the model ``cfg`` and ``spec`` describe, from a model
    built on the meta device (nothing allocated); refuses more than
    :data:`MAX_PARAMETERS` parameters."""
    try:
        with torch.device("meta"):
            model = build_model(cfg, spec)
    except FdrlError as exc:
        raise _config_error(exc, where) from None
    except Exception as exc:  # noqa: BLE001 - sizes the model code cannot take
        raise BundleError(f"{where}: cannot build the model it describes "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise BundleError(f"{where}: the model it describes has {n:,} parameters, more than the "
                          f"{MAX_PARAMETERS:,} fdrl loads; its sizes (config.model.*, input.*) "
                          f"were changed")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Compare the tensors listed in a safetensors file's header with ``expected``
    (read before any tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - corrupt or truncated header
        raise BundleError(f"{path}: cannot read weights ({exc})") from None
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        raise BundleError(f"{path}: weights do not fit the model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    for k, shape in expected.items():
        if shapes[k] != shape:
            raise BundleError(f"{path}: weights do not fit the model {META} describes: tensor '{k}' "
                              f"is {list(shapes[k])} in the file, the model needs {list(shape)}; "
                              f"{META}'s sizes (classes, input.*, config.model.*) or the weights "
                              f"were changed")


def check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights with NaN or inf values (they would give NaN probabilities)."""
    for k, t in state.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise BundleError(f"{path}: tensor '{k}' holds {bad} NaN/inf value(s) of {t.numel()}; "
                                  f"the weights are damaged (a diverged training or an edited file)")


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
    meta = read_meta(folder)  # the schema
    where = folder / META
    try:
        cfg = from_dict(with_legacy_defaults(meta["config"]))
    except FdrlError as exc:
        raise _config_error(exc, where) from None
    check_model_config(cfg, where)
    fields = {f.name for f in dataclasses.fields(InputSpec)}
    spec = InputSpec(**{k: v for k, v in meta["input"].items() if k in fields},
                     speech_backbone=(backbones or {}).get("speech"),
                     text_backbone=(backbones or {}).get("text"))
    # shapes and values before anything is allocated: a model built on the meta device
    # against the file's header, then the loaded tensors' values
    check_weights(folder / WEIGHTS, expected_shapes(cfg, spec, where))
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (SafetensorError, OSError, Exception) as exc:  # corrupt or truncated file
        raise BundleError(f"{folder / WEIGHTS}: cannot read weights ({exc})") from None
    check_finite(folder / WEIGHTS, state)
    model = build_model(cfg, spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(f"{folder / WEIGHTS}: weights do not fit the model "
                          f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    model.to(device).eval()
    return model, meta, cfg
