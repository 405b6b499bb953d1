"""Plans a run (which stages run, skip or resume, and why) and carries it out.

A stage's fingerprint is the hash of its type, its validated config section, its inputs'
fingerprints, the run seed and its code version; it is known from the config alone, so
the whole plan (and every SLURM job) is fixed before any work starts. An unchanged stage
is skipped; a changed one reruns, and since downstream fingerprints include upstream
ones, everything downstream reruns too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.jsonl import atomic_write_json, atomic_write_text
from pipeline import worker
from pipeline.config import LoadedConfig
from pipeline.errors import ConfigError, InputError, PipelineError, StageFailed
from pipeline.registry import get_stage_class
from pipeline.stage import PLAN_FILE, Stage, StageInput, path_fingerprint

log = logging.getLogger(__name__)


@dataclass
class PlannedStage:
    name: str
    stage: Stage
    fingerprint: str
    action: str  # run | resume | skip
    reason: str
    pending: list[tuple[str, list[int]]] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.stage.out_dir

    def total_tasks(self) -> int:
        return sum(step.num_tasks for step in self.stage.steps())


def fingerprint(type_name: str, section: dict, inputs: list[StageInput], seed: int, code: str) -> str:
    payload = {
        "type": type_name, "config": section, "seed": seed, "code": code,
        "inputs": [i.fingerprint or i.path for i in inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_inputs(name: str, mode: str, order: list[str], planned: dict[str, PlannedStage]) -> list[str]:
    earlier = order[: order.index(name)]
    if mode == "previous":
        return earlier[-1:]
    if mode == "documents":
        for prev in reversed(earlier):
            if planned[prev].stage.num_output_shards() is not None:
                return [prev]
    return []


REF_PREFIX = "stage:"


def resolve_refs(name: str, config, planned: dict[str, PlannedStage], where: str):
    """Config strings `stage:NAME[/path]` -> that file in stage NAME's folder, plus a `ref`
    input per referenced stage (its fingerprint joins ours; on SLURM we wait for it)."""
    refs: dict[str, StageInput] = {}

    def walk(value, key):
        if isinstance(value, str) and value.startswith(REF_PREFIX):
            stage_name, _, sub = value[len(REF_PREFIX):].partition("/")
            if stage_name not in planned:
                raise ConfigError(f"{where}: stages.{name}.{key}: {value!r} must name an earlier stage")
            up = planned[stage_name]
            refs[stage_name] = StageInput("ref", str(up.dir), stage=stage_name, fingerprint=up.fingerprint)
            return str(up.dir / sub) if sub else str(up.dir)
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    data = config.model_dump(mode="json")
    resolved = {k: walk(v, k) for k, v in data.items()}
    return type(config).model_validate(resolved), list(refs.values())


def resolve_inputs(name: str, entries, order: list[str], planned: dict[str, PlannedStage], run_dir: Path,
                   where: str, mode: str = "documents") -> list[StageInput]:
    if entries is None:
        entries = default_inputs(name, mode, order, planned)
    if isinstance(entries, str):
        entries = [entries]
    inputs = []
    for entry in entries:
        if entry in order:
            if entry not in planned:
                raise ConfigError(f"{where}: stages.{name}.input: stage {entry!r} comes after {name!r}")
            up = planned[entry]
            inputs.append(StageInput("stage", str(up.dir), stage=entry, fingerprint=up.fingerprint,
                                     num_shards=up.stage.num_output_shards()))
        else:
            path = Path(entry).expanduser()
            if not path.exists():
                raise InputError(f"{where}: stages.{name}.input: {entry!r} is neither a stage of this run nor an existing path")
            inputs.append(StageInput("path", str(path.resolve()), fingerprint=path_fingerprint(path.resolve())))
    return inputs


def build_stage(cfg: LoadedConfig, name: str, order: list[str], planned: dict, run_dir: Path, out_dir: Path | None = None):
    section = cfg.top.stages.get(name) or {}
    type_name = section.get("type") or name
    cls = get_stage_class(type_name, f"{cfg.where}: stages.{name}: ")
    config = cfg.validate_section(cls.Config, name)
    inputs = resolve_inputs(name, config.input, order, planned, run_dir, cfg.where, cls.default_input)
    written = config.model_dump(mode="json")  # fingerprinted as written: moving the run folder changes nothing
    config, refs = resolve_refs(name, config, planned, cfg.where)
    inputs += refs
    stage = cls(name, config, inputs, out_dir or run_dir / name, seed=cfg.top.run.seed)
    stage.validate_inputs()
    fp = fingerprint(type_name, written, inputs, cfg.top.run.seed, cls.code_version())
    return stage, fp


def decide(stage: Stage, fp: str, force: bool) -> tuple[str, str, list[tuple[str, list[int]]]]:
    steps = stage.steps()
    all_tasks = [(s.name, list(range(s.num_tasks))) for s in steps]
    manifest = worker.read_manifest(stage.out_dir)
    if force:
        return "run", "forced", all_tasks
    if manifest is None:
        return "run", "not run before", all_tasks
    if manifest.get("fingerprint") != fp:
        return "run", "config, inputs or code changed", all_tasks
    if manifest.get("status") == "done":
        return "skip", "up to date", []
    pending = [(s.name, worker.pending_tasks(stage, s.name, s.num_tasks)) for s in steps]
    left = sum(len(t) for _, t in pending)
    total = sum(s.num_tasks for s in steps)
    return "resume", f"interrupted: {total - left} of {total} tasks done", pending


def build_plan(cfg: LoadedConfig, run_dir: Path, only: str | None = None, from_stage: str | None = None,
               force: bool = False) -> list[PlannedStage]:
    order = list(cfg.top.stages)
    if not order:
        raise ConfigError(f"{cfg.where}: no stages configured (stages: is empty)")
    for flag, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in order:
            raise ConfigError(f"{flag} {value}: no such stage (stages: {', '.join(order)})")
    selected = set(order)
    if only:
        selected = {only}
    elif from_stage:
        selected = set(order[order.index(from_stage):])
    planned: dict[str, PlannedStage] = {}
    for name in order:
        stage, fp = build_stage(cfg, name, order, planned, run_dir)
        if name in selected:
            action, reason, pending = decide(stage, fp, force)
        else:
            action, reason, pending = "skip", "not selected", []
        planned[name] = PlannedStage(name, stage, fp, action, reason, pending)
    # a stage that runs needs its upstream stages done (or running before it in this plan)
    for ps in planned.values():
        if ps.action == "skip":
            continue
        for inp in ps.stage.inputs:
            up = planned.get(inp.stage) if inp.stage else None
            if up and up.action == "skip":
                m = worker.read_manifest(up.dir)
                if not m or m.get("status") != "done" or m.get("fingerprint") != up.fingerprint:
                    raise InputError(f"stage {ps.name} needs stage {up.name}, which is not done with the current "
                                     f"config; run it first (drop --only/--from)")
    return list(planned.values())


def prepare(ps: PlannedStage, executor_kind: str) -> None:
    """Writes the stage's plan and a 'running' manifest; empties the folder on a fresh run."""
    if ps.action == "run":
        worker.reset_stage_dir(ps.dir)
    ps.dir.mkdir(parents=True, exist_ok=True)
    worker.clean_temporaries(ps.dir)
    stage = ps.stage
    plan = {
        "name": ps.name, "type": stage.type_name, "config": stage.config.model_dump(mode="json"),
        "inputs": [i.to_json() for i in stage.inputs], "seed": stage.seed, "fingerprint": ps.fingerprint,
    }
    atomic_write_json(ps.dir / PLAN_FILE, plan)
    previous = worker.read_manifest(ps.dir) or {}
    manifest = {
        "name": ps.name, "type": stage.type_name, "status": "running", "fingerprint": ps.fingerprint,
        "code_version": stage.code_version(), "inputs": plan["inputs"], "config": plan["config"],
        "tasks": {s.name: s.num_tasks for s in stage.steps()}, "executor": executor_kind,
        "started": previous.get("started") if ps.action == "resume" else worker.now(),
        "started_unix": previous.get("started_unix") if ps.action == "resume" else time.time(),
        "finished": None, "stats": {},
    }
    if not manifest["started"]:
        manifest["started"], manifest["started_unix"] = worker.now(), time.time()
    worker.write_manifest(ps.dir, manifest)


