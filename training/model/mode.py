"""MoDE: Mixture-of-Depths routing, and the FFNs a layer can carry (dense, MoE, PEER).

Every FFN maps (b, T, d) -> ((b, T, d), aux_loss or None). Elastic sub-models pass `channels`
(indices of kept hidden units) and, for MoE, `experts` (indices of kept experts).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .elastic import is_recording, record


class DenseMLP(nn.Module):
    """SwiGLU MLP. `extra_gate_up` lets a per-application LoRA adapter add to the fused gate/up."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x, channels=None, extra_gate_up=None):
        f = self.intermediate_size
        W_gu, W_down = self.gate_up.weight, self.down.weight
        if channels is not None:
            W_gu = W_gu[torch.cat([channels, channels + f])]
            W_down = W_down[:, channels]
        gate, up = F.linear(x, W_gu).chunk(2, dim=-1)
        if extra_gate_up is not None:
            eg, eu = extra_gate_up.chunk(2, dim=-1)
            gate, up = gate + eg, up + eu
        act = F.silu(gate) * up
        if channels is None and is_recording():
            record(self, "channels", act.abs().flatten(0, -2).mean(dim=0))
        return F.linear(act, W_down), None


class MoE(nn.Module):
    """Token-choice top-k Mixture-of-Experts with SwiGLU experts stored as stacked tensors.

    Capacity (training only): each expert takes at most ceil(capacity_factor * T * k / E) tokens
    per sequence, earlier positions first, so dropping never depends on later tokens (causal).
    At eval no token is dropped, so decoding one token at a time matches a full forward.
    Aux loss (Switch Transformer): E * sum_e (fraction of assignments to e) * (mean prob of e).
    """

    def __init__(self, config):
        super().__init__()
        d, f, E = config.hidden_size, config.moe_intermediate_size, config.num_experts
        self.num_experts, self.top_k, self.intermediate_size = E, config.num_experts_per_tok, f
        self.capacity_factor = config.moe_capacity_factor
        self.router = nn.Linear(d, E, bias=False)
        self.w_gate_up = nn.Parameter(torch.empty(E, 2 * f, d))  # per expert, nn.Linear layout
        self.w_down = nn.Parameter(torch.empty(E, d, f))

    def forward(self, x, channels=None, experts=None):
        b, T, d = x.shape
        router_w, w_gu, w_down = self.router.weight, self.w_gate_up, self.w_down
        if experts is not None:
            router_w, w_gu, w_down = router_w[experts], w_gu[experts], w_down[experts]
        if channels is not None:
            w_gu = w_gu[:, torch.cat([channels, channels + self.intermediate_size])]
            w_down = w_down[:, :, channels]
        E = router_w.shape[0]
        k = min(self.top_k, E)

        probs = F.linear(x, router_w).float().softmax(dim=-1)  # (b, T, E)
        top_w, top_e = probs.topk(k, dim=-1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        assigned = F.one_hot(top_e, E).view(b, T * k, E)  # assignments in position order
        keep = torch.ones(b, T * k, dtype=torch.bool, device=x.device)
        if self.training and self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * T * k / E)
            rank_in_expert = ((assigned.cumsum(dim=1) - 1) * assigned).sum(-1)  # 0-based, per row
            keep = rank_in_expert < capacity
        aux = E * (assigned.float().mean(dim=(0, 1)) * probs.mean(dim=(0, 1))).sum()  # 1 when balanced

        # dispatch: group the kept (token, expert) pairs by expert, one batched matmul per expert
        flat_x = x.reshape(b * T, d)
        token = torch.arange(b * T, device=x.device).repeat_interleave(k)[keep.view(-1)]
        expert = top_e.reshape(-1)[keep.view(-1)]
        weight = top_w.reshape(-1)[keep.view(-1)]
        order = expert.argsort()
        token, expert, weight = token[order], expert[order], weight[order]
        counts = torch.bincount(expert, minlength=E).tolist()
        out = torch.zeros_like(flat_x)
        recording = is_recording() and experts is None and channels is None
        if recording:
            record(self, "expert_load", torch.zeros(E, device=x.device).index_add_(0, expert, weight))
            channel_use = torch.zeros(E, self.intermediate_size, device=x.device)
        start = 0
        for e, n in enumerate(counts):  # a loop over experts, never over tokens
            if n:
                tok = token[start:start + n]
                gate, up = F.linear(flat_x[tok], w_gu[e]).chunk(2, dim=-1)
                act = F.silu(gate) * up
                if recording:
                    channel_use[e] = act.abs().float().mean(dim=0)
                y = F.linear(act, w_down[e])
                out.index_add_(0, tok, (y * weight[start:start + n, None]).to(out.dtype))
                start += n
        if recording:
            record(self, "channels", channel_use)
        return out.view(b, T, d), aux


