"""Ablation systems: named config overrides, read from YAML.

A *system* is the base configuration of an ablation plus a few dotted overrides
(``model.use_global: false``). The built-in systems live in
``fdrl/configs/systems/*.yaml`` (every file there is read, e.g. ``fdrl.yaml`` for
FDRL's Table 2 and ``foalnet.yaml`` for Foal-Net); users add their own with
``fdrl ablate --systems-file my.yaml`` in the same format.

File format (one YAML mapping per file)::

    model: fdrl                    # registry name of the model these systems ablate
                                   # (optional; omitted = any model)
    reference: S0                  # the full system the others are compared with
                                   # (optional; must be a system of this file)
    paper_setting: IEMOCAP, wav2vec2+BERT fine-tuned   # where the `paper` numbers come
                                   # from; labels the paper columns (optional)
    default: [S0, S1, S2]          # run when `--systems` is not given (optional;
                                   # omitted = every system of the file)
    systems:                       # name -> entry, in display order
      S0:
        description: full FDRL     # one line (required)
        paper: {war: 78.34, uar: 79.44}   # the paper's numbers in % (optional);
                                   # `row: S4` when they belong to another row's name
        overrides: {}              # dotted config keys -> values (optional, default {})
      S2:
        description: no global domain discriminator (L_g)
        paper: {war: 77.39, uar: 78.26}
        overrides:
          model.use_global: false

Names are used as folder names, so they may contain letters, digits and ``_ . + -``;
a name must be unique over all files read. Override keys are validated when the
system's configuration is built (:func:`fdrl.training.ablate.system_config`): an
unknown key is a :class:`~fdrl.errors.ConfigError` naming the system and the file.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fdrl.config import _suggest, builtin_config_dir, load_yaml
from fdrl.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
FILE_KEYS = ("model", "reference", "paper_setting", "default", "systems")
ENTRY_KEYS = ("description", "paper", "overrides")
PAPER_KEYS = ("war", "uar", "row")


@dataclass(frozen=True)
class System:
    """One ablation system: a name, what it changes, and the config overrides."""

    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    paper: dict | None = None          # {"war": %, "uar": %, "row": name in the paper}
    model: str | None = None           # model it ablates (None: any)
    reference: str | None = None       # system it is compared with (None: none)
    paper_setting: str | None = None   # where the paper numbers come from
    source: str = ""                   # file it was read from

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "System":
        return cls(**{k: data.get(k) for k in ("name", "description", "paper", "model",
                                                "reference", "paper_setting")},
                   overrides=dict(data.get("overrides") or {}), source=str(data.get("source", "")))


@dataclass
class Catalog:
    """Every known system, in file order, plus each file's default selection."""

    systems: dict[str, System] = field(default_factory=dict)
    defaults: list[tuple[str | None, list[str]]] = field(default_factory=list)  # (model, names)

    def for_model(self, model_name: str) -> list[System]:
        return [s for s in self.systems.values() if s.model in (None, model_name)]

    def select(self, names: str | list[str] | None, model_name: str) -> list[System]:
        """The systems to run for a config whose model is ``model_name``.

        ``names``: None (each matching file's ``default``), ``"all"`` (every matching
        system), or a list / comma-separated string of names.
        """
        if names is None:
            picked = [n for model, default in self.defaults if model in (None, model_name)
                      for n in default]
            if not picked:
                raise ConfigError(f"no ablation systems are defined for model '{model_name}'; "
                                  f"pass --systems-file FILE (format: fdrl.training.systems)")
            return [self.systems[n] for n in dict.fromkeys(picked)]
        if isinstance(names, str):
            if names.strip() == "all":
                return self.for_model(model_name)
            names = [n.strip() for n in names.split(",") if n.strip()]
        if not names:
            raise ConfigError("--systems: empty list; give names such as S0,S1 or 'all'")
        out = []
        for n in dict.fromkeys(names):
            if n not in self.systems:
                raise ConfigError(f"--systems: unknown system '{n}'{_suggest(n, self.systems)}; "
                                  f"known: {', '.join(self.systems)}")
            s = self.systems[n]
            if s.model not in (None, model_name):
                raise ConfigError(f"system '{n}' ({s.source}) ablates model '{s.model}' but the "
                                  f"config's model is '{model_name}'")
            out.append(s)
        return out


def builtin_systems_dir() -> Path:
    return builtin_config_dir() / "systems"


def _check_keys(found, allowed, where: str) -> None:
    for key in found:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(str(key), allowed)}; "
                              f"expected {', '.join(allowed)}")


def _read_paper(value, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.paper: expected a mapping {{war: %, uar: %}}, got {value!r}")
    _check_keys(value, PAPER_KEYS, f"{where}.paper")
    out = {}
    for k in ("war", "uar"):
        v = value.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(f"{where}.paper.{k}: expected a number in %, got {v!r}")
        out[k] = None if v is None else float(v)
    if value.get("row") is not None:
        out["row"] = str(value["row"])
    return out


def _read_overrides(value, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.overrides: expected a mapping of dotted keys "
                          f"(model.use_global: false), got {value!r}")
    for key in value:
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}.overrides: key {key!r} is not a dotted config key "
                              f"such as model.use_global or train.lr")
    return dict(value)


def read_systems_file(path: str | Path) -> tuple[list[System], tuple[str | None, list[str]]]:
    """Read one systems file; returns its systems and (model, default names)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"systems file {path}: no such file")
    data = load_yaml(path)
    _check_keys(data, FILE_KEYS, str(path))
    entries = data.get("systems")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: expected 'systems:' with at least one named system")
    model = None if data.get("model") is None else str(data["model"])
    reference = None if data.get("reference") is None else str(data["reference"])
    setting = None if data.get("paper_setting") is None else str(data["paper_setting"])
    systems = []
    for raw_name, entry in entries.items():
        name = str(raw_name)
        where = f"{path}: system '{name}'"
        if not NAME_RE.match(name):
            raise ConfigError(f"{where}: a name may contain letters, digits and _ . + - only "
                              f"(it names a run folder)")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with description / paper / overrides")
        _check_keys(entry, ENTRY_KEYS, where)
        if not isinstance(entry.get("description"), str) or not entry["description"].strip():
            raise ConfigError(f"{where}: 'description' is required (one line: what changes)")
        systems.append(System(name=name, description=entry["description"].strip(),
                              overrides=_read_overrides(entry.get("overrides"), where),
                              paper=_read_paper(entry.get("paper"), where), model=model,
                              reference=reference, paper_setting=setting, source=str(path)))
    names = [s.name for s in systems]
    if reference is not None and reference not in names:
        raise ConfigError(f"{path}: reference '{reference}' is not one of its systems "
                          f"({', '.join(names)})")
    default = data.get("default")
    if default is None:
        default = names
    if not isinstance(default, list) or any(str(n) not in names for n in default):
        raise ConfigError(f"{path}: 'default' must list systems of this file, got {default!r}")
    return systems, (model, [str(n) for n in default])


def load_systems(extra_files: list[str | Path] | tuple = ()) -> Catalog:
    """Every built-in ``configs/systems/*.yaml`` (sorted by name), then ``extra_files``."""
    files = sorted(builtin_systems_dir().glob("*.yaml")) + [Path(p) for p in extra_files]
    catalog = Catalog()
    for path in files:
        systems, default = read_systems_file(path)
        for s in systems:
            if s.name in catalog.systems:
                raise ConfigError(f"{path}: system '{s.name}' is already defined in "
                                  f"{catalog.systems[s.name].source}; choose another name")
            catalog.systems[s.name] = s
        catalog.defaults.append(default)
    return catalog
