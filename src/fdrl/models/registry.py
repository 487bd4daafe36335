"""Model registry: ``model.name`` in a config selects a config class and a builder.

Each model module registers itself with :func:`register`; :func:`get` imports the
built-in model modules on first use so that the registry is always complete.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from fdrl.errors import ConfigError

BUILTIN_MODULES = (
    "fdrl.models.fdrl",
    "fdrl.models.baselines",
    "fdrl.models.foalnet",
    "fdrl.models.identity",
)


@dataclass
class ModelEntry:
    name: str
    config_cls: type
    build: Callable  # build(cfg, spec: InputSpec) -> EmotionModel
    doc: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register(name: str, config_cls: type, doc: str = "") -> Callable:
    """Decorator for a builder ``build(cfg, spec) -> EmotionModel``."""

    def deco(build: Callable) -> Callable:
        _REGISTRY[name] = ModelEntry(name, config_cls, build, doc)
        return build

    return deco


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name != mod:
                raise


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> ModelEntry:
    _load_builtins()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"model.name: unknown model '{name}'{hint}; "
                          f"known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
