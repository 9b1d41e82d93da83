"""Plain-PyTorch implementations of every op's semantics: the oracle for tests and
benchmarks. Written for clarity, not speed; pass float64 inputs for a reference."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["layer_norm_ref", "rms_norm_ref"]


def layer_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
                   residual: Optional[torch.Tensor] = None, compute_dtype=torch.float64):
    """LayerNorm over the last dim, computed in compute_dtype, returned in that dtype.
    With residual: (norm(x + residual), x + residual)."""
    s = x.to(compute_dtype)
    if residual is not None:
        s = s + residual.to(compute_dtype)
    mean = s.mean(-1, keepdim=True)
    var = (s - mean).pow(2).mean(-1, keepdim=True)
    y = (s - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype)
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return (y, s) if residual is not None else y


def rms_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5,
                 residual: Optional[torch.Tensor] = None, compute_dtype=torch.float64):
    """RMSNorm over the last dim, computed in compute_dtype, returned in that dtype.
    With residual: (norm(x + residual), x + residual)."""
    s = x.to(compute_dtype)
    if residual is not None:
        s = s + residual.to(compute_dtype)
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype)
    return (y, s) if residual is not None else y
