"""Configuration: documented dataclasses, YAML files, dotted ``key=value`` overrides.

Every hyperparameter of a run lives here (loss weights included); code never
hard-codes them. Loading is strict: an unknown key or a value of the wrong type is
a :class:`ConfigError` that names the key and suggests the closest valid one.

``model`` is a section whose fields depend on ``model.name``: the model registry
maps the name to the model's own config dataclass (e.g. ``FDRLConfig``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from fdrl.errors import ConfigError
from fdrl.utils.io import sha256_text


@dataclass
class DataConfig:
    manifest: str = ""            # prepared corpus: a folder with manifest.jsonl, or the file itself
    max_seconds: float = 15.0     # audio longer than this is cropped (first max_seconds kept)
    sample_rate: int = 16000      # every waveform is resampled to this rate
    skip_bad: bool = False        # skip unreadable utterances with a warning instead of stopping


@dataclass
class FeaturesConfig:
    speech: dict = field(default_factory=lambda: {"name": "egemaps"})  # speech encoder spec ({"name": "none"}: no speech)
    text: dict = field(default_factory=lambda: {"name": "minilm"})     # text encoder spec ({"name": "none"}: no text)
    sequences: bool = False       # feed frame/token sequences (B, L, d) to the model instead of pooled vectors
    cache_dir: str = "cache/features"  # frozen-encoder outputs are cached here, keyed by encoder + settings + content
    batch_size: int = 16          # encoder batch size during extraction
    finetune: bool = False        # train the encoders end to end (the paper's setting; GPU) instead of caching


@dataclass
class TrainConfig:
    epochs: int = 30              # maximum number of epochs
    batch_size: int = 32          # training batch size (the paper: 8 with fine-tuned encoders)
    eval_batch_size: int = 256    # batch size for validation / test passes
    lr: float = 1e-3              # AdamW learning rate of the head (the paper: 1e-5 end to end)
    encoder_lr: float = 1e-5      # learning rate of fine-tuned encoders (features.finetune)
    weight_decay: float = 1e-2    # AdamW weight decay
    scheduler: Literal["none", "cosine", "linear"] = "none"  # learning-rate schedule over all steps
    warmup_ratio: float = 0.0     # fraction of steps of linear warm-up
    grad_clip: float = 1.0        # max gradient norm (0 disables clipping)
    class_weighted: bool = False  # weight the task loss by inverse class frequency of the training part
    balanced_sampling: bool = False  # sample training batches class-balanced
    patience: int = 10            # early stopping: epochs without validation improvement (0: never stop early)
    select_metric: Literal["uar", "war", "loss"] = "uar"  # validation metric for model selection
    seed: int = 0                 # seeds python, numpy and torch
    device: str = "auto"          # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    deterministic: bool = True    # torch.use_deterministic_algorithms where possible
    diagnose: bool = False        # history.csv: gradient norm each loss term sends into the gradient-probe
                                  # parameters (FDRL: E_s), every `diagnose_every` steps (extra backward passes)
    diagnose_every: int = 10      # steps between two per-term gradient measurements with `diagnose`
    threads: int = 1              # torch CPU threads while training on CPU (small heads are fastest on 1; 0 = torch's default)


@dataclass
class CVConfig:
    protocol: Literal["session", "speaker", "fold"] = "session"  # leave-one-session-out, -speaker-out, or the `fold` column
    folds: list | None = None     # test groups to run (e.g. [1, 3]); None = all
    val_strategy: Literal["stratified", "speaker"] = "stratified"  # validation split carved from the training part
    val_fraction: float = 0.1     # share of the training part held out for validation


@dataclass
class RunConfig:
    name: str = "fdrl"            # run folder: <out_dir>/<name>-<YYYYmmdd-HHMMSS>
    out_dir: str = "runs"         # parent folder of run folders
    save_representations: bool = True  # store test-set S/P/embeddings per fold (figures, probes)
    tensorboard: bool = True      # also log to TensorBoard (events under the fold folder)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: Any = None             # the model's own config dataclass, chosen by model.name
    model_name: str = "fdrl"      # registry name of the model (YAML: model.name)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "model_name":
                continue
            if f.name == "model":
                out["model"] = {"name": self.model_name, **dataclasses.asdict(value)}
            else:
                out[f.name] = dataclasses.asdict(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self) -> str:
        return sha256_text(self.to_yaml())


SECTIONS = {"data": DataConfig, "features": FeaturesConfig, "train": TrainConfig,
            "cv": CVConfig, "run": RunConfig}


def _suggest(key: str, options) -> str:
    """The closest valid name: a name the key starts with (``lr_rate`` -> ``lr``), else
    the nearest by edit similarity."""
    options = list(options)
    prefixed = [o for o in options if key.startswith(o) or o.startswith(key)]
    close = sorted(prefixed, key=len, reverse=True)[:1] or difflib.get_close_matches(
        key, options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` where lossless, else raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, "
                          f"got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {list(allowed)}, got {value!r}"
                              + (_suggest(str(value), map(str, allowed)) if isinstance(value, str) else ""))
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        return [(_check_value(v, args[0], f"{key}[{i}]") if args else v) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build_dataclass(cls: type, data: dict | None, prefix: str) -> Any:
    """Instantiate ``cls`` from ``data`` strictly (unknown keys and bad types are errors)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}.{key}'{_suggest(key, names)}")
        kwargs[key] = _check_value(value, hints[key], f"{prefix}.{key}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}: {exc}") from None
    return obj


