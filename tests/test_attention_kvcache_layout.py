"""flash_attn_with_kvcache with flash-attn 2.8's cache layouts and rotary embedding: a paged
cache (block_table), a permuted cache (cache_batch_idx), left padding (cache_leftpad), and
q / new keys rotated inside the op (rotary_cos, rotary_sin, rotary_interleaved), each against
kvcache_ref (float64) with check_kvcache. layout_case builds the inputs with NaN wherever no
sequence may read, so a read out of place shows up as NaN. Also: flash-attn's positional
argument order, and the errors the new arguments raise."""
import math

import pytest
import torch

import mpt_ext
from mpt_ext import alibi_slopes, flash_attn_with_kvcache
from mpt_ext.reference import rotary_ref

from attention_helpers import DTYPE_IDS
from devices import cuda_only
from test_attention_kvcache import bits_equal, check_kvcache

NAN = float("nan")


def rotary_tables(rows, rotary_dim, dtype, device="cpu"):
    """cos / sin tables (rows, rotary_dim / 2) of random angles, as flash-attn's tests make."""
    angle = torch.rand(rows, rotary_dim // 2, device=device, dtype=torch.float64) * 2 * math.pi
    return angle.cos().to(dtype), angle.sin().to(dtype)


def layout_case(batch=2, seqlen_cache=40, heads=4, heads_k=2, d=32, seqlen_q=1, seqlen_new=1,
                dtype=torch.float32, lengths=None, leftpad=None, page_size=None,
                batch_idx=False, rotary_dim=0, interleaved=True, alibi=True,
                per_batch_slopes=False, per_query_position=False, device="cpu"):
    """check_kvcache's arguments (a dict) for a cache in one of flash-attn's layouts.

    Sequence b's keys are the positions [leftpad[b], lengths[b]) plus seqlen_new appended;
    every other position, spare cache row and spare page holds NaN. page_size: the caches are
    a pool of pages in random order, and block_table entries no key needs are -1 (never looked
    up). batch_idx: sequence b lives in a random row of a cache with two spare rows.
    rotary_dim > 0: cos / sin tables long enough for the queries' positions (per_query_position:
    the query rows go past the cache when seqlen_q > seqlen_new)."""
    if lengths is None:
        lengths = torch.randint(0, seqlen_cache - seqlen_new + 1, (batch,)).tolist()
    leftpad = leftpad or [0] * batch
    pages = math.ceil(seqlen_cache / page_size) if page_size else 0
    capacity = pages * page_size if page_size else seqlen_cache
    logical_k = torch.randn(batch, capacity, heads_k, d, dtype=dtype)
    logical_v = torch.randn(batch, capacity, heads_k, d, dtype=dtype)
    for b in range(batch):
        for t in (logical_k, logical_v):
            t[b, :leftpad[b]] = NAN
            t[b, lengths[b]:] = NAN  # the append must overwrite what it lands on
    out = {}
    if page_size:
        pool = batch * pages + 3
        order = torch.randperm(pool)
        table = torch.full((batch, pages), -1, dtype=torch.int32)
        k_cache = torch.full((pool, page_size, heads_k, d), NAN, dtype=dtype)
        v_cache = torch.full_like(k_cache, NAN)
        for b in range(batch):
            end = lengths[b] + seqlen_new
            for p in range(pages):
                if (p + 1) * page_size <= leftpad[b] or p * page_size >= end:
                    continue  # no key of b is on this page: its entry stays -1
                table[b, p] = order[b * pages + p]
                k_cache[table[b, p]] = logical_k[b, p * page_size:(p + 1) * page_size]
                v_cache[table[b, p]] = logical_v[b, p * page_size:(p + 1) * page_size]
        out["block_table"] = table
    elif batch_idx:
        rows = torch.randperm(batch + 2)[:batch].to(torch.int32)
        k_cache = torch.full((batch + 2, capacity, heads_k, d), NAN, dtype=dtype)
        v_cache = torch.full_like(k_cache, NAN)
        k_cache[rows.long()], v_cache[rows.long()] = logical_k, logical_v
        out["cache_batch_idx"] = rows
    else:
        spare = torch.full((1, capacity, heads_k, d), NAN, dtype=dtype)
        k_cache = torch.cat((logical_k, spare))
        v_cache = torch.cat((logical_v, spare))
    if any(leftpad):
        out["cache_leftpad"] = torch.tensor(leftpad, dtype=torch.int32)
    if rotary_dim:
        rows = capacity + (max(0, seqlen_q - seqlen_new) if per_query_position else 0)
        out["rotary_cos"], out["rotary_sin"] = rotary_tables(rows, rotary_dim, dtype)
        out["rotary_interleaved"] = interleaved
    out["q"] = torch.randn(batch, seqlen_q, heads, d, dtype=dtype)
    out["k_cache"], out["v_cache"] = k_cache, v_cache
    if seqlen_new:
        out["k"] = torch.randn(batch, seqlen_new, heads_k, d, dtype=dtype)
        out["v"] = torch.randn(batch, seqlen_new, heads_k, d, dtype=dtype)
    out["cache_seqlens"] = torch.tensor(lengths, dtype=torch.int32)
    if alibi:
        slopes = alibi_slopes(heads)
        if per_batch_slopes:
            slopes = slopes[None].repeat(batch, 1) * torch.rand(batch, 1) * 2
        out["alibi_slopes"] = slopes
    return {name: t.to(device) if isinstance(t, torch.Tensor) else t for name, t in out.items()}


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# ---- paged -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("page_size", [1, 3, 16, 256])
@pytest.mark.parametrize("seqlen_q,seqlen_new", [(1, 1), (4, 4), (2, 0)])
def test_paged(dtype, page_size, seqlen_q, seqlen_new):
    inp = layout_case(batch=3, seqlen_cache=300, heads=6, heads_k=2, d=32, seqlen_q=seqlen_q,
                      seqlen_new=seqlen_new, dtype=dtype, lengths=[0, 17, 300 - seqlen_new],
                      page_size=page_size)
    check_kvcache(**inp, causal=True)


@pytest.mark.parametrize("page_size", [4, 16])
def test_paged_with_leftpad_window_softcap(page_size):
    inp = layout_case(batch=3, seqlen_cache=64, heads=4, heads_k=4, d=48, seqlen_q=3,
                      seqlen_new=2, lengths=[20, 5, 61], leftpad=[7, 5, 0],
                      page_size=page_size, per_batch_slopes=True)
    check_kvcache(**inp, causal=True, window_size=(9, 0), softcap=4.0)


# ---- cache_batch_idx and cache_leftpad -------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("seqlen_new", [0, 3])
def test_cache_batch_idx(dtype, seqlen_new):
    inp = layout_case(batch=3, seqlen_cache=50, heads=4, heads_k=1, d=16, seqlen_q=3,
                      seqlen_new=seqlen_new, dtype=dtype, lengths=[10, 0, 47], batch_idx=True)
    rows = inp["cache_batch_idx"].long()
    spare = [r for r in range(inp["k_cache"].shape[0]) if r not in rows.tolist()]
    spare_k = inp["k_cache"][spare].clone()
    check_kvcache(**inp, causal=True)
    assert inp["k_cache"][spare].isnan().all() and spare_k.isnan().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True])
