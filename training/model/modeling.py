"""The causal LM: embeddings, hybrid layers, the shared attention block, cache, generation.

Inputs beyond the usual HF ones:
  seq_idx (b, T) int      document id of each token (non-decreasing along a row) for packed
                          sequences; derived from `position_ids` when those restart at 0.
  sub_model SubModelSpec  run an elastic slice of the weights (see elastic.py).
Outputs carry `aux_loss` (MoD + MoE auxiliary losses, already weighted); during training it is
added to `loss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .attention import (AttentionAdapter, AttnInputs, KVState, RMSNorm, SharedAttentionBlock, flex_document_mask,
                        rope_cos_sin, sdpa_mask)
from .config import HybridMoDEConfig
from .elastic import Slices, SubModelSpec
from .mamba2 import Mamba2Mixer, MambaState
from .mode import PEER, DenseMLP, MoDRouter, MoE, gather_chosen


class HybridCache:
    """Decoding state: per layer the Mamba conv window and SSM state, per application of the
    shared block its keys and values. Filled lazily by the first forward."""

    def __init__(self, config: HybridMoDEConfig):
        self.mamba = [MambaState() for _ in range(config.num_hidden_layers)]
        self.kv = [KVState() for _ in config.attn_layer_ids]
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        for s in self.mamba + self.kv:
            for name in vars(s):
                t = getattr(s, name)
                if t is not None:
                    setattr(s, name, t.index_select(0, beam_idx.to(t.device)))


@dataclass
class HybridMoDEOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: HybridCache | None = None
    hidden_states: tuple | None = None
    aux_loss: torch.Tensor | None = None


class HybridLayer(nn.Module):
    """Mamba2 mixer + optional FFN, each a pre-norm residual branch; optionally behind a MoD router."""

    def __init__(self, config: HybridMoDEConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.ffn_type = config.ffn_types[layer_idx]
        self.res_mult = config.residual_multiplier
        self.norm_mixer = RMSNorm(d, config.rms_norm_eps)
        self.mixer = Mamba2Mixer(config, layer_idx)
        self.ffn = None  # stays None for "none", and for "dense" when one FFN is shared by all layers
        if self.ffn_type != "none":
            self.norm_ffn = RMSNorm(d, config.rms_norm_eps)
        if self.ffn_type == "dense" and not config.shared_ffn:
            self.ffn = DenseMLP(d, config.intermediate_size)
        elif self.ffn_type == "moe":
            self.ffn = MoE(config)
        elif self.ffn_type == "peer":
            self.ffn = PEER(config)
        self.router = MoDRouter(config) if layer_idx in config.mod_layers else None
        self.mod_coef, self.moe_coef = config.mod_aux_loss_coef, config.moe_aux_loss_coef

    def _block(self, x, state, seq_idx, token_mask, shared_ffn, sl: Slices):
        x = x + self.res_mult * self.mixer(self.norm_mixer(x), state, seq_idx, token_mask, heads=sl.ssm_heads)
        aux = None
        if self.ffn_type != "none":
            h = self.norm_ffn(x)
            if self.ffn_type == "dense":
                y, _ = (self.ffn or shared_ffn)(h, sl.mlp_channels)
            elif self.ffn_type == "moe":
                y, aux = self.ffn(h, sl.moe_channels, sl.experts)
                aux = self.moe_coef * aux
            else:
                y, _ = self.ffn(h)
            x = x + self.res_mult * y
        return x, aux

    def forward(self, x, state=None, seq_idx=None, token_mask=None, shared_ffn=None, sl: Slices = Slices()):
        if self.router is None:
            return self._block(x, state, seq_idx, token_mask, shared_ffn, sl)
        chosen, gate, aux = self.router(x)
        aux = None if aux is None else self.mod_coef * aux
        if token_mask is not None:
            chosen = chosen & token_mask
        idx, real = gather_chosen(chosen)
        if idx.shape[1] == 0:  # no token of the batch runs this layer
            return x, aux
        d = x.shape[-1]
        idx_d = idx[..., None].expand(-1, -1, d)
        xs = x.gather(1, idx_d)
        sub_docs = seq_idx.gather(1, idx) if seq_idx is not None else None
        out, aux_ffn = self._block(xs, state, sub_docs, None if bool(real.all()) else real, shared_ffn, sl)
        weight = (gate.gather(1, idx) * real)[..., None].to(x.dtype)
        x = x.scatter_add(1, idx_d, (out - xs) * weight)
        if aux_ffn is not None:
            aux = aux_ffn if aux is None else aux + aux_ffn
        return x, aux


class HybridMoDEPreTrainedModel(PreTrainedModel):
    config_class = HybridMoDEConfig
    base_model_prefix = "model"
    _is_stateful = True  # own cache class: generate must not build a DynamicCache
    _no_split_modules = ["HybridLayer", "SharedAttentionBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        cfg = self.config
        std = cfg.initializer_range
        # muP: weights whose fan-in grows with width start at std / sqrt(width multiplier), i.e. var ~ 1/fan_in
        hidden_std = std / math.sqrt(cfg.width_mult)
        if isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):
                module.weight.zero_()
            else:
                module.weight.normal_(0.0, hidden_std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, nn.Conv1d):
            module.reset_parameters()
        elif isinstance(module, Mamba2Mixer):
            H = module.num_heads
            log_dt = torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
            dt = log_dt.exp().clamp(min=cfg.dt_init_floor)
            module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            module.A_log.copy_(torch.log(torch.empty(H).uniform_(1, 16)))
            module.D.fill_(1.0)
            module.norm_weight.fill_(1.0)
        elif isinstance(module, MoE):
            module.w_gate_up.normal_(0.0, hidden_std)
            module.w_down.normal_(0.0, hidden_std)
        elif isinstance(module, PEER):
            module.sub_keys.normal_(0.0, 1.0 / math.sqrt(module.key_dim // 2))


class HybridMoDEModel(HybridMoDEPreTrainedModel):
    def __init__(self, config: HybridMoDEConfig):
        super().__init__(config)
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(HybridLayer(config, i) for i in range(config.num_hidden_layers))
        self.shared_block = SharedAttentionBlock(config) if config.attn_layer_ids else None
        self.adapters = nn.ModuleList(AttentionAdapter(config) for _ in config.attn_layer_ids)
        needs_shared = config.shared_ffn and "dense" in config.ffn_types
        self.shared_ffn = DenseMLP(d, config.intermediate_size) if needs_shared else None
        self.norm = RMSNorm(d, config.rms_norm_eps)
        self.res_mult = config.residual_multiplier
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, inputs_embeds=None, position_ids=None, seq_idx=None, attention_mask=None,
                past_key_values: HybridCache | None = None, sub_model: SubModelSpec | None = None,
                output_hidden_states: bool = False):
        cfg = self.config
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, T, _ = x.shape
        past = past_key_values.seen_tokens if past_key_values is not None else 0

        if seq_idx is None and position_ids is not None and past == 0 and T > 1:
            restarts = position_ids[:, 1:] == 0  # HF packing convention: positions restart per document
            if bool(restarts.any()):
                seq_idx = F.pad(restarts.long(), (1, 0)).cumsum(dim=1)
        if position_ids is None:
            if attention_mask is not None and attention_mask.shape[1] == past + T:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device)[None].expand(b, T)

        token_mask = key_padding = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_padding = attention_mask.bool()
            token_mask = key_padding[:, -T:]

        attn = None
        if self.shared_block is not None:
            cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta)
            attn = AttnInputs(cos, sin)
            use_flex = (cfg.attention_backend == "flex" and x.is_cuda and seq_idx is not None
                        and past == 0 and key_padding is None)
            if use_flex:
                attn.block_mask = flex_document_mask(seq_idx)
            else:
                attn.mask = sdpa_mask(b, T, past, seq_idx, key_padding, x.device)
                attn.is_causal = attn.mask is None and T > 1

        sl = sub_model.resolve(cfg, x.device) if sub_model is not None else Slices()
        embeds = x
        aux_total = None
        all_hidden = [x] if output_hidden_states else None
        app = {layer: a for a, layer in enumerate(cfg.attn_layer_ids)}
        for i, layer in enumerate(self.layers):
            if sl.layers is not None and i not in sl.layers:
                continue  # elastic depth: the layer (and the shared block before it) is skipped
            if i in app:
                a = app[i]
                kv = past_key_values.kv[a] if past_key_values is not None else None
                x = x + self.res_mult * self.shared_block(x, embeds, self.adapters[a], attn, kv, sl.q_heads,
                                                          sl.mlp_channels)
            state = past_key_values.mamba[i] if past_key_values is not None else None
            x, aux = layer(x, state, seq_idx, token_mask, self.shared_ffn, sl)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
            if output_hidden_states:
                all_hidden.append(x)
        x = self.norm(x)
        if past_key_values is not None:
            past_key_values.seen_tokens += T
        return x, aux_total, (tuple(all_hidden) if output_hidden_states else None)


class HybridMoDEForCausalLM(HybridMoDEPreTrainedModel, GenerationMixin):
    # tied to the input embeddings when config.tie_word_embeddings (transformers 5 wants a mapping)
    _tied_weights_keys = (["lm_head.weight"] if int(transformers.__version__.split(".")[0]) < 5
                          else {"lm_head.weight": "model.embed_tokens.weight"})

    def __init__(self, config: HybridMoDEConfig):
        super().__init__(config)
        self.model = HybridMoDEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @property
    def output_multiplier(self) -> float:
        """muP: logits are scaled by 1 / width_mult (the readout sees a sum over width)."""
        return 1.0 / self.config.width_mult

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, seq_idx=None,
                past_key_values: HybridCache | None = None, inputs_embeds=None, labels=None,
                use_cache: bool | None = None, sub_model: SubModelSpec | None = None,
                output_hidden_states: bool | None = None, logits_to_keep: int = 0, return_dict=None, **kwargs):
        r"""Causal LM forward. `labels` are the input ids (shifted inside, -100 ignored), as in any HF
        causal LM. For packed sequences pass `position_ids` restarting at 0 per document or `seq_idx`.
        A `HybridCache` is created when `use_cache` (default: config.use_cache, at eval only)."""
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = HybridCache(self.config)
        hidden, aux, all_hidden = self.model(input_ids, inputs_embeds, position_ids, seq_idx, attention_mask,
                                             past_key_values if use_cache else None, sub_model,
                                             bool(output_hidden_states))
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float() * self.output_multiplier
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            if aux is not None and self.training:
                loss = loss + aux
        return HybridMoDEOutput(loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None,
                                hidden_states=all_hidden, aux_loss=aux)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      inputs_embeds=None, use_cache=True, **kwargs):
        if not isinstance(past_key_values, HybridCache):  # transformers 5 may hand over an empty DynamicCache
            past_key_values = None
        seen = past_key_values.seen_tokens if past_key_values is not None else 0
        inputs = {"past_key_values": past_key_values, "attention_mask": attention_mask, "use_cache": use_cache}
        if inputs_embeds is not None and seen == 0:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids[:, seen:] if use_cache else input_ids
        if "sub_model" in kwargs:
            inputs["sub_model"] = kwargs["sub_model"]
        if kwargs.get("logits_to_keep"):
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs
