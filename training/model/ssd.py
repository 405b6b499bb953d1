"""State Space Duality (Mamba2) scan in pure PyTorch: chunked, a token-by-token reference, one step.

The recurrence, per head h (state S of shape head_dim x state_size):

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t B_t^T          y_t = S_t C_t

The chunked form splits the sequence into chunks of Q tokens. Inside a chunk the output is a
masked (Q x Q) "attention" with decay weights; across chunks only the states travel, through a
small recurrence over chunk ends. Both are written as matmuls, so the cost is linear in length
and nothing loops over tokens.

Document resets (`seq_idx`): a token only sees inputs of its own document. Because document ids
are non-decreasing along a row, "no reset between j and i" is the same as seq_idx[i] == seq_idx[j],
so every decay term is simply multiplied by that equality mask - within chunks and across them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = x[..., j+1] + ... + x[..., i] for i >= j, -inf above the diagonal.

    Summing the masked entries directly (instead of differencing a cumsum) keeps the small
    within-window sums exact even when the running total is large."""
    T = x.size(-1)
    x = x[..., :, None].expand(*x.shape, T)  # x[..., i, j] = x_i
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    x = x.masked_fill(~strictly_lower, 0)
    out = x.cumsum(dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(0)
    return out.masked_fill(~lower, float("-inf"))


def ssd_chunked(x, dt, A, B, C, chunk_size: int, initial_state=None, seq_idx=None):
    """Chunked SSD scan.

    x: (b, l, h, p)   dt: (b, l, h) already positive   A: (h,) negative
    B, C: (b, l, g, n) with h a multiple of g      initial_state: (b, h, p, n) or None
    seq_idx: (b, l) int document ids, non-decreasing per row, or None
    Returns y (b, l, h, p) and the final state (b, h, p, n), both in fp32.
    Any length works: the tail is padded with dt = 0 tokens, which neither decay nor write state.
    Heads are handled as (group g, head-in-group k) so B and C are never copied per head.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    k = h // g
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    Q = chunk_size
    pad = (-l) % Q
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    c = (l + pad) // Q
    x = x.view(b, c, Q, g, k, p)
    B, C = B.view(b, c, Q, g, n), C.view(b, c, Q, g, n)
    dt = dt.view(b, c, Q, g, k)
    a_cum = (dt * A.view(g, k)).cumsum(dim=2)  # (b, c, Q, g, k): log-decay from chunk start
    xdt = x * dt[..., None]  # what each token writes, scaled by its step
    docs = seq_idx.view(b, c, Q) if seq_idx is not None else None

    # 1. within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_cum_l - a_cum_s) xdt_s
    #    (a difference of cumsums inside one chunk, as the mamba_ssm kernels do, in fp32)
    a_t = a_cum.permute(0, 1, 3, 4, 2)  # (b, c, g, k, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((a_t[..., :, None] - a_t[..., None, :]).masked_fill(~causal, float("-inf")))
    if docs is not None:
        decay = decay * (docs[:, :, None, None, :, None] == docs[:, :, None, None, None, :])
    CB = torch.einsum("bclgn,bcsgn->bcgls", C, B)  # once per group, shared by its heads
    y = torch.einsum("bcgkls,bcsgkp->bcgklp", CB[:, :, :, None] * decay, xdt)

    # 2. the state each chunk leaves behind from its own tokens
    decay_to_end = torch.exp(a_cum[:, :, -1:] - a_cum)  # (b, c, Q, g, k)
    if docs is not None:
        decay_to_end = decay_to_end * (docs == docs[:, :, -1:])[..., None, None]
    chunk_states = torch.einsum("bcsgn,bcsgkp->bcgkpn", B, xdt * decay_to_end[..., None])

    # 3. carry states across chunks: a tiny (c+1) x (c+1) decay matrix over chunk ends
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, n, device=x.device, dtype=torch.float32)
    states = torch.cat([initial_state.float().view(b, 1, g, k, p, n), chunk_states], dim=1)
    chunk_total = F.pad(a_cum[:, :, -1].permute(0, 2, 3, 1), (1, 0))  # (b, g, k, c + 1)
    chunk_decay = torch.exp(segsum(chunk_total))  # (b, g, k, c + 1, c + 1)
    if docs is not None:
        end_docs = torch.cat([docs[:, :1, 0], docs[:, :, -1]], dim=1)  # doc of each chunk end
        chunk_decay = chunk_decay * (end_docs[:, None, None, :, None] == end_docs[:, None, None, None, :])
    states = torch.einsum("bgkzc,bcgkpn->bzgkpn", chunk_decay, states)
    states_in, final_state = states[:, :-1], states[:, -1]

    # 4. what the state entering each chunk contributes to its tokens
    decay_from_start = torch.exp(a_t)[..., None]  # (b, c, g, k, Q, 1)
    if docs is not None:
        decay_from_start = decay_from_start * (docs == end_docs[:, :-1, None])[:, :, None, None, :, None]
    y = y + torch.einsum("bclgn,bcgkpn->bcgklp", C, states_in) * decay_from_start

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * Q, h, p)[:, :l]
    return y, final_state.reshape(b, h, p, n)


def ssd_step(state, x, dt, A, B, C):
    """One decoding step. state (b, h, p, n); x (b, h, p); dt (b, h); B, C (b, g, n).
    Returns y (b, h, p) and the new state, fp32."""
    h, g = x.shape[1], B.shape[1]
    B = B.float().repeat_interleave(h // g, dim=1)
    C = C.float().repeat_interleave(h // g, dim=1)
    dt = dt.float()
    decay = torch.exp(dt * A.float())[..., None, None]
    state = state.float() * decay + (dt[..., None] * x.float())[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    return y, state


def ssd_recurrent(x, dt, A, B, C, initial_state=None, seq_idx=None):
    """Token-by-token reference of ssd_chunked (same arguments); slow, for tests."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    state = initial_state.float() if initial_state is not None else x.new_zeros(b, h, p, n, dtype=torch.float32)
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            same_doc = (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None, None]
            state = state * same_doc
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), state
