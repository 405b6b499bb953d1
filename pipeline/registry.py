"""Stage types by name. Built-in stages register themselves on import."""
from __future__ import annotations

import importlib

from pipeline.errors import ConfigError
from pipeline.stage import Stage

_STAGES: dict[str, type[Stage]] = {}
BUILTIN_MODULES = ("pipeline.stages.sample", "pipeline.stages.ingest", "pipeline.stages.exact", "pipeline.stages.url",
                   "pipeline.stages.lines", "pipeline.stages.minhash", "pipeline.stages.language",
                   "pipeline.stages.heuristics", "pipeline.stages.classifiers", "pipeline.stages.mixing",
                   "pipeline.stages.train")


def register(cls: type[Stage]) -> type[Stage]:
    _STAGES[cls.type_name] = cls
    return cls


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get_stage_class(type_name: str, where: str = "") -> type[Stage]:
    _load_builtins()
    if type_name not in _STAGES:
        known = ", ".join(sorted(_STAGES))
        raise ConfigError(f"{where}unknown stage type {type_name!r} (known: {known})")
    return _STAGES[type_name]


def all_stages() -> dict[str, type[Stage]]:
    _load_builtins()
    return dict(sorted(_STAGES.items()))
