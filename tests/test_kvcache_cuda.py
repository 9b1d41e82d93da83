"""CUDA flash_attn_with_kvcache (the split-KV decode kernels in csrc/attention/decode/).

Checked against the float64 oracle mpt_ext.reference.kvcache_ref (run on the GPU) with
DESIGN.md's rule: the kernel's max error is at most 2x that of PyTorch's own math in the
same dtype, plus a small floor; and against the CPU kernel (the same call on CPU tensors).
The cache after the append is compared bit for bit. Cache positions that no sequence may
read (past cache_seqlens[b] + seqlen_new, and the spare batch row) hold NaN, so a read out
of range shows up as NaN in the output. Needs a GPU and a build with
-DMPT_EXT_CUDA_OPS=decode (otherwise CUDA calls raise NotImplementedError).
"""
import math

import pytest
import torch

from mpt_ext import alibi_slopes, flash_attn_with_kvcache

try:
    from mpt_ext.reference import kvcache_ref
except ImportError:  # lands with the attention tests (branch attn-tests)
    kvcache_ref = None

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(kvcache_ref is None, reason="needs mpt_ext.reference.kvcache_ref"),
]

DEV = "cuda"
FLOOR = 1e-3  # absolute floor of the error rule (outputs are O(1))


def _poison_allocator(nbytes):
    """Fill a block the caching allocator will hand out next with NaN, so that an output
    element the kernel forgets to write shows up as NaN rather than as a stale value."""
    torch.empty(max(nbytes // 4, 1), device=DEV, dtype=torch.float32).fill_(float("nan"))


def _case(batch=2, seqlen_cache=300, heads=8, heads_k=2, d=128, seqlen_q=1, seqlen_new=1,
          dtype=torch.bfloat16, lengths=None, alibi=True, per_batch_slopes=False):
    """Random inputs. The cache has a spare batch row and NaN everywhere no sequence may read."""
    if lengths is None:
        lengths = torch.randint(0, seqlen_cache - seqlen_new + 1, (batch,)).tolist()
    q = torch.randn(batch, seqlen_q, heads, d, device=DEV, dtype=dtype)
    k_cache = torch.randn(batch + 1, seqlen_cache, heads_k, d, device=DEV, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    for b in range(batch + 1):
        end = lengths[b] + seqlen_new if b < batch else 0
        k_cache[b, end:] = float("nan")
        v_cache[b, end:] = float("nan")
    k_new = v_new = None
    if seqlen_new > 0:
        k_new = torch.randn(batch, seqlen_new, heads_k, d, device=DEV, dtype=dtype)
        v_new = torch.randn_like(k_new)
        # the append must overwrite the NaN it lands on
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device=DEV)
    slopes = None
    if alibi:
        slopes = alibi_slopes(heads).to(DEV)
        if per_batch_slopes:
            slopes = slopes[None].repeat(batch, 1) * torch.rand(batch, 1, device=DEV) * 2
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, k=k_new, v=v_new,
                cache_seqlens=cache_seqlens, alibi_slopes=slopes)


def _expected_caches(inp):
    k_cache, v_cache = inp["k_cache"].clone(), inp["v_cache"].clone()
    if inp["k"] is not None:
        s = inp["k"].shape[1]
        for b, n in enumerate(inp["cache_seqlens"].tolist()):
            k_cache[b, n:n + s] = inp["k"][b]
            v_cache[b, n:n + s] = inp["v"][b]
    return k_cache, v_cache


def _bits_equal(a, b):
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def _run(inp, device=None, **kw):
    """One flash_attn_with_kvcache call on copies of the inputs (moved to device, default
    the GPU); returns (out, lse, k_cache, v_cache) with the caches as the call left them."""
    device = device or DEV
    mv = {n: (t.to(device) if isinstance(t, torch.Tensor) else t) for n, t in inp.items()}
    k_cache, v_cache = mv["k_cache"].clone(), mv["v_cache"].clone()
    q = mv["q"]
    if device == DEV:
        _poison_allocator(q.numel() * q.element_size() + 4096)
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k=mv["k"], v=mv["v"],
                                       cache_seqlens=mv["cache_seqlens"],
                                       alibi_slopes=mv["alibi_slopes"],
                                       return_softmax_lse=True, **kw)
    return out, lse, k_cache, v_cache


