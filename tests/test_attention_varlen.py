"""flash_attn_varlen_func (packed sequences) on CPU against the per-sequence reference."""
import threading

import pytest
import torch

import mpt_ext
from mpt_ext._library import ops
from mpt_ext.reference import attention_varlen_ref

from attention_helpers import (DTYPE_IDS, MASK_IDS, MASKS, check_varlen_bwd, check_varlen_fwd,
                               cu_seqlens, make_slopes, packed_inputs, run_varlen)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (lengths_q, lengths_k): empty sequences, one-token sequences, sq > sk and sq < sk.
LENGTHS = {
    "mixed": ([5, 0, 17, 1, 33, 8], [7, 0, 17, 1, 20, 30]),
    "empty_q": ([0, 3, 0], [4, 5, 6]),
    "empty_k": ([4, 5, 6], [0, 3, 0]),
    "one_token": ([1, 1, 1], [1, 9, 40]),
    "single": ([113], [17]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal,window_size", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=str)
def test_varlen_forward(dtype, causal, window_size, lengths):
    lq, lk = LENGTHS[lengths]
    q, k, v, cu_q, cu_k = packed_inputs(lq, lk, 6, 2, 32, dtype)
    check_varlen_fwd(q, k, v, cu_q, cu_k, causal=causal, window_size=window_size)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("slopes", ["mpt", "batch"])
@pytest.mark.parametrize("nheads,nheads_k", [(6, 2), (6, 1), (3, 3)], ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_alibi_gqa(dtype, slopes, nheads, nheads_k, causal):
    lq, lk = LENGTHS["mixed"]
    q, k, v, cu_q, cu_k = packed_inputs(lq, lk, nheads, nheads_k, 64, dtype)
    check_varlen_fwd(q, k, v, cu_q, cu_k, causal=causal, softcap=8.0,
                     alibi_slopes=make_slopes(slopes, len(lq), nheads))


@pytest.mark.parametrize("head_dim", [8, 72, 128, 256])
def test_varlen_head_dims(head_dim):
    q, k, v, cu_q, cu_k = packed_inputs([3, 20], [9, 20], 2, 2, head_dim, torch.bfloat16)
    check_varlen_fwd(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=make_slopes("mpt", 2, 2))


def test_varlen_rows_without_keys_are_zero():
    # causal with sq > sk per sequence, and an empty k sequence
    q, k, v, cu_q, cu_k = packed_inputs([10, 4], [3, 0], 2, 1, 16, torch.float32)
    out, lse = check_varlen_fwd(q, k, v, cu_q, cu_k, causal=True)
    empty_rows = list(range(0, 7)) + list(range(10, 14))
    assert torch.all(out[empty_rows] == 0) and torch.all(lse[:, empty_rows] == float("-inf"))


def test_varlen_extra_rows_allowed():
    # cu_seqlens_q[-1] < total_q: trailing rows belong to no sequence; the covered rows are right
    q, k, v, cu_q, cu_k = packed_inputs([5, 7], [6, 7], 2, 2, 16, torch.float32, extra_q_rows=3)
    check_varlen_fwd(q, k, v, cu_q, cu_k, causal=True)


def test_varlen_uncovered_rows_are_filled():
    # rows past cu_seqlens[-1] get out 0 / lse -inf and zero gradients, never stale memory
    q = torch.randn(10, 2, 16, requires_grad=True)
    k = torch.randn(12, 2, 16, requires_grad=True)
    v = torch.randn(12, 2, 16, requires_grad=True)
    cu_q = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 9], dtype=torch.int32)
    out, lse, _ = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5, causal=True,
                                                 return_attn_probs=True)
    assert torch.equal(out[7:], torch.zeros_like(out[7:]))
    assert torch.isneginf(lse[:, 7:]).all() and torch.isfinite(lse[:, :7]).all()
    (out * torch.randn_like(out)).sum().backward()
    assert torch.equal(q.grad[7:], torch.zeros_like(q.grad[7:]))
    assert torch.equal(k.grad[9:], torch.zeros_like(k.grad[9:]))
    assert torch.equal(v.grad[9:], torch.zeros_like(v.grad[9:]))
    assert k.grad[:9].abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("alibi", [None, "batch"])
def test_varlen_equals_batched(dtype, causal, alibi):
    batch, seqlen, nheads, nheads_k, head_dim = 3, 37, 6, 2, 32
    q = torch.randn(batch, seqlen, nheads, head_dim, dtype=dtype)
    k = torch.randn(batch, seqlen, nheads_k, head_dim, dtype=dtype)
    v = torch.randn(batch, seqlen, nheads_k, head_dim, dtype=dtype)
    slopes = make_slopes(alibi, batch, nheads)
    out_b, lse_b, _ = mpt_ext.flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes,
                                              return_attn_probs=True)
    cu = cu_seqlens([seqlen] * batch)
    out_v, lse_v, _ = mpt_ext.flash_attn_varlen_func(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, seqlen, seqlen,
        causal=causal, alibi_slopes=slopes, return_attn_probs=True)
    torch.testing.assert_close(out_v, out_b.flatten(0, 1))
    torch.testing.assert_close(lse_v, lse_b.permute(1, 0, 2).flatten(1, 2))


