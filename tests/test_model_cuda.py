"""CUDA-only paths: flex-attention document masks, the compiled SSD scan, decoding on the GPU.
They need a GPU, so they are skipped on CPU machines (CI); run them on a GPU box."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.model import HybridMoDEConfig, HybridMoDEForCausalLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"
VOCAB = 97


def model_on_gpu(**overrides):
    torch.manual_seed(0)
    cfg = HybridMoDEConfig.from_yaml(TINY, **{"vocab_size": VOCAB, "chunk_size": 16, **overrides})
    return HybridMoDEForCausalLM(cfg).cuda().eval()


def packed_batch():
    lengths = [37, 64, 27]  # 128 tokens: flex attention's block size
    ids = torch.randint(0, VOCAB, (2, sum(lengths)), generator=torch.Generator().manual_seed(0)).cuda()
    positions = torch.cat([torch.arange(n) for n in lengths])[None].expand(2, -1).cuda()
    return ids, positions


def test_flex_document_mask_equals_sdpa_mask():
    ids, positions = packed_batch()
    sdpa = model_on_gpu()
    flex = model_on_gpu(attention_backend="flex")
    with torch.no_grad():
        want = sdpa(ids, position_ids=positions, use_cache=False).logits
        got = flex(ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


def test_compiled_scan_equals_eager_scan():
    ids, positions = packed_batch()
    eager = model_on_gpu(mod_layers=[])
    compiled = model_on_gpu(mod_layers=[], compile_scan=True)
    with torch.no_grad():
        want = eager(ids, position_ids=positions, use_cache=False).logits
        got = compiled(ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


def test_cached_generation_on_gpu_matches_uncached():
    model = model_on_gpu()
    prompt = packed_batch()[0][:, :12]
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=10, do_sample=False)
        uncached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