def _check(inp, cpu=True, **kw):
    """Runs the CUDA kernel and checks it: caches bitwise, out and lse against the oracle,
    and (cpu=True) against the CPU kernel. kw: causal, window_size, softcap, num_splits."""
    out, lse, k_cache, v_cache = _run(inp, **kw)
    torch.cuda.synchronize()
    k_exp, v_exp = _expected_caches(inp)
    assert _bits_equal(k_cache, k_exp) and _bits_equal(v_cache, v_exp), "cache after the append"

    mask_kw = {n: kw[n] for n in ("causal", "window_size", "softcap") if n in kw}
    ref_args = (inp["q"], inp["k_cache"], inp["v_cache"], inp["k"], inp["v"])
    ref_kw = dict(cache_seqlens=inp["cache_seqlens"], alibi_slopes=inp["alibi_slopes"], **mask_kw)
    ref_out, ref_lse, _, _ = kvcache_ref(*ref_args, compute_dtype=torch.float64, **ref_kw)
    low_out, _, _, _ = kvcache_ref(*ref_args, compute_dtype=inp["q"].dtype, **ref_kw)

    assert not out.isnan().any(), "NaN in out (a cache read out of range, or an unwritten row)"
    assert not lse.isnan().any(), "NaN in lse"
    torch_err = (low_out.double() - ref_out).abs().max().item() if out.numel() else 0.0
    tol = 2 * torch_err + FLOOR
    err = (out.double() - ref_out).abs().max().item() if out.numel() else 0.0
    assert err <= tol, f"out error {err:.3g} > 2 x PyTorch's {torch_err:.3g} + {FLOOR}"
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), "rows without keys must get lse -inf"
    assert (out.double()[empty.transpose(1, 2)] == 0).all(), "rows without keys must give 0"
    torch.testing.assert_close(lse.double()[~empty], ref_lse[~empty], atol=1e-3, rtol=1e-4)

    if cpu:
        try:
            c_out, c_lse, c_k, c_v = _run(inp, device="cpu", **kw)
        except NotImplementedError as e:
            pytest.skip(f"CPU kernel unavailable: {e}")
        assert _bits_equal(c_k.to(DEV), k_cache) and _bits_equal(c_v.to(DEV), v_cache)
        cpu_diff = (c_out.to(DEV).double() - out.double()).abs().max().item() if out.numel() else 0.0
        assert cpu_diff <= tol, f"CUDA and CPU differ by {cpu_diff:.3g} > {tol:.3g}"
        assert torch.equal(torch.isneginf(c_lse.to(DEV)), empty)
        torch.testing.assert_close(c_lse.to(DEV)[~empty], lse[~empty], atol=1e-3, rtol=1e-4)
    return out, lse


# ---- semantics ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,heads_k", [(32, 8), (6, 6), (12, 1)])
@pytest.mark.parametrize("seqlen_q", [1, 4])
def test_decode_gqa_alibi_causal(dtype, heads, heads_k, seqlen_q):
    inp = _case(batch=3, seqlen_cache=257, heads=heads, heads_k=heads_k, d=128,
                seqlen_q=seqlen_q, seqlen_new=seqlen_q, dtype=dtype, lengths=[0, 113, 200])
    _check(inp, causal=True)


@pytest.mark.parametrize("d", [32, 40, 64, 80, 128, 136, 256])
@pytest.mark.parametrize("heads_k", [4, 2])  # one row per block (MHA) and a GQA row tile
def test_head_dims(d, heads_k):
    inp = _case(batch=2, seqlen_cache=130, heads=4, heads_k=heads_k, d=d, seqlen_q=1,
                seqlen_new=1, lengths=[17, 128])
    _check(inp, causal=True)