def test_cache_leftpad(dtype, causal):
    inp = layout_case(batch=4, seqlen_cache=40, heads=4, heads_k=2, d=32, seqlen_q=2,
                      seqlen_new=2, dtype=dtype, lengths=[12, 30, 6, 38], leftpad=[3, 30, 0, 37])
    check_kvcache(**inp, causal=causal)


def test_leftpad_equals_shorter_cache():
    # left padding only moves where the keys are: ALiBi distances and the causal diagonal are
    # the unpadded sequence's
    inp = layout_case(batch=2, seqlen_cache=30, heads=4, heads_k=2, d=16, seqlen_q=2,
                      seqlen_new=2, lengths=[20, 25], leftpad=[5, 9])
    pad = inp.pop("cache_leftpad")
    kw = dict(causal=True, alibi_slopes=inp.pop("alibi_slopes"))
    out = flash_attn_with_kvcache(**inp, cache_leftpad=pad, **kw)
    for b in range(2):
        p = int(pad[b])
        shifted = flash_attn_with_kvcache(
            inp["q"][b:b + 1], inp["k_cache"][b:b + 1, p:], inp["v_cache"][b:b + 1, p:],
            inp["k"][b:b + 1], inp["v"][b:b + 1], cache_seqlens=int(inp["cache_seqlens"][b]) - p,
            **kw)
        torch.testing.assert_close(out[b:b + 1], shifted)


