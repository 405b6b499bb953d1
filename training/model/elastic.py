"""Elastic sub-models for supernet training: run, rank and extract slices of one set of weights.

A SubModelSpec keeps a fraction of the SSM heads (per group), of the query heads (per KV
group), of the MLP channels (dense and expert), of the experts, and a subset of layers. The
hidden size stays, so embeddings, norms and routers are shared by every sub-model.

    spec = SubModelSpec(ssm_heads=0.5, attn_heads=0.5, mlp=0.5, experts=0.5, layers=[0, 1, 3])
    model(input_ids, sub_model=spec)                      # elastic run of the supernet
    rank = measure_importance(model, calibration_ids)     # mean |activation| x outgoing weight norm
    reorder_by_importance(model, rank)                    # same function, most important first
    small = extract_submodel(model, spec)                 # standalone, smaller, same outputs
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

# ---------------------------------------------------------------- activation recording
_recorder: dict | None = None


def record(module, name: str, per_unit: torch.Tensor) -> None:
    """Called by the model's modules with a per-unit activation statistic (mean |a| per head or
    channel) while `recording()` is active; a no-op otherwise."""
    if _recorder is not None:
        key = (module, name)
        _recorder[key] = _recorder.get(key, 0) + per_unit.detach().float()


def is_recording() -> bool:
    return _recorder is not None


@contextlib.contextmanager
def recording():
    global _recorder
    _recorder = {}
    try:
        yield _recorder
    finally:
        _recorder = None


# ---------------------------------------------------------------- the spec
@dataclass(frozen=True)
class Slices:
    """Resolved index tensors of one sub-model (None: keep everything)."""

    ssm_heads: torch.Tensor | None = None
    q_heads: torch.Tensor | None = None
    mlp_channels: torch.Tensor | None = None
    moe_channels: torch.Tensor | None = None
    experts: torch.Tensor | None = None
    layers: frozenset | None = None


def _prefix(n: int, frac: float, device) -> torch.Tensor | None:
    return None if frac >= 1 else torch.arange(max(1, round(n * frac)), device=device)


@dataclass(frozen=True)
class SubModelSpec:
    ssm_heads: float = 1.0  # fraction of SSM heads kept in every group
    attn_heads: float = 1.0  # fraction of query heads kept in every KV group
    mlp: float = 1.0  # fraction of MLP channels (shared block, dense FFNs, each expert)
    experts: float = 1.0  # fraction of MoE experts
    layers: tuple[int, ...] | None = None  # layers that run (a skipped layer skips its shared-attention call too)

    def resolve(self, config, device=None) -> Slices:
        from .attention import kept_query_heads
        from .mamba2 import kept_ssm_heads

        def on(t):
            return None if t is None else t.to(device)

        return Slices(
            ssm_heads=on(kept_ssm_heads(config.ssm_num_heads, config.ssm_n_groups, self.ssm_heads)),
            q_heads=on(kept_query_heads(config.num_attention_heads, config.num_key_value_heads, self.attn_heads)),
            mlp_channels=_prefix(config.intermediate_size, self.mlp, device),
            moe_channels=_prefix(config.moe_intermediate_size, self.mlp, device),
            experts=_prefix(config.num_experts, self.experts, device),
            layers=None if self.layers is None else frozenset(self.layers),
        )


# ---------------------------------------------------------------- importance and reordering
@torch.no_grad()
def measure_importance(model, input_ids: torch.Tensor, **forward_kwargs) -> dict:
    """Runs a calibration batch and returns {(module, name): score per unit}. The score is the
    mean |activation| of a unit times the norm of the weights it writes out through."""
    was_training = model.training
    model.eval()
    with recording() as rec:
        model(input_ids, use_cache=False, **forward_kwargs)
    model.train(was_training)
    return dict(rec)


def _group_perm(scores: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sorts units by score, descending, inside each of n_groups equal groups."""
    per = scores.numel() // n_groups
    s = scores.view(n_groups, per)
    order = s.argsort(dim=1, descending=True, stable=True)
    return (order + torch.arange(n_groups, device=order.device)[:, None] * per).flatten()


def _blocks(perm: torch.Tensor, size: int) -> torch.Tensor:
    """Unit permutation -> row permutation when each unit owns `size` consecutive rows."""
    return (perm[:, None] * size + torch.arange(size, device=perm.device)).flatten()


def _permute_(param: torch.nn.Parameter, index: torch.Tensor, dim: int, start: int = 0) -> None:
    """Permutes param[start : start + len(index)] along dim by index, in place."""
    seg = param.data.narrow(dim, start, index.numel())
    seg.copy_(seg.index_select(dim, index.to(seg.device)))


