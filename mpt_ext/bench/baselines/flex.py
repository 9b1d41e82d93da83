"""FlexAttention with an ALiBi score_mod and a causal block mask, under torch.compile:
the fastest ALiBi a PyTorch user has without a custom kernel."""
from __future__ import annotations

import torch

from ..core import Unavailable
from .spec import AttnFn, AttnSpec


def _fresh_compile_state() -> None:
    """Each shape compiles anew (dynamic=False); a clean dynamo state keeps a long grid from
    hitting the recompile limit and silently falling back to an unfused eager path."""
    torch._dynamo.reset()
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))


def build(spec: AttnSpec) -> AttnFn:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        raise Unavailable(f"no FlexAttention in this torch ({exc})") from None
    _fresh_compile_state()
    slopes = spec.slopes
    shift = spec.seqlen_k - spec.seqlen_q  # bottom-right alignment

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx - shift)

    block_mask = None
    if spec.causal:
        def causal(b, h, q_idx, kv_idx):
            return q_idx + shift >= kv_idx
        block_mask = create_block_mask(causal, None, None, spec.seqlen_q, spec.seqlen_k,
                                       device=spec.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    kw = {"enable_gqa": True} if spec.heads_k != spec.heads else {}

    def fn(q, k, v):  # bhsd
        return compiled(q, k, v, score_mod=alibi, block_mask=block_mask, scale=spec.scale, **kw)
    return fn
