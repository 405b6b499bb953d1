"""Typed config: YAML -> validated models, CLI overrides `a.b=value`, clear errors.

The top level (run, executor) is validated here; each stage section is validated by its
stage's own `Config` model (see `pipeline.stage`). Every error names the key and the file
(or the override it came from) before any work starts.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SlurmConfig(StrictModel):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = Field(1, ge=1)
    mem: str | None = Field(None, description="memory per task, e.g. 16G; default: the partition's")
    max_parallel: int | None = Field(None, ge=1, description="array throttle: at most N tasks at once")
    extra_sbatch: list[str] = Field(default_factory=list, description="more sbatch options, e.g. --constraint=a100")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each task (module load, venv)")
    python: str | None = Field(None, description="interpreter on the compute nodes; default: the one running coordinator")
    poll_seconds: float = Field(5.0, gt=0)


class ExecutorConfig(StrictModel):
    kind: Literal["local", "slurm"] = "local"
    workers: int = Field(1, ge=1, description="local process pool size")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class RunConfig(StrictModel):
    name: str = Field(description="names the run; the run folder defaults to runs/<name>")
    dir: str | None = Field(None, description="run folder; default runs/<name>")
    seed: int = 0


class PipelineConfig(StrictModel):
    run: RunConfig
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. executor.workers=4")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key part in {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> tuple[dict, dict[str, str]]:
    """A copy of `raw` with overrides applied, and {dotted key: override text} for error messages."""
    raw = copy.deepcopy(raw)
    origin = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
        origin[".".join(parts)] = text
    return raw, origin


def describe_errors(err: ValidationError, where: str, prefix: str = "", origin: dict | None = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
        source = where
        for dotted, text in (origin or {}).items():
            if key == dotted or key.startswith(dotted + "."):
                source = f"override {text!r}"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required value missing"
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"{source}: {key}: {msg}")
    return "; ".join(lines)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


class LoadedConfig:
    """The validated top level plus the raw stage sections, and where they came from."""

    def __init__(self, raw: dict, where: str, origin: dict[str, str]):
        self.raw = raw
        self.where = where
        self.origin = origin
        try:
            self.top = PipelineConfig.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(describe_errors(err, where, origin=origin)) from None

    def validate_section(self, model: type[BaseModel], name: str) -> BaseModel:
        section = self.top.stages.get(name) or {}
        try:
            return model.model_validate(section)
        except ValidationError as err:
            raise ConfigError(describe_errors(err, self.where, f"stages.{name}", self.origin)) from None

    def resolved(self) -> dict:
        return self.raw

    def dump(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False, allow_unicode=True)


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> LoadedConfig:
    raw = load_yaml(path) if path is not None else copy.deepcopy(base or {})
    raw, origin = apply_overrides(raw, list(overrides))
    return LoadedConfig(raw, str(path) if path else "command line", origin)


def default_python() -> str:
    return sys.executable
