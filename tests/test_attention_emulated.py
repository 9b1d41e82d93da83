"""The CUDA attention kernels (csrc/attn/cuda: attn_fwd_kernel, attn_bwd_preprocess, dK/dV, dQ,
d(slopes) reduce) run on the CPU by the emulated GPU (tests/cuda_emulation), through the public
API, against the float64 reference under docs/DESIGN.md's rule (attention_helpers.py).

Every block and thread of each grid runs; the emulator itself fails a launch on a shared-memory
race, an async copy read before its wait, a bad address or a divergent warp instruction. Inputs
sit inside NaN-filled buffers (a read past a tensor shows up as NaN) and allocations start
poisoned (emulation.py). The default run holds a fast slice; the full grid is marked slow."""
import itertools
import re

import pytest
import torch

import emulation
import mpt_ext

from attention_helpers import (check_bwd, check_dslopes_fp32_accurate, check_fwd,
                               check_varlen_bwd, check_varlen_fwd, make_slopes, packed_inputs)

GUARD = 64  # NaN elements before and after every input


def guarded(t: torch.Tensor, misalign: int = 0) -> torch.Tensor:
    """t's values in the middle of a NaN-filled buffer (misalign: extra elements of offset,
    so that rows are not 16-byte aligned and the kernels take their element-wise path)."""
    n, pad = t.numel(), GUARD + misalign
    buf = torch.full((n + pad + GUARD,), float("nan"), dtype=t.dtype)
    buf[pad:pad + n] = t.flatten()
    return buf.requires_grad_()[pad:pad + n].view(t.shape)


def qkv(batch, seqlen_q, seqlen_k, heads, heads_k, d, dtype, misalign=0):
    return (guarded(torch.randn(batch, seqlen_q, heads, d, dtype=dtype), misalign),
            guarded(torch.randn(batch, seqlen_k, heads_k, d, dtype=dtype), misalign),
            guarded(torch.randn(batch, seqlen_k, heads_k, d, dtype=dtype), misalign))


def run_case(d, seqlen_q, seqlen_k, dtype=torch.bfloat16, heads=4, heads_k=2, batch=2,
             causal=False, window=(-1, -1), softcap=0.0, slopes=None, misalign=0,
             backward=True, dslopes=True, softmax_scale=None):
    q, k, v = qkv(batch, seqlen_q, seqlen_k, heads, heads_k, d, dtype, misalign)
    s = make_slopes(slopes, batch, heads, requires_grad=backward and dslopes)
    kw = dict(causal=causal, window_size=window, softcap=softcap, softmax_scale=softmax_scale)
    check_fwd(q, k, v, alibi_slopes=s, **kw)
    if backward:
        check_bwd(q, k, v, alibi_slopes=s, **kw)


# ---- fast slice: every head-dim bucket, mask kind, slope shape, GQA and the unaligned path ---
FAST = {
    "d64_causal_alibi_gqa": dict(d=64, seqlen_q=130, seqlen_k=130, causal=True, slopes="mpt"),
    "d128_fp16_sq<sk_softcap_batch_slopes": dict(d=128, seqlen_q=17, seqlen_k=130,
                                                 dtype=torch.float16, softcap=30.0,
                                                 slopes="batch"),
    "d96_sq>sk_window": dict(d=96, seqlen_q=64, seqlen_k=17, window=(7, 2), slopes="head"),
    "d64_fp16_one_query": dict(d=64, seqlen_q=1, seqlen_k=64, dtype=torch.float16,
                               causal=True, heads=3, heads_k=1),
    "d200_bucket256": dict(d=200, seqlen_q=17, seqlen_k=33, slopes="head", batch=1),
    "d64_windows_past_int32": dict(d=64, seqlen_q=40, seqlen_k=50, window=(2**40, 3),
                                   slopes="head", batch=1),
    "d40_unaligned_causal_left": dict(d=40, seqlen_q=130, seqlen_k=64, causal=True,
                                      window=(9, -1), misalign=3, slopes="batch"),
}


@pytest.mark.parametrize("case", list(FAST))
def test_attention_emulated(emulated, case):
    run_case(**FAST[case])


