"""FLOPs per token (for MFU) and the peak throughput of known accelerators.

The count is the usual 6 N + attention estimate (Kaplan; PaLM appendix B), adapted to MoDE:
every matrix that multiplies each token counts 6 FLOPs per parameter (forward + backward),
MoE experts only for the k of E experts a token visits, layers behind a Mixture-of-Depths
router only for the routed fraction of tokens, and causal attention 6 * T * d_attn per
application (half of the T x T square, forward and backward). The SSD scan's own FLOPs are
small next to the projections and are left out, as Mamba papers do.
"""
from __future__ import annotations

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def matmul_flops_per_token(model, seq_len: int, attn_layers: int, attn_dim: int) -> float:
    cfg = model.config
    expert_share = getattr(cfg, "num_experts_per_tok", 1) / getattr(cfg, "num_experts", 1)
    mod_layers = set(getattr(cfg, "mod_layers", []))
    total = 0.0
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embed" in name:
            continue
        share = expert_share if name.endswith(("w_gate_up", "w_down")) else 1.0
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "layers" and int(parts[2]) in mod_layers:
            share *= cfg.mod_capacity
        total += p.numel() * share
    if getattr(cfg, "tie_word_embeddings", False):
        total += model.get_input_embeddings().weight.numel()
    return 6 * total + 6 * attn_layers * seq_len * attn_dim


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of the hybrid model at a sequence length."""
    cfg = model.config
    return matmul_flops_per_token(model, seq_len, len(cfg.attn_layer_ids), cfg.num_attention_heads * cfg.head_dim)


def peak_tflops(device_name: str) -> float | None:
    """bf16 dense peak of a known GPU by its name (torch.cuda.get_device_name), else None."""
    return next((v for key, v in PEAK_BF16_TFLOPS.items() if key in device_name), None)