def describe(plan: list[PlannedStage]) -> list[str]:
    lines = []
    for ps in plan:
        steps = ", ".join(f"{s.name}: {s.num_tasks} tasks" for s in ps.stage.steps())
        todo = sum(len(t) for _, t in ps.pending)
        what = {"skip": "skip", "run": "run", "resume": "resume"}[ps.action]
        extra = f" ({todo} tasks to do)" if ps.action != "skip" else ""
        lines.append(f"{ps.name:<12} {what:<7} {ps.reason}{extra}  [{steps}]  fingerprint {ps.fingerprint[:12]}")
    return lines


def run_local(plan: list[PlannedStage], executor) -> None:
    try:
        _run_local(plan, executor)
    finally:
        executor.close()


def _run_local(plan: list[PlannedStage], executor) -> None:
    for ps in plan:
        if ps.action == "skip":
            log.info("stage %s: %s, nothing to do", ps.name, ps.reason)
            continue
        log.info("stage %s: %s", ps.name, ps.reason)
        prepare(ps, executor.kind)
        try:
            for step in ps.stage.steps():
                tasks = worker.pending_tasks(ps.stage, step.name, step.num_tasks)
                executor.run_step(ps.dir, ps.name, step.name, tasks, ps.stage.preload_modules)
            manifest = worker.finalize(ps.dir)
        except (StageFailed, KeyboardInterrupt):
            m = worker.read_manifest(ps.dir) or {}
            m["status"] = "failed"
            worker.write_manifest(ps.dir, m)
            raise
        log.info("stage %s: done in %.1fs", ps.name, manifest.get("seconds", 0))


