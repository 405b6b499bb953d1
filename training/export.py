"""A consolidated, framework-free copy of a trained model: safetensors + config + tokenizer,
loadable with `AutoModelForCausalLM.from_pretrained(folder)` (after `import training.model`).

ZeRO checkpoints hold parameters and fp32 master weights partitioned over ranks; DeepSpeed's
`zero_to_fp32` gathers them offline into one fp32 state dict (no process group needed), so an
export never depends on the world size that trained it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def consolidated_state_dict(checkpoint: Path, zero_stage: int, engine=None) -> dict[str, torch.Tensor]:
    """fp32 weights of a checkpoint folder (`<root>/step_N`)."""
    if zero_stage == 0:
        return {k: v.float() for k, v in engine.module.state_dict().items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)


def export_model(state_dict: dict, model_config, out_dir: Path, tokenizer_dir: str | Path | None = None) -> Path:
    from training.model import HybridMoDEForCausalLM

    model = HybridMoDEForCausalLM(model_config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if model_config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"export: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]})")
    if tied:
        model.tie_weights()
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copy2(src, tmp / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
