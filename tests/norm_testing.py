"""Shared checks for the norm tests (CPU and CUDA): the op against a float64 reference,
with the tolerance rule of docs/DESIGN.md, Numerics (at most 2x PyTorch's own error in the
same dtype, plus a small floor)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import mpt_ext
from mpt_ext.reference import layer_norm_ref, rms_norm_ref

# (x dtype, weight dtype): weights may stay fp32 while x is low precision (autocast).
DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.float16, torch.float16),
]
# (norm, affine parameters present): rms_norm has no bias.
NORM_KINDS = [("layer", "none"), ("layer", "weight"), ("layer", "weight_bias"),
              ("rms", "none"), ("rms", "weight")]


def dtype_pair_id(pair):
    return f"{pair[0]}-{pair[1]}".replace("torch.", "")


def make_inputs(shape, x_dtype, w_dtype, affine, is_rms, with_residual, device):
    hidden = shape[-1]
    # An offset and a scale make the mean matter (a non-centred row stresses the variance).
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(x_dtype)
    weight = bias = residual = None
    if affine != "none":
        weight = (1 + 0.5 * torch.randn(hidden, device=device)).to(w_dtype)
    if affine == "weight_bias" and not is_rms:
        bias = (0.3 * torch.randn(hidden, device=device)).to(w_dtype)
    if with_residual:
        residual = torch.randn(shape, device=device).to(x_dtype)
    return x, weight, bias, residual


def run_op(x, weight, bias, residual, is_rms, eps=1e-5):
    """mpt_ext's op; always returns (y, s) with s = x + residual (or x)."""
    if is_rms:
        out = mpt_ext.rms_norm(x, weight, eps, residual=residual)
    else:
        out = mpt_ext.layer_norm(x, weight, bias, eps, residual=residual)
    return out if residual is not None else (out, x)


def run_ref(x, weight, bias, residual, is_rms, eps=1e-5, sum_dtype=None):
    """The float64 oracle; sum_dtype: the input dtype, which the op rounds x + residual to."""
    if is_rms:
        out = rms_norm_ref(x, weight, eps, residual=residual, sum_dtype=sum_dtype)
    else:
        out = layer_norm_ref(x, weight, bias, eps, residual=residual, sum_dtype=sum_dtype)
    return out if residual is not None else (out, x)


def run_torch(x, weight, bias, residual, is_rms, eps=1e-5):
    """PyTorch's own math with everything in x's dtype: the baseline error."""
    dt = x.dtype
    s = x + residual if residual is not None else x
    w = weight.to(dt) if weight is not None else None
    b = bias.to(dt) if bias is not None else None
    if is_rms:
        y = F.rms_norm(s, (x.shape[-1],), w, eps)
    else:
        y = F.layer_norm(s, (x.shape[-1],), w, b, eps)
    return y, s


def leaves(tensors, dtype=None):
    return [None if t is None else
            (t.detach().to(dtype) if dtype else t.detach().clone()).requires_grad_(True)
            for t in tensors]


def forward_backward(fn, inputs, dy, ds, dtype=None):
    """Runs fn on fresh leaves (cast to dtype); returns (y, s, grads of x, w, b, residual)."""
    x, w, b, r = leaves(inputs, dtype)
    y, s = fn(x, w, b, r)
    outs, grads = [y], [dy.to(y.dtype)]
    if r is not None:
        outs.append(s)
        grads.append(ds.to(s.dtype))
    if y.numel() > 0:
        torch.autograd.backward(outs, grads)
    g = [None if t is None else (t.grad if t.grad is not None else torch.zeros_like(t))
         for t in (x, w, b, r)]
    return y.detach(), s.detach(), g


def tolerance(ours_dtype, torch_err, scale):
    """2x PyTorch's error plus one unit of the output dtype's precision at the data scale."""
    floor = max(torch.finfo(ours_dtype).eps, 1e-6 if ours_dtype == torch.float32 else 0.0)
    return 2 * torch_err + floor * max(1.0, scale)


def dx_scale(inputs, dy, is_rms, eps=1e-5):
    """The size of the terms that dx is the difference of: rstd * |dy * weight|. When one
    element dominates its row (hidden 1, or a near-constant row) those terms nearly cancel
    and dx is hundreds of times smaller than they are, so fp32 rounding of them, by torch's
    formula as by ours, is hundreds of ulps of dx: the floor scales with them, not with dx."""
    x, weight, _, residual = (None if t is None else t.double() for t in inputs)
    s = x + residual if residual is not None else x
    centred = s if is_rms else s - s.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    g = dy.double() * (weight if weight is not None else 1.0)
    return (rstd * g.abs()).max().item() if g.numel() else 0.0


def assert_close_rule(name, ours, ref, torch_val, scale=None):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == torch_val.dtype or ours.dtype in (torch.float32, torch.float64), \
        f"{name}: dtype {ours.dtype}"
    if ref.numel() == 0:
        return
    ours64, ref64 = ours.double().cpu(), ref.double().cpu()
    assert torch.isfinite(ours64).all(), f"{name}: non-finite values"
    err = (ours64 - ref64).abs().max().item()
    torch_err = (torch_val.double().cpu() - ref64).abs().max().item()
    tol = tolerance(ours.dtype, torch_err, max(ref64.abs().max().item(), scale or 0.0))
    assert err <= tol, f"{name}: max error {err:.3g} > tol {tol:.3g} (PyTorch's error {torch_err:.3g})"


def check_against_reference(shape, x_dtype, w_dtype, affine, is_rms, with_residual, device):
    inputs = make_inputs(shape, x_dtype, w_dtype, affine, is_rms, with_residual, device)
    x, weight, bias, residual = inputs
    dy = torch.randn(shape, device=device)
    ds = torch.randn(shape, device=device)

    def op(x, w, b, r):
        return run_op(x, w, b, r, is_rms)

    def ref(x, w, b, r):
        return run_ref(x, w, b, r, is_rms, sum_dtype=x_dtype)

    def base(x, w, b, r):
        return run_torch(x, w, b, r, is_rms)

    y, s, g = forward_backward(op, inputs, dy.to(x_dtype), ds.to(x_dtype))
    y_ref, s_ref, g_ref = forward_backward(ref, inputs, dy.to(x_dtype).double(),
                                           ds.to(x_dtype).double(), dtype=torch.float64)
    y_pt, s_pt, g_pt = forward_backward(base, inputs, dy.to(x_dtype), ds.to(x_dtype))

    assert y.dtype == x_dtype and y.shape == x.shape and y.device == x.device
    assert_close_rule("y", y, y_ref, y_pt)
    if residual is not None:
        assert s.dtype == x_dtype
        assert_close_rule("x + residual", s, s_ref, s_pt)
    for name, ours, ref_g, pt_g, leaf in zip(("dx", "dweight", "dbias", "dresidual"), g, g_ref,
                                             g_pt, inputs):
        if leaf is None:
            continue
        assert ours.dtype == leaf.dtype, f"{name}: dtype {ours.dtype} != {leaf.dtype}"
        scale = dx_scale(inputs, dy.to(x_dtype), is_rms) if name in ("dx", "dresidual") else None
        assert_close_rule(name, ours, ref_g, pt_g, scale)