def test_varlen_batch_zero():
    q, k, v, cu_q, cu_k = packed_inputs([], [], 4, 2, 16, torch.float32, requires_grad=True)
    out = run_varlen(q, k, v, cu_q, cu_k, causal=True)
    assert out.shape == (0, 4, 16)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


# ---- backward ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal,window_size", [(False, (-1, -1)), (True, (-1, -1)),
                                                (False, (6, 3))], ids=["full", "causal", "win"])
@pytest.mark.parametrize("alibi", [None, "head", "batch"])
def test_varlen_backward(dtype, causal, window_size, alibi):
    lq, lk = LENGTHS["mixed"]
    q, k, v, cu_q, cu_k = packed_inputs(lq, lk, 6, 2, 32, dtype, requires_grad=True)
    slopes = make_slopes(alibi, len(lq), 6, requires_grad=True)
    check_varlen_bwd(q, k, v, cu_q, cu_k, causal=causal, window_size=window_size,
                     alibi_slopes=slopes)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("slopes_shape", [None, "head", "batch"])
def test_varlen_gradcheck(causal, slopes_shape):
    lq, lk = [3, 0, 1, 4], [2, 2, 0, 5]
    q, k, v, cu_q, cu_k = packed_inputs(lq, lk, 2, 1, 4, torch.float64, requires_grad=True)
    inputs = [q, k, v]
    if slopes_shape is not None:
        shape = (2,) if slopes_shape == "head" else (len(lq), 2)
        inputs.append((torch.rand(shape, dtype=torch.float64) * 0.5).requires_grad_(True))

    def fn(q, k, v, slopes=None):
        return run_varlen(q, k, v, cu_q, cu_k, causal=causal, softcap=2.0, alibi_slopes=slopes)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4)


def test_varlen_deterministic():
    lq, lk = LENGTHS["mixed"]
    q, k, v, cu_q, cu_k = packed_inputs(lq, lk, 6, 2, 32, torch.bfloat16, requires_grad=True)
    slopes = make_slopes("batch", len(lq), 6, requires_grad=True)
    dout = torch.randn_like(q)

    def grads():
        out = run_varlen(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=slopes,
                         deterministic=True)
        return torch.autograd.grad(out, (q, k, v, slopes), dout)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_varlen_noncontiguous_cu_seqlens():
    # strided cu_seqlens views must be read as their values, not as raw memory
    q, k, v, cu_q, cu_k = packed_inputs([4, 6], [5, 7], 2, 2, 16, torch.float32)
    cu_q_view = torch.stack([cu_q, torch.full_like(cu_q, 99)], dim=1)[:, 0]
    cu_k_view = torch.stack([cu_k, torch.full_like(cu_k, 77)], dim=1)[:, 0]
    assert not cu_q_view.is_contiguous()
    check_varlen_fwd(q, k, v, cu_q_view, cu_k_view, causal=True)


def test_varlen_max_seqlen_larger_than_needed():
    # max_seqlen is an upper bound (callers often pass the padded length)
    q, k, v, cu_q, cu_k = packed_inputs([3, 9], [9, 4], 2, 1, 16, torch.float32)
    ref_out, _ = attention_varlen_ref(q, k, v, cu_q, cu_k, causal=True)
    out = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 64, 64, causal=True)
    torch.testing.assert_close(out, ref_out.float(), atol=1e-5, rtol=1e-5)


def _finishes_within(seconds, fn):
    """Runs fn on a daemon thread (the ops release the GIL): a kernel whose work grows with
    max_seqlen would run for minutes and fail this instead of hanging the suite."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised below
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.mark.parametrize("alibi", [None, "batch"])
def test_varlen_huge_max_seqlen_work_is_bounded(alibi):
    # max_seqlen is only an upper bound: 2**40 on 30 tokens must cost what the tokens cost
    # (the CPU kernel used to walk max_seqlen_q / 64 blocks per head: ~10 minutes here)
    lq, lk = [10, 0, 20], [12, 5, 13]
    q, k, v, cu_q, cu_k = packed_inputs(lq, lk, 4, 2, 16, torch.float32, requires_grad=True)
    slopes = make_slopes(alibi, len(lq), 4, requires_grad=True)
    inputs = [q, k, v] + ([slopes] if slopes is not None else [])
    kw = dict(causal=True, alibi_slopes=slopes)
    dout = torch.randn_like(q)

    def run():
        out = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 2**40, 2**40, **kw)
        return (out.detach(),) + torch.autograd.grad(out, inputs, dout)

    ours = _finishes_within(60, run)
    # the op itself too (the Python function caps max_seqlen at 2**31 - 1 on its own)
    out_op, _ = _finishes_within(60, lambda: ops.attn_fwd(
        q.detach(), k.detach(), v.detach(), cu_q, cu_k, 2**40, 2**40, slopes, 0.25, True, -1,
        -1, 0.0, False))
    torch.testing.assert_close(out_op, ours[0])
    ref_out, _ = attention_varlen_ref(q, k, v, cu_q, cu_k, **kw)
    ref = (ref_out.detach(),) + torch.autograd.grad(ref_out, inputs, dout.double())
    for name, got, want in zip(("out", "dq", "dk", "dv", "dslopes"), ours, ref):
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5, msg=name)
