"""The stage contract: a stage is planned into steps, each step into tasks.

A stage reads its config section and inputs, and splits its work into steps (most stages
have one; a map-reduce such as dedup has several) of independent tasks. A task writes its
outputs under temporary names, renames them into place, and only then writes its done
marker `_tasks/<step>/NNNNN.done` holding its stats. Executors (local pool, SLURM) only
see `run_task(stage_dir, step, task)`; they never know what a stage computes.
"""
from __future__ import annotations

import abc
import hashlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from pipeline.config import StrictModel
from pipeline.errors import InputError, PipelineError

PLAN_FILE = "_plan.json"
MANIFEST_FILE = "_manifest.json"
TASKS_DIR = "_tasks"
SHARD_SUFFIX = ".jsonl.zst"


class StageConfig(StrictModel):
    """Keys every stage section accepts."""

    type: str | None = Field(None, description="stage type when the section's name is not one")
    input: str | list[str] | None = Field(None, description="upstream stage name(s) or path(s); default: the previous stage")


@dataclass
class StageInput:
    """One resolved input: an upstream stage of the same run, or an outside path."""

    kind: str  # "stage" (documents of a stage), "path" (outside files) or "ref" (a file a stage made)
    path: str
    stage: str | None = None
    fingerprint: str | None = None
    num_shards: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Step:
    name: str
    num_tasks: int


def shard_name(index: int) -> str:
    return f"{index:05d}{SHARD_SUFFIX}"


def path_fingerprint(path: Path) -> str:
    """A cheap fingerprint of outside inputs: names, sizes and modification times."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class Stage(abc.ABC):
    """Base class. Subclasses set `type_name`, `Config`, and implement `steps`/`run_task`."""

    type_name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    version: ClassVar[int] = 1  # bump when a change in outputs should invalidate old runs
    code_modules: ClassVar[tuple[str, ...]] = ()  # library modules whose source is part of the fingerprint
    # what `input` defaults to: the nearest earlier stage that writes documents, the previous
    # stage whatever it writes (ingest reads raw files), or nothing
    default_input: ClassVar[str] = "documents"
    preload_modules: ClassVar[tuple[str, ...]] = ()  # heavy imports the local pool's workers inherit
    description: ClassVar[str] = ""

    def __init__(self, name: str, config: StageConfig, inputs: list[StageInput], out_dir: Path, seed: int = 0):
        self.name = name
        self.config = config
        self.inputs = inputs
        self.out_dir = Path(out_dir)
        self.seed = seed

    # --- planning (cheap, runs before any work, also for --dry-run and SLURM) ---
    @abc.abstractmethod
    def steps(self) -> list[Step]:
        """The stage's steps and how many tasks each has."""

    def num_output_shards(self) -> int | None:
        """How many document shards this stage writes, if it writes documents."""
        return None

    def validate_inputs(self) -> None:
        """Raise InputError for inputs that cannot work; called before any work."""
        for inp in self.inputs:
            if inp.kind == "path" and not Path(inp.path).exists():
                raise InputError(f"stage {self.name}: input not found: {inp.path}")

    @classmethod
    def code_version(cls) -> str:
        import importlib

        h = hashlib.sha256(inspect.getsource(inspect.getmodule(cls)).encode())
        for name in cls.code_modules:
            h.update(inspect.getsource(importlib.import_module(name)).encode())
        return f"{cls.version}:{h.hexdigest()[:16]}"

    def launch_spec(self):
        """Training stages: a LaunchConfig (nodes, processes per node); the SLURM executor then
        submits each task as a multi-node torchrun job. None for ordinary tasks."""
        return None

    # --- work ---
    def run_task(self, step: str, task: int) -> dict:
        """Runs `self._<step>(task)`, adds its time, writes the done marker (after the
        outputs, which the step has already renamed into place)."""
        handler = getattr(self, f"_{step}", None)
        if handler is None:
            raise PipelineError(f"stage type {self.type_name!r} has no step {step!r}")
        start = time.perf_counter()
        stats = handler(task)
        stats["seconds"] = time.perf_counter() - start
        write_marker(self.task_marker(step, task), stats)
        return stats

    def finalize(self, task_stats: dict[str, list[dict]]) -> dict:
        """Merges the tasks' stats into the stage's stats (override to add more)."""
        return merge_stats([s for step in task_stats.values() for s in step])

    # --- helpers for document stages ---
    def input_shards(self) -> list[Path]:
        """The document shards this stage reads, in a fixed order."""
        shards: list[Path] = []
        for inp in self.inputs:
            root = Path(inp.path)
            if inp.kind == "ref":  # a model or file another stage made, not documents
                continue
            if inp.kind == "stage":
                shards += [root / shard_name(i) for i in range(inp.num_shards or 0)]
            elif root.is_file():
                shards.append(root)
            else:
                from data.readers import list_input_files

                shards += list_input_files(root)[0]
        return shards

    def task_marker(self, step: str, task: int) -> Path:
        return self.out_dir / TASKS_DIR / step / f"{task:05d}.done"


def merge_stats(stats: list[dict]) -> dict:
    """Sums numbers and merges nested dicts (e.g. removals by reason) over tasks."""
    total: dict[str, Any] = {}
    for s in stats:
        for key, value in s.items():
            if isinstance(value, dict):
                total[key] = merge_stats([total.get(key, {}), value])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def write_marker(path: Path, stats: dict) -> None:
    from data.jsonl import atomic_write_json

    atomic_write_json(path, stats)


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start
