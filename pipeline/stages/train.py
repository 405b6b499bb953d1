"""`pretrain`, `long_context` and `anneal`: training stages over the packed MDS streams.

A training stage is one task per run (an anneal ablation: one per candidate data set). Run
locally, the task starts `torchrun -m launch.train` with `launch.procs_per_node` processes
and waits; on SLURM the executor submits the same entry point through
slurm/train_multinode.sbatch (one torchrun per node, c10d rendezvous) and rank 0 writes the
done marker. Everything the trainer needs comes from the stage's `_plan.json`, so a rerun
after a crash, a signal or a time-out continues from the newest checkpoint in the folder.
"""
from __future__ import annotations

import abc
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.config import StrictModel
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.registry import register
from pipeline.stage import Stage, StageConfig, Step
from training.config import ScheduleConfig, Segment, TrainConfig

STAGE_KEYS = set(StageConfig.model_fields) | {"launch", "tokens", "seq_len", "lengths", "candidates"}


class LaunchConfig(StrictModel):
    nodes: int = Field(1, ge=1, description="SLURM: nodes of the job (locally: 1)")
    procs_per_node: int = Field(1, ge=1, description="processes per node (GPUs per node; CPU: gloo ranks)")
    gpus_per_node: int | None = Field(None, ge=1, description="SLURM: --gpus-per-node (default: none requested)")
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    launcher: Literal["torchrun", "deepspeed"] = Field("torchrun", description="local runs: which launcher starts the ranks")


class TrainStageConfig(StageConfig, TrainConfig):
    shards: str = Field("stage:shards", description="MDS streams: <shards>/<phase>/<domain>/")
    plan: str = "stage:mix/plan.json"
    tokenizer: str | None = "stage:tokenizer"
    model: str | dict = Field("tiny", description="preset name (configs/model/NAME.yaml), YAML path or a mapping")
    segments: list[Segment] = Field(default_factory=list, description="(from tokens / lengths; not set here)")
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    @model_validator(mode="after")
    def _no_segments(self):
        if self.segments:
            raise ValueError("segments is set by the stage: use tokens (and seq_len), or lengths in long_context")
        return self


class PretrainConfig(TrainStageConfig):
    tokens: int = Field(gt=0, description="tokens to train on")
    seq_len: int | None = Field(None, ge=8, description="default: the shards' sequence length for the phase")


class LongContextConfig(TrainStageConfig):
    phase: str = "long_context"
    init_from: str = Field(description="the export to continue from, e.g. stage:pretrain/export")
    lengths: list[Segment] = Field(min_length=1, description="[{seq_len, tokens, rope_theta}, ...] in order")
    passkey: dict | None = Field(default_factory=lambda: {"depths": [0.1, 0.5, 0.9], "trials": 4},
                                 description="passkey retrieval after each length")


class Candidate(StrictModel):
    phase: str = Field(description="a phase of the mix plan whose streams to anneal on")
    shards: str | None = Field(None, description="default: the stage's shards")
    plan: str | None = None


class AnnealConfig(TrainStageConfig):
    phase: str = "anneal"
    init_from: str = Field(description="the export to anneal, e.g. stage:long_context/export")
    tokens: int = Field(gt=0)
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(kind="linear", min_ratio=0.0))
    candidates: dict[str, Candidate] | None = Field(
        None, description="ablation: anneal the same checkpoint on each data set and compare validation perplexity")


def _summary(result: dict) -> dict:
    """The figures the status table shows."""
    out = {"steps": result.get("step"), "tokens": result.get("tokens"), "complete": result.get("complete")}
    for key in ("val_before", "val"):
        if result.get(key):
            out[f"{key}_ppl"] = {k.split("/")[-1]: v["ppl"] for k, v in result[key].items()}
    if result.get("passkey"):
        out["passkey"] = {length: r["accuracy"] for length, r in result["passkey"].items()}
    return out


