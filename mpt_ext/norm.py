"""Low-precision LayerNorm / RMSNorm: read and write the input dtype, statistics in fp32,
with an optional fused residual add. Fake kernels and autograd for the norm ops live here.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._args import real, tensor_arg
from ._library import ops

__all__ = ["layer_norm", "rms_norm"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---- fake kernels ---------------------------------------------------------------------------
# The fake kernels repeat the C++ binding's checks: under torch.compile, and whenever a meta
# tensor is among the inputs (the dispatcher then picks the fake kernel even for a CPU x),
# they are the only checks that run.
def _check_dtype(t, name):
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 (or float64 on CPU), "
                        f"got {t.dtype}")
    if t.dtype == torch.float64 and t.device.type == "cuda":
        raise TypeError(f"{name} must be float16, bfloat16 or float32 on cuda, got float64 "
                        "(float64 is CPU-only)")


def _check_like_x(t, name, x):
    if t.device != x.device:
        raise ValueError(f"{name} must be on the same device as x ({x.device}), got {t.device}")


def _check_param(t, name, x, hidden):
    if t is None:
        return
    _check_dtype(t, name)
    _check_like_x(t, name, x)
    if t.dim() != 1 or t.shape[0] != hidden:
        raise ValueError(f"{name} must have shape (hidden,) = ({hidden},), got {tuple(t.shape)}")


def _check_same_shape_dtype(t, name, x):
    if t.shape != x.shape:
        raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    _check_like_x(t, name, x)


def _check_x(x):
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (..., hidden) with hidden >= 1, got {tuple(x.shape)}")
    _check_dtype(x, "x")


@torch.library.register_fake("mpt_ext::norm_fwd")
def _norm_fwd_fake(x, weight, bias, residual, eps, is_rms):
    _check_x(x)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be >= 0, got {eps}")
    hidden = x.shape[-1]
    _check_param(weight, "weight", x, hidden)
    _check_param(bias, "bias", x, hidden)
    if is_rms and bias is not None:
        raise ValueError("rms_norm takes no bias")
    if bias is not None and weight is None:
        raise ValueError("bias without weight is not supported: pass weight=torch.ones(hidden)")
    if residual is not None:
        _check_same_shape_dtype(residual, "residual", x)
    rows = x.numel() // hidden
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    residual_out = (torch.empty_like(x, memory_format=torch.contiguous_format)
                    if residual is not None else x.new_empty((0,)))
    mean = x.new_empty((0,) if is_rms else (rows,), dtype=torch.float32)
    rstd = x.new_empty((rows,), dtype=torch.float32)
    return y, residual_out, mean, rstd


@torch.library.register_fake("mpt_ext::norm_bwd")
def _norm_bwd_fake(dy, dresidual_out, x, weight, bias, mean, rstd, is_rms):
    _check_x(x)
    hidden = x.shape[-1]
    _check_same_shape_dtype(dy, "dy", x)
    if dresidual_out is not None:
        _check_same_shape_dtype(dresidual_out, "dresidual_out", x)
    _check_param(weight, "weight", x, hidden)
    _check_param(bias, "bias", x, hidden)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dweight = weight.new_empty((hidden,)) if weight is not None else x.new_empty((0,))
    dbias = bias.new_empty((hidden,)) if bias is not None else x.new_empty((0,))
    return dx, dweight, dbias


# ---- autograd -------------------------------------------------------------------------------
def _norm_setup_context(ctx, inputs, output):
    x, weight, bias, residual, eps, is_rms = inputs
    _, residual_out, mean, rstd = output
    # The backward needs the normalised input: x, or the (rounded) x + residual when fused.
    normed_input = residual_out if residual is not None else x
    ctx.save_for_backward(normed_input, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.is_rms = is_rms
    ctx.has_residual = residual is not None


def _norm_backward(ctx, dy, dresidual_out, dmean, drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    if dy is None:  # only residual_out was used downstream
        dy = torch.zeros_like(x)
    dx, dweight, dbias = ops.norm_bwd(
        dy, dresidual_out if ctx.has_residual else None, x, weight, bias, mean, rstd, ctx.is_rms)
    # x and residual enter as their sum, so they share one gradient.
    return (dx,
            dweight if weight is not None else None,
            dbias if bias is not None else None,
            dx if ctx.has_residual else None,
            None, None)


torch.library.register_autograd("mpt_ext::norm_fwd", _norm_backward,
                                setup_context=_norm_setup_context)


# ---- public API -----------------------------------------------------------------------------
# Argument types are checked here, naming the argument (_args.py); a tensor in eps's place
# is most often a bias or residual passed positionally, so that error says so.
_POSITIONAL_HINT = {
    "layer_norm": "the positional order is (x, weight, bias, eps, residual); "
                  "did you mean residual=...?",
    "rms_norm": "RMSNorm has no bias: the positional order is (x, weight, eps, residual); "
                "did you mean residual=...?",
}


def _eps(fn: str, eps) -> float:
    if isinstance(eps, torch.Tensor):
        raise TypeError(f"{fn}: eps must be a float, got Tensor ({_POSITIONAL_HINT[fn]})")
    return real(f"{fn}: eps", eps)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
               residual: Optional[torch.Tensor] = None):
    """LayerNorm over the last dimension in x's dtype (fp32 statistics).

    weight and bias have shape (hidden,) and may be float32 while x is bf16/fp16.
    With residual: returns (layer_norm(x + residual), x + residual), fused in one pass."""
    tensor_arg("layer_norm: x", x, optional=False)
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        tensor_arg(f"layer_norm: {name}", t)
    eps = _eps("layer_norm", eps)
    if weight is None and bias is not None:
        # F.layer_norm allows a bias alone; the kernel takes weight and bias together
        weight = torch.ones_like(bias)
    y, residual_out, _, _ = ops.norm_fwd(x, weight, bias, residual, eps, False)
    return (y, residual_out) if residual is not None else y


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5,
             residual: Optional[torch.Tensor] = None):
    """RMSNorm over the last dimension in x's dtype (fp32 statistics).

    With residual: returns (rms_norm(x + residual), x + residual), fused in one pass."""
    tensor_arg("rms_norm: x", x, optional=False)
    for name, t in (("weight", weight), ("residual", residual)):
        tensor_arg(f"rms_norm: {name}", t)
    eps = _eps("rms_norm", eps)
    y, residual_out, _, _ = ops.norm_fwd(x, weight, None, residual, eps, True)
    return (y, residual_out) if residual is not None else y
