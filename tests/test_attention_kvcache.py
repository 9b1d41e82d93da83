"""flash_attn_with_kvcache on CPU and CUDA against kvcache_ref: the in-place append (cache
contents after the call, untouched positions included), decode and chunked prefill, split
counts.

The CUDA tests check the split-KV decode kernels (csrc/attn_kvcache/) against the same
float64 oracle, run on the GPU, with docs/DESIGN.md's rule (Numerics), and also hold them to
an absolute floor of 1e-3 and to the CPU kernel (the same call on CPU tensors). Most build
their inputs with _case: cache positions that no sequence may read (past cache_seqlens[b] +
seqlen_new, and a spare batch row) hold NaN, so a read out of range shows up as NaN in the
output. They are skipped without a GPU or when the build does not dispatch to the decode
kernels (build with -DMPT_EXT_CUDA_OPS=attn_kvcache).
"""
import math

import pytest
import torch

import mpt_ext
from mpt_ext import alibi_slopes, flash_attn_with_kvcache
from mpt_ext.reference import kvcache_ref

from attention_helpers import (DTYPE_IDS, assert_close_to_ref, make_slopes, one_thread,
                               poison_allocator, random_qkv)
from devices import cuda_only, devices

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CUDA_DTYPES = [torch.bfloat16, torch.float16]
FLOOR = 1e-3  # the CUDA kernel's absolute floor of the error rule (outputs are O(1))


def make_cache(batch_cache, seqlen_cache, nheads_k, head_dim, dtype, device="cpu"):
    k_cache = torch.randn(batch_cache, seqlen_cache, nheads_k, head_dim, dtype=dtype,
                          device=device)
    v_cache = torch.randn(batch_cache, seqlen_cache, nheads_k, head_dim, dtype=dtype,
                          device=device)
    return k_cache, v_cache