# ---- rotary ------------------------------------------------------------------------------------
ROTARY = [(dt, inter, mode) for dt in DTYPES for inter in (True, False)
          for mode in ("causal", "local", "none")]


@pytest.mark.parametrize("dtype,interleaved,mode", ROTARY,
                         ids=[f"{DTYPE_IDS[dt]}-{'inter' if i else 'neox'}-{m}"
                              for dt, i, m in ROTARY])
@pytest.mark.parametrize("rotary_dim", [16, 32])
def test_rotary(dtype, interleaved, mode, rotary_dim):
    inp = layout_case(batch=3, seqlen_cache=60, heads=6, heads_k=3, d=32, seqlen_q=3,
                      seqlen_new=3, dtype=dtype, lengths=[0, 20, 57], rotary_dim=rotary_dim,
                      interleaved=interleaved)
    kw = {"causal": dict(causal=True), "local": dict(window_size=(5, 1)), "none": {}}[mode]
    check_kvcache(**inp, **kw)


def test_rotary_queries_past_the_new_keys():
    # causal with seqlen_q > seqlen_new: query rows sit at positions past the appended keys
    inp = layout_case(batch=2, seqlen_cache=24, heads=2, heads_k=2, d=32, seqlen_q=5,
                      seqlen_new=2, lengths=[3, 22], rotary_dim=32, per_query_position=True)
    check_kvcache(**inp, causal=True)


def test_rotary_without_new_rows_on_a_full_cache():
    # k and v of length 0 on a full cache: q rotates at position seqlen_cache, one row past
    # the keys' positions, so the tables need seqlen_cache + 1 rows
    inp = layout_case(batch=2, seqlen_cache=24, heads=2, heads_k=2, d=32, seqlen_q=1,
                      seqlen_new=0, lengths=[24, 10], rotary_dim=16)
    inp["k"] = torch.randn(2, 0, 2, 32)
    inp["v"] = torch.randn(2, 0, 2, 32)
    with pytest.raises(ValueError, match="must have at least 25 rows"):
        flash_attn_with_kvcache(**inp)
    inp["rotary_cos"], inp["rotary_sin"] = rotary_tables(25, 16, torch.float32)
    check_kvcache(**inp)


@pytest.mark.parametrize("window_size", [(100, 100), (-1, 24), (24, -1)], ids=str)
def test_rotary_window_as_wide_as_the_cache_is_not_local(window_size):
    # as in flash-attn: such a window is read as unbounded, so q rows all rotate at
    # cache_seqlens[b], as without a window
    inp = layout_case(batch=2, seqlen_cache=24, heads=2, heads_k=2, d=32, seqlen_q=3,
                      seqlen_new=3, lengths=[5, 12], rotary_dim=32)
    copy = {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in inp.items()}
    check_kvcache(**inp, window_size=window_size)
    windowed = flash_attn_with_kvcache(**copy, window_size=window_size)
    unbounded = flash_attn_with_kvcache(**copy)
    torch.testing.assert_close(windowed, unbounded, rtol=0, atol=0)


