"""Forward+backward training throughput of the hybrid MoDE model against transformers' peers.

Same process, same batch, runs alternating between models (absolute CPU numbers drift on
shared machines; the ratios are what to read):
  ours     HybridMoDEForCausalLM, Zamba-like layout (Mamba2 layers + shared attention block)
  zamba2   transformers' Zamba2ForCausalLM at the same width, depth, state size, heads, length
  llama    transformers' LlamaForCausalLM with about our parameter count
  ours+mode  ours with MoD on alternate layers and MoE FFNs on every other layer (the product)

    python benchmarks/model.py                               # CPU: 4 x 512 tokens, width 256, 8 layers
    python benchmarks/model.py --device cuda --dtype bfloat16 --batch 8 --seq 2048 --width 768 --layers 24

On CUDA it also prints MFU (6 x matmul parameters per token + attention, against the GPU's
dense bf16 peak) and which Mamba2 scan path ran (mamba_ssm kernels or the torch chunked scan).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP spin-waits are ruinous on a busy 2-core box

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.flops import matmul_flops_per_token, peak_tflops  # noqa: E402
from training.model import HybridMoDEConfig, HybridMoDEForCausalLM, scan_path  # noqa: E402

def our_config(a, mode: bool) -> HybridMoDEConfig:
    L = a.layers
    return HybridMoDEConfig(
        compile_scan=a.compile_scan,
        vocab_size=a.vocab, hidden_size=a.width, num_hidden_layers=L, ssm_state_size=a.state, ssm_head_dim=64,
        ssm_expand=2, chunk_size=a.chunk, attn_every=a.attn_every, num_attention_heads=a.heads,
        num_key_value_heads=a.heads, head_dim=2 * a.width // a.heads, attn_adapter_rank=0,
        intermediate_size=4 * a.width,
        ffn_types=["moe" if mode and i % 2 else "none" for i in range(L)],
        mod_layers=[i for i in range(L) if mode and i % 2 == 0], mod_capacity=0.125,
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=a.width,
        use_mup=True, mup_base_width=256)


def zamba2_model(a):
    from transformers import Zamba2Config, Zamba2ForCausalLM

    ours = our_config(a, mode=False)
    blocks = ["hybrid" if i in ours.attn_layer_ids else "mamba" for i in range(a.layers)]
    cfg = Zamba2Config(
        vocab_size=a.vocab, hidden_size=a.width, num_hidden_layers=a.layers, layers_block_type=blocks,
        mamba_d_state=a.state, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1,
        n_mamba_heads=2 * a.width // 64, chunk_size=a.chunk, num_attention_heads=a.heads,
        num_key_value_heads=a.heads, intermediate_size=4 * a.width, num_mem_blocks=1,
        use_shared_attention_adapter=False, use_mem_rope=True, max_position_embeddings=max(4096, a.seq))
    return Zamba2ForCausalLM(cfg)


def llama_model(a, target_params: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(layers, device="meta"):
        cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.width, intermediate_size=int(8 * a.width / 3),
                          num_hidden_layers=layers, num_attention_heads=max(1, a.width // 64),
                          num_key_value_heads=max(1, a.width // 64), max_position_embeddings=max(4096, a.seq))
        with torch.device(device):
            return LlamaForCausalLM(cfg)

    best = min(range(1, 4 * a.layers + 1), key=lambda n: abs(n_params(build(n)) - target_params))
    return build(best, "cpu")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def step(model, batch, dtype, device, **kwargs):
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(input_ids=batch, labels=batch, use_cache=False, **kwargs).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed(model, batch, dtype, device, **kwargs) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step(model, batch, dtype, device, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--state", type=int, default=64)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--attn-every", type=int, default=4)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up)")
    p.add_argument("--models", default="ours,zamba2,llama,ours+mode")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA)")
    p.add_argument("--compile-scan", action="store_true", help="torch.compile only the SSD scan (CUDA)")
    p.add_argument("--profile", action="store_true", help="print the top kernels of one step of ours")
    p.add_argument("--docs", type=int, default=0,
                   help="also time ours on packed rows of this many documents (document masking; "
                        "flex attention on CUDA)")
    a = p.parse_args()
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    ours = HybridMoDEForCausalLM(our_config(a, mode=False))
    models = {"ours": ours}
    wanted = a.models.split(",")
    if "zamba2" in wanted:
        try:
            models["zamba2"] = zamba2_model(a)
        except Exception as e:  # a transformers version whose Zamba2 differs
            print(f"zamba2 peer unavailable: {type(e).__name__}: {e}")
    if "llama" in wanted:
        models["llama"] = llama_model(a, n_params(ours))
    if "ours+mode" in wanted:
        models["ours+mode"] = HybridMoDEForCausalLM(our_config(a, mode=True))
    models = {k: m.to(device).train() for k, m in models.items() if k in wanted}
    extra = {k: {} for k in models}
    if a.docs > 1:  # packed rows: positions restart per document -> document masks + SSM resets
        doc_len = a.seq // a.docs
        packed_cfg = our_config(a, mode=False)
        packed_cfg.attention_backend = "flex"
        models["ours+docs"] = HybridMoDEForCausalLM(packed_cfg).to(device).train()
        positions = (torch.arange(a.seq, device=device) % doc_len)[None].expand(a.batch, a.seq)
        extra["ours+docs"] = {"position_ids": positions}
    if a.compile:
        for k in [k for k in models if k.startswith("ours")]:
            models[k] = torch.compile(models[k])

    batch = torch.randint(0, a.vocab, (a.batch, a.seq), device=device)
    tokens = a.batch * a.seq
    print(f"device={device} dtype={a.dtype} threads={torch.get_num_threads()} batch={a.batch}x{a.seq} "
          f"width={a.width} layers={a.layers} state={a.state} torch={torch.__version__}")
    times = {k: [] for k in models}
    for k in list(models):  # warm-up (allocations, autotuning, compilation); a failing model is dropped
        try:
            step(models[k], batch, dtype, device, **extra[k])
        except Exception as e:
            print(f"{k}: dropped, {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            del models[k]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for _ in range(a.steps):  # alternate, so drift hits every model alike
        for k, m in models.items():
            times[k].append(timed(m, batch, dtype, device, **extra[k]))

    times = {k: v for k, v in times.items() if k in models}
    n_attn = len(ours.config.attn_layer_ids)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = peak_tflops(gpu)
    rate = {}
    for k, m in models.items():
        base = getattr(m, "_orig_mod", m)
        rate[k] = tokens / statistics.median(times[k])
        line = f"{k:10s} params={n_params(base) / 1e6:7.2f}M  fwd+bwd {rate[k]:10.0f} tokens/s"
        if device.type == "cuda" and peak:
            if k.startswith("ours"):
                attn_layers, attn_dim = n_attn, 2 * a.width
            elif k == "zamba2":
                attn_layers, attn_dim = n_attn, 2 * a.width
            else:
                attn_layers, attn_dim = base.config.num_hidden_layers, a.width
            flops = matmul_flops_per_token(base, a.seq, attn_layers, attn_dim) * rate[k]
            line += f"  MFU {100 * flops / (peak * 1e12):5.1f}% (of {peak:.0f} TFLOP/s bf16)"
        print(line)
    if "zamba2" in rate and "ours" in rate:
        print(f"ratio ours / zamba2 : {rate['ours'] / rate['zamba2']:.2f}x")
    if "llama" in rate and "ours" in rate:
        print(f"ratio ours / llama  : {rate['ours'] / rate['llama']:.2f}x   (same parameter count)")
    if "ours+mode" in rate and "ours" in rate:
        print(f"ratio ours+mode / ours: {rate['ours+mode'] / rate['ours']:.2f}x")
    print(f"mamba2 scan path (ours): {scan_path()}")
    if a.profile and "ours" in models:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            timed(models["ours"], batch, dtype, device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
