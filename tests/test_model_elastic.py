"""Elastic sub-models: importance reordering keeps the function; extraction equals the elastic run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.model import (HybridMoDEConfig, HybridMoDEForCausalLM, SubModelSpec, extract_submodel,
                            measure_importance, reorder_by_importance)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"
VOCAB = 97


def supernet(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = HybridMoDEConfig.from_yaml(TINY, **{"vocab_size": VOCAB, "chunk_size": 8, "mup_depth_base": 2,
                                              "ssm_n_groups": 2, **overrides})
    model = HybridMoDEForCausalLM(cfg)
    with torch.no_grad():  # random non-zero LoRA ups and spread-out norms so every unit matters differently
        for name, p in model.named_parameters():
            if name.endswith("_up.weight"):
                p.normal_(0, 0.05)
            if p.ndim == 1 and "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def batch(b=2, T=20, seed=1):
    return torch.randint(0, VOCAB, (b, T), generator=torch.Generator().manual_seed(seed))


SPEC = SubModelSpec(ssm_heads=0.5, attn_heads=0.5, mlp=0.5, experts=0.5, layers=(0, 1, 3))


def test_reordering_by_importance_keeps_the_function_and_sorts_units():
    model = supernet()
    x = batch()
    with torch.no_grad():
        before = model(x, use_cache=False).logits
    importance = measure_importance(model, batch(seed=5))
    mixer = model.model.layers[0].mixer
    assert importance[(mixer, "heads")].shape == (mixer.num_heads,)
    reorder_by_importance(model, importance)
    with torch.no_grad():
        after = model(x, use_cache=False).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)

    # measured again, the first heads / channels / experts now score highest
    again = measure_importance(model, batch(seed=5))
    heads = again[(mixer, "heads")] * mixer.out_proj.weight.view(-1, mixer.num_heads, mixer.head_dim).norm(dim=(0, 2))
    per_group = heads.view(mixer.n_groups, -1)
    assert torch.all(per_group[:, :-1] >= per_group[:, 1:] - 1e-5)
    moe = model.model.layers[1].ffn
    load = again[(moe, "expert_load")]
    assert torch.all(load[:-1] >= load[1:] - 1e-5)


def test_reordering_changes_the_slice_to_the_important_units():
    model = supernet()
    x = batch()
    with torch.no_grad():
        sliced_before = model(x, use_cache=False, sub_model=SPEC).logits
    reorder_by_importance(model, measure_importance(model, batch(seed=5)))
    with torch.no_grad():
        sliced_after = model(x, use_cache=False, sub_model=SPEC).logits
    assert not torch.allclose(sliced_before, sliced_after, atol=1e-4)


def test_extracted_submodel_equals_elastic_run_and_round_trips(tmp_path):
    model = supernet()
    reorder_by_importance(model, measure_importance(model, batch(seed=5)))
    small = extract_submodel(model, SPEC).eval()
    cfg = small.config
    assert (cfg.num_hidden_layers, cfg.ssm_num_heads, cfg.num_attention_heads, cfg.num_experts) == (3, 4, 2, 2)
    assert cfg.intermediate_size == model.config.intermediate_size // 2
    assert cfg.attn_layer_ids == [1, 2] and cfg.ffn_types == ["dense", "moe", "moe"]
    assert cfg.residual_multiplier == model.config.residual_multiplier
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < 0.8 * sum(p.numel() for p in model.parameters())

    x = batch(T=23)
    with torch.no_grad():
        elastic = model(x, use_cache=False, sub_model=SPEC).logits
        extracted = small(x, use_cache=False).logits
        full = model(x, use_cache=False).logits
    torch.testing.assert_close(extracted, elastic, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(elastic, full, atol=1e-3)

    small.save_pretrained(tmp_path)
    reloaded = HybridMoDEForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x, use_cache=False).logits, extracted)
        # the sub-model decodes with a cache like any model of the class
        cached = reloaded.generate(x[:, :8], max_new_tokens=6, do_sample=False)
        uncached = reloaded.generate(x[:, :8], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_elastic_supernet_trains_through_slices():
    """Supernet training step: full and sliced runs both backpropagate into the shared weights."""
    model = supernet().train()
    x = batch()
    loss = model(x, labels=x).loss + model(x, labels=x, sub_model=SPEC).loss
    loss.backward()
    w = model.model.layers[0].mixer.out_proj.weight
    assert w.grad is not None and torch.isfinite(w.grad).all()
