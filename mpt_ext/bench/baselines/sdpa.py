"""F.scaled_dot_product_attention: with a float ALiBi bias on one chosen backend, or
without bias (the no-ALiBi ceiling: what the fastest fused kernels reach without ALiBi)."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch.nn.functional as F

from ..core import Unavailable
from .bias import full_alibi_bias
from .spec import AttnFn, AttnSpec

_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "math": "MATH", "flash": "FLASH_ATTENTION"}


def _backend_context(backend: Optional[str]):
    """sdpa_kernel restricted to one backend; None lets SDPA choose."""
    if backend is None:
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        member = getattr(SDPBackend, _BACKENDS[backend])
    except AttributeError:
        raise Unavailable(f"this torch has no SDPA {backend} backend") from None
    return lambda: sdpa_kernel([member])


def _gqa_kwargs(spec: AttnSpec) -> dict:
    return {"enable_gqa": True} if spec.heads_k != spec.heads else {}


def build_with_bias(backend: Optional[str]):
    def build(spec: AttnSpec) -> AttnFn:
        ctx = _backend_context(backend)
        bias = full_alibi_bias(spec)
        kw = _gqa_kwargs(spec)

        def fn(q, k, v):
            with ctx():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=spec.scale,
                                                      **kw)
        return fn
    return build


def build_no_bias(backend: str):
    def build(spec: AttnSpec) -> AttnFn:
        ctx = _backend_context(backend)
        if spec.causal and 1 < spec.seqlen_q != spec.seqlen_k:
            raise Unavailable("SDPA's is_causal is top-left aligned; needs seqlen_q == seqlen_k")
        # A single query row (decoding) sees every cached key: no mask needed.
        is_causal = spec.causal and spec.seqlen_q > 1
        kw = _gqa_kwargs(spec)

        def fn(q, k, v):
            with ctx():
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
                                                      scale=spec.scale, **kw)
        return fn
    return build