def test_dslopes_emulated_fp32_accurate(emulated):
    q, k, v = qkv(2, 130, 97, 4, 2, 64, torch.bfloat16)
    slopes = make_slopes("head", 2, 4, requires_grad=True)
    check_dslopes_fp32_accurate(q, k, v, slopes, window_size=(-1, 20))


def varlen_qkv(lengths_q, lengths_k, heads, heads_k, d):
    """Packed bf16 q, k, v (packed_inputs), each inside NaN guards, and their cu_seqlens."""
    q, k, v, cu_q, cu_k = packed_inputs(lengths_q, lengths_k, heads, heads_k, d, torch.bfloat16)
    return guarded(q), guarded(k), guarded(v), cu_q, cu_k


def test_varlen_emulated_with_empty_sequence(emulated):
    lengths_q, lengths_k = [17, 0, 64, 1], [30, 5, 64, 0]
    q, k, v, cu_q, cu_k = varlen_qkv(lengths_q, lengths_k, 4, 2, 64)
    slopes = make_slopes("batch", len(lengths_q), 4, requires_grad=True)
    check_varlen_fwd(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=slopes)
    check_varlen_bwd(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=slopes)


# ---- score kinds (ScoreKind, csrc/attn/cuda/seq_score.cuh): one kernel per feature set ------
def fwd_score_kind(slopes=None, **kw) -> str:
    """The ScoreKind of the forward kernel one small call runs (from the launch log)."""
    q, k, v = qkv(1, 40, 40, 2, 1, 64, torch.bfloat16)
    emulation.take_launched_kernels()
    mpt_ext.flash_attn_func(q, k, v, alibi_slopes=make_slopes(slopes, 1, 2), **kw)
    names = [n for n in emulation.take_launched_kernels() if "attn_fwd_kernel" in n]
    assert len(names) == 1, names
    return {0: "plain", 1: "alibi", 2: "general"}[int(re.search(r"ScoreKind\)(\d)[,>]", names[0])[1])]


def test_score_kind_follows_the_features(emulated):
    assert fwd_score_kind() == "plain"
    assert fwd_score_kind(causal=True, window_size=(3, 0)) == "plain"
    assert fwd_score_kind(slopes="head") == "alibi"
    assert fwd_score_kind(slopes="batch", causal=True) == "alibi"
    assert fwd_score_kind(softcap=5.0) == "general"
    assert fwd_score_kind(slopes="head", softcap=5.0) == "general"
    # scales the folded kinds cannot divide the slopes by
    assert fwd_score_kind(softmax_scale=0.0) == "general"
    assert fwd_score_kind(slopes="head", softmax_scale=-0.5) == "general"
    assert fwd_score_kind(slopes="head", softmax_scale=2.0**-33) == "general"
    assert fwd_score_kind(slopes="head", softmax_scale=2.0**-32) == "alibi"


KIND_CASES = {
    # 128-row blocks at d 64: key tiles wholly after (block 0) and before (block 1) the rows'
    # diagonals take ALiBi's one-FMA form with opposite signs; the diagonal tiles the full form
    "alibi_both_sides_of_the_diagonal": dict(d=64, seqlen_q=260, seqlen_k=260, slopes="mpt",
                                             heads=2, heads_k=1, batch=1),
    "alibi_keys_far_after_sq>>sk": dict(d=128, seqlen_q=300, seqlen_k=70, slopes="head",
                                        heads=2, heads_k=1, batch=1),
    # sk - sq = +-62: a key tile ends one key short of (or starts one past) a row's diagonal,
    # the edge of ScoreUnits::tile_slope's one-sided test (128-row forward blocks at d 64,
    # 64-row ones at d 128)
    "alibi_tile_edge_before_d64": dict(d=64, seqlen_q=128, seqlen_k=190, slopes="head",
                                       heads=2, heads_k=1, batch=1),
    "alibi_tile_edge_after_d64": dict(d=64, seqlen_q=190, seqlen_k=128, slopes="head",
                                      heads=2, heads_k=1, batch=1),
    "alibi_tile_edge_before_d128": dict(d=128, seqlen_q=66, seqlen_k=128, slopes="head",
                                        heads=2, heads_k=1, batch=1),
    "alibi_tile_edge_after_d128": dict(d=128, seqlen_q=128, seqlen_k=66, slopes="head",
                                       heads=2, heads_k=1, batch=1),
    # MPT's slopes with every key far behind the rows (non-causal, sq >> sk): the backward's
    # envelope (csrc/attn/cuda/README.md) at the largest distances a test affords
    "mpt_slopes_keys_far_away": dict(d=64, seqlen_q=700, seqlen_k=40, slopes="mpt",
                                     dtype=torch.float16, heads=2, heads_k=1, batch=1),
    "plain_full_many_tiles": dict(d=128, seqlen_q=150, seqlen_k=200, heads=2, heads_k=2,
                                  dtype=torch.float16),
    "plain_causal_window": dict(d=64, seqlen_q=200, seqlen_k=230, causal=True, window=(70, -1),
                                batch=1),
    "negative_scale_alibi": dict(d=64, seqlen_q=40, seqlen_k=70, softmax_scale=-0.3,
                                 slopes="head", batch=1),
    "zero_scale_causal_alibi": dict(d=64, seqlen_q=70, seqlen_k=70, softmax_scale=0.0,
                                    causal=True, slopes="batch"),
    "tiny_scale_alibi": dict(d=64, seqlen_q=33, seqlen_k=70, softmax_scale=2.0**-32,
                             slopes="head", batch=1),
}


