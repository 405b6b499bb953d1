"""What executors call: rebuild a stage from its folder, run one task, finalize.

The stage folder's `_plan.json` holds everything a task needs (type, config, inputs), so
a task runs the same in a local worker process and in a SLURM array job on another node.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from data.jsonl import atomic_write_json
from pipeline.errors import PipelineError
from pipeline.registry import get_stage_class
from pipeline.stage import MANIFEST_FILE, PLAN_FILE, TASKS_DIR, Stage, StageInput, read_marker

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_stage(stage_dir: str | Path) -> Stage:
    stage_dir = Path(stage_dir)
    plan_path = stage_dir / PLAN_FILE
    if not plan_path.exists():
        raise PipelineError(f"{stage_dir}: no {PLAN_FILE}; is this a stage folder?")
    plan = json.loads(plan_path.read_text())
    cls = get_stage_class(plan["type"])
    config = cls.Config.model_validate(plan["config"])
    inputs = [StageInput(**i) for i in plan["inputs"]]
    return cls(plan["name"], config, inputs, stage_dir, seed=plan.get("seed", 0))


def clean_temporaries(stage_dir: Path) -> None:
    """Removes half-written files a killed task left behind (they never carry a final name)."""
    for tmp in stage_dir.rglob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def run_task(stage_dir: str | Path, step: str, task: int) -> dict:
    """Runs one task unless its done marker exists; returns its stats."""
    stage = load_stage(stage_dir)
    marker = stage.task_marker(step, task)
    done = read_marker(marker)
    if done is not None:
        return done
    return stage.run_task(step, task)


def read_manifest(stage_dir: Path) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / MANIFEST_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(stage_dir: Path, manifest: dict) -> None:
    atomic_write_json(Path(stage_dir) / MANIFEST_FILE, manifest)


def pending_tasks(stage: Stage, step: str, num_tasks: int) -> list[int]:
    return [t for t in range(num_tasks) if not stage.task_marker(step, t).exists()]


def finalize(stage_dir: str | Path) -> dict:
    """Merges task stats into the manifest and marks the stage done (all tasks must be done)."""
    stage_dir = Path(stage_dir)
    stage = load_stage(stage_dir)
    per_step: dict[str, list[dict]] = {}
    for step in stage.steps():
        stats = [read_marker(stage.task_marker(step.name, t)) for t in range(step.num_tasks)]
        missing = [t for t, s in enumerate(stats) if s is None]
        if missing:
            raise PipelineError(f"stage {stage.name}: step {step.name} tasks not done: {missing[:10]}")
        per_step[step.name] = stats
    manifest = read_manifest(stage_dir) or {}
    manifest["stats"] = stage.finalize(per_step)
    manifest["stats"]["task_seconds"] = {k: round(sum(s.get("seconds", 0) for s in v), 3) for k, v in per_step.items()}
    manifest["status"] = "done"
    manifest["finished"] = now()
    if manifest.get("started_unix"):
        manifest["seconds"] = round(time.time() - manifest["started_unix"], 3)
    write_manifest(stage_dir, manifest)
    return manifest


def reset_stage_dir(stage_dir: Path) -> None:
    """Empties a stage folder before a fresh run; refuses folders that are not ours."""
    if not stage_dir.exists():
        return
    ours = (stage_dir / PLAN_FILE).exists() or (stage_dir / MANIFEST_FILE).exists()
    if not ours and any(stage_dir.iterdir()):
        raise PipelineError(f"{stage_dir} is not empty and is not a stage folder; refusing to overwrite it")
    for child in stage_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def task_dirs(stage_dir: Path) -> Path:
    return stage_dir / TASKS_DIR


def worker_init() -> None:
    """Per-process setup for pool workers: quiet logging, one thread per library."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