@pytest.mark.parametrize("page_size", [None, 8])
def test_rotary_paged_leftpad_everything(page_size):
    inp = layout_case(batch=3, seqlen_cache=48, heads=8, heads_k=2, d=64, seqlen_q=2,
                      seqlen_new=2, dtype=torch.bfloat16, lengths=[9, 30, 46],
                      leftpad=[2, 0, 40], page_size=page_size, rotary_dim=48, interleaved=False,
                      per_batch_slopes=True)
    check_kvcache(**inp, causal=True, window_size=(12, 0), softcap=6.0)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_decode_equals_rotated_full_attention(interleaved):
    """Decoding token by token with rotary inside the op equals causal flash_attn_func on q and
    k rotated at their positions up front (what a rotary model does without a cache)."""
    batch, seqlen, heads, d, rd = 2, 13, 4, 32, 16
    q, k, v = (torch.randn(batch, seqlen, heads, d, dtype=torch.float64) for _ in range(3))
    cos, sin = rotary_tables(16, rd, torch.float64)
    pos = torch.arange(seqlen)
    full = mpt_ext.flash_attn_func(rotary_ref(q, cos, sin, pos, interleaved),
                                   rotary_ref(k, cos, sin, pos, interleaved), v, causal=True,
                                   alibi_slopes=alibi_slopes(heads))
    k_cache = torch.zeros(batch, 16, heads, d, dtype=torch.float64)
    v_cache = torch.zeros_like(k_cache)
    steps = [flash_attn_with_kvcache(q[:, t:t + 1], k_cache, v_cache, k[:, t:t + 1],
                                     v[:, t:t + 1], cos, sin, t, causal=True,
                                     rotary_interleaved=interleaved,
                                     alibi_slopes=alibi_slopes(heads))
             for t in range(seqlen)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


# ---- on the GPU (the CUDA decode kernels; skipped without one) ---------------------------------
CUDA_CASES = {
    "paged_16": dict(lengths=[0, 700, 1020], page_size=16),
    "paged_256_leftpad": dict(lengths=[300, 700, 1020], leftpad=[299, 5, 0], page_size=256),
    "batch_idx": dict(lengths=[1, 512, 1000], batch_idx=True),
    "rotary_neox_leftpad": dict(lengths=[10, 400, 1000], leftpad=[3, 0, 999], rotary_dim=64,
                                interleaved=False),
    "rotary_paged_inter": dict(lengths=[10, 400, 1000], page_size=64, rotary_dim=128),
}


@cuda_only("attn_kvcache")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("seqlen_q", [1, 4])
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_cuda_layouts(case, seqlen_q, dtype):
    inp = layout_case(batch=3, seqlen_cache=1024, heads=16, heads_k=4, d=128,
                      seqlen_q=seqlen_q, seqlen_new=seqlen_q, dtype=dtype, device="cuda",
                      **CUDA_CASES[case])
    check_kvcache(**inp, causal=True)


# ---- flash-attn's positional order -------------------------------------------------------------
def test_positional_order_is_flash_attn_28():
    """(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
    cache_leftpad, block_table, softmax_scale, causal, window_size, softcap,
    rotary_interleaved, alibi_slopes, num_splits, return_softmax_lse)"""
    inp = layout_case(batch=2, seqlen_cache=32, heads=4, heads_k=2, d=32, seqlen_q=2,
                      seqlen_new=2, lengths=[4, 20], leftpad=[1, 0], page_size=8,
                      rotary_dim=16, interleaved=False)
    copy = {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in inp.items()}
    by_name = flash_attn_with_kvcache(
        **inp, softmax_scale=0.3, causal=True, window_size=(6, 0), softcap=5.0, num_splits=1,
        return_softmax_lse=True)
    c = copy
    by_position = flash_attn_with_kvcache(
        c["q"], c["k_cache"], c["v_cache"], c["k"], c["v"], c["rotary_cos"], c["rotary_sin"],
        c["cache_seqlens"], None, c["cache_leftpad"], c["block_table"], 0.3, True, (6, 0), 5.0,
        False, c["alibi_slopes"], 1, True)
    for a, b in zip(by_name, by_position):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cache_seqlens_in_its_flash_attn_place_does_not_turn_causal_on():
    # the 8th positional argument is cache_seqlens (it once landed in `causal`)
    inp = layout_case(batch=1, seqlen_cache=16, heads=2, heads_k=2, d=16, seqlen_q=4,
                      seqlen_new=0, lengths=[9], alibi=False)
    positional = flash_attn_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"], None, None,
                                         None, None, inp["cache_seqlens"])
    not_causal = flash_attn_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"],
                                         cache_seqlens=inp["cache_seqlens"], causal=False)
    causal = flash_attn_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"],
                                     cache_seqlens=inp["cache_seqlens"], causal=True)
    assert torch.equal(positional, not_causal) and not torch.equal(positional, causal)