def bits_equal(a, b):
    """Equal bit for bit (NaN included, which torch.equal never calls equal)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.dtype == b.dtype and torch.equal(a.view(ints), b.view(ints))


def _poison_next_block(nbytes, device):
    """Fill a block the caching allocator will hand out next with NaN, so that an output
    element the kernel forgets to write shows up as NaN rather than as a stale value."""
    torch.empty(max(nbytes // 4, 1), device=device, dtype=torch.float32).fill_(float("nan"))


def check_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, against_cpu=True,
                  cuda_bar=None, **kw):
    """Runs ours on the caches in place and compares out, lse and the caches with the
    reference (computed on copies taken before the call). kw: the call's keyword arguments
    (causal, window_size, softcap, alibi_slopes, num_splits, rotary_cos, rotary_sin,
    rotary_interleaved, cache_batch_idx, cache_leftpad, block_table).

    The caches must match bit for bit; with rotary the rotated new keys (ours rotate in fp32,
    the reference in fp64) may differ by one rounding of the cache dtype.

    On CUDA (or with cuda_bar: the CUDA kernels emulated on CPU tensors) the kernel is also
    held to an absolute floor of FLOOR on out (max error at most 2x PyTorch's + FLOOR), lse to
    1e-3 + 1e-4 relative, and (against_cpu, on CUDA) to the CPU kernel run on the same
    inputs."""
    cuda_bar = q.is_cuda if cuda_bar is None else cuda_bar
    ref_kw = {name: val for name, val in kw.items() if name != "num_splits"}
    on_cpu = None
    if q.is_cuda and against_cpu:  # the CPU kernel's inputs, before the call appends
        on_cpu = [_to_cpu(t) for t in (q, k_cache, v_cache, k, v, cache_seqlens)]
    with one_thread():
        ref_out, ref_lse, ref_kc, ref_vc = kvcache_ref(q, k_cache, v_cache, k, v,
                                                       cache_seqlens=cache_seqlens, **ref_kw)
        low_out, low_lse, _, _ = kvcache_ref(q, k_cache, v_cache, k, v,
                                             cache_seqlens=cache_seqlens,
                                             compute_dtype=q.dtype, **ref_kw)
    poison_allocator(q, ref_lse.float())
    if q.is_cuda:
        _poison_next_block(q.numel() * q.element_size() + 4096, q.device)
    out, lse = mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, k, v,
                                               cache_seqlens=cache_seqlens,
                                               return_softmax_lse=True, **kw)
    if q.is_cuda:
        torch.cuda.synchronize()
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    caches_equal(k_cache, ref_kc, "k_cache", rotated=kw.get("rotary_cos") is not None)
    caches_equal(v_cache, ref_vc, "v_cache")
    assert_close_to_ref("out", out, ref_out, low_out)
    assert_close_to_ref("lse", lse, ref_lse, low_lse, dtype=q.dtype)
    if cuda_bar:
        _check_cuda_bar(out, lse, ref_out, ref_lse, low_out, low_lse, on_cpu, k_cache, v_cache,
                        kw)
    return out, lse


def _to_cpu(t):
    return t.cpu() if isinstance(t, torch.Tensor) else t


def caches_equal(ours, ref, name, rotated=False):
    """The cache after the append: bit for bit; rotated keys within one rounding."""
    if bits_equal(ours, ref):
        return
    assert rotated, f"{name} after the append differs from the reference"
    eps = torch.finfo(ours.dtype).eps
    torch.testing.assert_close(ours, ref, rtol=eps, atol=eps, equal_nan=True,
                               msg=lambda m: f"{name} (rotated keys): {m}")


def _check_cuda_bar(out, lse, ref_out, ref_lse, low_out, low_lse, on_cpu, k_cache, v_cache,
                    kw):
    """The CUDA kernel's extra checks (see check_kvcache)."""
    assert not out.isnan().any(), "NaN in out (a cache read out of range, or an unwritten row)"
    assert not lse.isnan().any(), "NaN in lse"
    torch_err = (low_out.double() - ref_out).abs().max().item() if out.numel() else 0.0
    tol = 2 * torch_err + FLOOR
    err = (out.double() - ref_out).abs().max().item() if out.numel() else 0.0
    assert err <= tol, f"out error {err:.3g} > 2 x PyTorch's {torch_err:.3g} + {FLOOR}"
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), "rows without keys must get lse -inf"
    assert (out.double()[empty.transpose(1, 2)] == 0).all(), "rows without keys must give 0"
    # With rotary, q is rotated into its own dtype before the product (as in flash-attn): the
    # lse floor then also allows PyTorch's error, which has that rounding too.
    lse_atol = 1e-3
    if kw.get("rotary_cos") is not None:
        lse_atol += 2 * (low_lse.double() - ref_lse)[~empty].abs().max().item()
    torch.testing.assert_close(lse.double()[~empty], ref_lse[~empty], atol=lse_atol, rtol=1e-4)

    if on_cpu is not None:
        q, kc, vc, k, v, seqlens = on_cpu
        try:
            c_out, c_lse = flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens,
                                                   return_softmax_lse=True,
                                                   **{n: _to_cpu(t) for n, t in kw.items()})
        except NotImplementedError as e:
            pytest.skip(f"CPU kernel unavailable: {e}")
        caches_equal(kc.to(k_cache.device), k_cache, "k_cache (CPU kernel)",
                     rotated=kw.get("rotary_cos") is not None)
        caches_equal(vc.to(v_cache.device), v_cache, "v_cache (CPU kernel)")
        dev = out.device
        cpu_diff = ((c_out.to(dev).double() - out.double()).abs().max().item()
                    if out.numel() else 0.0)
        assert cpu_diff <= tol, f"CUDA and CPU differ by {cpu_diff:.3g} > {tol:.3g}"
        assert torch.equal(torch.isneginf(c_lse.to(dev)), empty)
        torch.testing.assert_close(c_lse.to(dev)[~empty], lse[~empty], atol=lse_atol, rtol=1e-4)


APPEND_CASES = devices(
    "attn_kvcache",
    cpu=[(dt, sq, snew, 6, 2, causal, alibi) for dt in DTYPES
         for sq, snew in [(1, 1), (1, 0), (5, 5), (7, 3), (3, 0)] for causal in (False, True)
         for alibi in (None, "mpt", "batch")],
    cuda=[(dt, sq, snew, h, hk, True, "mpt") for dt in CUDA_DTYPES
          for sq, snew in [(1, 1), (1, 0), (16, 16)] for h, hk in [(32, 8), (8, 8)]])


@pytest.mark.parametrize("device,dtype,seqlen_q,seqlen_new,nheads,nheads_k,causal,alibi",
                         APPEND_CASES)
