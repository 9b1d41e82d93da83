"""A minimal MPT causal LM on mpt_ext's kernels that reads and writes Hugging Face MPT
checkpoints.

    from mpt_ext.models import MPTConfig, MPTForCausalLM
    model = MPTForCausalLM(MPTConfig.preset("125m"))
    model = MPTForCausalLM.from_pretrained("path/to/hf/mpt")
"""
from .config import PRESETS, AttnConfig, MPTConfig
from .modeling import CausalLMOutput, MPTForCausalLM

__all__ = ["MPTConfig", "AttnConfig", "MPTForCausalLM", "CausalLMOutput", "PRESETS"]
