"""No CUDA attention op synchronises with the host (GPU tests; skipped without one).

The ops never read cu_seqlens or cache_seqlens on the host: the kernels check them and note a
bad sequence in mapped host memory (csrc/common/device_input_errors.h). So varlen training
steps and decode steps run under torch.cuda.set_sync_debug_mode("error"), and a decode step
can be captured in a CUDA graph and replayed. The same checks run on the CPU through the
emulated GPU in test_seqlens_on_device_emulated.py."""
import contextlib

import pytest
import torch

import mpt_ext

from attention_helpers import cu_seqlens
from devices import cuda_only


@contextlib.contextmanager
def no_sync_allowed():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _varlen_inputs(lengths_q=(17, 0, 113, 64), lengths_k=(30, 5, 113, 64), heads=4, heads_k=2,
                   d=128):
    kw = dict(device="cuda", dtype=torch.bfloat16)
    q = torch.randn(sum(lengths_q), heads, d, **kw).requires_grad_()
    k = torch.randn(sum(lengths_k), heads_k, d, **kw).requires_grad_()
    v = torch.randn(sum(lengths_k), heads_k, d, **kw).requires_grad_()
    slopes = mpt_ext.alibi_slopes(heads).cuda().requires_grad_()
    return (q, k, v, cu_seqlens(list(lengths_q), "cuda"), cu_seqlens(list(lengths_k), "cuda"),
            max(lengths_q), max(lengths_k), slopes)


@cuda_only("attn")
@pytest.mark.parametrize("slopes_grad", [True, False], ids=["separate_dq", "atomic_dq"])
def test_varlen_forward_and_backward_do_not_sync(slopes_grad):
    q, k, v, cu_q, cu_k, max_q, max_k, slopes = _varlen_inputs()
    slopes.requires_grad_(slopes_grad)
    step = lambda: mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k,
                                                  causal=True, alibi_slopes=slopes)
    step().sum().backward()  # warm-up: first-call allocations and opt-ins
    with no_sync_allowed():
        out = step()
        out.backward(torch.ones_like(out))
    mpt_ext.check_device_input_errors()


@cuda_only("attn")
def test_varlen_forward_and_backward_captured_in_a_cuda_graph():
    # The ops themselves (no autograd), so the replay can be compared bit for bit with eager
    # calls: both the forward and the backward are deterministic.
    q, k, v, cu_q, cu_k, max_q, max_k, slopes = _varlen_inputs()
    q, k, v, slopes = (t.detach() for t in (q, k, v, slopes))
    dout = torch.randn_like(q)
    args = (cu_q, cu_k, max_q, max_k, slopes, q.shape[-1] ** -0.5, True, -1, -1, 0.0)

    def step():
        out, lse = torch.ops.mpt_ext.attn_fwd(q, k, v, *args)
        grads = torch.ops.mpt_ext.attn_bwd(dout, q, k, v, out, lse, *args, True, True)
        return (out, lse) + tuple(grads)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(2):
        for t in (q, k, v, dout):
            t.copy_(torch.randn_like(t))
        graph.replay()
        for name, got, want in zip(("out", "lse", "dq", "dk", "dv", "dslopes"), captured, step()):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    mpt_ext.check_device_input_errors()


def _decode_inputs(batch=3, seqlen_cache=512, heads=8, heads_k=2, d=128):
    kw = dict(device="cuda", dtype=torch.bfloat16)
    return dict(q=torch.randn(batch, 1, heads, d, **kw),
                k_cache=torch.randn(batch, seqlen_cache, heads_k, d, **kw),
                v_cache=torch.randn(batch, seqlen_cache, heads_k, d, **kw),
                k=torch.randn(batch, 1, heads_k, d, **kw), v=torch.randn(batch, 1, heads_k, d, **kw),
                cache_seqlens=torch.tensor([0, 100, 400], dtype=torch.int32, device="cuda"),
                alibi_slopes=mpt_ext.alibi_slopes(heads).cuda())


@cuda_only("attn_kvcache")
def test_decode_does_not_sync():
    inp = _decode_inputs()
    mpt_ext.flash_attn_with_kvcache(**inp, causal=True)  # warm-up
    with no_sync_allowed():
        for _ in range(3):
            mpt_ext.flash_attn_with_kvcache(**inp, causal=True)
            inp["cache_seqlens"].add_(1)
    mpt_ext.check_device_input_errors()


@cuda_only("attn_kvcache")
def test_decode_step_captured_in_a_cuda_graph():
    inp = _decode_inputs()
    eager = {name: t.clone() for name, t in inp.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture, as torch's docs ask
        mpt_ext.flash_attn_with_kvcache(**{**inp, "k_cache": inp["k_cache"].clone(),
                                           "v_cache": inp["v_cache"].clone()}, causal=True)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mpt_ext.flash_attn_with_kvcache(**inp, causal=True)
    for step in range(3):  # new token, new position: the graph reads both from its buffers
        for name in ("q", "k", "v"):
            fresh = torch.randn_like(inp[name])
            inp[name].copy_(fresh)
            eager[name].copy_(fresh)
        graph.replay()
        expected = mpt_ext.flash_attn_with_kvcache(**eager, causal=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        torch.testing.assert_close(inp["k_cache"], eager["k_cache"], rtol=0, atol=0)
        inp["cache_seqlens"].add_(1)
        eager["cache_seqlens"].add_(1)
    mpt_ext.check_device_input_errors()


@cuda_only("attn")
def test_bad_cu_seqlens_reported_on_cuda():
    q, k, v, _, cu_k, _, max_k, _ = _varlen_inputs()
    bad_q = torch.tensor([0, 17, 17, 130, 10**6], dtype=torch.int32, device="cuda")
    out = mpt_ext.flash_attn_varlen_func(q, k, v, bad_q, cu_k, 113, max_k, causal=True)
    with pytest.raises(ValueError, match="cu_seqlens_q: sequence 3"):
        mpt_ext.check_device_input_errors()
    assert not torch.isnan(out[:130]).any()
    mpt_ext.check_device_input_errors()  # reported once


@cuda_only("attn")
def test_max_seqlen_zero_with_tokens_reported_on_cuda():
    q, k, v, cu_q, cu_k, _, max_k, _ = _varlen_inputs()
    mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 0, max_k)
    with pytest.raises(ValueError, match="cu_seqlens_q: sequence"):
        mpt_ext.check_device_input_errors()


@cuda_only("attn_kvcache")
def test_bad_cache_seqlens_reported_on_cuda():
    inp = _decode_inputs()
    inp["cache_seqlens"] = torch.tensor([0, -5, 400], dtype=torch.int32, device="cuda")
    out = mpt_ext.flash_attn_with_kvcache(**inp, causal=True)
    with pytest.raises(ValueError, match="cache_seqlens: sequence 1"):
        mpt_ext.check_device_input_errors()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
