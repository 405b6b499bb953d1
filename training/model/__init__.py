"""Hybrid Mamba2 / shared-attention language model with Mixture-of-Depths-and-Experts, muP and
elastic sub-models, as a transformers model (registered with the Auto classes on import)."""
from transformers import AutoConfig, AutoModelForCausalLM

from .config import HybridMoDEConfig
from .elastic import SubModelSpec, extract_submodel, measure_importance, reorder_by_importance
from .mamba2 import HAVE_KERNELS, scan_path
from .modeling import HybridCache, HybridMoDEForCausalLM, HybridMoDEModel
from .mup import coord_check, mup_param_groups

AutoConfig.register(HybridMoDEConfig.model_type, HybridMoDEConfig)
AutoModelForCausalLM.register(HybridMoDEConfig, HybridMoDEForCausalLM)

__all__ = [
    "HybridMoDEConfig", "HybridMoDEForCausalLM", "HybridMoDEModel", "HybridCache", "SubModelSpec",
    "extract_submodel", "measure_importance", "reorder_by_importance", "mup_param_groups", "coord_check",
    "HAVE_KERNELS", "scan_path",
]
