"""flash_attn_with_kvcache on CPU against kvcache_ref: the in-place append (cache contents
after the call, untouched positions included), decode and chunked prefill, split counts."""
import pytest
import torch

import mpt_ext
from mpt_ext.reference import kvcache_ref

from attention_helpers import (DTYPE_IDS, assert_close_to_ref, make_slopes, one_thread,
                               poison_allocator, random_qkv)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_cache(batch_cache, seqlen_cache, nheads_k, head_dim, dtype):
    k_cache = torch.randn(batch_cache, seqlen_cache, nheads_k, head_dim, dtype=dtype)
    v_cache = torch.randn(batch_cache, seqlen_cache, nheads_k, head_dim, dtype=dtype)
    return k_cache, v_cache


def check_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, **kw):
    """Runs ours on the caches in place and compares out, lse and the caches with the reference
    (computed on copies taken before the call)."""
    ref_kw = {name: val for name, val in kw.items() if name != "num_splits"}
    with one_thread():
        ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(q, k_cache, v_cache, k, v, cache_seqlens,
                                                       **ref_kw)
        low_out, low_lse, _, _ = kvcache_ref(q, k_cache, v_cache, k, v, cache_seqlens,
                                             compute_dtype=q.dtype, **ref_kw)
    poison_allocator(q, ref_lse.float())
    out, lse = mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens,
                                               return_softmax_lse=True, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    assert torch.equal(k_cache, ref_kc), "k_cache after the append differs from the reference"
    assert torch.equal(v_cache, ref_vc), "v_cache after the append differs from the reference"
    assert_close_to_ref("out", out, ref_out, low_out)
    assert_close_to_ref("lse", lse, ref_lse, low_lse, dtype=q.dtype)
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("seqlen_q,seqlen_new", [(1, 1), (1, 0), (5, 5), (7, 3), (3, 0)],
                         ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("alibi", [None, "mpt", "batch"])
def test_kvcache_append(dtype, seqlen_q, seqlen_new, causal, alibi):
    batch, seqlen_cache, nheads, nheads_k, head_dim = 3, 64, 6, 2, 32
    k_cache, v_cache = make_cache(batch, seqlen_cache, nheads_k, head_dim, dtype)
    q = torch.randn(batch, seqlen_q, nheads, head_dim, dtype=dtype)
    k = v = None
    if seqlen_new:
        k = torch.randn(batch, seqlen_new, nheads_k, head_dim, dtype=dtype)
        v = torch.randn(batch, seqlen_new, nheads_k, head_dim, dtype=dtype)
    # per-sequence lengths, including an empty cache and one that the append fills exactly
    cache_seqlens = torch.tensor([0, 17, seqlen_cache - seqlen_new], dtype=torch.int32)
    check_kvcache(q, k_cache, v_cache, k, v, cache_seqlens, causal=causal,
                  alibi_slopes=make_slopes(alibi, batch, nheads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("window_size", [(4, -1), (3, 2), (-1, 0), (0, 0)], ids=str)
@pytest.mark.parametrize("softcap", [0.0, 3.0])
def test_kvcache_window_softcap(dtype, window_size, softcap):
    k_cache, v_cache = make_cache(2, 40, 1, 64, dtype)
    q, k, v = random_qkv(2, 4, 4, 4, 1, 64, dtype)
    seqlens = torch.tensor([9, 30], dtype=torch.int32)
    check_kvcache(q, k_cache, v_cache, k, v, seqlens, causal=True, window_size=window_size,
                  softcap=softcap, alibi_slopes=make_slopes("mpt", 2, 4))


@pytest.mark.parametrize("head_dim", [8, 72, 128, 256])
def test_kvcache_head_dims(head_dim):
    k_cache, v_cache = make_cache(2, 33, 2, head_dim, torch.bfloat16)
    q, k, v = random_qkv(2, 1, 1, 4, 2, head_dim, torch.bfloat16)
    check_kvcache(q, k_cache, v_cache, k, v, torch.tensor([5, 32], dtype=torch.int32),
                  alibi_slopes=make_slopes("mpt", 2, 4))


@pytest.mark.parametrize("form", ["int", "tensor", "none"])
def test_kvcache_seqlens_forms(form):
    k_cache, v_cache = make_cache(2, 20, 2, 32, torch.float32)
    if form == "none":  # the whole cache is valid, no append
        q = torch.randn(2, 3, 4, 32)
        check_kvcache(q, k_cache, v_cache, None, None, None, causal=True)
        return
    q, k, v = random_qkv(2, 2, 2, 4, 2, 32, torch.float32)
    seqlens = 11 if form == "int" else torch.tensor([11, 11], dtype=torch.int32)
    check_kvcache(q, k_cache, v_cache, k, v, seqlens, causal=True)


def test_kvcache_int_equals_tensor():
    k_cache, v_cache = make_cache(2, 20, 2, 32, torch.float32)
    kc2, vc2 = k_cache.clone(), v_cache.clone()
    q, k, v = random_qkv(2, 2, 2, 4, 2, 32, torch.float32)
    a = mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, 7, causal=True)
    b = mpt_ext.flash_attn_with_kvcache(q, kc2, vc2, k, v, torch.full((2,), 7, dtype=torch.int32),
                                        causal=True)
    assert torch.equal(a, b) and torch.equal(k_cache, kc2) and torch.equal(v_cache, vc2)


def test_kvcache_larger_cache_batch():
    # batch_cache > batch: only the first batch entries are read and appended to
    k_cache, v_cache = make_cache(4, 16, 2, 16, torch.float32)
    q, k, v = random_qkv(2, 1, 1, 2, 2, 16, torch.float32)
    check_kvcache(q, k_cache, v_cache, k, v, torch.tensor([3, 8], dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("alibi", [None, "batch"])
def test_kvcache_num_splits_agree(dtype, alibi):
    k_cache, v_cache = make_cache(2, 300, 2, 64, dtype)
    q = torch.randn(2, 1, 8, 64, dtype=dtype)
    seqlens = torch.tensor([299, 123], dtype=torch.int32)
    slopes = make_slopes(alibi, 2, 8)
    results = []
    for num_splits in (0, 1, 2, 3, 7, 64):
        out, lse = mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                                   alibi_slopes=slopes, num_splits=num_splits,
                                                   return_softmax_lse=True)
        results.append((num_splits, out, lse))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    _, out0, lse0 = results[0]
    for n, out, lse in results[1:]:
        torch.testing.assert_close(out, out0, **tol, msg=f"num_splits={n}")
        torch.testing.assert_close(lse, lse0, atol=1e-5, rtol=1e-5, msg=f"num_splits={n}")
    # and every split count agrees with the reference
    check_kvcache(q, k_cache, v_cache, None, None, seqlens, alibi_slopes=slopes, num_splits=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("nheads,nheads_k", [(6, 2), (4, 4)], ids=str)
@pytest.mark.parametrize("chunk", [1, 5])
def test_decode_steps_equal_full_causal(dtype, nheads, nheads_k, chunk):
    """Prefill chunk by chunk / decode token by token through the cache equals one causal
    flash_attn_func over the whole sequence (with MPT's ALiBi)."""
    batch, seqlen, head_dim = 2, 23, 32
    q, k, v = random_qkv(batch, seqlen, seqlen, nheads, nheads_k, head_dim, dtype)
    slopes = make_slopes("mpt", batch, nheads)
    full = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes)
    k_cache, v_cache = make_cache(batch, 32, nheads_k, head_dim, dtype)
    outs = []
    for start in range(0, seqlen, chunk):
        end = min(start + chunk, seqlen)
        outs.append(mpt_ext.flash_attn_with_kvcache(
            q[:, start:end], k_cache, v_cache, k[:, start:end], v[:, start:end],
            cache_seqlens=start, causal=True, alibi_slopes=slopes))
    stepped = torch.cat(outs, dim=1)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(stepped, full, **tol)
    assert torch.equal(k_cache[:, :seqlen], k) and torch.equal(v_cache[:, :seqlen], v)


def test_kvcache_batch_zero_and_empty_cache():
    k_cache, v_cache = make_cache(0, 8, 2, 16, torch.float32)
    q = torch.randn(0, 1, 2, 16)
    out = mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=torch.zeros(0, dtype=torch.int32))
    assert out.shape == q.shape
    # cache_seqlens 0 and nothing appended: no key visible -> 0, lse -inf
    k_cache, v_cache = make_cache(2, 8, 2, 16, torch.float32)
    q = torch.randn(2, 1, 2, 16)
    out, lse = check_kvcache(q, k_cache, v_cache, None, None,
                             torch.zeros(2, dtype=torch.int32))
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))


def test_kvcache_strided_cache_and_inputs():
    # caches that are views (every other head of a bigger buffer), strided q and new k/v: the
    # append writes through the view and leaves the other heads alone
    big_k = torch.randn(2, 24, 4, 32)
    big_v = torch.randn(2, 24, 4, 32)
    big_k0, big_v0 = big_k.clone(), big_v.clone()
    k_cache, v_cache = big_k[:, :, ::2], big_v[:, :, ::2]
    qkv = torch.randn(2, 3, 3, 4, 32)
    q = qkv[:, :, 0]
    k, v = qkv[:, :, 1, ::2], qkv[:, :, 2, ::2]
    check_kvcache(q, k_cache, v_cache, k, v, torch.tensor([4, 20], dtype=torch.int32),
                  causal=True, alibi_slopes=make_slopes("mpt", 2, 4))
    assert torch.equal(big_k[:, :, 1::2], big_k0[:, :, 1::2])
    assert torch.equal(big_v[:, :, 1::2], big_v0[:, :, 1::2])
