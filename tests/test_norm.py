"""mpt_ext.layer_norm / rms_norm on the CPU: forward and backward against a float64
reference, gradcheck, opcheck, torch.compile, bad input."""
import pytest
import torch

import mpt_ext
from mpt_ext._library import ops

from norm_testing import DTYPE_PAIRS, NORM_KINDS, check_against_reference, dtype_pair_id

# Leading dims, 0 rows, 1 row, odd rows; hidden 1, 7, 64, 769, 5000.
SHAPES = [(0, 64), (2, 0, 7), (1, 1), (5, 1), (3, 7), (1, 64), (2, 3, 64), (7, 769), (3, 5000)]


@pytest.mark.parametrize("kind", NORM_KINDS, ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=dtype_pair_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtypes, with_residual, kind):
    norm, affine = kind
    check_against_reference(shape, *dtypes, affine, norm == "rms", with_residual, "cpu")


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_large_hidden(is_rms):
    check_against_reference((2, 65536), torch.bfloat16, torch.float32, "weight_bias", is_rms,
                            True, "cpu")


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_zero_rows_backward(is_rms):
    x = torch.randn(0, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    b = None if is_rms else torch.randn(16, requires_grad=True)
    y = mpt_ext.rms_norm(x, w) if is_rms else mpt_ext.layer_norm(x, w, b)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert x.grad.shape == (0, 16)
    assert torch.equal(w.grad, torch.zeros(16))
    if b is not None:
        assert torch.equal(b.grad, torch.zeros(16))


def test_non_contiguous_input():
    x = torch.randn(16, 10)[:, ::2]
    w, b = torch.randn(5), torch.randn(5)
    expected = torch.nn.functional.layer_norm(x, (5,), w, b)
    torch.testing.assert_close(mpt_ext.layer_norm(x, w, b), expected)


def test_residual_out_is_rounded_sum():
    """residual_out is x + residual rounded once to x's dtype, and y normalises exactly it."""
    x = torch.randn(4, 100, dtype=torch.bfloat16)
    r = torch.randn(4, 100, dtype=torch.bfloat16)
    y, s = mpt_ext.layer_norm(x, residual=r)
    assert torch.equal(s, (x.float() + r.float()).to(torch.bfloat16))
    assert torch.equal(y, mpt_ext.layer_norm(s))


def test_dweight_deterministic():
    x = torch.randn(513, 96, dtype=torch.bfloat16)
    w = torch.randn(96, requires_grad=True)
    b = torch.randn(96, requires_grad=True)
    dy = torch.randn(513, 96, dtype=torch.bfloat16)
    grads = []
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            w.grad = b.grad = None
            mpt_ext.layer_norm(x, w, b).backward(dy)
            grads.append((w.grad.clone(), b.grad.clone()))
        finally:
            torch.set_num_threads(prev)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_gradcheck_float64(is_rms, with_residual):
    shape = (3, 2, 7)
    opts = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(shape, **opts)
    w = torch.randn(7, **opts)
    b = torch.randn(7, **opts)
    r = torch.randn(shape, **opts)

    if is_rms:
        def fn(x, w, r):
            return mpt_ext.rms_norm(x, w, 1e-5, residual=r if with_residual else None)
        args = (x, w, r)
    else:
        def fn(x, w, b, r):
            return mpt_ext.layer_norm(x, w, b, 1e-5, residual=r if with_residual else None)
        args = (x, w, b, r)
    assert torch.autograd.gradcheck(fn, args)


def _fwd_samples():
    h = 33
    x = torch.randn(5, h)
    w, b = torch.randn(h), torch.randn(h)
    r = torch.randn(5, h)
    xb = x.to(torch.bfloat16)
    return [
        (x, w, b, None, 1e-5, False),
        (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(),
         r.clone().requires_grad_(), 1e-5, False),
        (x.clone().requires_grad_(), w.clone().requires_grad_(), None, None, 1e-6, True),
        (xb.clone().requires_grad_(), w.clone().requires_grad_(), None,
         r.to(torch.bfloat16).requires_grad_(), 1e-5, True),
        (x, None, None, None, 1e-5, False),
    ]


@pytest.mark.parametrize("index", range(5))
def test_opcheck_norm_fwd(index):
    torch.library.opcheck(ops.norm_fwd.default, _fwd_samples()[index])


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_opcheck_norm_bwd(is_rms):
    x = torch.randn(6, 40)
    w, b = torch.randn(40), (None if is_rms else torch.randn(40))
    _, _, mean, rstd = ops.norm_fwd(x, w, b, None, 1e-5, is_rms)
    dy, dres = torch.randn(6, 40), torch.randn(6, 40)
    torch.library.opcheck(ops.norm_bwd.default, (dy, dres, x, w, b, mean, rstd, is_rms))
    torch.library.opcheck(ops.norm_bwd.default, (dy, None, x, None, None, mean, rstd, is_rms))


class _Block(torch.nn.Module):
    def __init__(self, h):
        super().__init__()
        self.lin = torch.nn.Linear(h, h)
        self.w = torch.nn.Parameter(torch.randn(h))
        self.b = torch.nn.Parameter(torch.randn(h))

    def forward(self, x):
        y, s = mpt_ext.layer_norm(self.lin(x), self.w, self.b, residual=x)
        return mpt_ext.rms_norm(y, self.w) + s


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    block = _Block(24)
    x = torch.randn(3, 5, 24, requires_grad=True)
    expected = block(x)
    expected.sum().backward()
    grads = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad()
    x.grad = None
    # aot_eager traces through the fake kernels and the registered autograd (the part that
    # can break the graph) without spending a minute in inductor's C++ codegen.
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, expected)
    for got, want in zip([p.grad for p in block.parameters()] + [x.grad], grads):
        torch.testing.assert_close(got, want)


