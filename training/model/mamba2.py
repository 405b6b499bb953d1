"""Mamba2 mixer: input projection, short causal conv, SSD scan, gated per-head RMSNorm, output.

Kernel choice: with `mamba_ssm` and `causal_conv1d` installed and the tensors on CUDA, full
sequences (training, prefill without a cache) go through their fused kernels; everything else
- CPU, decoding, masked tokens - uses the pure PyTorch path in ssd.py. One log line per process
says which path ran (`scan_path()` returns it too).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .elastic import is_recording, record
from .ssd import ssd_chunked, ssd_step

logger = logging.getLogger(__name__)

try:  # optional GPU extra: pip install mamba-ssm causal-conv1d
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    HAVE_KERNELS = True
except Exception:  # ImportError, or a build that does not match this torch/CUDA
    causal_conv1d_fn = mamba_chunk_scan_combined = None
    HAVE_KERNELS = False

_compiled_scan = None  # torch.compile(ssd_chunked), built on first use; False once it failed
_paths_logged: set[str] = set()
_last_path = "none yet"


def _note_path(path: str) -> None:
    global _last_path
    _last_path = path
    if path not in _paths_logged:
        _paths_logged.add(path)
        logger.info("Mamba2 scan path: %s", path)


def scan_path() -> str:
    """The scan implementation the last full-sequence forward used."""
    return _last_path


@dataclass
class MambaState:
    """Decoding state of one Mamba2 layer: the last (kernel - 1) conv inputs and the SSM state."""

    conv: torch.Tensor | None = None  # (b, kernel - 1, conv_dim)
    ssm: torch.Tensor | None = None  # (b, heads, head_dim, state_size), fp32


def kept_ssm_heads(num_heads: int, n_groups: int, frac: float | None) -> torch.Tensor | None:
    """Indices of the heads an elastic sub-model keeps: the first ones of every group
    (B and C are shared per group, so every group keeps the same number of heads)."""
    if frac is None or frac >= 1:
        return None
    per_group = num_heads // n_groups
    keep = max(1, round(per_group * frac))
    return torch.cat([torch.arange(keep) + g * per_group for g in range(n_groups)])


class Mamba2Mixer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.ssm_num_heads
        self.head_dim = config.ssm_head_dim
        self.n_groups = config.ssm_n_groups
        self.state_size = config.ssm_state_size
        self.kernel = config.conv_kernel
        self.chunk_size = config.chunk_size
        self.eps = config.rms_norm_eps
        self.use_kernels = config.use_kernels
        self.compile_scan = config.compile_scan
        d_inner = self.num_heads * self.head_dim
        self.conv_dim = d_inner + 2 * self.n_groups * self.state_size
        # one fused projection, laid out as [z | x | B | C | dt]
        self.in_proj = nn.Linear(config.hidden_size, d_inner + self.conv_dim + self.num_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        # the gate norm is per head, so heads can be sliced or reordered without changing the others
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, config.hidden_size, bias=False)

    # ---- weights of the full model, or of an elastic slice of its heads
    def _weights(self, heads: torch.Tensor | None):
        H, P, GN2 = self.num_heads, self.head_dim, 2 * self.n_groups * self.state_size
        d_inner = H * P
        if heads is None:
            return (self.in_proj.weight, self.conv1d.weight[:, 0], self.conv1d.bias, self.dt_bias,
                    self.A_log, self.D, self.norm_weight, self.out_proj.weight, H)
        heads = heads.to(self.A_log.device)
        x_ch = (heads[:, None] * P + torch.arange(P, device=heads.device)).flatten()
        bc_ch = d_inner + torch.arange(GN2, device=heads.device)
        conv_ch = torch.cat([x_ch, bc_ch])
        rows = torch.cat([x_ch, d_inner + conv_ch, d_inner + self.conv_dim + heads])
        return (self.in_proj.weight[rows], self.conv1d.weight[conv_ch, 0], self.conv1d.bias[conv_ch],
                self.dt_bias[heads], self.A_log[heads], self.D[heads], self.norm_weight[x_ch],
                self.out_proj.weight[:, x_ch], len(heads))

    def forward(self, hidden, state: MambaState | None = None, seq_idx=None, token_mask=None, heads=None):
        """hidden (b, T, d). state: updated in place when given (decoding / prefill).
        seq_idx (b, T): document ids; states reset at boundaries.
        token_mask (b, T) bool: False tokens are absent - they write no state (left padding, or
        tokens a Mixture-of-Depths router sent around this layer); outputs there are garbage.
        heads: elastic slice (indices of kept heads) or None."""
        W_in, conv_w, conv_b, dt_bias, A_log, D, norm_w, W_out, H = self._weights(heads)
        b, T, _ = hidden.shape
        P, G, N = self.head_dim, self.n_groups, self.state_size
        d_inner = H * P
        z, xBC, dt = F.linear(hidden, W_in).split([d_inner, d_inner + 2 * G * N, H], dim=-1)
        dt = F.softplus(dt.float() + dt_bias.float())
        if token_mask is not None:
            xBC = xBC * token_mask[..., None].to(xBC.dtype)
            dt = dt * token_mask[..., None]  # dt = 0: no decay, no write: the state passes through
        A = -torch.exp(A_log.float())

        if state is not None and T == 1 and state.ssm is not None:
            y = self._step(state, z, xBC, dt, A, D, conv_w, conv_b, token_mask, H)
        else:
            use_kernels = (HAVE_KERNELS and self.use_kernels and hidden.is_cuda and state is None
                           and token_mask is None)
            if use_kernels:
                y = self._kernel_scan(xBC, dt, A, D, conv_w, conv_b, seq_idx, H)
                _note_path("mamba_ssm + causal_conv1d kernels")
            else:
                y = self._torch_scan(xBC, dt, A, D, conv_w, conv_b, state, seq_idx, token_mask, H)
                compiled = " compiled" if self.compile_scan and hidden.is_cuda and _compiled_scan else ""
                _note_path(f"torch chunked SSD{compiled} (mamba_ssm kernels "
                           + ("unused here)" if HAVE_KERNELS else "not installed)"))

        y = self._gated_norm(y, z.view(b, -1, H, P), norm_w.view(H, P))
        if heads is None and is_recording():
            record(self, "heads", y.abs().mean(dim=(0, 1, 3)))
        return F.linear(y.reshape(b, -1, d_inner).to(hidden.dtype), W_out)

    def _gated_norm(self, y, z, weight):
        g = y.float() * F.silu(z.float())
        return g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps) * weight.float()

    def _split_xBC(self, xBC, H):
        G, N, P = self.n_groups, self.state_size, self.head_dim
        b, T = xBC.shape[:2]
        x, B, C = xBC.split([H * P, G * N, G * N], dim=-1)
        return x.reshape(b, T, H, P), B.reshape(b, T, G, N), C.reshape(b, T, G, N)

    def _torch_scan(self, xBC, dt, A, D, conv_w, conv_b, state, seq_idx, token_mask, H):
        prev = state.conv if state is not None and state.conv is not None else None
        xBC, new_conv = causal_conv(xBC, conv_w, conv_b, prev, seq_idx, token_mask)
        x, B, C = self._split_xBC(F.silu(xBC), H)
        init = state.ssm if state is not None else None
        y, final = self._scan_fn(x)(x, dt, A, B, C, self.chunk_size, init, seq_idx)
        if state is not None:
            state.conv, state.ssm = new_conv, final
        return y + x.float() * D.float()[:, None]

    def _scan_fn(self, x):
        """ssd_chunked, or its torch.compile'd version on CUDA when config.compile_scan asks for it.
        A compile failure is logged once and the eager scan is used from then on."""
        global _compiled_scan
        if not (self.compile_scan and x.is_cuda and _compiled_scan is not False):
            return ssd_chunked
        if _compiled_scan is None:
            _compiled_scan = torch.compile(ssd_chunked)

        def guarded(*args):
            global _compiled_scan
            try:
                return _compiled_scan(*args)
            except Exception as e:  # an inductor bug must not stop training
                logger.warning("torch.compile of the SSD scan failed (%s); using the eager scan", e)
                _compiled_scan = False
                return ssd_chunked(*args)

        return guarded

    def _kernel_scan(self, xBC, dt, A, D, conv_w, conv_b, seq_idx, H):
        if seq_idx is not None:
            seq_idx = seq_idx.to(torch.int32).contiguous()
        xBC = causal_conv1d_fn(xBC.transpose(1, 2).contiguous(), conv_w.contiguous(), conv_b,
                               seq_idx=seq_idx, activation="silu").transpose(1, 2)
        x, B, C = self._split_xBC(xBC, H)
        y = mamba_chunk_scan_combined(x, dt.to(x.dtype), A, B, C, chunk_size=self.chunk_size, D=D.float(),
                                      seq_idx=seq_idx)
        return y.float()

    def _step(self, state, z, xBC, dt, A, D, conv_w, conv_b, token_mask, H):
        """One token with a cache: the conv is a dot with the stored window, the SSM one update."""
        window = torch.cat([state.conv, xBC], dim=1)  # (b, kernel, conv_dim)
        conv_out = (window * conv_w.t()[None]).sum(1) + conv_b
        new_conv = window[:, 1:]
        if token_mask is not None:  # an absent token leaves the window as it was
            new_conv = torch.where(token_mask[:, :, None], new_conv, state.conv)
        x, B, C = self._split_xBC(F.silu(conv_out)[:, None], H)
        y, state.ssm = ssd_step(state.ssm, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
        state.conv = new_conv
        return (y + x[:, 0].float() * D.float()[:, None])[:, None]


def causal_conv(xBC, weight, bias, prev=None, seq_idx=None, token_mask=None):
    """Depthwise causal conv over time as K shifted multiply-adds (faster than conv1d's
    backward on CPU for K = 4). xBC (b, T, C); weight (C, K); prev (b, K-1, C) or None.
    With seq_idx, taps never reach into an earlier document. Returns the conv output (b, T, C)
    and the window to keep for decoding: the last K-1 inputs of the present tokens (b, K-1, C)."""
    b, T, Cdim = xBC.shape
    K = weight.shape[-1]
    if prev is None:
        prev = xBC.new_zeros(b, K - 1, Cdim)
    xp = torch.cat([prev.to(xBC.dtype), xBC], dim=1)  # (b, K - 1 + T, C)
    if seq_idx is not None:  # prev belongs to the first document
        docs = torch.cat([seq_idx[:, :1].expand(b, K - 1), seq_idx], dim=1)
    out = bias.to(xBC.dtype)
    for k in range(K):  # K taps (4), not tokens
        tap = xp[:, k:k + T] * weight[:, k].to(xBC.dtype)
        if seq_idx is not None:
            tap = tap * (docs[:, k:k + T] == seq_idx)[..., None].to(xBC.dtype)
        out = out + tap

    # window for the next token: the K-1 inputs ending at the last present token
    if token_mask is None:
        ends = torch.full((b,), T, device=xBC.device)
    else:
        ends = (token_mask.long() * torch.arange(1, T + 1, device=xBC.device)).amax(dim=1)
    idx = ends[:, None] + torch.arange(K - 1, device=xBC.device)  # positions in xp
    new_state = xp.gather(1, idx[..., None].expand(b, K - 1, Cdim))
    if seq_idx is not None:  # only the last document's inputs carry on
        last = seq_idx.gather(1, (ends - 1).clamp(min=0)[:, None])
        new_state = new_state * (docs.gather(1, idx) == last)[..., None].to(xBC.dtype)
    return out, new_state
