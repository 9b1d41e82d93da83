"""mpt_ext's own kernels, called through the public API exactly as a user calls them."""
from __future__ import annotations

import torch

import mpt_ext
from mpt_ext import _library

from .spec import AttnFn, AttnSpec, NormFn, NormSpec


def _require_cuda_kernel(device: torch.device, built: bool, what: str) -> None:
    """Fail fast (before allocating inputs) when this build does not dispatch `what` on
    CUDA; the case runner reports it as "not built"."""
    if device.type == "cuda" and not built:
        raise NotImplementedError(f"mpt_ext was built without the CUDA {what} kernel")


def build_attention(spec: AttnSpec) -> AttnFn:
    _require_cuda_kernel(spec.device, _library.CUDA_ATTN, "attn")

    def fn(q, k, v):  # bshd
        return mpt_ext.flash_attn_func(q, k, v, softmax_scale=spec.scale, causal=spec.causal,
                                       alibi_slopes=spec.slopes)
    return fn


def build_kvcache(spec: AttnSpec) -> AttnFn:
    _require_cuda_kernel(spec.device, _library.CUDA_ATTN_KVCACHE, "attn_kvcache")
    # A generation loop keeps cache_seqlens as a tensor; an int would add a fill per call.
    seqlens = torch.full((spec.batch,), spec.seqlen_k, dtype=torch.int32, device=spec.device)

    def fn(q, k_cache, v_cache):  # bshd
        return mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                               softmax_scale=spec.scale, causal=spec.causal,
                                               alibi_slopes=spec.slopes)
    return fn


def build_norm(spec: NormSpec) -> NormFn:
    _require_cuda_kernel(spec.device, _library.CUDA_NORM, "norm")
    eps = spec.eps
    if spec.op == "layer_norm":
        return lambda x, w: mpt_ext.layer_norm(x, w, None, eps)
    return lambda x, w: mpt_ext.rms_norm(x, w, eps)