@pytest.mark.parametrize("window_size", [(16, 0), (5, 3), (0, 0), (-1, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_window(window_size, causal):
    inp = _case(batch=2, seqlen_cache=200, heads=8, heads_k=4, d=64, seqlen_q=4, seqlen_new=2,
                lengths=[1, 150])
    _check(inp, causal=causal, window_size=window_size)


def test_softcap_and_per_batch_slopes():
    inp = _case(batch=3, seqlen_cache=300, heads=6, heads_k=3, d=128, seqlen_q=2, seqlen_new=1,
                per_batch_slopes=True)
    _check(inp, causal=True, softcap=5.0)


def test_no_alibi_not_causal_no_append():
    inp = _case(batch=2, seqlen_cache=100, heads=4, heads_k=4, d=128, seqlen_q=3, seqlen_new=0,
                alibi=False, lengths=[40, 99])
    _check(inp)


def test_whole_cache_valid_without_cache_seqlens():
    inp = _case(batch=2, seqlen_cache=77, heads=8, heads_k=8, d=64, seqlen_q=1, seqlen_new=0,
                lengths=[77, 77])
    inp["cache_seqlens"] = None
    _check(inp, causal=True)


def test_rows_without_keys():
    # Sequence 0 has no keys at all; in sequence 1 (3 keys, 5 queries, causal) the first two
    # rows see nothing (bottom-right alignment puts them before key 0).
    inp = _case(batch=2, seqlen_cache=64, heads=4, heads_k=2, d=64, seqlen_q=5, seqlen_new=0,
                lengths=[0, 3])
    out, lse = _check(inp, causal=True)
    assert torch.isneginf(lse[0]).all() and (out[0] == 0).all()
    assert torch.isneginf(lse[1, :, :2]).all() and torch.isfinite(lse[1, :, 2:]).all()


def test_chunked_prefill_rows():
    # seqlen_q larger than a row tile: several tiles per KV head, causal bounds per row.
    inp = _case(batch=2, seqlen_cache=400, heads=8, heads_k=2, d=128, seqlen_q=37,
                seqlen_new=37, lengths=[0, 300])
    _check(inp, causal=True)


def test_strided_inputs():
    # q sliced out of a packed qkv, caches that are head-major views: strides, not copies.
    batch, sq, heads, hk, d, sc = 2, 2, 8, 4, 64, 96
    qkv = torch.randn(batch, sq, 3 * heads, d, device=DEV, dtype=torch.bfloat16)
    inp = _case(batch=batch, seqlen_cache=sc, heads=heads, heads_k=hk, d=d, seqlen_q=sq,
                seqlen_new=sq, lengths=[10, 60])
    inp["q"] = qkv[:, :, :heads]
    for name in ("k_cache", "v_cache"):
        t = inp[name]
        inp[name] = t.transpose(1, 2).contiguous().transpose(1, 2)  # (B, S, H, D) view of BHSD
    _check(inp, causal=True)


# ---- splits ------------------------------------------------------------------------------

@pytest.mark.parametrize("heads_k", [32, 8])
def test_num_splits_agree(heads_k):
    inp = _case(batch=2, seqlen_cache=3000, heads=32, heads_k=heads_k, d=128, seqlen_q=1,
                seqlen_new=1, lengths=[2999, 1234])
    results = [_check(inp, cpu=False, causal=True, num_splits=n) for n in (0, 1, 2, 3, 5, 8, 200)]
    out1, lse1 = results[1]
    for out, lse in results:
        torch.testing.assert_close(lse, lse1, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.float(), out1.float(), atol=2e-2, rtol=0)


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_heuristic_splits_by_batch(batch):
    inp = _case(batch=batch, seqlen_cache=4096, heads=32, heads_k=8, d=128, seqlen_q=1,
                seqlen_new=1)
    _check(inp, cpu=False, causal=True)


def test_long_cache_65536():
    inp = _case(batch=2, seqlen_cache=65536, heads=32, heads_k=8, d=128, seqlen_q=1,
                seqlen_new=1, lengths=[65535, 40000])
    _check(inp, cpu=False, causal=True)


# ---- input handling ------------------------------------------------------------------------

def test_empty_batch():
    q = torch.randn(0, 1, 4, 64, device=DEV, dtype=torch.bfloat16)
    kc = torch.randn(0, 16, 4, 64, device=DEV, dtype=torch.bfloat16)
    out, lse = flash_attn_with_kvcache(q, kc, kc.clone(), return_softmax_lse=True)
    assert out.shape == q.shape and lse.shape == (0, 4, 1)


def test_float32_rejected():
    q = torch.randn(1, 1, 4, 64, device=DEV)
    kc = torch.randn(1, 16, 4, 64, device=DEV)
    with pytest.raises(TypeError, match="bfloat16"):  # the binding's dtype check
        flash_attn_with_kvcache(q, kc, kc.clone())


def test_head_dim_not_multiple_of_8_rejected():
    q = torch.randn(1, 1, 4, 36, device=DEV, dtype=torch.bfloat16)
    kc = torch.randn(1, 16, 4, 36, device=DEV, dtype=torch.bfloat16)
    with pytest.raises((ValueError, RuntimeError), match="multiple of 8"):
        flash_attn_with_kvcache(q, kc, kc.clone())


# ---- bandwidth (prints GB/s of K/V read; the benchmark CLI owns the real numbers) ----------

@pytest.mark.slow
@pytest.mark.parametrize("heads_k", [32, 8])
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_bandwidth_64k(batch, heads_k, capsys):
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
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        call()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3)
    t = sorted(times)[len(times) // 2]
    gbs = 2 * k_cache.numel() * k_cache.element_size() / t / 1e9
    with capsys.disabled():
        print(f"\ndecode 64k bf16 batch {batch} heads {heads}:{heads_k} d {d}: "
              f"{t * 1e6:.0f} us, {gbs:.0f} GB/s of K/V")
    assert math.isfinite(gbs) and gbs > 0


@pytest.mark.slow
@pytest.mark.parametrize("heads_k", [32, 8])
def test_split_sweep_64k_batch1(heads_k, capsys):
    """GB/s per explicit num_splits at batch 1 (the heuristic's data; see decode/README.md)."""
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
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(10):
            start.record()
            call()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e-3)
        t = sorted(times)[len(times) // 2]
        with capsys.disabled():
            print(f"\nsplit sweep 64k batch 1 heads 32:{heads_k}: num_splits {splits:3d} "
                  f"{t * 1e6:7.1f} us {2 * k_cache.numel() * 2 / t / 1e9:6.0f} GB/s")