# ---- bad input -----------------------------------------------------------------------------------
def _bad(case):
    inp = layout_case(batch=2, seqlen_cache=16, heads=2, heads_k=2, d=32, seqlen_q=1,
                      seqlen_new=1, lengths=[3, 9], alibi=False)
    i32 = dict(dtype=torch.int32)
    kw = {}
    table = torch.tensor([[0, 1], [2, 3]], **i32)
    pages = torch.randn(4, 8, 2, 32)
    cos, sin = rotary_tables(16, 16, torch.float32)
    if case == "batch_idx_dtype":
        kw["cache_batch_idx"] = torch.tensor([0, 1])
    elif case == "batch_idx_shape":
        kw["cache_batch_idx"] = torch.tensor([0], **i32)
    elif case == "batch_idx_range":
        kw["cache_batch_idx"] = torch.tensor([0, 3], **i32)
    elif case == "leftpad_range":
        kw["cache_leftpad"] = torch.tensor([0, 10], **i32)
    elif case == "leftpad_negative":
        kw["cache_leftpad"] = torch.tensor([-1, 0], **i32)
    elif case == "table_dtype":
        inp["k_cache"], inp["v_cache"] = pages, pages.clone()
        kw["block_table"] = table.long()
    elif case == "table_shape":
        inp["k_cache"], inp["v_cache"] = pages, pages.clone()
        kw["block_table"] = table[:1]
    elif case == "table_entry":
        inp["k_cache"], inp["v_cache"] = pages, pages.clone()
        kw["block_table"] = torch.tensor([[0, 1], [2, 4]], **i32)
    elif case == "table_and_batch_idx":
        inp["k_cache"], inp["v_cache"] = pages, pages.clone()
        kw["block_table"] = table
        kw["cache_batch_idx"] = torch.tensor([0, 1], **i32)
    elif case == "seqlens_past_pages":
        inp["k_cache"], inp["v_cache"] = pages, pages.clone()
        kw["block_table"] = table
        inp["cache_seqlens"] = torch.tensor([3, 16], **i32)
    elif case == "rotary_cos_alone":
        kw["rotary_cos"] = cos
    elif case == "rotary_dtype":
        kw["rotary_cos"], kw["rotary_sin"] = cos.double(), sin.double()
    elif case == "rotary_dim":
        kw["rotary_cos"], kw["rotary_sin"] = rotary_tables(16, 24, torch.float32)
    elif case == "rotary_too_wide":
        kw["rotary_cos"], kw["rotary_sin"] = rotary_tables(16, 48, torch.float32)
    elif case == "rotary_rows":
        kw["rotary_cos"], kw["rotary_sin"] = cos[:15], sin[:15]
    elif case == "rotary_shapes":
        kw["rotary_cos"], kw["rotary_sin"] = cos, sin[:, :4]
    elif case == "rotary_without_new_keys":
        inp["k"] = inp["v"] = None
        kw["rotary_cos"], kw["rotary_sin"] = cos, sin
    elif case == "rotary_not_tensor":
        kw["rotary_cos"], kw["rotary_sin"] = 1.0, 0.0
    return inp, kw


BAD = [("batch_idx_dtype", "cache_batch_idx must be int32"),
       ("batch_idx_shape", r"cache_batch_idx must have shape \(batch,\)"),
       ("batch_idx_range", r"cache_batch_idx\[1\] = 3 is not a row of k_cache"),
       ("leftpad_range", r"cache_leftpad\[1\] = 10 must be in \[0, cache_seqlens\[1\] = 9\]"),
       ("leftpad_negative", r"cache_leftpad\[0\] = -1"),
       ("table_dtype", "block_table must be int32"),
       ("table_shape", r"block_table must have shape \(batch, max_num_blocks_per_seq\)"),
       ("table_entry", r"block_table\[1, 1\] = 4 is not a block of k_cache"),
       ("table_and_batch_idx", "cache_batch_idx cannot be combined with block_table"),
       ("seqlens_past_pages", r"cache_seqlens\[1\] = 16 plus 1 new keys does not fit"),
       ("rotary_cos_alone", "rotary_cos and rotary_sin must be given together"),
       ("rotary_dtype", "rotary_cos must have the dtype of q"),
       ("rotary_dim", "rotary_dim a multiple of 16"),
       ("rotary_too_wide", "rotary_dim a multiple of 16"),
       ("rotary_rows", "rotary_cos and rotary_sin must have at least 16 rows"),
       ("rotary_shapes", "rotary_cos and rotary_sin must have the same shape"),
       ("rotary_without_new_keys", "they need k and v"),
       ("rotary_not_tensor", "rotary_cos must be")]


@pytest.mark.parametrize("case,match", BAD, ids=[c for c, _ in BAD])
def test_bad_layout_and_rotary_arguments(case, match):
    inp, kw = _bad(case)
    k0, v0 = inp["k_cache"].clone(), inp["v_cache"].clone()
    with pytest.raises((ValueError, TypeError), match=match):
        flash_attn_with_kvcache(**inp, **kw)
    assert bits_equal(inp["k_cache"], k0) and bits_equal(inp["v_cache"], v0), \
        "a rejected call must not write the cache"