@pytest.mark.parametrize("case", list(KIND_CASES))
def test_score_kind_emulated(emulated, case):
    run_case(**KIND_CASES[case])


def test_huge_slopes_keep_only_the_diagonal_emulated(emulated):
    # slopes no split takes (kMaxSplitSlopeLog2), one whose slope / scale overflows (kept at
    # FLT_MAX): every key off the diagonal gets probability 0, as in the float64 reference,
    # and the exp2 of rows with huge scores stays finite (ScoreUnits::fma_exp_ok)
    q, k, v = qkv(1, 200, 200, 2, 1, 64, torch.bfloat16)
    slopes = torch.tensor([1e30, 3e5])
    check_fwd(q, k, v, alibi_slopes=slopes, softmax_scale=2.0**-31)
    check_fwd(q, k, v, alibi_slopes=slopes, causal=True)


# ---- tile variants (MPT_EXT_ATTN_FWD_TILE / _BWD_TILE, csrc/attn/cuda/tile_choice.h) -------
TILE_VARIABLE = "MPT_EXT_ATTN_FWD_TILE"
BWD_TILE_VARIABLE = "MPT_EXT_ATTN_BWD_TILE"


def _attention_call(backward: bool, head_dim: int):
    q = torch.randn(1, 3, 2, head_dim, dtype=torch.bfloat16, requires_grad=backward)
    out = mpt_ext.flash_attn_func(q, q, q)
    if backward:
        out.sum().backward()


def tiles(variable: str, head_dim: int) -> list[str]:
    """The bucket's tiles for `variable`, default first, as the launcher itself lists them in
    the error for a tile it lacks."""
    backward = variable == BWD_TILE_VARIABLE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(variable, "1x1")
        with pytest.raises(ValueError, match=f"{variable}=1x1: head-dim bucket") as info:
            _attention_call(backward, head_dim)
    what = "backward" if backward else "forward"
    return str(info.value).split(f"{what} tiles ")[1].split(", ")


def fwd_tiles(head_dim: int) -> list[str]:
    return tiles(TILE_VARIABLE, head_dim)


@pytest.mark.parametrize("variable,form", [(TILE_VARIABLE, "ROWSxKEYS"),
                                           (BWD_TILE_VARIABLE, "KEYSxROWS")])