@torch.no_grad()
def reorder_by_importance(model, importance: dict) -> None:
    """Permutes heads, channels and experts so the most important come first. The network
    computes the same function afterwards; first-k slices then keep the most important units."""
    from .mode import DenseMLP, MoE

    base = model.model if hasattr(model, "model") else model
    for layer in base.layers:
        m = layer.mixer
        if (m, "heads") in importance:
            score = importance[(m, "heads")] * m.out_proj.weight.view(-1, m.num_heads, m.head_dim).norm(dim=(0, 2))
            perm = _group_perm(score, m.n_groups).to(m.A_log.device)
            H, P = m.num_heads, m.head_dim
            rows = _blocks(perm, P)
            _permute_(m.in_proj.weight, rows, 0, 0)  # z
            _permute_(m.in_proj.weight, rows, 0, H * P)  # x
            _permute_(m.in_proj.weight, perm, 0, 2 * H * P + 2 * m.n_groups * m.state_size)  # dt
            _permute_(m.conv1d.weight, rows, 0)
            _permute_(m.conv1d.bias, rows, 0)
            for p in (m.dt_bias, m.A_log, m.D):
                _permute_(p, perm, 0)
            _permute_(m.norm_weight, rows, 0)
            _permute_(m.out_proj.weight, rows, 1)

    mlps = [(layer.ffn, []) for layer in base.layers if isinstance(layer.ffn, DenseMLP)]
    if base.shared_ffn is not None:
        mlps.append((base.shared_ffn, []))
    block = base.shared_block
    if block is not None:
        mlps.append((block.mlp, [a.mlp_up for a in base.adapters if a.rank]))
        if (block, "q_heads") in importance:
            hd, H = block.head_dim, block.num_heads
            score = importance[(block, "q_heads")] * block.o_proj.weight.view(-1, H, hd).norm(dim=(0, 2))
            perm = _group_perm(score, block.num_kv_heads).to(block.qkv.weight.device)
            rows = _blocks(perm, hd)
            _permute_(block.qkv.weight, rows, 0)
            for a in base.adapters:
                if a.rank:
                    _permute_(a.qkv_up.weight, rows, 0)
            _permute_(block.o_proj.weight, rows, 1)
    for mlp, lora_ups in mlps:
        if (mlp, "channels") not in importance:
            continue
        f = mlp.intermediate_size
        perm = (importance[(mlp, "channels")] * mlp.down.weight.norm(dim=0)).argsort(descending=True, stable=True)
        perm = perm.to(mlp.down.weight.device)
        for W in [mlp.gate_up.weight] + [u.weight for u in lora_ups]:
            _permute_(W, perm, 0, 0)
            _permute_(W, perm, 0, f)
        _permute_(mlp.down.weight, perm, 1)

    for layer in base.layers:
        moe = layer.ffn
        if not isinstance(moe, MoE) or (moe, "expert_load") not in importance:
            continue
        f = moe.intermediate_size
        if (moe, "channels") in importance:
            score = importance[(moe, "channels")] * moe.w_down.norm(dim=1)  # (E, f)
            for e in range(moe.num_experts):
                perm = score[e].argsort(descending=True, stable=True).to(moe.w_down.device)
                moe.w_gate_up.data[e, :f] = moe.w_gate_up.data[e, perm]
                moe.w_gate_up.data[e, f:] = moe.w_gate_up.data[e, f + perm]
                moe.w_down.data[e] = moe.w_down.data[e][:, perm]
        perm = importance[(moe, "expert_load")].argsort(descending=True, stable=True).to(moe.w_down.device)
        for p in (moe.router.weight, moe.w_gate_up, moe.w_down):
            _permute_(p, perm, 0)


# ---------------------------------------------------------------- extraction
def submodel_config(config, spec: SubModelSpec):
    """The config of the standalone model a spec describes."""
    from .config import HybridMoDEConfig

    sl = spec.resolve(config)
    layers = sorted(spec.layers) if spec.layers is not None else list(range(config.num_hidden_layers))
    new_index = {old: new for new, old in enumerate(layers)}
    d = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        d.pop(key, None)
    d.update(
        num_hidden_layers=len(layers),
        ffn_types=[config.ffn_types[i] for i in layers],
        attn_layer_ids=[new_index[i] for i in config.attn_layer_ids if i in new_index],
        mod_layers=[new_index[i] for i in config.mod_layers if i in new_index],
        ssm_num_heads=config.ssm_num_heads if sl.ssm_heads is None else len(sl.ssm_heads),
        num_attention_heads=config.num_attention_heads if sl.q_heads is None else len(sl.q_heads),
        head_dim=config.head_dim,
        intermediate_size=config.intermediate_size if sl.mlp_channels is None else len(sl.mlp_channels),
        moe_intermediate_size=config.moe_intermediate_size if sl.moe_channels is None else len(sl.moe_channels),
        num_experts=config.num_experts if sl.experts is None else len(sl.experts),
    )
    d["num_experts_per_tok"] = min(config.num_experts_per_tok, d["num_experts"])
    if config.mup_depth_base:  # keep the residual branch multiplier the supernet used
        d["mup_depth_base"] = config.mup_depth_base * len(layers) / config.num_hidden_layers
    return HybridMoDEConfig(**d)