def run_slurm(plan: list[PlannedStage], executor, run_name: str, dry_run: bool, wait: bool) -> list[str]:
    """Submits every stage that must run, in order, chained by afterok; returns the lines it printed."""
    ids: dict[str, str] = {}
    lines: list[str] = []
    for ps in plan:
        if ps.action == "skip":
            continue
        previous = worker.read_manifest(ps.dir) or {}
        if previous.get("status") == "submitted" and not dry_run:
            still = executor.queued([j for j in (previous.get("slurm_jobs") or {}).values() if j])
            if still:
                raise PipelineError(f"stage {ps.name}: its jobs {', '.join(still)} are still queued; "
                                    f"wait for them or scancel them before resubmitting")
        upstream = [f"{i.stage}/finalize" for i in ps.stage.inputs
                    if i.stage and next(p for p in plan if p.name == i.stage).action != "skip"]
        subs = executor.plan_stage(run_name, ps.name, ps.dir, ps.pending, upstream, ps.stage.launch_spec())
        if dry_run:
            for sub in subs:
                lines += [f"# {sub.name}: {sub.command()}", sub.script]
            continue
        prepare(ps, executor.kind)
        executor.submit(subs, ids)
        m = worker.read_manifest(ps.dir)
        m["status"], m["slurm_jobs"] = "submitted", {s.name: s.job_id for s in subs}
        worker.write_manifest(ps.dir, m)
        lines.append(f"{ps.name}: submitted jobs " + ", ".join(f"{s.name}={s.job_id}" for s in subs))
    if wait and ids and not dry_run:
        executor.wait(list(ids.values()))
        failed = [ps for ps in plan if ps.action != "skip"
                  and (worker.read_manifest(ps.dir) or {}).get("status") != "done"]
        if failed:
            ps = failed[0]
            raise StageFailed(f"stage {ps.name} did not finish on SLURM; see {ps.dir / '_slurm'}")
    return lines


def save_resolved_config(cfg: LoadedConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.dump())