def test_tile_choices(emulated, monkeypatch, variable, form):
    if variable == TILE_VARIABLE:
        assert tiles(variable, 128) == ["64x64", "128x32", "128x64"]
        assert tiles(variable, 64) == ["128x64"] and tiles(variable, 256) == ["64x32"]
    else:
        assert tiles(variable, 128) == ["64x32", "128x32"]
        assert tiles(variable, 64) == ["64x64", "128x64"] and tiles(variable, 256) == ["64x16"]
    backward = variable == BWD_TILE_VARIABLE
    for bad in ("128", "x32", "128x32x1", "-64x64", "big"):
        monkeypatch.setenv(variable, bad)
        with pytest.raises(ValueError, match=f"{variable}: expected {form}"):
            _attention_call(backward, 64)
    monkeypatch.setenv(variable, "")  # empty: the default
    _attention_call(backward, 64)
    monkeypatch.delenv(variable)
    # a CUDA build lists the same tiles (attn_tiles.cu) for the benchmark's contenders
    listing = (mpt_ext._library.ATTN_BWD_TILES if backward else mpt_ext._library.ATTN_FWD_TILES)
    for bucket, names in listing.items():
        assert list(names) == tiles(variable, bucket)


def test_fwd_default_tile_by_name_is_the_default(emulated, monkeypatch):
    q, k, v = qkv(1, 70, 90, 2, 1, 128, torch.bfloat16)
    slopes = make_slopes("head", 1, 2)
    default = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes)
    monkeypatch.setenv(TILE_VARIABLE, fwd_tiles(128)[0])
    named = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes)
    assert torch.equal(default, named)


TILE_CASES = {
    "causal_alibi_gqa": dict(seqlen_q=200, seqlen_k=200, causal=True, slopes="mpt", heads=4,
                             heads_k=2),
    "window_softcap_sq<sk": dict(seqlen_q=77, seqlen_k=300, window=(40, 7), softcap=20.0,
                                 slopes="batch", dtype=torch.float16),
    "sq>sk_unaligned": dict(seqlen_q=150, seqlen_k=33, misalign=3, slopes="head", batch=1),
}


@pytest.mark.parametrize("case", list(TILE_CASES))
@pytest.mark.parametrize("tile", ["128x32", "128x64"])
def test_fwd_tile_variant_emulated(emulated, monkeypatch, tile, case):
    monkeypatch.setenv(TILE_VARIABLE, tile)
    run_case(d=128, backward=False, **TILE_CASES[case])


# ---- backward dQ variants (MPT_EXT_ATTN_BWD_DQ, csrc/attn/cuda/bwd_dq_mode.h) ---------------
DQ_VARIABLE = "MPT_EXT_ATTN_BWD_DQ"


def bwd_launches(deterministic=False, dslopes=False) -> list[tuple[str, tuple]]:
    """The attention backward kernels one small call runs (names with their template
    arguments, and grids, from the emulator's launch log). 1100 keys: 18 key blocks of 64, more
    than the 16 dQ splits one (batch, kv head) may take (bwd_dq_mode.h)."""
    q, k, v = qkv(1, 16, 1100, 2, 1, 64, torch.bfloat16)
    slopes = make_slopes("head", 1, 2, requires_grad=dslopes)
    out = mpt_ext.flash_attn_func(q, k, v, alibi_slopes=slopes, deterministic=deterministic)
    emulation.take_launches()
    out.sum().backward()
    return [(n.split("(")[0], grid) for n, grid in emulation.take_launches() if "attn_bwd" in n]


def bwd_kernels(deterministic=False, dslopes=False) -> list[str]:
    return [name for name, _ in bwd_launches(deterministic, dslopes)]


def dq_variant(launches) -> str:
    """atomic, split or separate: what the launches of bwd_launches() show (split: the 18 key
    blocks in launches of 16 and 2)."""
    dkdv = [(n, grid) for n, grid in launches if "attn_bwd_dkdv_kernel" in n]
    dq_kernel = any("attn_bwd_dq_kernel" in n for n, _ in launches)
    grids = [grid[0] for _, grid in dkdv]
    if all("false>" in n for n, _ in dkdv) and dq_kernel and grids == [18]:
        return "separate"
    assert all("true>" in n for n, _ in dkdv) and not dq_kernel, launches
    return {(18,): "atomic", (16, 2): "split"}[tuple(grids)]