class TrainingStage(Stage):
    """Shared by the three training stages: a TrainConfig per task, launched by torchrun."""

    Config = TrainStageConfig
    default_input = "none"
    code_modules = ("training.trainer", "training.engine", "training.checkpoint", "training.config",
                    "training.schedules", "training.grokfast", "training.export", "training.data", "launch.train")

    def steps(self) -> list[Step]:
        return [Step("train", len(self.task_names()))]

    def task_names(self) -> list[str]:
        return [""]

    def task_dir(self, task: int) -> Path:
        name = self.task_names()[task]
        return self.out_dir / "candidates" / name if name else self.out_dir

    @abc.abstractmethod
    def segments(self) -> list[Segment]:
        """The run's (sequence length, tokens, RoPE base) stretches, from the stage's keys."""

    def task_overrides(self, task: int) -> dict:
        return {}

    def train_job(self, step: str, task: int) -> tuple[TrainConfig, Path]:
        values = {k: v for k, v in self.config.model_dump().items() if k not in STAGE_KEYS}
        values.update(segments=[s.model_dump() for s in self.segments()], seed=self.config.seed or self.seed)
        values.update(self.task_overrides(task))
        return TrainConfig.model_validate(values), self.task_dir(task)

    def launch_spec(self) -> LaunchConfig:
        return self.config.launch

    def validate_inputs(self) -> None:
        super().validate_inputs()
        made_upstream = [Path(i.path) for i in self.inputs if i.kind == "ref"]
        for key in ("shards", "plan", "tokenizer", "init_from"):
            value = getattr(self.config, key, None)
            if value and not any(Path(value).is_relative_to(d) for d in made_upstream) and not Path(value).exists():
                raise InputError(f"stages.{self.name}.{key}: {value} does not exist")
        if isinstance(self.config.model, str) and not self.config.init_from:
            from training.engine import resolve_preset

            try:
                resolve_preset(self.config.model)
            except FileNotFoundError as err:
                raise ConfigError(f"stages.{self.name}.model: {err}") from None
        if self.config.launch.nodes > 1 and self.config.launch.launcher == "deepspeed":
            raise ConfigError(f"stages.{self.name}.launch: multi-node runs go through SLURM (torchrun per node)")

    def command(self, step: str, task: int) -> list[str]:
        launch = self.config.launch
        entry = ["--stage-dir", str(self.out_dir), "--step", step, "--task", str(task), "--backend", launch.backend]
        if launch.launcher == "deepspeed":
            from launch.dist import free_port

            beside = Path(sys.executable).parent / "deepspeed"  # the launcher of this environment
            return [str(beside) if beside.exists() else "deepspeed", "--num_nodes=1", f"--num_gpus={launch.procs_per_node}",
                    f"--master_port={free_port()}", "--module", "launch.train", *entry]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                f"--nproc-per-node={launch.procs_per_node}", "-m", "launch.train", *entry]

    def _train(self, task: int) -> dict:
        if self.config.launch.nodes > 1:
            raise PipelineError(f"stage {self.name}: launch.nodes={self.config.launch.nodes} needs the SLURM executor")
        out = self.task_dir(task)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(out / "train.log", "a") as log_file:
            proc = subprocess.Popen(self.command("train", task), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env)
            tail: deque[str] = deque(maxlen=12)
            for line in proc.stdout:
                log_file.write(line)
                if _shown(line):
                    sys.stderr.write(line)
                tail.append(line)
            code = proc.wait()
        if code != 0:
            raise PipelineError(f"stage {self.name}: training exited {code}; log: {out / 'train.log'}\n" + "".join(tail))
        return self.task_stats(json.loads((out / "result.json").read_text()), task)

    def task_stats(self, result: dict, task: int) -> dict:
        """What the task's done marker holds: the summary, under its candidate's name in an ablation."""
        name = self.task_names()[task]
        return {"candidates": {name: _summary(result)}} if name else _summary(result)


def _shown(line: str) -> bool:
    """What of the ranks' output reaches the console (all of it is in train.log)."""
    return (" training: " in line or " launch" in line or "error" in line.lower() or "Traceback" in line
            or line.startswith(("  File", "    ")))


@register
class PretrainStage(TrainingStage):
    type_name = "pretrain"
    Config = PretrainConfig
    description = "DeepSpeed ZeRO pretraining of the hybrid MoDE model under torchrun (SLURM: multi-node)"

    def segments(self) -> list[Segment]:
        return [Segment(seq_len=self.config.seq_len, tokens=self.config.tokens)]


@register
class LongContextStage(TrainingStage):
    type_name = "long_context"
    Config = LongContextConfig
    description = "continues training through growing (seq_len, tokens, RoPE base) steps; passkey retrieval per length"

    def segments(self) -> list[Segment]:
        return list(self.config.lengths)


@register
class AnnealStage(TrainingStage):
    type_name = "anneal"
    Config = AnnealConfig
    description = "anneals on the high-quality mix with LR decaying to 0; ablation: one anneal per candidate data set"

    def segments(self) -> list[Segment]:
        return [Segment(tokens=self.config.tokens)]

    def task_names(self) -> list[str]:
        return sorted(self.config.candidates) if self.config.candidates else [""]

    def task_overrides(self, task: int) -> dict:
        if not self.config.candidates:
            return {}
        c = self.config.candidates[self.task_names()[task]]
        return {"phase": c.phase, "shards": c.shards or self.config.shards, "plan": c.plan or self.config.plan}

    def finalize(self, task_stats: dict) -> dict:
        stats = super().finalize(task_stats)
        if self.config.candidates:
            after = {name: _mean_ppl(s.get("val_ppl")) for name, s in stats.get("candidates", {}).items()}
            scored = {k: v for k, v in after.items() if v is not None}
            if scored:
                stats["best_candidate"] = min(scored, key=scored.get)
        return stats


def _mean_ppl(ppl: dict | None) -> float | None:
    return sum(ppl.values()) / len(ppl) if ppl else None
