"""The attention correctness checks on a CUDA device (bf16/fp16), including DESIGN.md's
larger sizes (seqlens 1000 and 4097, head dims 64/128/256) and determinism. Skipped without a
GPU, or when this build lacks the CUDA kernels (mpt_ext.CUDA_ATTENTION / CUDA_DECODE)."""
import pytest
import torch

import mpt_ext

from attention_helpers import (DTYPE_IDS, MASK_IDS, MASKS, assert_close_to_ref, check_bwd,
                               check_fwd, cu_seqlens, make_slopes, random_qkv)
from mpt_ext.reference import attention_varlen_ref, kvcache_ref

pytestmark = pytest.mark.cuda

DEV = "cuda"
DTYPES = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _needs_kernels(request):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if "kvcache" in request.node.name:
        if not mpt_ext.CUDA_DECODE:
            pytest.skip("built without the CUDA decode kernel (mpt_ext.CUDA_DECODE)")
    elif not mpt_ext.CUDA_ATTENTION:
        pytest.skip("built without the CUDA attention kernels (mpt_ext.CUDA_ATTENTION)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal,window_size", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1, 1), (17, 17), (113, 113), (17, 113),
                                               (113, 17), (1, 239), (239, 1)], ids=str)
@pytest.mark.parametrize("alibi", [None, "mpt", "batch"])
def test_cuda_forward(dtype, causal, window_size, seqlen_q, seqlen_k, alibi):
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 6, 2, 64, dtype, device=DEV)
    check_fwd(q, k, v, causal=causal, window_size=window_size,
              alibi_slopes=make_slopes(alibi, 2, 6, device=DEV))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("head_dim", [32, 40, 64, 72, 96, 128, 160, 192, 200, 256])
def test_cuda_forward_head_dims(dtype, head_dim):
    q, k, v = random_qkv(2, 130, 257, 3, 3, head_dim, dtype, device=DEV)
    check_fwd(q, k, v, causal=True, alibi_slopes=make_slopes("mpt", 2, 3, device=DEV))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("nheads,nheads_k", [(6, 2), (6, 1), (12, 12)], ids=str)
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_cuda_forward_gqa_softcap(dtype, nheads, nheads_k, softcap):
    q, k, v = random_qkv(2, 77, 200, nheads, nheads_k, 128, dtype, device=DEV)
    check_fwd(q, k, v, causal=True, softcap=softcap,
              alibi_slopes=make_slopes("batch", 2, nheads, device=DEV))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(1000, 1000), (4097, 4097), (1000, 4097),
                                               (4097, 1000)], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_cuda_forward_large(dtype, seqlen_q, seqlen_k, head_dim):
    q, k, v = random_qkv(1, seqlen_q, seqlen_k, 2, 1, head_dim, dtype, device=DEV)
    check_fwd(q, k, v, causal=True, alibi_slopes=make_slopes("mpt", 1, 2, device=DEV))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("batch,seqlen_q,seqlen_k", [(0, 17, 17), (2, 0, 17), (2, 17, 0)],
                         ids=str)
def test_cuda_empty(dtype, batch, seqlen_q, seqlen_k):
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, 4, 2, 64, dtype, device=DEV,
                         requires_grad=True)
    out, lse, _ = mpt_ext.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    out.backward(torch.randn_like(out))
    for x in (q, k, v):
        assert torch.all(x.grad == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_cuda_rows_without_keys(dtype):
    q, k, v = random_qkv(2, 300, 100, 4, 2, 64, dtype, device=DEV)
    out, lse = check_fwd(q, k, v, causal=True)
    assert torch.all(out[:, :200] == 0) and torch.all(lse[:, :, :200] == float("-inf"))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal,window_size", [(False, (-1, -1)), (True, (-1, -1)),
                                                (False, (64, 16))], ids=["full", "causal", "win"])
