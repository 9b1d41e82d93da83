"""Low-precision LayerNorm / RMSNorm: read and write the input dtype, statistics in fp32,
with an optional fused residual add. Fake kernels and autograd for the norm ops live here.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._library import ops

__all__ = ["layer_norm", "rms_norm"]


@torch.library.register_fake("mpt_ext::norm_fwd")
def _norm_fwd_fake(x, weight, bias, residual, eps, is_rms):
    rows = x.numel() // x.shape[-1] if x.dim() > 0 and x.shape[-1] > 0 else 0
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    residual_out = (torch.empty_like(x, memory_format=torch.contiguous_format)
                    if residual is not None else x.new_empty((0,)))
    mean = x.new_empty((0,) if is_rms else (rows,), dtype=torch.float32)
    rstd = x.new_empty((rows,), dtype=torch.float32)
    return y, residual_out, mean, rstd


@torch.library.register_fake("mpt_ext::norm_bwd")
def _norm_bwd_fake(dy, dresidual_out, x, weight, bias, mean, rstd, is_rms):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dweight = torch.empty_like(weight) if weight is not None else x.new_empty((0,))
    dbias = torch.empty_like(bias) if bias is not None else x.new_empty((0,))
    return dx, dweight, dbias


def _norm_setup_context(ctx, inputs, output):
    x, weight, bias, residual, eps, is_rms = inputs
    _, residual_out, mean, rstd = output
    # The backward needs the normalised input: x, or x + residual when fused.
    normed_input = residual_out if residual is not None else x
    ctx.save_for_backward(normed_input, weight, bias, mean, rstd)
    ctx.is_rms = is_rms
    ctx.has_residual = residual is not None


def _norm_backward(ctx, dy, dresidual_out, dmean, drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    dx, dweight, dbias = ops.norm_bwd(
        dy, dresidual_out if ctx.has_residual else None, x, weight, bias, mean, rstd, ctx.is_rms)
    return (dx,
            dweight if weight is not None else None,
            dbias if bias is not None else None,
            dx if ctx.has_residual else None,
            None, None)


torch.library.register_autograd("mpt_ext::norm_fwd", _norm_backward,
                                setup_context=_norm_setup_context)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
               residual: Optional[torch.Tensor] = None):
    """LayerNorm over the last dimension in x's dtype (fp32 statistics).

    With residual: returns (layer_norm(x + residual), x + residual), fused in one pass."""
    y, residual_out, _, _ = ops.norm_fwd(x, weight, bias, residual, float(eps), False)
    return (y, residual_out) if residual is not None else y


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5,
             residual: Optional[torch.Tensor] = None):
    """RMSNorm over the last dimension in x's dtype (fp32 statistics).

    With residual: returns (rms_norm(x + residual), x + residual), fused in one pass."""
    y, residual_out, _, _ = ops.norm_fwd(x, weight, None, residual, float(eps), True)
    return (y, residual_out) if residual is not None else y
