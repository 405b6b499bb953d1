"""Shared attention block (Zamba style), RoPE, document masks, and RMSNorm.

One block of attention + MLP weights is applied at several depths. Its input is
concat(current hidden, original embeddings) - the embeddings give every application a clean
view of the tokens - and each application has its own small adapter: LoRA deltas on the fused
QKV and MLP gate/up projections, and an output projection into the residual stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .elastic import is_recording, record
from .mode import DenseMLP


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


# ---- rotary position embeddings
def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float):
    """cos, sin of shape (b, 1, T, head_dim). theta is read at call time, so raising
    config.rope_theta for a long-context stage takes effect without reloading."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids.float()[..., None] * inv_freq  # (b, T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


# ---- masks
def sdpa_mask(batch, T, past, seq_idx=None, key_padding=None, device=None):
    """Boolean (b, 1, T, past + T) mask of what each query may see, or None when plain causal
    (or, for one new token, unrestricted) attention is exactly right.
    Causal; same document when seq_idx is given (not across a cache); key_padding (b, >= past+T)
    masks padded keys. A token always sees itself, so no row is empty (no NaN on padding)."""
    S = past + T
    if seq_idx is None and key_padding is None and (past == 0 or T == 1):
        return None
    q_pos = torch.arange(past, S, device=device)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None].expand(batch, 1, T, S)
    if seq_idx is not None and past == 0:
        allowed = allowed & (seq_idx[:, None, :, None] == seq_idx[:, None, None, :])
    if key_padding is not None:
        allowed = allowed & key_padding[:, None, None, :S].bool()
    return allowed | (k_pos == q_pos)


_compiled_flex = None


def flex_document_mask(seq_idx: torch.Tensor):
    """A flex-attention BlockMask for causal + same-document attention (CUDA only):
    fully masked blocks are skipped instead of computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, T = seq_idx.shape

    def causal_same_doc(bi, h, q, k):
        return (k <= q) & (seq_idx[bi, q] == seq_idx[bi, k])

    return create_block_mask(causal_same_doc, b, None, T, T, device=seq_idx.device)


def _flex_attention(q, k, v, block_mask, scale):
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


@dataclass
class KVState:
    """Keys and values one application of the shared block has seen (b, kv_heads, S, head_dim)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


@dataclass
class AttnInputs:
    """What every application of the shared block needs for one forward, built once."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None  # boolean SDPA mask
    is_causal: bool = False
    block_mask: object = None  # flex attention BlockMask, when used


def kept_query_heads(num_heads: int, num_kv_heads: int, frac: float | None):
    """Elastic slice: the first query heads of every KV group (GQA groups stay intact)."""
    if frac is None or frac >= 1:
        return None
    per_group = num_heads // num_kv_heads
    keep = max(1, round(per_group * frac))
    return torch.cat([torch.arange(keep) + g * per_group for g in range(num_kv_heads)])


class AttentionAdapter(nn.Module):
    """Per-application part of the shared block: LoRA on QKV and MLP gate/up, output projection."""

    def __init__(self, config):
        super().__init__()
        d, r = config.hidden_size, config.attn_adapter_rank
        qkv_out = (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim
        self.rank = r
        if r:
            self.qkv_down = nn.Linear(2 * d, r, bias=False)
            self.qkv_up = nn.Linear(r, qkv_out, bias=False)
            self.mlp_down = nn.Linear(d, r, bias=False)
            self.mlp_up = nn.Linear(r, 2 * config.intermediate_size, bias=False)
            self.qkv_up.zero_init = self.mlp_up.zero_init = True  # each application starts as the shared one
        self.out = nn.Linear(d, d, bias=False)

    def qkv_delta(self, u, rows=None):
        if not self.rank:
            return None
        W = self.qkv_up.weight if rows is None else self.qkv_up.weight[rows]
        return F.linear(self.qkv_down(u), W)

    def mlp_delta(self, s, rows=None):
        if not self.rank:
            return None
        W = self.mlp_up.weight if rows is None else self.mlp_up.weight[rows]
        return F.linear(self.mlp_down(s), W)


class SharedAttentionBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        # muP (Tensor Programs V): logits scaled by 1/d_head rather than 1/sqrt(d_head)
        self.scale = 1.0 / self.head_dim if config.use_mup else None
        self.norm_in = RMSNorm(2 * d, config.rms_norm_eps)
        self.qkv = nn.Linear(2 * d, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)
        self.norm_mlp = RMSNorm(d, config.rms_norm_eps)
        self.mlp = DenseMLP(d, config.intermediate_size)

    def forward(self, hidden, embeds, adapter: AttentionAdapter, attn: AttnInputs, kv: KVState | None = None,
                q_heads=None, channels=None):
        b, T, _ = hidden.shape
        hd, Hkv = self.head_dim, self.num_kv_heads
        u = self.norm_in(torch.cat([hidden, embeds], dim=-1))

        # rows of the fused QKV projection this (possibly elastic) run uses
        Hq = self.num_heads if q_heads is None else len(q_heads)
        rows = None
        if q_heads is not None:
            q_heads = q_heads.to(hidden.device)
            q_rows = (q_heads[:, None] * hd + torch.arange(hd, device=hidden.device)).flatten()
            rows = torch.cat([q_rows, self.num_heads * hd + torch.arange(2 * Hkv * hd, device=hidden.device)])
        W_qkv = self.qkv.weight if rows is None else self.qkv.weight[rows]
        qkv = F.linear(u, W_qkv)
        delta = adapter.qkv_delta(u, rows)
        if delta is not None:
            qkv = qkv + delta
        q, k, v = qkv.split([Hq * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = apply_rope(q.view(b, T, Hq, hd).transpose(1, 2), attn.cos, attn.sin)
        k = apply_rope(k.view(b, T, Hkv, hd).transpose(1, 2), attn.cos, attn.sin)
        v = v.view(b, T, Hkv, hd).transpose(1, 2)
        if kv is not None:
            if kv.k is not None:
                k, v = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)
            kv.k, kv.v = k, v

        if attn.block_mask is not None:
            out = _flex_attention(q, k, v, attn.block_mask, self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn.mask, is_causal=attn.is_causal,
                                                 scale=self.scale, enable_gqa=Hq != Hkv)
        if q_heads is None and is_recording():
            record(self, "q_heads", out.abs().mean(dim=(0, 2, 3)))
        out = out.transpose(1, 2).reshape(b, T, Hq * hd)
        W_o = self.o_proj.weight
        if q_heads is not None:
            W_o = W_o[:, q_rows]
        s = F.linear(out, W_o)

        n = self.norm_mlp(s)
        f = self.mlp.intermediate_size
        mlp_rows = None if channels is None else torch.cat([channels, channels + f])
        m, _ = self.mlp(n, channels, extra_gate_up=adapter.mlp_delta(n, mlp_rows))
        return adapter.out(s + m)
