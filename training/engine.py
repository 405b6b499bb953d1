"""Model, optimizer and DeepSpeed engine from a TrainConfig.

The YAML's `zero`, `precision`, `grad_accum` and clipping become a DeepSpeed config (the
`deepspeed:` mapping is merged last, for anything else DeepSpeed offers). The optimizer is
the client's: AdamW (or Grokfast-AdamW) over the model's muP parameter groups, so hidden
matrices keep their lr / width_mult under every ZeRO stage; the schedule is a LambdaLR that
scales each group's own LR.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from training.config import TrainConfig
from training.schedules import lr_multiplier

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def resolve_preset(model: str) -> Path:
    """A preset path, or a bare name (`tiny`, `125m`) looked up in configs/model/."""
    path = Path(model)
    if path.exists():
        return path
    named = PRESET_DIR / f"{model}.yaml"
    if "/" not in model and named.exists():
        return named
    raise FileNotFoundError(f"model preset {model!r} not found (neither a file nor one of "
                            f"{sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))})")


def build_model_config(cfg: TrainConfig, vocab_size: int | None):
    from training.model import HybridMoDEConfig

    if cfg.init_from:
        config = HybridMoDEConfig.from_pretrained(cfg.init_from)
        for key, value in cfg.model_overrides.items():
            setattr(config, key, value)
        return config
    values = dict(cfg.model) if isinstance(cfg.model, dict) else {}
    overrides = dict(cfg.model_overrides)
    if vocab_size is not None:
        overrides.setdefault("vocab_size", vocab_size)
    if isinstance(cfg.model, str):
        return HybridMoDEConfig.from_yaml(resolve_preset(cfg.model), **overrides)
    values.update(overrides)
    return HybridMoDEConfig(**values)


def build_model(cfg: TrainConfig, model_config):
    from training.model import HybridMoDEForCausalLM

    if cfg.init_from:
        model = HybridMoDEForCausalLM.from_pretrained(cfg.init_from, config=model_config, torch_dtype=torch.float32)
    else:
        torch.manual_seed(cfg.seed)
        model = HybridMoDEForCausalLM(model_config)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model) -> None:
    """Recomputes each hybrid layer's activations in backward (non-reentrant checkpointing)."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.model.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def build_optimizer(cfg: TrainConfig, model):
    from training.grokfast import GrokfastAdamW
    from training.model import mup_param_groups

    o = cfg.optimizer
    groups = mup_param_groups(model, o.lr, o.weight_decay)
    kwargs = dict(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if cfg.grokfast is not None:
        return GrokfastAdamW(groups, grokfast_alpha=cfg.grokfast.alpha, grokfast_lamb=cfg.grokfast.lamb, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def use_bf16(cfg: TrainConfig) -> bool:
    if cfg.precision == "bf16" and not torch.cuda.is_available():
        raise ValueError("precision: bf16 needs a GPU; on CPU use fp32 (or auto)")
    return cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())


DEEPSPEED_BUCKET = 500_000_000  # DeepSpeed's default bucket size, in elements


def deepspeed_config(cfg: TrainConfig, num_params: int | None = None) -> dict:
    """`num_params` caps the communication buckets at the model's size: DeepSpeed's default
    (5e8 elements) would reserve ~1.9 GB fp32 per rank under ZeRO-3 even for a tiny model, and
    a bucket larger than the model holds every gradient at once, undoing ZeRO's gradient saving."""
    zero: dict = {"stage": cfg.zero.stage}
    if num_params and cfg.zero.stage > 0:
        # DeepSpeed asserts NCCL alignment of the buckets: a multiple of 2**16 elements satisfies it
        bucket = max(1 << 20, min(DEEPSPEED_BUCKET, num_params // 4)) >> 16 << 16
        zero["reduce_bucket_size"] = bucket
        zero["stage3_prefetch_bucket_size" if cfg.zero.stage == 3 else "allgather_bucket_size"] = bucket
    if cfg.zero.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.zero.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg)},
        "zero_allow_untested_optimizer": True,  # our AdamW over muP groups is the client optimizer
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if cfg.gradient_clipping:
        ds["gradient_clipping"] = cfg.gradient_clipping
    return _merge(ds, cfg.deepspeed)


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def lr_schedule(cfg: TrainConfig, total_steps: int):
    """step -> LR / peak LR, as the config's `schedule` says."""
    s = cfg.schedule
    return lr_multiplier(s.kind, total_steps, s.warmup_steps, s.min_ratio, s.decay_fraction, s.decay_shape, s.gamma)


def initialize(cfg: TrainConfig, model, total_steps: int):
    """-> (DeepSpeed engine, its optimizer, its LR scheduler)."""
    import deepspeed

    optimizer = build_optimizer(cfg, model)
    multiplier = lr_schedule(cfg, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, sum(p.numel() for p in model.parameters())),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, multiplier))
    return engine, optimizer, scheduler