def test_bwd_dq_variant_choice(emulated, monkeypatch):
    monkeypatch.delenv(DQ_VARIABLE, raising=False)
    assert dq_variant(bwd_launches()) == "atomic"  # the default
    # deterministic=True: one (batch, kv head) fills 16 of an H100's 264 dK/dV slots, too few
    # for split to beat separate's seventh matmul; on an 8-SM device it fills them all
    assert dq_variant(bwd_launches(deterministic=True)) == "separate"
    with emulation.sm_count(8):
        assert dq_variant(bwd_launches(deterministic=True)) == "split"
        assert dq_variant(bwd_launches()) == "atomic"
    for dq in ("separate", "split", "atomic"):
        monkeypatch.setenv(DQ_VARIABLE, dq)
        assert dq_variant(bwd_launches()) == dq  # the variable forces one (A/B runs)
        # deterministic=True never runs atomic; d(slopes) always take the separate kernel
        assert dq_variant(bwd_launches(deterministic=True)) == (
            "split" if dq == "split" else "separate")
        assert dq_variant(bwd_launches(dslopes=True)) == "separate"
    monkeypatch.setenv(DQ_VARIABLE, "fast")
    with pytest.raises(ValueError,
                       match=f"{DQ_VARIABLE}: expected 'atomic', 'split' or 'separate'"):
        bwd_kernels()


def test_bwd_split_plan_counts_varlen_keys_not_sequences(emulated, monkeypatch):
    # one 1100-key sequence and seven of 5 keys: later launches hold the long one alone, so the
    # plan counts 1135 / 1100 -> 2 sequences' worth, not 8: 8 splits fill an 8-SM device's 16
    # slots (with 8 sequences it would take 2)
    monkeypatch.delenv(DQ_VARIABLE, raising=False)
    q, k, v, cu_q, cu_k = varlen_qkv([3] * 8, [1100] + [5] * 7, 2, 1, 64)
    out = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 3, 1100, deterministic=True)
    emulation.take_launches()
    with emulation.sm_count(8):
        out.sum().backward()
    grids = [grid for n, grid in emulation.take_launches() if "attn_bwd_dkdv_kernel" in n]
    assert [g[0] for g in grids] == [8, 8, 2] and all(g[2] == 8 for g in grids)


DQ_VARIANTS = ["atomic", "split", "separate"]


@pytest.mark.parametrize("case", list(FAST))
@pytest.mark.parametrize("dq", DQ_VARIANTS)
def test_bwd_dq_variant_emulated(emulated, monkeypatch, dq, case):
    # the fast slice with frozen slopes (trainable ones always take the separate kernel)
    monkeypatch.setenv(DQ_VARIABLE, dq)
    run_case(dslopes=False, **FAST[case])


@pytest.mark.parametrize("dq", DQ_VARIANTS)
def test_bwd_dq_variant_varlen_emulated(emulated, monkeypatch, dq):
    monkeypatch.setenv(DQ_VARIABLE, dq)
    # split: 16 splits per (sequence, kv head) over 18 key blocks of the first sequence, 4 of
    # the third; splits past a sequence's key blocks add nothing
    lengths_q = [17, 0, 130, 1]
    q, k, v, cu_q, cu_k = varlen_qkv(lengths_q, [1100, 5, 200, 0], 4, 2, 128)
    slopes = make_slopes("batch", len(lengths_q), 4)
    check_varlen_bwd(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=slopes)


def test_bwd_split_dq_over_several_launches_emulated(emulated, monkeypatch):
    # 18 key blocks of 64, 16 splits: dQ slices 0 and 1 get a second launch's sums
    monkeypatch.setenv(DQ_VARIABLE, "split")
    q, k, v = qkv(1, 40, 1100, 2, 1, 64, torch.bfloat16)
    slopes = make_slopes("mpt", 1, 2)
    check_bwd(q, k, v, alibi_slopes=slopes)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=True, window_size=(-1, 300))