@torch.no_grad()
def extract_submodel(model, spec: SubModelSpec):
    """A standalone HybridMoDEForCausalLM holding the sliced weights; its outputs equal
    model(..., sub_model=spec)."""
    from .modeling import HybridMoDEForCausalLM
    from .mode import DenseMLP, MoE

    cfg = model.config
    new_cfg = submodel_config(cfg, spec)
    small = HybridMoDEForCausalLM(new_cfg).to(model.device, model.dtype)
    sl = spec.resolve(cfg, model.device)
    src, dst = model.model, small.model

    def cat_rows(ch, f):
        return torch.cat([ch, ch + f])

    def copy_mlp(a: DenseMLP, b: DenseMLP):
        ch = sl.mlp_channels
        if ch is None:
            b.load_state_dict(a.state_dict())
        else:
            b.gate_up.weight.copy_(a.gate_up.weight[cat_rows(ch, a.intermediate_size)])
            b.down.weight.copy_(a.down.weight[:, ch])

    dst.embed_tokens.load_state_dict(src.embed_tokens.state_dict())
    dst.norm.load_state_dict(src.norm.state_dict())
    if not new_cfg.tie_word_embeddings:
        small.lm_head.load_state_dict(model.lm_head.state_dict())
    if src.shared_ffn is not None and dst.shared_ffn is not None:
        copy_mlp(src.shared_ffn, dst.shared_ffn)

    layers = sorted(spec.layers) if spec.layers is not None else list(range(cfg.num_hidden_layers))
    for new, old in enumerate(layers):
        a, b = src.layers[old], dst.layers[new]
        b.norm_mixer.load_state_dict(a.norm_mixer.state_dict())
        W_in, conv_w, conv_b, dt_bias, A_log, D, norm_w, W_out, _ = a.mixer._weights(sl.ssm_heads)
        bm = b.mixer
        for p, v in ((bm.in_proj.weight, W_in), (bm.conv1d.weight, conv_w[:, None]), (bm.conv1d.bias, conv_b),
                     (bm.dt_bias, dt_bias), (bm.A_log, A_log), (bm.D, D), (bm.norm_weight, norm_w),
                     (bm.out_proj.weight, W_out)):
            p.copy_(v)
        if a.ffn_type != "none":
            b.norm_ffn.load_state_dict(a.norm_ffn.state_dict())
        if isinstance(a.ffn, DenseMLP):
            copy_mlp(a.ffn, b.ffn)
        elif isinstance(a.ffn, MoE):
            e = sl.experts if sl.experts is not None else torch.arange(cfg.num_experts, device=model.device)
            ch = sl.moe_channels if sl.moe_channels is not None else torch.arange(cfg.moe_intermediate_size,
                                                                                  device=model.device)
            b.ffn.router.weight.copy_(a.ffn.router.weight[e])
            b.ffn.w_gate_up.copy_(a.ffn.w_gate_up[e][:, cat_rows(ch, cfg.moe_intermediate_size)])
            b.ffn.w_down.copy_(a.ffn.w_down[e][:, :, ch])
        elif a.ffn is not None:  # PEER: not elastic, copied whole
            b.ffn.load_state_dict(a.ffn.state_dict())
        if a.router is not None:
            b.router.load_state_dict(a.router.state_dict())

    if src.shared_block is not None and dst.shared_block is not None:
        sb, db = src.shared_block, dst.shared_block
        hd = sb.head_dim
        if sl.q_heads is None:
            qkv_rows = torch.arange(sb.qkv.weight.shape[0], device=model.device)
            o_cols = torch.arange(sb.o_proj.weight.shape[1], device=model.device)
        else:
            o_cols = _blocks(sl.q_heads, hd)
            qkv_rows = torch.cat([o_cols, sb.num_heads * hd + torch.arange(2 * sb.num_kv_heads * hd,
                                                                           device=model.device)])
        db.norm_in.load_state_dict(sb.norm_in.state_dict())
        db.norm_mlp.load_state_dict(sb.norm_mlp.state_dict())
        db.qkv.weight.copy_(sb.qkv.weight[qkv_rows])
        db.o_proj.weight.copy_(sb.o_proj.weight[:, o_cols])
        copy_mlp(sb.mlp, db.mlp)
        kept_apps = [a for a, layer in enumerate(cfg.attn_layer_ids) if layer in layers]
        for new_a, old_a in enumerate(kept_apps):
            sa, da = src.adapters[old_a], dst.adapters[new_a]
            da.out.load_state_dict(sa.out.state_dict())
            if sa.rank:
                da.qkv_down.load_state_dict(sa.qkv_down.state_dict())
                da.mlp_down.load_state_dict(sa.mlp_down.state_dict())
                da.qkv_up.weight.copy_(sa.qkv_up.weight[qkv_rows])
                mlp_rows = (torch.arange(2 * cfg.intermediate_size, device=model.device) if sl.mlp_channels is None
                            else cat_rows(sl.mlp_channels, cfg.intermediate_size))
                da.mlp_up.weight.copy_(sa.mlp_up.weight[mlp_rows])
    return small
