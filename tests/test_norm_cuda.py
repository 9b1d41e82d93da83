"""CUDA LayerNorm / RMSNorm kernels against the float64 reference (skipped without a GPU or
when the build does not dispatch to them: build with -DMPT_EXT_CUDA_OPS=norm)."""
import pytest
import torch

import mpt_ext
from mpt_ext import _library

from norm_testing import DTYPE_PAIRS, NORM_KINDS, check_against_reference, dtype_pair_id

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _library.CUDA_NORM,
                       reason="CUDA norm kernels not dispatched (build with -DMPT_EXT_CUDA_OPS=norm)"),
]

# hidden 1 and 7 and 769 take the scalar path; 64, 5000 (fp32/bf16 pack multiples), 4096 and
# 8192 the 16-byte cached path; 65536 streams (more than a CTA's registers hold).
SHAPES = [(0, 64), (2, 0, 7), (1, 1), (5, 1), (3, 7), (2, 3, 64), (7, 769), (3, 5000),
          (33, 4096), (9, 8192), (2, 65536)]


@pytest.mark.parametrize("kind", NORM_KINDS, ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=dtype_pair_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtypes, with_residual, kind):
    norm, affine = kind
    check_against_reference(shape, *dtypes, affine, norm == "rms", with_residual, "cuda")


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_many_rows_grid_stride(is_rms):
    """More rows than resident CTAs: the backward walks rows grid-stride and reduces many
    partials."""
    check_against_reference((20000, 256), torch.bfloat16, torch.float32, "weight_bias", is_rms,
                            True, "cuda")


@pytest.mark.parametrize("hidden", [64, 768, 65536])
def test_misaligned_rows_take_general_path(hidden):
    """x starting one element past its allocation is not 16-byte aligned: the scalar path
    must give what the CPU kernel gives, forward and backward."""
    rows = 5
    results = []
    data = torch.randn(rows * hidden + 1, dtype=torch.bfloat16)
    w0, b0 = torch.randn(hidden), torch.randn(hidden)
    dy = torch.randn(rows, hidden, dtype=torch.bfloat16)
    for device in ("cuda", "cpu"):
        buf = data.to(device).requires_grad_(True)
        w = w0.to(device).requires_grad_(True)
        b = b0.to(device).requires_grad_(True)
        y = mpt_ext.layer_norm(buf[1:].view(rows, hidden), w, b)
        y.backward(dy.to(device))
        results.append([t.detach().cpu().float() for t in (y, buf.grad, w.grad, b.grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("shape", [(4099, 768), (37, 5000), (3, 65536)], ids=str)
def test_dweight_bitwise_deterministic(shape, is_rms):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(shape[-1], device="cuda", requires_grad=True)
    b = None if is_rms else torch.randn(shape[-1], device="cuda", requires_grad=True)
    grads = []
    for _ in range(2):
        w.grad = None
        if b is not None:
            b.grad = None
        y = mpt_ext.rms_norm(x, w) if is_rms else mpt_ext.layer_norm(x, w, b)
        y.backward(dy)
        grads.append((w.grad.clone(), None if b is None else b.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0])
    if b is not None:
        assert torch.equal(grads[0][1], grads[1][1])


def test_matches_cpu_kernel():
    x = torch.randn(17, 1024, dtype=torch.bfloat16)
    r = torch.randn(17, 1024, dtype=torch.bfloat16)
    w, b = torch.randn(1024), torch.randn(1024)
    y_cpu, s_cpu = mpt_ext.layer_norm(x, w, b, residual=r)
    y_gpu, s_gpu = mpt_ext.layer_norm(x.cuda(), w.cuda(), b.cuda(), residual=r.cuda())
    assert torch.equal(s_gpu.cpu(), s_cpu)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=1.6e-2, rtol=1.6e-2)


def test_runs_on_current_stream():
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = mpt_ext.rms_norm(x, w)
    stream.synchronize()
    torch.testing.assert_close(y, mpt_ext.rms_norm(x, w))


def test_float64_rejected_on_cuda():
    with pytest.raises(TypeError, match="x"):
        mpt_ext.layer_norm(torch.randn(2, 8, device="cuda", dtype=torch.float64))


def test_nn_modules_on_cuda():
    ln = mpt_ext.nn.LayerNorm(96).cuda()
    ref = torch.nn.LayerNorm(96).cuda()
    ref.load_state_dict(ln.state_dict())
    x = torch.randn(4, 10, 96, device="cuda")
    torch.testing.assert_close(ln(x), ref(x), atol=1e-5, rtol=1e-5)
