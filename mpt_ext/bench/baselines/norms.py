"""What a PyTorch user normalises with today: F.layer_norm / F.rms_norm, the same under
torch.compile, and liger-kernel's Triton kernels where installed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import Unavailable
from .spec import NormFn, NormSpec


def build_eager(spec: NormSpec) -> NormFn:
    shape, eps = (spec.hidden,), spec.eps
    if spec.op == "layer_norm":
        return lambda x, w: F.layer_norm(x, shape, w, None, eps)
    if not hasattr(F, "rms_norm"):
        raise Unavailable("this torch has no F.rms_norm")
    return lambda x, w: F.rms_norm(x, shape, w, eps)


def build_compiled(spec: NormSpec) -> NormFn:
    torch._dynamo.reset()  # a fresh compile per shape, never the recompile-limit fallback
    return torch.compile(build_eager(spec), dynamic=False)


def build_liger(spec: NormSpec) -> NormFn:
    try:
        from liger_kernel.transformers import functional as lf
    except Exception as exc:
        raise Unavailable(f"liger-kernel not importable ({type(exc).__name__})") from None
    if spec.op == "layer_norm":
        # Liger's LayerNorm takes a bias; a zero one stands in for "none".
        bias = torch.zeros(spec.hidden, dtype=spec.dtype, device=spec.device)
        return lambda x, w: lf.liger_layer_norm(x, w, bias, spec.eps)
    return lambda x, w: lf.liger_rms_norm(x, w, spec.eps)