def dq_bits(seed: int, deterministic: bool) -> torch.Tensor:
    """dQ of one fixed call with the grid's blocks run in the order drawn from seed
    (emulation.block_order; 0: CUDA's numbering). Every dQ row sums 18 key blocks. The order
    moves the fp32 sums' last bits; for that to reach fp16 dQ the blocks' parts must be large
    and cancel: keys share an offset of 64 (sum_j dS_ij = 0), a small scale spreads P."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, n, 2, 64, generator=gen) for n in (64, 1100, 1100))
    q, k, v = (t.to(torch.float16).requires_grad_() for t in (q, k + 64, v))
    with emulation.block_order(seed):
        out = mpt_ext.flash_attn_func(q, k, v, softmax_scale=0.01, deterministic=deterministic)
        out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype))
    return q.grad.view(torch.int16)


def test_bwd_deterministic_whatever_order_blocks_run(emulated, monkeypatch):
    monkeypatch.delenv(DQ_VARIABLE, raising=False)
    atomic = [dq_bits(seed, deterministic=False) for seed in (0, 1, 2)]
    # the check has teeth: atomic adds from 18 blocks land in another order, other last bits
    assert not all(torch.equal(atomic[0], a) for a in atomic[1:])
    with emulation.sm_count(8):  # deterministic=True takes split here: launches of 8, 8, 2
        emulation.take_launches()
        split = [dq_bits(seed, deterministic=True) for seed in (0, 1, 2)]
        assert [g[0] for n, g in emulation.take_launches() if "dkdv" in n] == [8, 8, 2] * 3
    assert all(torch.equal(split[0], s) for s in split[1:])
    separate = [dq_bits(seed, deterministic=True) for seed in (0, 1)]  # 132 SMs: separate
    assert torch.equal(separate[0], separate[1])


# ---- backward dK/dV tiles (MPT_EXT_ATTN_BWD_TILE) with each dQ variant ----------------------
def test_bwd_tile_picks_the_kernel(emulated, monkeypatch):
    def dkdv_configs():  # BwdKVConfig<kD, rows per step, warps, atomic dQ> of each launch
        return [re.search(r"BwdKVConfig<([^>]*)>", n).group(1) for n in bwd_kernels()
                if "attn_bwd_dkdv_kernel" in n]
    monkeypatch.delenv(DQ_VARIABLE, raising=False)
    monkeypatch.delenv(BWD_TILE_VARIABLE, raising=False)
    assert dkdv_configs() == ["64, 64, 4, true"]
    monkeypatch.setenv(BWD_TILE_VARIABLE, "128x64")
    assert dkdv_configs() == ["64, 64, 8, true"]
    monkeypatch.setenv(DQ_VARIABLE, "separate")
    assert dkdv_configs() == ["64, 64, 8, false"]
    monkeypatch.setenv(BWD_TILE_VARIABLE, "64x64")  # the default by name
    assert dkdv_configs() == ["64, 64, 4, false"]


@pytest.mark.parametrize("case", list(TILE_CASES))
@pytest.mark.parametrize("dq", DQ_VARIANTS)
@pytest.mark.parametrize("d,tile", [(128, "128x32"), (64, "128x64")])
def test_bwd_tile_variant_emulated(emulated, monkeypatch, d, tile, dq, case):
    monkeypatch.setenv(BWD_TILE_VARIABLE, tile)
    monkeypatch.setenv(DQ_VARIABLE, dq)
    # trainable slopes take the separate dQ kernel anyway: its d(slopes) rows are checked too
    run_case(d=d, dslopes=dq == "separate", **TILE_CASES[case])


# ---- the full grid (slow) ---------------------------------------------------------------------
SEQLENS = [(1, 1), (17, 17), (64, 130), (130, 64), (130, 130)]
MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (5, -1)), (False, (-1, 3)),
         (False, (7, 2)), (True, (9, -1))]
GRID = list(itertools.product([64, 128, 96], SEQLENS, MASKS))


def _grid_id(case):
    d, (sq, sk), (causal, window) = case
    return f"d{d}-{sq}x{sk}-{'causal' if causal else 'full'}{window[0]},{window[1]}"


@pytest.mark.slow
@pytest.mark.parametrize("case", GRID, ids=[_grid_id(c) for c in GRID])
def test_attention_emulated_grid(emulated, case):
    d, (sq, sk), (causal, window) = case
    i = GRID.index(case)  # the other axes rotate with the case number, so each value recurs
    run_case(d, sq, sk, dtype=(torch.bfloat16, torch.float16)[i % 2],
             heads=(4, 4, 3)[i % 3], heads_k=(2, 4, 1)[i % 3], batch=1 + i % 2,
             causal=causal, window=window, softcap=(0.0, 0.0, 25.0)[i % 3 - 1],
             slopes=(None, "head", "batch", "mpt")[i % 4])
