"""mpt_ext: ALiBi flash attention, low-precision norms and a minimal MPT stack for PyTorch.

    from mpt_ext import flash_attn_func          # drop-in for flash_attn.flash_attn_func
    import mpt_ext.nn                            # LayerNorm, LPLayerNorm, RMSNorm
    mpt_ext.patch(model)                         # swap a model's norms/attention in place
"""
from ._library import CUDA_ATTN, CUDA_ATTN_KVCACHE, CUDA_FAMILIES, CUDA_NORM, WITH_CUDA
from .attention import (
    alibi_slopes,
    check_device_input_errors,
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
)
from .attention_packed import (
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
)
from .norm import layer_norm, rms_norm
from . import nn
from .nn import patch

__version__ = "0.1.0"

__all__ = [
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "alibi_slopes",
    "check_device_input_errors",
    "layer_norm",
    "rms_norm",
    "nn",
    "patch",
    "WITH_CUDA",
    "CUDA_FAMILIES",
    "CUDA_NORM",
    "CUDA_ATTN",
    "CUDA_ATTN_KVCACHE",
]
