"""The hybrid MoDE model as a transformers causal LM: scan, causality, cache, packing, save/load."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from training.model import HybridMoDEConfig, HybridMoDEForCausalLM
from training.model.mamba2 import Mamba2Mixer, MambaState
from training.model.mode import PEER, MoDRouter, MoE
from training.model.ssd import ssd_chunked, ssd_recurrent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "model" / "tiny.yaml"
VOCAB = 97


def tiny_config(**overrides) -> HybridMoDEConfig:
    """The tiny preset (attention, MoD, dense/MoE/PEER FFNs) with a small vocabulary."""
    return HybridMoDEConfig.from_yaml(TINY, **{"vocab_size": VOCAB, "chunk_size": 8, **overrides})


def make_model(seed=0, **overrides) -> HybridMoDEForCausalLM:
    torch.manual_seed(seed)
    model = HybridMoDEForCausalLM(tiny_config(**overrides))
    with torch.no_grad():  # give the zero-initialised LoRA adapters something to do
        for name, p in model.named_parameters():
            if name.endswith("_up.weight"):
                p.normal_(0, 0.05)
    return model.eval()


def ids(b, T, seed=1):
    return torch.randint(0, VOCAB, (b, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- SSD
@pytest.mark.parametrize("length", [1, 7, 16, 45])
@pytest.mark.parametrize("with_docs", [False, True])
def test_chunked_scan_equals_recurrence(length, with_docs):
    g = torch.Generator().manual_seed(length)
    b, h, p, groups, n = 2, 4, 8, 2, 16
    x = torch.randn(b, length, h, p, generator=g)
    dt = F.softplus(torch.randn(b, length, h, generator=g))
    A = -torch.rand(h, generator=g) * 4 - 0.1
    B, C = torch.randn(2, b, length, groups, n, generator=g)
    init = torch.randn(b, h, p, n, generator=g)
    docs = torch.randint(0, 4, (b, length), generator=g).sort(dim=1).values if with_docs else None
    y, final = ssd_chunked(x, dt, A, B, C, chunk_size=8, initial_state=init, seq_idx=docs)
    y_ref, final_ref = ssd_recurrent(x, dt, A, B, C, initial_state=init, seq_idx=docs)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final, final_ref, atol=1e-4, rtol=1e-4)


def test_mixer_decoding_steps_equal_full_sequence():
    torch.manual_seed(0)
    model = make_model()
    mixer: Mamba2Mixer = model.model.layers[0].mixer
    u = torch.randn(2, 19, 64)
    with torch.no_grad():
        full = mixer(u)
        state = MambaState()
        prefix = mixer(u[:, :5], state)  # prefill through the chunked path, then one token at a time
        steps = [mixer(u[:, t:t + 1], state) for t in range(5, 19)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ causality
def _assert_causal(model, T=24, t=13, **kwargs):
    a = ids(2, T)
    b = a.clone()
    b[:, t] = (b[:, t] + 1) % VOCAB
    la = model(a, use_cache=False, **kwargs).logits
    lb = model(b, use_cache=False, **kwargs).logits
    torch.testing.assert_close(la[:, :t], lb[:, :t], atol=1e-6, rtol=0)
    assert not torch.allclose(la[:, t:], lb[:, t:]), "changing token t must change something at t or later"


def test_causal_at_eval_through_mod_moe_peer_attention():
    model = make_model()
    assert model.model.layers[2].router is not None and isinstance(model.model.layers[1].ffn, MoE)
    with torch.no_grad():
        _assert_causal(model)


def test_causal_in_training_with_moe_capacity():
    """Capacity drops later tokens first, so training-mode MoE stays causal (MoD's top-k over
    the whole sequence is not, by design - eval/decoding uses the causal predictor)."""
    model = make_model(mod_layers=[], moe_capacity_factor=0.5).train()
    with torch.no_grad():
        _assert_causal(model)


# --------------------------------------------------------------------------- MoD, MoE, PEER
def test_mod_router_picks_capacity_fraction_in_training_and_decides_per_token_at_eval():
    torch.manual_seed(0)
    router = MoDRouter(tiny_config(mod_capacity=0.25))
    x = torch.randn(3, 20, 64)
    chosen, gate, aux = router.train()(x)
    assert chosen.sum(dim=1).tolist() == [5, 5, 5] and aux is not None
    chosen_eval, _, _ = router.eval()(x)
    chosen_prefix, _, _ = router(x[:, :7])
    assert torch.equal(chosen_eval[:, :7], chosen_prefix)


def test_mod_skipped_tokens_ride_the_residual():
    model = make_model(mod_capacity=0.25, mod_layers=[0], attn_layer_ids=[]).train()
    layer = model.model.layers[0]
    x = torch.randn(2, 16, 64)
    chosen, _, _ = layer.router(x)
    out, _ = layer(x)
    assert torch.equal(out[~chosen], x[~chosen])
    assert not torch.allclose(out[chosen], x[chosen])


def test_moe_equals_per_token_reference_and_respects_capacity():
    torch.manual_seed(0)
    moe = MoE(tiny_config(num_experts=4, num_experts_per_tok=2, moe_capacity_factor=0.5))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 12, 64)
    out, aux = moe.eval()(x)
    ref = torch.zeros_like(x)
    probs = F.linear(x, moe.router.weight).softmax(-1)
    for bi in range(2):
        for t in range(12):  # the reference loops over tokens; the module must not need to
            w, e = probs[bi, t].topk(2)
            for wk, ek in zip(w / w.sum(), e):
                gate, up = F.linear(x[bi, t], moe.w_gate_up[ek]).chunk(2)
                ref[bi, t] += wk * F.linear(F.silu(gate) * up, moe.w_down[ek])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert aux.item() >= 1.0 - 1e-5  # the balance loss is minimal (1) at uniform routing

    train_out, _ = moe.train()(x)
    capacity = math.ceil(0.5 * 12 * 2 / 4)
    e = probs.topk(2, dim=-1).indices
    for bi in range(2):  # tokens past an expert's capacity lose that expert's share
        load = torch.zeros(4, dtype=torch.long)
        for t in range(12):
            kept = []
            for ek in e[bi, t]:
                kept.append(bool(load[ek] < capacity))
                load[ek] += 1
            if all(kept):
                torch.testing.assert_close(train_out[bi, t], ref[bi, t], atol=1e-5, rtol=1e-4)
            else:
                assert not torch.allclose(train_out[bi, t], ref[bi, t], atol=1e-5)


def test_peer_product_keys_find_the_exact_top_experts():
    torch.manual_seed(0)
    peer = PEER(tiny_config(peer_num_experts=64, peer_topk=3, peer_heads=2, peer_key_dim=8))
    torch.nn.init.normal_(peer.sub_keys)
    x = torch.randn(2, 5, 64)
    out, _ = peer(x)
    # brute force: score every one of the N experts as the sum of its two sub-key scores
    q = F.rms_norm(peer.query(x).view(2, 5, 2, 2, 4), (4,))
    s1 = torch.einsum("bthd,hnd->bthn", q[..., 0, :], peer.sub_keys[:, 0])
    s2 = torch.einsum("bthd,hnd->bthn", q[..., 1, :], peer.sub_keys[:, 1])
    full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # (b, t, heads, 64)
    score, idx = full.topk(3, dim=-1)
    w = score.softmax(-1)
    hidden = F.gelu(torch.einsum("btd,bthkd->bthk", x, peer.expert_in(idx))) * w
    ref = torch.einsum("bthk,bthkd->btd", hidden, peer.expert_out(idx))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------ cache / generate
def test_cached_decoding_equals_full_forward_and_generate_matches():
    model = make_model()
    prompt = ids(2, 9)
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache, logits = out.past_key_values, [out.logits]
        seq = prompt
        for _ in range(8):
            nxt = logits[-1][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            logits.append(model(nxt, past_key_values=cache, use_cache=True).logits)
        full = model(seq, use_cache=False).logits
        torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-4, rtol=1e-4)

        cached = model.generate(prompt, max_new_tokens=10, do_sample=False)
        uncached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
    assert cached.shape == (2, 19)
    assert torch.equal(cached, uncached)


def test_left_padded_batch_generates_like_each_prompt_alone():
    model = make_model()
    long, short = ids(1, 10, seed=3), ids(1, 6, seed=4)
    pad = torch.zeros(1, 4, dtype=torch.long)
    batch = torch.cat([long, torch.cat([pad, short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    with torch.no_grad():
        both = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
        alone = model.generate(short, max_new_tokens=6, do_sample=False)
        alone_long = model.generate(long, max_new_tokens=6, do_sample=False)
    assert torch.equal(both[1, 10:], alone[0, 6:])
    assert torch.equal(both[0, 10:], alone_long[0, 10:])


# ------------------------------------------------------------------------ packed documents
def test_packed_documents_give_each_documents_own_logits():
    model = make_model()
    docs = [ids(1, n, seed=10 + n) for n in (7, 12, 5)]
    packed = torch.cat(docs, dim=1)
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    with torch.no_grad():
        got = model(packed, position_ids=position_ids, use_cache=False).logits
        want = torch.cat([model(d, use_cache=False).logits for d in docs], dim=1)
        seq_idx = torch.repeat_interleave(torch.arange(3), torch.tensor([7, 12, 5]))[None]
        got_idx = model(packed, position_ids=position_ids, seq_idx=seq_idx, use_cache=False).logits
        unmasked = model(packed, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_idx, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unmasked[:, 7:], want[:, 7:], atol=1e-3)  # without masking, documents leak


def test_rope_theta_is_read_at_call_time():
    model = make_model(mod_layers=[])
    x = ids(1, 16)
    with torch.no_grad():
        before = model(x, use_cache=False).logits
        model.config.rope_theta = 500000.0
        after = model(x, use_cache=False).logits
    assert not torch.allclose(before, after)


# ----------------------------------------------------------------------- HF integration
def test_loss_is_the_shifted_cross_entropy():
    model = make_model()
    x = ids(2, 16)
    labels = x.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        out = model(x, labels=labels, use_cache=False)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)
    model.train()
    train_out = model(x, labels=labels)
    assert train_out.aux_loss is not None and train_out.aux_loss.item() > 0
    train_out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".router.router." in n)


@pytest.mark.parametrize("variant", [{}, {"tie_word_embeddings": False, "shared_ffn": True,
                                          "ffn_types": ["dense", "dense", "moe", "peer"]}])
def test_save_pretrained_and_auto_from_pretrained_round_trip(tmp_path, variant):
    model = make_model(**variant)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hybrid_mode"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is HybridMoDEForCausalLM
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = ids(2, 12)
    with torch.no_grad():
        assert torch.equal(model(x, use_cache=False).logits, loaded(x, use_cache=False).logits)
    if variant.get("shared_ffn"):
        assert loaded.model.shared_ffn is not None and loaded.model.layers[0].ffn is None
    else:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = HybridMoDEForCausalLM(tiny_config()).train()
    x = ids(4, 32, seed=7)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        out = model(x, labels=x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    with torch.no_grad():
        final = model(x, labels=x).loss.item() - model(x, labels=x).aux_loss.item()
    assert first > 4.0 and final < 0.5, (first, final)


def test_presets_build_with_the_advertised_sizes():
    sizes = {}
    for name in ("tiny", "125m", "1b"):
        cfg = HybridMoDEConfig.from_yaml(REPO / "configs" / "model" / f"{name}.yaml")
        with torch.device("meta"):
            model = HybridMoDEForCausalLM(cfg)
        total = sum(p.numel() for p in model.parameters())
        experts = sum(p.numel() for layer in model.model.layers if layer.ffn_type == "moe"
                      for p in (layer.ffn.w_gate_up, layer.ffn.w_down))
        sizes[name] = total - experts * (1 - cfg.num_experts_per_tok / cfg.num_experts)
    assert 0.5e6 < sizes["tiny"] < 2e6
    assert 100e6 < sizes["125m"] < 150e6
    assert 0.8e9 < sizes["1b"] < 1.2e9