@pytest.mark.parametrize("alibi", [None, "head", "batch"])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(113, 113), (77, 300), (300, 77)], ids=str)
def test_cuda_backward(dtype, causal, window_size, alibi, seqlen_q, seqlen_k):
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 6, 2, 64, dtype, device=DEV, requires_grad=True)
    slopes = make_slopes(alibi, 2, 6, device=DEV, requires_grad=True)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=causal, window_size=window_size)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_cuda_backward_large(dtype, head_dim):
    q, k, v = random_qkv(1, 1000, 1000, 2, 1, head_dim, dtype, device=DEV, requires_grad=True)
    slopes = make_slopes("mpt", 1, 2, device=DEV, requires_grad=True)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_cuda_deterministic(dtype):
    q, k, v = random_qkv(2, 1000, 1000, 8, 2, 128, dtype, device=DEV, requires_grad=True)
    slopes = make_slopes("batch", 2, 8, device=DEV, requires_grad=True)
    dout = torch.randn_like(q)

    def grads():
        out = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes,
                                      deterministic=True)
        return torch.autograd.grad(out, (q, k, v, slopes), dout)

    first, second = grads(), grads()
    for name, a, b in zip(("dq", "dk", "dv", "dslopes"), first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_varlen(dtype, causal):
    lq, lk = [5, 0, 130, 1, 333, 64], [7, 0, 130, 1, 200, 500]
    q = torch.randn(sum(lq), 6, 128, dtype=dtype, device=DEV, requires_grad=True)
    k = torch.randn(sum(lk), 2, 128, dtype=dtype, device=DEV, requires_grad=True)
    v = torch.randn(sum(lk), 2, 128, dtype=dtype, device=DEV, requires_grad=True)
    cu_q, cu_k = cu_seqlens(lq, DEV), cu_seqlens(lk, DEV)
    slopes = make_slopes("batch", len(lq), 6, device=DEV, requires_grad=True)
    kw = dict(causal=causal, alibi_slopes=slopes)
    out, lse, _ = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk),
                                                 return_attn_probs=True, **kw)
    ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, **kw)
    low_out, low_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw)
    assert_close_to_ref("out", out, ref_out, low_out)
    assert_close_to_ref("lse", lse, ref_lse, low_lse, dtype=dtype)
    dout = torch.randn_like(out)
    inputs = (q, k, v, slopes)
    ours = torch.autograd.grad(out, inputs, dout)
    ref = torch.autograd.grad(ref_out, inputs, dout.double())
    low = torch.autograd.grad(low_out, inputs, dout)
    for name, g, r, lo in zip(("dq", "dk", "dv", "dslopes"), ours, ref, low):
        assert_close_to_ref(name, g, r, lo, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("seqlen_q,seqlen_new", [(1, 1), (1, 0), (16, 16)], ids=str)
@pytest.mark.parametrize("nheads,nheads_k", [(32, 8), (8, 8)], ids=str)
def test_cuda_kvcache(dtype, seqlen_q, seqlen_new, nheads, nheads_k):
    batch, seqlen_cache, head_dim = 3, 4200, 128
    k_cache = torch.randn(batch, seqlen_cache, nheads_k, head_dim, dtype=dtype, device=DEV)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch, seqlen_q, nheads, head_dim, dtype=dtype, device=DEV)
    k = v = None
    if seqlen_new:
        k = torch.randn(batch, seqlen_new, nheads_k, head_dim, dtype=dtype, device=DEV)
        v = torch.randn_like(k)
    seqlens = torch.tensor([0, 1000, 4097], dtype=torch.int32, device=DEV)
    slopes = make_slopes("mpt", batch, nheads, device=DEV)
    kw = dict(causal=True, alibi_slopes=slopes)
    ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(q, k_cache, v_cache, k, v, seqlens, **kw)
    low_out, low_lse, _, _ = kvcache_ref(q, k_cache, v_cache, k, v, seqlens,
                                         compute_dtype=dtype, **kw)
    for num_splits in (0, 1, 4):
        kc, vc = k_cache.clone(), v_cache.clone()
        out, lse = mpt_ext.flash_attn_with_kvcache(q, kc, vc, k, v, seqlens,
                                                   num_splits=num_splits,
                                                   return_softmax_lse=True, **kw)
        assert torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc)
        assert_close_to_ref(f"out (num_splits={num_splits})", out, ref_out, low_out)
        assert_close_to_ref(f"lse (num_splits={num_splits})", lse, ref_lse, low_lse, dtype=dtype)
