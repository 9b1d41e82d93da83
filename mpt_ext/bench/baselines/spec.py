"""What an adapter is given and what it gives back.

An adapter turns a problem description into a plain callable; it builds whatever it needs
once (bias tensors, block masks, compiled functions) so that only the call is timed. It
raises core.Unavailable when it cannot run here, and lets the op's own errors (OOM,
NotImplementedError when a kernel is not built) propagate to the case runner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

OURS, BASELINE, CEILING = "ours", "baseline", "ceiling"


@dataclass
class AttnSpec:
    batch: int
    heads: int
    heads_k: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    causal: bool
    slopes: torch.Tensor   # fp32 (heads,), on the device
    dtype: torch.dtype
    device: torch.device

    @property
    def scale(self) -> float:
        return self.head_dim ** -0.5

    @property
    def group(self) -> int:
        return self.heads // self.heads_k


# fn(q, k, v) -> out, in the adapter's layout:
#   "bshd": (batch, seqlen, heads, head_dim), flash-attn's and ours
#   "bhsd": (batch, heads, seqlen, head_dim), SDPA's
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionImpl:
    name: str
    kind: str                               # OURS, BASELINE or CEILING (no ALiBi)
    layout: str                             # "bshd" or "bhsd"
    build: Callable[[AttnSpec], AttnFn]
    cuda_only: bool = False
    note: Optional[str] = None
    passes: Optional[tuple[str, ...]] = None  # the passes it is timed in (None: all)
    # environment variables set around each timed call, forward and backward (and restored)
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class NormSpec:
    op: str        # "layer_norm" or "rms_norm"
    hidden: int
    eps: float
    dtype: torch.dtype
    device: torch.device


NormFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # fn(x, weight) -> y


@dataclass(frozen=True)
class NormImpl:
    name: str
    kind: str
    build: Callable[[NormSpec], NormFn]
    cuda_only: bool = False