def from_dict(data: dict) -> Config:
    """Build a :class:`Config` from a nested dict (e.g. a parsed YAML file)."""
    from fdrl.models import registry

    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    allowed = list(SECTIONS) + ["model"]
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key '{key}'{_suggest(key, allowed)}")
    sections = {name: build_dataclass(cls, data.get(name), name) for name, cls in SECTIONS.items()}
    model_data = dict(data.get("model") or {})
    name = model_data.pop("name", "fdrl")
    entry = registry.get(str(name))
    model_cfg = build_dataclass(entry.config_cls, model_data, "model")
    return Config(model=model_cfg, model_name=entry.name, **sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = safe_load_bounded(raw) if raw.strip() else None
    except YAMLTooLarge as exc:
        raise ConfigError(f"override '{key}': {exc}") from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string; it means a float
        try:
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | dict | None) -> dict:
    """Return a copy of ``data`` with dotted overrides applied (not yet validated)."""
    data = copy.deepcopy(data)
    if not overrides:
        return data
    items = overrides.items() if isinstance(overrides, dict) else [
        (".".join(k), v) for k, v in map(parse_override, overrides)]
    for dotted, value in items:
        path = dotted.split(".")
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
            node = node[part]
        node[path[-1]] = value
    return data


def builtin_config_dir() -> Path:
    return Path(str(resources.files("fdrl") / "configs"))


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a built-in config (``demo``, ``iemocap_paper``...)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = builtin_config_dir() / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if builtin.is_file():
        return builtin
    known = sorted(q.stem for q in builtin_config_dir().glob("*.yaml"))
    raise ConfigError(f"config '{name_or_path}': no such file and no built-in config of that name "
                      f"(built-in: {', '.join(known)})")


#: a config file is a few kB; anything this large is not one
MAX_YAML_BYTES = 1 << 20
#: values a YAML document may expand to, aliases counted at every use ("billion laughs":
#: nine nested aliases of nine-item lists expand to 9**9 values from 200 bytes)
MAX_YAML_VALUES = 100_000


class YAMLTooLarge(yaml.YAMLError):
    """A YAML document larger than :data:`MAX_YAML_BYTES` or whose aliases expand to more
    than :data:`MAX_YAML_VALUES` values (or into themselves)."""


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Number of values ``node`` stands for once every alias is expanded; raises
    :class:`YAMLTooLarge` past ``limit`` or on an alias that contains itself. Aliases
    share their node, so each node is sized once (memoised): linear in the document."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise YAMLTooLarge("an alias refers to a value that contains it (a recursive alias)")
        open_.add(key)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        open_.discard(key)
        if total > limit:
            raise YAMLTooLarge(f"the document expands to more than {limit:,} values (YAML aliases "
                               f"repeated inside each other?); a config is far smaller")
        sizes[key] = total
        return total

    return size(node)


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases expand past
    :data:`MAX_YAML_VALUES` values or into themselves, before building any object."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, MAX_YAML_VALUES)
        return node


def safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with bounds on size and alias expansion (:class:`YAMLTooLarge`)."""
    if len(text) > MAX_YAML_BYTES:
        raise YAMLTooLarge(f"larger than {MAX_YAML_BYTES >> 20} MiB; a config is a few kB")
    return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise YAMLTooLarge(f"larger than {MAX_YAML_BYTES >> 20} MiB; a config is a few kB")
        data = safe_load_bounded(raw.decode("utf-8")) or {}
    except YAMLTooLarge as exc:
        raise ConfigError(f"{path}: not a usable config: {exc}") from None
    except yaml.YAMLError as exc:
        # the context mark points at what was left open (e.g. an unclosed "["), which is
        # where the fix goes; otherwise the problem's own position
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def switch_model(data: dict, overrides: list[str] | dict | None) -> dict:
    """When the overrides set ``model.name`` to another model than the file's, keep only
    the file's model keys that the new model has (``d``, ``hidden``, ``dropout``...): the
    file's FDRL loss weights must not break ``model.name=foalnet``. Keys given on the
    command line stay strict. Returns ``data`` (a copy when something is left out)."""
    import logging

    from fdrl.models import registry

    items = (list(overrides.items()) if isinstance(overrides, dict) else
             [(".".join(k), v) for k, v in map(parse_override, overrides or [])])
    new = next((str(v) for k, v in reversed(items) if k == "model.name"), None)
    section = data.get("model") if isinstance(data.get("model"), dict) else None
    if new is None or section is None or str(section.get("name", "fdrl")) == new:
        return data
    names = {f.name for f in dataclasses.fields(registry.get(new).config_cls)}
    dropped = sorted(k for k in section if k != "name" and k not in names)
    if not dropped:
        return data
    logging.getLogger(__name__).info(
        "model.name=%s: the config's model keys %s belong to '%s' and are left out",
        new, ", ".join(dropped), section.get("name", "fdrl"))
    data = copy.deepcopy(data)
    data["model"] = {k: v for k, v in section.items() if k not in dropped}
    return data


def load_config(name_or_path: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Load a YAML config (file or built-in name), apply overrides, validate strictly.

    ``model.name=OTHER`` among the overrides switches the model: the file's model keys
    OTHER does not have are left out (:func:`switch_model`)."""
    data = load_yaml(resolve_config_path(name_or_path)) if name_or_path else {}
    return from_dict(apply_overrides(switch_model(data, overrides), overrides))
