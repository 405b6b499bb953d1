"""The trainer's settings (a pydantic model, validated before any process starts).

Library config: paths are plain paths; the pipeline stage resolves `stage:` references and
fills in the shard folder, plan and tokenizer before handing this over.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.schedules import SCHEDULES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(Strict):
    lr: float = Field(3e-3, gt=0, description="peak LR at the muP base width (hidden matrices get lr / width_mult)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(0.1, ge=0)


class ScheduleConfig(Strict):
    kind: str = Field("cosine", description=f"one of {', '.join(SCHEDULES)}")
    warmup_steps: int = Field(0, ge=0)
    min_ratio: float = Field(0.1, ge=0, le=1, description="final LR / peak LR")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps spent decaying")
    decay_shape: Literal["linear", "sqrt", "cosine"] = "linear"
    gamma: float | None = Field(None, gt=0, lt=1, description="bignas: decay per step (default: reach min_ratio at the end)")

    @model_validator(mode="after")
    def _known(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule.kind {self.kind!r} is not one of {', '.join(SCHEDULES)}")
        return self


class GrokfastConfig(Strict):
    alpha: float = Field(0.98, ge=0, lt=1, description="EMA momentum of the gradient filter")
    lamb: float = Field(2.0, ge=0, description="amplification of the slow gradient")


class ZeroConfig(Strict):
    stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="optimizer states and step on the CPU (ZeRO-Offload)")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters on the CPU (ZeRO-Infinity)")

    @model_validator(mode="after")
    def _offload(self):
        if self.offload_params and self.stage != 3:
            raise ValueError("zero.offload_params needs zero.stage 3")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("zero.offload_optimizer needs zero.stage 1, 2 or 3")
        return self


class CheckpointConfig(Strict):
    every_steps: int = Field(100, ge=1)
    keep: int = Field(3, ge=1, description="keep the last K checkpoints")
    verify: bool = Field(True, description="checksum every file; a corrupted latest falls back to the one before")


class EvalConfig(Strict):
    every_steps: int = Field(100, ge=1)
    batches: int = Field(8, ge=1, description="batches per held-out set (per rank)")
    batch_size: int | None = Field(None, ge=1, description="default: micro_batch_size")


class Segment(Strict):
    """One stretch of training at one sequence length (long-context staging has several)."""

    seq_len: int | None = Field(None, ge=8, description="default: the shards' sequence length")
    tokens: int = Field(gt=0)
    rope_theta: float | None = Field(None, gt=0, description="RoPE base from here on (default: unchanged)")


class TrainConfig(Strict):
    # data
    shards: str = Field(description="folder of MDS streams: <shards>/<phase>/<domain>/")
    plan: str = Field(description="mix plan.json (stream proportions)")
    phase: str = "pretrain"
    tokenizer: str | None = Field(None, description="tokenizer folder, copied into the export")
    segments: list[Segment] = Field(min_length=1)
    document_masking: bool = Field(True, description="attention and Mamba state reset per document; positions restart")
    # model
    model: str | dict[str, Any] = Field(description="preset YAML path or a mapping of HybridMoDEConfig arguments")
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = Field(None, description="a consolidated export folder to start from (weights only)")
    # optimization
    micro_batch_size: int = Field(8, ge=1, description="packed sequences per rank per micro step")
    grad_accum: int = Field(1, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grokfast: GrokfastConfig | None = None
    gradient_clipping: float | None = Field(1.0, gt=0)
    zero: ZeroConfig = Field(default_factory=ZeroConfig)
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    activation_checkpointing: bool = False
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="merged last into the DeepSpeed config")
    seed: int = 0
    # bookkeeping
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log_every_steps: int = Field(10, ge=1)
    tensorboard: bool = True
    peak_tflops: float | None = Field(None, gt=0, description="per device, for MFU (default: known GPUs' bf16 peak)")
    passkey: dict[str, Any] | None = Field(None, description="{lengths, depths, trials}: passkey retrieval after each segment")
    stop_after_steps: int | None = Field(None, ge=1, description="stop early (tests, benchmarks): the run is not complete")
