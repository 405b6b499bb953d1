"""Configuration of the hybrid Mamba2 / shared-attention model with Mixture-of-Depths-and-Experts.

Layout of the network (L = num_hidden_layers):

    embed -> [ (shared attention block, if i in attn_layer_ids) -> layer i ] x L -> norm -> lm_head

    layer i      = Mamba2 mixer + an FFN of kind ffn_types[i] ("none" | "dense" | "moe" | "peer"),
                   optionally wrapped by a Mixture-of-Depths router (i in mod_layers)
    shared block = ONE set of attention + MLP weights (Zamba style) reused at every application;
                   its input is concat(hidden, embeddings) and each application has its own
                   LoRA adapter and output projection.

Packed sequences: pass `position_ids` that restart at 0 at every document start (the HF
packed-sequence convention), or `seq_idx` (int document index per token, non-decreasing along
each row). Attention is then masked per document and the Mamba conv/SSM states are reset at
each document boundary, so a packed row computes exactly what each document would alone.
"""
from __future__ import annotations

import math

try:  # transformers >= 5 spells it PreTrainedConfig
    from transformers import PreTrainedConfig as PretrainedConfig
except ImportError:
    from transformers import PretrainedConfig

FFN_TYPES = ("none", "dense", "moe", "peer")


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


