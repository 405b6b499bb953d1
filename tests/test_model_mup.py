"""muP: parameter groups and the coordinate check across widths 64..512."""
from __future__ import annotations

import pytest
import torch

from training.model import HybridMoDEConfig, HybridMoDEForCausalLM, coord_check, mup_param_groups


pytestmark = pytest.mark.usefixtures("one_torch_thread")


VOCAB = 128
WIDTHS = (64, 128, 256, 512)


def config_at(width, use_mup):
    # head counts grow with width, head dims stay: the muP way to widen
    return HybridMoDEConfig(
        vocab_size=VOCAB, hidden_size=width, num_hidden_layers=2, ssm_state_size=16, ssm_head_dim=16,
        chunk_size=16, attn_layer_ids=[1], num_attention_heads=width // 16, num_key_value_heads=2, head_dim=16,
        attn_adapter_rank=4, ffn_types=["moe", "dense"], num_experts=4, moe_intermediate_size=width,
        intermediate_size=2 * width, use_mup=use_mup, mup_base_width=64, tie_word_embeddings=False)


def test_param_groups_scale_hidden_learning_rates_by_width():
    model = HybridMoDEForCausalLM(config_at(256, use_mup=True))
    groups = {g["name"]: g for g in mup_param_groups(model, lr=1e-2, weight_decay=0.1)}
    assert abs(groups["hidden"]["lr"] - 1e-2 / 4) < 1e-12 and groups["vector"]["lr"] == 1e-2
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for p in groups["hidden"]["params"]}
    vector = {names[id(p)] for p in groups["vector"]["params"]}
    assert "model.layers.0.mixer.in_proj.weight" in hidden and "model.layers.0.ffn.w_down" in hidden
    assert "model.adapters.0.qkv_down.weight" in hidden  # fan-in grows with width
    assert "model.adapters.0.qkv_up.weight" in {names[id(p)] for p in groups["matrix"]["params"]}
    assert "lm_head.weight" not in hidden and "model.embed_tokens.weight" in vector
    assert groups["vector"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    sp = HybridMoDEForCausalLM(config_at(256, use_mup=False))
    assert {g["lr"] for g in mup_param_groups(sp, lr=1e-2)} == {1e-2}


def test_coordinate_check_mup_is_width_stable_and_standard_parametrization_drifts():
    x = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))

    def spread(results):
        names = results[WIDTHS[0]].keys()
        return {n: max(r[n] for r in results.values()) / min(r[n] for r in results.values()) for n in names}

    mup = spread(coord_check(lambda w: config_at(w, True), WIDTHS, x, steps=4, lr=1e-2))
    sp = spread(coord_check(lambda w: config_at(w, False), WIDTHS, x, steps=4, lr=1e-2))
    assert max(mup.values()) < 2.0, mup
    assert max(sp.values()) > 2.0, sp
    assert sp["logits"] > 2.0 * mup["logits"], (sp, mup)