def test_bias_without_weight_matches_torch():
    # F.layer_norm accepts a bias alone; so does mpt_ext.layer_norm (weight taken as ones)
    x = torch.randn(5, 24, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    y = mpt_ext.layer_norm(x, None, bias)
    ref = torch.nn.functional.layer_norm(x, (24,), None, bias)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, bias), g)
    want = torch.autograd.grad(ref, (x, bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---- bad input -----------------------------------------------------------------------------
def _bad_cases():
    x = torch.randn(4, 8)
    w = torch.randn(8)
    return [
        (lambda: mpt_ext.layer_norm(x.to(torch.int32)), TypeError, "x"),
        (lambda: mpt_ext.layer_norm(x, w.to(torch.int64)), TypeError, "weight"),
        (lambda: mpt_ext.layer_norm(x, torch.randn(7)), ValueError, "weight"),
        (lambda: mpt_ext.layer_norm(x, torch.randn(2, 4)), ValueError, "weight"),
        (lambda: mpt_ext.layer_norm(x, w, torch.randn(9)), ValueError, "bias"),
        (lambda: mpt_ext.layer_norm(x, w, w.half()), TypeError, "bias"),
        (lambda: mpt_ext.layer_norm(x, residual=torch.randn(4, 7)), ValueError, "residual"),
        (lambda: mpt_ext.layer_norm(x, residual=x.half()), TypeError, "residual"),
        (lambda: mpt_ext.rms_norm(x, w, eps=-1.0), ValueError, "eps"),
        (lambda: mpt_ext.layer_norm(torch.randn(4, 0)), ValueError, "hidden"),
        (lambda: mpt_ext.layer_norm(torch.tensor(1.0)), ValueError, "x"),
        (lambda: mpt_ext.layer_norm(x, w.to("meta")), ValueError, "weight"),
        (lambda: mpt_ext.rms_norm(x, residual=x.to("meta")), ValueError, "residual"),
        (lambda: mpt_ext.layer_norm(x.to("meta"), torch.randn(7, device="meta")), ValueError,
         "weight"),
        # argument types, named (issue 13, item 11): rms_norm's third positional is eps
        (lambda: mpt_ext.rms_norm(x, w, w), TypeError,
         r"rms_norm: eps must be a float, got Tensor \(RMSNorm has no bias.*residual="),
        # with hidden 1, float() of the "bias" used to succeed silently
        (lambda: mpt_ext.rms_norm(x[:, :1], w[:1], w[:1].abs()), TypeError, "eps"),
        (lambda: mpt_ext.layer_norm(x, w, w, w), TypeError,
         r"layer_norm: eps must be a float, got Tensor.*residual="),
        (lambda: mpt_ext.layer_norm(x, w, eps=None), TypeError, "eps must be a float"),
        (lambda: mpt_ext.rms_norm(x, w, "1e-5"), TypeError, "eps must be a float, got str"),
        (lambda: mpt_ext.layer_norm(x.tolist()), TypeError, "x must be a torch.Tensor"),
        (lambda: mpt_ext.rms_norm(x, 1.0), TypeError, "weight must be a torch.Tensor or None"),
        (lambda: mpt_ext.layer_norm(x, w, w.tolist()), TypeError, "bias must be a torch.Tensor"),
        (lambda: mpt_ext.rms_norm(x, residual=x.tolist()), TypeError,
         "residual must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_cases())))
def test_bad_input_raises(index):
    call, exc, word = _bad_cases()[index]
    with pytest.raises(exc, match=word):
        call()


def test_cuda_tensor_without_kernel_is_clear():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if mpt_ext._library.CUDA_NORM:
        pytest.skip("CUDA norm kernels are enabled in this build")
    with pytest.raises(NotImplementedError, match="layer_norm"):
        mpt_ext.layer_norm(torch.randn(2, 8, device="cuda"))
