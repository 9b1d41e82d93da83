"""The flash-attn package (Dao-AILab), where installed: it has ALiBi slopes in its CUDA
kernels (FlashAttention-2), the closest existing kernel to ours."""
from __future__ import annotations

import torch

from ..core import Unavailable
from .spec import AttnFn, AttnSpec


def _module():
    try:
        import flash_attn
    except Exception as exc:  # not installed, or built for another torch
        raise Unavailable(f"flash-attn not importable ({type(exc).__name__})") from None
    return flash_attn


def build(spec: AttnSpec) -> AttnFn:
    fa = _module()

    def fn(q, k, v):  # bshd
        return fa.flash_attn_func(q, k, v, softmax_scale=spec.scale, causal=spec.causal,
                                  alibi_slopes=spec.slopes)
    return fn


def build_kvcache(spec: AttnSpec) -> AttnFn:
    fa = _module()
    seqlens = torch.full((spec.batch,), spec.seqlen_k, dtype=torch.int32, device=spec.device)

    def fn(q, k_cache, v_cache):  # bshd
        return fa.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                          softmax_scale=spec.scale, causal=spec.causal,
                                          alibi_slopes=spec.slopes)
    return fn