class HybridMoDEConfig(PretrainedConfig):
    model_type = "hybrid_mode"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        num_hidden_layers: int = 8,
        intermediate_size: int | None = None,  # dense SwiGLU width (shared block, dense FFN layers)
        # --- Mamba2 (SSD) mixer
        ssm_state_size: int = 64,
        ssm_head_dim: int = 64,
        ssm_expand: int = 2,
        ssm_num_heads: int | None = None,  # default ssm_expand * hidden_size / ssm_head_dim
        ssm_n_groups: int = 1,
        conv_kernel: int = 4,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_kernels: bool = True,  # mamba_ssm / causal_conv1d when installed and on CUDA
        compile_scan: bool = False,  # torch.compile the torch SSD scan on CUDA (falls back to eager)
        # --- shared attention block
        attn_every: int = 4,
        attn_layer_ids: list[int] | None = None,  # the block runs before these layers
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
        attn_adapter_rank: int = 8,  # LoRA rank of the per-application adapters (0: none)
        attention_backend: str = "sdpa",  # "sdpa" | "flex" (flex only used on CUDA)
        # --- per-layer FFNs and MoDE
        ffn_types: str | list[str] = "none",
        shared_ffn: bool = False,  # one dense FFN shared by every "dense" layer
        mod_layers: list[int] | None = None,
        mod_capacity: float = 0.125,
        mod_decode_router: str = "predictor",  # "predictor" (small causal MLP) | "router" (sigmoid > 0.5)
        mod_aux_loss_coef: float = 0.01,
        num_experts: int = 8,
        num_experts_per_tok: int = 2,
        moe_intermediate_size: int | None = None,
        moe_capacity_factor: float = 1.25,
        moe_aux_loss_coef: float = 0.01,
        peer_num_experts: int = 1024,  # a perfect square: product keys of sqrt(N) sub-keys each
        peer_heads: int = 4,
        peer_topk: int = 8,
        peer_key_dim: int = 64,
        # --- muP (Tensor Programs V / VI)
        use_mup: bool = False,
        mup_base_width: int = 256,
        mup_depth_base: int | None = None,  # depth-muP: residual branches scaled by sqrt(base / L)
        # --- misc
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-5,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size or _round_up(8 * hidden_size / 3, 32)

        self.ssm_state_size = ssm_state_size
        self.ssm_head_dim = ssm_head_dim
        self.ssm_expand = ssm_expand
        self.ssm_num_heads = ssm_num_heads or (ssm_expand * hidden_size) // ssm_head_dim
        self.ssm_n_groups = ssm_n_groups
        self.conv_kernel = conv_kernel
        self.chunk_size = chunk_size
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.use_kernels = use_kernels
        self.compile_scan = compile_scan

        self.attn_every = attn_every
        if attn_layer_ids is None:
            attn_layer_ids = list(range(attn_every - 1, num_hidden_layers, attn_every)) if attn_every else []
        self.attn_layer_ids = sorted(int(i) for i in attn_layer_ids)
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.rope_theta = rope_theta
        self.attn_adapter_rank = attn_adapter_rank
        self.attention_backend = attention_backend

        if isinstance(ffn_types, str):
            ffn_types = [ffn_types] * num_hidden_layers
        self.ffn_types = list(ffn_types)
        self.shared_ffn = shared_ffn
        self.mod_layers = sorted(int(i) for i in (mod_layers or []))
        self.mod_capacity = mod_capacity
        self.mod_decode_router = mod_decode_router
        self.mod_aux_loss_coef = mod_aux_loss_coef
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size or max(32, self.intermediate_size // 2)
        self.moe_capacity_factor = moe_capacity_factor
        self.moe_aux_loss_coef = moe_aux_loss_coef
        self.peer_num_experts = peer_num_experts
        self.peer_heads = peer_heads
        self.peer_topk = peer_topk
        self.peer_key_dim = peer_key_dim

        self.use_mup = use_mup
        self.mup_base_width = mup_base_width
        self.mup_depth_base = mup_depth_base
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate(self) -> None:
        L = self.num_hidden_layers
        if len(self.ffn_types) != L or any(t not in FFN_TYPES for t in self.ffn_types):
            raise ValueError(f"ffn_types must be {L} entries of {FFN_TYPES}, got {self.ffn_types}")
        for name in ("attn_layer_ids", "mod_layers"):
            if any(not 0 <= i < L for i in getattr(self, name)):
                raise ValueError(f"{name} must index layers 0..{L - 1}, got {getattr(self, name)}")
        if self.ssm_num_heads % self.ssm_n_groups:
            raise ValueError("ssm_num_heads must be a multiple of ssm_n_groups")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if "peer" in self.ffn_types and math.isqrt(self.peer_num_experts) ** 2 != self.peer_num_experts:
            raise ValueError("peer_num_experts must be a perfect square (product keys)")
        if self.mod_decode_router not in ("predictor", "router"):
            raise ValueError("mod_decode_router must be 'predictor' or 'router'")
        if not 0 < self.mod_capacity <= 1:
            raise ValueError("mod_capacity is a fraction of tokens in (0, 1]")

    @classmethod
    def from_yaml(cls, path, **overrides) -> "HybridMoDEConfig":
        """A preset (configs/model/*.yaml: a flat mapping of the arguments above) plus overrides."""
        import yaml

        with open(path) as f:
            values = yaml.safe_load(f) or {}
        values.update(overrides)
        return cls(**values)

    # ---- derived quantities used across modules
    @property
    def ssm_inner_size(self) -> int:
        return self.ssm_num_heads * self.ssm_head_dim

    @property
    def width_mult(self) -> float:
        """muP width multiplier: hidden_size against the width the hyperparameters were tuned at."""
        return self.hidden_size / self.mup_base_width if self.use_mup else 1.0

    @property
    def residual_multiplier(self) -> float:
        """Depth-muP branch scale (Tensor Programs VI): sqrt(base_depth / depth), 1 when off."""
        if not self.mup_depth_base:
            return 1.0
        return math.sqrt(self.mup_depth_base / self.num_hidden_layers)

    def scaled_to_width(self, width: int) -> "HybridMoDEConfig":
        """The same architecture at another width: every width-like size scales with hidden_size
        (head counts grow, head dims and state sizes stay). Used for muP base shapes and sweeps."""
        r = width / self.hidden_size
        d = self.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            d.pop(key, None)
        d.update(
            hidden_size=width,
            intermediate_size=_round_up(self.intermediate_size * r, 8),
            moe_intermediate_size=_round_up(self.moe_intermediate_size * r, 8),
            ssm_num_heads=max(self.ssm_n_groups, round(self.ssm_num_heads * r)),
            num_attention_heads=max(self.num_key_value_heads, round(self.num_attention_heads * r)),
            head_dim=self.head_dim,
        )
        d["num_attention_heads"] -= d["num_attention_heads"] % self.num_key_value_heads
        d["ssm_num_heads"] -= d["ssm_num_heads"] % self.ssm_n_groups
        return HybridMoDEConfig(**d)