def test_kvcache_append(device, dtype, seqlen_q, seqlen_new, nheads, nheads_k, causal, alibi):
    batch = 3
    seqlen_cache, head_dim, splits = {"cpu": (64, 32, [0]),
                                      "cuda": (4200, 128, [0, 1, 4])}[device]
    k_cache, v_cache = make_cache(batch, seqlen_cache, nheads_k, head_dim, dtype, device)
    q = torch.randn(batch, seqlen_q, nheads, head_dim, dtype=dtype, device=device)
    k = v = None
    if seqlen_new:
        k = torch.randn(batch, seqlen_new, nheads_k, head_dim, dtype=dtype, device=device)
        v = torch.randn(batch, seqlen_new, nheads_k, head_dim, dtype=dtype, device=device)
    # per-sequence lengths, including an empty cache and (CPU) one that the append fills exactly
    lengths = {"cpu": [0, 17, seqlen_cache - seqlen_new], "cuda": [0, 1000, 4097]}[device]
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    slopes = make_slopes(alibi, batch, nheads, device=device)
    for num_splits in splits:
        check_kvcache(q, k_cache.clone(), v_cache.clone(), k, v, cache_seqlens,
                      against_cpu=False, causal=causal, alibi_slopes=slopes,
                      num_splits=num_splits)


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
    a = mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=7, causal=True)
    b = mpt_ext.flash_attn_with_kvcache(q, kc2, vc2, k, v,
                                        cache_seqlens=torch.full((2,), 7, dtype=torch.int32),
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


# ---- CUDA decode kernels -------------------------------------------------------------------
DEV = "cuda"


def _case(batch=2, seqlen_cache=300, heads=8, heads_k=2, d=128, seqlen_q=1, seqlen_new=1,
          dtype=torch.bfloat16, lengths=None, alibi=True, per_batch_slopes=False, device=DEV):
    """Random inputs on the GPU (or device), as check_kvcache's keyword arguments. The cache
    has a spare batch row and NaN everywhere no sequence may read."""
    if lengths is None:
        lengths = torch.randint(0, seqlen_cache - seqlen_new + 1, (batch,)).tolist()
    q = torch.randn(batch, seqlen_q, heads, d, device=device, dtype=dtype)
    k_cache = torch.randn(batch + 1, seqlen_cache, heads_k, d, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    for b in range(batch + 1):
        end = lengths[b] + seqlen_new if b < batch else 0
        k_cache[b, end:] = float("nan")
        v_cache[b, end:] = float("nan")
    k_new = v_new = None
    if seqlen_new > 0:
        k_new = torch.randn(batch, seqlen_new, heads_k, d, device=device, dtype=dtype)
        v_new = torch.randn_like(k_new)
        # the append must overwrite the NaN it lands on
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    slopes = None
    if alibi:
        slopes = alibi_slopes(heads).to(device)
        if per_batch_slopes:
            slopes = slopes[None].repeat(batch, 1) * torch.rand(batch, 1, device=device) * 2
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, k=k_new, v=v_new,
                cache_seqlens=cache_seqlens, alibi_slopes=slopes)


@cuda_only("attn_kvcache")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,heads_k", [(32, 8), (6, 6), (12, 1)])
@pytest.mark.parametrize("seqlen_q", [1, 4])
def test_cuda_decode_gqa_alibi_causal(dtype, heads, heads_k, seqlen_q):
    inp = _case(batch=3, seqlen_cache=257, heads=heads, heads_k=heads_k, d=128,
                seqlen_q=seqlen_q, seqlen_new=seqlen_q, dtype=dtype, lengths=[0, 113, 200])
    check_kvcache(**inp, causal=True)


@cuda_only("attn_kvcache")
@pytest.mark.parametrize("d", [32, 40, 64, 80, 128, 136, 256])
@pytest.mark.parametrize("heads_k", [4, 2])  # one row per block (MHA) and a GQA row tile
def test_cuda_head_dims(d, heads_k):
    inp = _case(batch=2, seqlen_cache=130, heads=4, heads_k=heads_k, d=d, seqlen_q=1,
                seqlen_new=1, lengths=[17, 128])
    check_kvcache(**inp, causal=True)


@cuda_only("attn_kvcache")
@pytest.mark.parametrize("window_size", [(16, 0), (5, 3), (0, 0), (-1, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_window(window_size, causal):
    inp = _case(batch=2, seqlen_cache=200, heads=8, heads_k=4, d=64, seqlen_q=4, seqlen_new=2,
                lengths=[1, 150])
    check_kvcache(**inp, causal=causal, window_size=window_size)


@cuda_only("attn_kvcache")
def test_cuda_softcap_and_per_batch_slopes():
    inp = _case(batch=3, seqlen_cache=300, heads=6, heads_k=3, d=128, seqlen_q=2, seqlen_new=1,
                per_batch_slopes=True)
    check_kvcache(**inp, causal=True, softcap=5.0)


@cuda_only("attn_kvcache")
def test_cuda_no_alibi_not_causal_no_append():
    inp = _case(batch=2, seqlen_cache=100, heads=4, heads_k=4, d=128, seqlen_q=3, seqlen_new=0,
                alibi=False, lengths=[40, 99])
    check_kvcache(**inp)


@cuda_only("attn_kvcache")
def test_cuda_whole_cache_valid_without_cache_seqlens():
    inp = _case(batch=2, seqlen_cache=77, heads=8, heads_k=8, d=64, seqlen_q=1, seqlen_new=0,
                lengths=[77, 77])
    inp["cache_seqlens"] = None
    check_kvcache(**inp, causal=True)


@cuda_only("attn_kvcache")
def test_cuda_rows_without_keys():
    # Sequence 0 has no keys at all; in sequence 1 (3 keys, 5 queries, causal) the first two
    # rows see nothing (bottom-right alignment puts them before key 0).
    inp = _case(batch=2, seqlen_cache=64, heads=4, heads_k=2, d=64, seqlen_q=5, seqlen_new=0,
                lengths=[0, 3])
    out, lse = check_kvcache(**inp, causal=True)
    assert torch.isneginf(lse[0]).all() and (out[0] == 0).all()
    assert torch.isneginf(lse[1, :, :2]).all() and torch.isfinite(lse[1, :, 2:]).all()


@cuda_only("attn_kvcache")
def test_cuda_chunked_prefill_rows():
    # seqlen_q larger than a row tile: several tiles per KV head, causal bounds per row.
    inp = _case(batch=2, seqlen_cache=400, heads=8, heads_k=2, d=128, seqlen_q=37,
                seqlen_new=37, lengths=[0, 300])
    check_kvcache(**inp, causal=True)


@cuda_only("attn_kvcache")
def test_cuda_strided_inputs():
    # q sliced out of a packed qkv, caches that are head-major views: strides, not copies.
    batch, sq, heads, hk, d, sc = 2, 2, 8, 4, 64, 96
    qkv = torch.randn(batch, sq, 3 * heads, d, device=DEV, dtype=torch.bfloat16)
    inp = _case(batch=batch, seqlen_cache=sc, heads=heads, heads_k=hk, d=d, seqlen_q=sq,
                seqlen_new=sq, lengths=[10, 60])
    inp["q"] = qkv[:, :, :heads]
    for name in ("k_cache", "v_cache"):
        t = inp[name]
        inp[name] = t.transpose(1, 2).contiguous().transpose(1, 2)  # (B, S, H, D) view of BHSD
    check_kvcache(**inp, causal=True)


# splits
@cuda_only("attn_kvcache")
@pytest.mark.parametrize("heads_k", [32, 8])
def test_cuda_num_splits_agree(heads_k):
    inp = _case(batch=2, seqlen_cache=3000, heads=32, heads_k=heads_k, d=128, seqlen_q=1,
                seqlen_new=1, lengths=[2999, 1234])
    # each call appends the same k, v at the same positions again: the caches stay the same
    results = [check_kvcache(**inp, against_cpu=False, causal=True, num_splits=n)
               for n in (0, 1, 2, 3, 5, 8, 200)]
    out1, lse1 = results[1]
    for out, lse in results:
        torch.testing.assert_close(lse, lse1, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.float(), out1.float(), atol=2e-2, rtol=0)


@cuda_only("attn_kvcache")
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_cuda_heuristic_splits_by_batch(batch):
    inp = _case(batch=batch, seqlen_cache=4096, heads=32, heads_k=8, d=128, seqlen_q=1,
                seqlen_new=1)
    check_kvcache(**inp, against_cpu=False, causal=True)


@cuda_only("attn_kvcache")
def test_cuda_long_cache_65536():
    inp = _case(batch=2, seqlen_cache=65536, heads=32, heads_k=8, d=128, seqlen_q=1,
                seqlen_new=1, lengths=[65535, 40000])
    check_kvcache(**inp, against_cpu=False, causal=True)


# input handling
@cuda_only("attn_kvcache")
def test_cuda_empty_batch():
    q = torch.randn(0, 1, 4, 64, device=DEV, dtype=torch.bfloat16)
    kc = torch.randn(0, 16, 4, 64, device=DEV, dtype=torch.bfloat16)
    out, lse = flash_attn_with_kvcache(q, kc, kc.clone(), return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (0, 4, 1)


@cuda_only("attn_kvcache")
def test_cuda_float32_rejected():
    q = torch.randn(1, 1, 4, 64, device=DEV)
    kc = torch.randn(1, 16, 4, 64, device=DEV)
    with pytest.raises(TypeError, match="bfloat16"):  # the binding's dtype check
        flash_attn_with_kvcache(q, kc, kc.clone())


@cuda_only("attn_kvcache")
def test_cuda_head_dim_not_multiple_of_8_rejected():
    q = torch.randn(1, 1, 4, 36, device=DEV, dtype=torch.bfloat16)
    kc = torch.randn(1, 16, 4, 36, device=DEV, dtype=torch.bfloat16)
    with pytest.raises((ValueError, RuntimeError), match="multiple of 8"):
        flash_attn_with_kvcache(q, kc, kc.clone())


# bandwidth (prints GB/s of K/V read; the benchmark CLI owns the real numbers)
def _median_seconds(call, reps=10):
    """The median of reps CUDA-event timings of call()."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        call()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3)
    return sorted(times)[len(times) // 2]


@cuda_only("attn_kvcache")
@pytest.mark.slow
@pytest.mark.parametrize("heads_k", [32, 8])
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_cuda_bandwidth_64k(batch, heads_k, capsys):
    heads, d, n = 32, 128, 65536
    q = torch.randn(batch, 1, heads, d, device=DEV, dtype=torch.bfloat16)
    k_cache = torch.randn(batch, n, heads_k, d, device=DEV, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    seqlens = torch.full((batch,), n, dtype=torch.int32, device=DEV)
    slopes = alibi_slopes(heads).to(DEV)

    def call():
        return flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                       alibi_slopes=slopes, causal=True)

    for _ in range(3):
        call()
    t = _median_seconds(call)
    gbs = 2 * k_cache.numel() * k_cache.element_size() / t / 1e9
    with capsys.disabled():
        print(f"\ndecode 64k bf16 batch {batch} heads {heads}:{heads_k} d {d}: "
              f"{t * 1e6:.0f} us, {gbs:.0f} GB/s of K/V")
    assert math.isfinite(gbs) and gbs > 0


@cuda_only("attn_kvcache")
@pytest.mark.slow
@pytest.mark.parametrize("heads_k", [32, 8])
def test_cuda_split_sweep_64k_batch1(heads_k, capsys):
    """GB/s per explicit num_splits at batch 1 (the heuristic's data; see
    csrc/attn_kvcache/cuda/README.md)."""
    heads, d, n = 32, 128, 65536
    q = torch.randn(1, 1, heads, d, device=DEV, dtype=torch.bfloat16)
    k_cache = torch.randn(1, n, heads_k, d, device=DEV, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    slopes = alibi_slopes(heads).to(DEV)
    ref = None
    for splits in (1, 2, 4, 8, 16, 32, 64, 128, 0):
        def call():
            return flash_attn_with_kvcache(q, k_cache, v_cache, alibi_slopes=slopes, causal=True,
                                           num_splits=splits)
        out = call()
        ref = out if ref is None else ref
        torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=0)
        t = _median_seconds(call)
        with capsys.disabled():
            print(f"\nsplit sweep 64k batch 1 heads 32:{heads_k}: num_splits {splits:3d} "
                  f"{t * 1e6:7.1f} us {2 * k_cache.numel() * 2 / t / 1e9:6.0f} GB/s")
