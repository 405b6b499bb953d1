"""muP (Tensor Programs V): optimizer parameter groups and a coordinate check.

The model applies the forward-pass parts itself when `config.use_mup`: weights whose fan-in grows
with width start at std / sqrt(width_mult), attention logits use 1/d_head, and logits are
multiplied by 1/width_mult. What remains is the learning rate (Adam): weights whose fan-in
grows with width ("hidden" and readout-like: in/out projections, QKV, MLPs, experts, routers,
LoRA down) learn at lr / width_mult; everything with a finite fan-in (embeddings, the output
layer - its 1/width_mult multiplier already scales it -, LoRA up, conv taps, norms, per-head
scalars) at lr. Width-like dimensions are found as mup's base shapes are: by building the same
architecture at twice the width on the meta device and seeing which dimensions changed.
Depth-muP (Tensor Programs VI) is the residual branch multiplier sqrt(mup_depth_base / L) the
model applies when config.mup_depth_base is set.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _width_like_fan_in(model) -> dict[str, bool]:
    """For every parameter: does its fan-in (last dimension) grow with the width?"""
    cfg = model.config
    with torch.device("meta"):
        wide = type(model)(cfg.scaled_to_width(cfg.hidden_size * 2))
    wide_shapes = {n: p.shape for n, p in wide.named_parameters()}
    embedding_tables = {f"{name}.weight" for name, mod in model.named_modules() if isinstance(mod, nn.Embedding)}
    out = {}
    for name, p in model.named_parameters():
        hidden_like = (p.ndim >= 2 and name not in embedding_tables and name != "lm_head.weight"
                       and wide_shapes[name][-1] != p.shape[-1])
        out[name] = hidden_like
    return out


def mup_param_groups(model, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups (AdamW-style). With config.use_mup off, the same three groups
    with every learning rate equal to `lr` (standard parametrization). Each group carries
    `lr_mult` (its lr / base lr) and a `name` for logging."""
    mult = 1.0 / model.config.width_mult
    hidden_like = _width_like_fan_in(model)
    groups = {
        "hidden": {"params": [], "lr": lr * mult, "lr_mult": mult, "weight_decay": weight_decay},
        "matrix": {"params": [], "lr": lr, "lr_mult": 1.0, "weight_decay": weight_decay},
        "vector": {"params": [], "lr": lr, "lr_mult": 1.0, "weight_decay": 0.0},
    }
    embedding_tables = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hidden_like[name]:
            groups["hidden"]["params"].append(p)
        elif p.ndim >= 2 and name not in embedding_tables:
            groups["matrix"]["params"].append(p)
        else:  # norms, biases, per-head scalars, embedding tables: no weight decay
            groups["vector"]["params"].append(p)
    return [dict(g, name=k) for k, g in groups.items() if g["params"]]


def coord_check(make_config, widths, input_ids, steps: int = 4, lr: float = 1e-2, seed: int = 0) -> dict:
    """Trains a fresh model of each width for `steps` AdamW steps on one batch and returns
    {width: {activation name: mean |activation|}} measured on the batch after training.
    Under muP these stay about constant across widths; under standard parametrization the
    updates' effect grows with width and so do the activations."""
    from .modeling import HybridMoDEForCausalLM

    results = {}
    for width in widths:
        torch.manual_seed(seed)
        model = HybridMoDEForCausalLM(make_config(width))
        model.train()
        opt = torch.optim.AdamW(mup_param_groups(model, lr), betas=(0.9, 0.95), eps=1e-12)
        for _ in range(steps):
            loss = model(input_ids, labels=input_ids, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = model(input_ids, use_cache=False, output_hidden_states=True)
        stats = {("embeddings" if i == 0 else f"layer{i - 1}"): h.abs().mean().item()
                 for i, h in enumerate(out.hidden_states)}
        stats["logits"] = out.logits.abs().mean().item()
        results[width] = stats
    return results