class PEER(nn.Module):
    """Parameter Efficient Expert Retrieval ("Mixture of a Million Experts", He 2024).

    N single-neuron experts (e_i(x) = v_i * gelu(u_i . x)). Each head's query is split in two;
    each half scores sqrt(N) sub-keys, the top-k of each half give k*k candidates whose
    score is the sum, and the top-k of those are the experts used - O(sqrt(N)) work for N experts.
    """

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.num_experts, self.heads, self.top_k = config.peer_num_experts, config.peer_heads, config.peer_topk
        self.n_sub = math.isqrt(self.num_experts)
        self.key_dim = config.peer_key_dim
        self.query = nn.Linear(d, self.heads * self.key_dim, bias=False)
        self.sub_keys = nn.Parameter(torch.empty(self.heads, 2, self.n_sub, self.key_dim // 2))
        self.expert_in = nn.Embedding(self.num_experts, d)  # u_i
        self.expert_out = nn.Embedding(self.num_experts, d)  # v_i

    def forward(self, x, channels=None, experts=None):
        b, T, d = x.shape
        k = self.top_k
        q = self.query(x).view(b, T, self.heads, 2, self.key_dim // 2)
        q = F.rms_norm(q, (self.key_dim // 2,))  # keeps sub-key scores on one scale
        s1 = torch.einsum("bthd,hnd->bthn", q[..., 0, :], self.sub_keys[:, 0])
        s2 = torch.einsum("bthd,hnd->bthn", q[..., 1, :], self.sub_keys[:, 1])
        v1, i1 = s1.topk(k, dim=-1)
        v2, i2 = s2.topk(k, dim=-1)
        cand = (v1[..., :, None] + v2[..., None, :]).flatten(-2)  # (b, T, heads, k*k)
        score, pick = cand.topk(k, dim=-1)
        idx = i1.gather(-1, pick // k) * self.n_sub + i2.gather(-1, pick % k)  # (b, T, heads, k)
        weight = score.softmax(dim=-1)
        hidden = F.gelu(torch.einsum("btd,bthkd->bthk", x, self.expert_in(idx))) * weight
        return torch.einsum("bthk,bthkd->btd", hidden, self.expert_out(idx)), None


class MoDRouter(nn.Module):
    """Mixture-of-Depths router (Raposo et al. 2024).

    Training: the top `capacity` fraction of tokens of each sequence (by router score) run the
    block; the others ride the residual. Top-k looks at the whole sequence, so it is not causal;
    at eval (and decoding) each token decides alone: either a small predictor trained with BCE
    on the (detached) block input to guess top-k membership, or the router's own sigmoid > 0.5,
    trained with the same BCE. Chosen tokens' block outputs are scaled by sigmoid(router score),
    which is how the router gets gradient from the LM loss.
    """

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.capacity = config.mod_capacity
        self.use_predictor = config.mod_decode_router == "predictor"
        self.router = nn.Linear(d, 1, bias=False)
        if self.use_predictor:
            hidden = max(16, d // 8)
            self.predictor = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x):
        """x (b, T, d) -> chosen (b, T) bool, gate (b, T) float, aux loss or None."""
        logits = self.router(x).squeeze(-1).float()
        gate = torch.sigmoid(logits)
        decide = self.predictor(x.detach()).squeeze(-1).float() if self.use_predictor else logits
        if not self.training:
            return decide > 0, gate, None
        T = x.shape[1]
        k = max(1, math.ceil(self.capacity * T))
        chosen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.topk(k, dim=1).indices, True)
        aux = F.binary_cross_entropy_with_logits(decide, chosen.float())
        return chosen, gate, aux


def gather_chosen(chosen: torch.Tensor):
    """Indices (b, M) of the chosen tokens of every row, in order, padded at the end, and a
    (b, M) mask of which are real. M is the largest count in the batch."""
    b, T = chosen.shape
    counts = chosen.sum(dim=1)
    M = int(counts.max())
    pos = torch.arange(T, device=chosen.device)
    order = ((~chosen).long() * T + pos).argsort(dim=1)[:, :M]  # chosen first, in time order
    real = torch.arange(M, device=chosen.device)[None] < counts[:, None]
    return order, real
