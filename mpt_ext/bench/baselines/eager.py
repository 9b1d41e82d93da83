"""Eager attention as Hugging Face's MPT computes it: matmul, key-position ALiBi bias,
masked_fill, fp32 softmax, matmul. GQA groups the query heads of a KV head in the matmul
instead of copying K/V (the cheaper of the two ways to write it)."""
from __future__ import annotations

import torch

from .bias import causal_mask, key_alibi_bias
from .spec import AttnFn, AttnSpec


def build(spec: AttnSpec) -> AttnFn:
    hk, g = spec.heads_k, spec.group
    bias = key_alibi_bias(spec).view(hk, g, 1, spec.seqlen_k)
    mask = causal_mask(spec) if spec.causal else None
    if mask is not None and not bool(mask.any()):
        mask = None  # one decoding query sees the whole cache
    neg = torch.finfo(spec.dtype).min

    def fn(q, k, v):  # bhsd
        b, h, sq, d = q.shape
        s = torch.matmul(q.reshape(b, hk, g * sq, d), k.transpose(-1, -2))
        s = s.view(b, hk, g, sq, -1) * spec.scale + bias
        if mask is not None:
            s = s.masked_fill(mask, neg)
        p = torch.softmax(s.float(), dim=-1).to(q.dtype)
        return torch.matmul(p.view(b, hk, g * sq, -1), v).view(b, h, sq, d)
    return fn
