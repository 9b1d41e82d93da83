"""Accuracy of the CPU norm kernels' fp32 reductions where plain running sums fail: a row of
millions of elements (mean, variance / mean of squares, and the backward's row sums) and
dweight / dbias summed over a hundred thousand rows (issue 13, item 9)."""
import pytest
import torch

import mpt_ext

from norm_testing import assert_close_rule

F32_EPS = torch.finfo(torch.float32).eps


def _norm_fwd_bwd_f64(x, w, b, dy, is_rms, eps=1e-5):
    """y and dx in float64 from the closed forms, in place where possible (8M-element rows)."""
    xhat, w64 = x.double(), w.double()
    if not is_rms:
        xhat -= xhat.mean(-1, keepdim=True)
    rstd = torch.rsqrt(xhat.square().mean(-1, keepdim=True) + eps)
    xhat *= rstd
    y = xhat * w64
    if b is not None:
        y += b.double()
    g = dy.double().mul_(w64)
    dx = xhat * (g * xhat).mean(-1, keepdim=True)
    torch.sub(g, dx, out=dx)
    if not is_rms:
        dx -= g.mean(-1, keepdim=True)
    dx *= rstd
    return y, dx


def _torch_fwd_bwd(x, w, b, dy, is_rms, eps=1e-5):
    x = x.detach().clone().requires_grad_()
    hidden = (x.shape[-1],)
    if is_rms:
        y = torch.nn.functional.rms_norm(x, hidden, w, eps)
    else:
        y = torch.nn.functional.layer_norm(x, hidden, w, b, eps)
    y.backward(dy)
    return y.detach(), x.grad


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_huge_hidden(is_rms):
    # 2**23 + 7 elements in one row (an odd tail): running fp32 sums were off by ~3e-3 in y
    # and ~2e-3 in dx here, PyTorch by ~1e-6. The backward's row sums are mean(dy * w) and
    # mean(dy * w * xhat).
    hidden = 2**23 + 7
    x = torch.randn(1, hidden) * 2 + 0.5
    w = 1 + 0.5 * torch.randn(hidden)
    b = None if is_rms else 0.3 * torch.randn(hidden)
    dy = torch.randn(1, hidden)
    xl = x.clone().requires_grad_()
    y = mpt_ext.rms_norm(xl, w) if is_rms else mpt_ext.layer_norm(xl, w, b)
    y.backward(dy)
    y_ref, dx_ref = _norm_fwd_bwd_f64(x, w, b, dy, is_rms)
    y_pt, dx_pt = _torch_fwd_bwd(x, w, b, dy, is_rms)
    assert_close_rule("y", y.detach(), y_ref, y_pt)
    assert_close_rule("dx", xl.grad, dx_ref, dx_pt)


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_dweight_dbias_many_rows(is_rms):
    # Rows of +-2**k (a power-of-two hidden, eps 0) normalise to exactly +-1, so dweight and
    # dbias are plain column sums of dy (times +-1) and the fp64 sums are exact references:
    # the kernel must round them about once (a fp32 running sum over rows / 64 rows was off
    # by 2-5 units in the last place).
    rows, hidden = 100_000, 64
    signs = torch.where(torch.arange(hidden) % 3 == 0, 1.0, -1.0)
    signs[hidden // 2:] = -signs[: hidden // 2]  # mean 0 for the LayerNorm
    scale = 2.0 ** torch.randint(-3, 4, (rows, 1)).float()
    x = signs * scale
    dy = torch.randn(rows, hidden) + 1.0  # a non-zero mean: the sums grow with the rows
    w = torch.randn(hidden, requires_grad=True)
    b = None if is_rms else torch.randn(hidden, requires_grad=True)
    if is_rms:
        y = mpt_ext.rms_norm(x, w, 0.0)
    else:
        y = mpt_ext.layer_norm(x, w, b, 0.0)
    y.backward(dy)
    dw_ref = (dy.double() * signs.double()).sum(0)
    err = (w.grad.double() - dw_ref).abs()
    assert (err <= F32_EPS * dw_ref.abs()).all(), \
        f"dweight: max error {(err / dw_ref.abs()).max().item() / F32_EPS:.2f} eps relative"
    if b is not None:
        db_ref = dy.double().sum(0)
        err = (b.grad.double() - db_ref).abs()
        assert (err <= F32_EPS * db_ref.abs()).all(), \
            f"dbias: max error {(err / db_ref.abs()).max().item() / F32_EPS:.2f} eps relative"
