"""The CUDA ops never read cu_seqlens or cache_seqlens on the host (no stream sync per call, and
CUDA graph capture works): the kernels check each sequence, run a bad one as empty, note it
in mapped host memory, and the next attention call on the device raises a ValueError naming
the argument and the sequence (csrc/common/device_input_errors.h). Run here on the emulated
GPU (tests/cuda_emulation), whose launches finish before the call returns.

Each case has one bad sequence among good ones: the good ones must still be right (float64
reference, docs/DESIGN.md's rule), nothing may be read out of bounds (inputs sit in NaN
guards), and the note must name the argument. Varlen rows past cu_seqlens[-1], which no
sequence covers, are filled on the device (out 0, lse -inf, gradients 0)."""
import pytest
import torch

import mpt_ext
from mpt_ext.reference import attention_ref

from attention_helpers import assert_close_to_ref, make_slopes, one_thread
from test_attention_emulated import varlen_qkv
from test_attention_kvcache import _case, bits_equal

HEADS, HEADS_K, D = 4, 2, 64
TOTAL_Q, TOTAL_K = 10, 12
GOOD_CU_Q, GOOD_CU_K = [0, 4, 7, 10], [0, 5, 9, 12]
MAX_Q, MAX_K = 4, 5

# name: (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, the good sequences, what the error names).
# In every case the bad sequence's rows overlap no good sequence's rows.
BAD_VARLEN = {
    "q_past_total": ([0, 4, 7, 11], GOOD_CU_K, MAX_Q, [0, 1], "cu_seqlens_q: sequence 2"),
    "q_longer_than_max": (GOOD_CU_Q, GOOD_CU_K, 3, [1, 2], "cu_seqlens_q: sequence 0"),
    "q_not_from_zero": ([1, 4, 7, 10], GOOD_CU_K, MAX_Q, [1, 2], "cu_seqlens_q: sequence 0"),
    "q_int32_max": ([0, 4, 2**31 - 1, 10], GOOD_CU_K, MAX_Q, [0],
                    "cu_seqlens_q: sequence [12]"),
    "k_decreasing": (GOOD_CU_Q, [0, 5, 4, 12], MAX_Q, [0], "cu_seqlens_k: sequence [12]"),
    "k_negative": (GOOD_CU_Q, [0, 5, 9, -1], MAX_Q, [0, 1], "cu_seqlens_k: sequence 2"),
    # max_seqlen_q 0: the grid still has a block row, so every sequence is seen and noted
    "max_seqlen_zero": (GOOD_CU_Q, GOOD_CU_K, 0, [], "cu_seqlens_q: sequence [012]"),
}


def _inputs():
    return varlen_qkv([TOTAL_Q], [TOTAL_K], HEADS, HEADS_K, D)[:3]


def _rows(t, cu, b):
    return t[cu[b]:cu[b + 1]]


def _as_cu(values):
    return torch.tensor(values, dtype=torch.int32)


def _assert_reported(ops, match):
    with pytest.raises(ValueError, match=match):
        ops.raise_device_input_errors(0)
    ops.raise_device_input_errors(0)  # reported once: the note is cleared


@pytest.mark.parametrize("case", list(BAD_VARLEN))
def test_bad_cu_seqlens_run_as_empty_and_are_reported(emulated, case):
    ops = emulated
    cu_q, cu_k, max_q, good, match = BAD_VARLEN[case]
    q, k, v = _inputs()
    slopes = make_slopes("batch", len(cu_q) - 1, HEADS)  # per sequence: d(slopes) per sequence
    out, lse = ops.attn_fwd(q, k, v, _as_cu(cu_q), _as_cu(cu_k), max_q, MAX_K, slopes,
                            D ** -0.5, True, -1, -1, 0.0)
    _assert_reported(ops, match)

    dout = torch.randn_like(q)
    dq, dk, dv, dslopes = ops.attn_bwd(dout, q, k, v, out, lse, _as_cu(cu_q), _as_cu(cu_k),
                                       max_q, MAX_K, slopes, D ** -0.5, True, -1, -1, 0.0, False,
                                       True)
    _assert_reported(ops, match)

    for b in good:
        qs, ks, vs = (_rows(t, cu, b).detach()[None].requires_grad_()
                      for t, cu in ((q, cu_q), (k, cu_k), (v, cu_k)))
        sl = slopes[b].detach().clone().requires_grad_()
        dos = _rows(dout, cu_q, b)[None]
        kw = dict(causal=True, alibi_slopes=sl)
        with one_thread():
            ref, ref_lse = attention_ref(qs, ks, vs, **kw)
            low, low_lse = attention_ref(qs, ks, vs, compute_dtype=q.dtype, **kw)
            grads64 = torch.autograd.grad(ref, (qs, ks, vs, sl), dos.double())
            grads_low = torch.autograd.grad(low, (qs, ks, vs, sl), dos)
        assert_close_to_ref(f"out of sequence {b}", _rows(out, cu_q, b)[None], ref, low)
        assert_close_to_ref(f"lse of sequence {b}", lse[None, :, cu_q[b]:cu_q[b + 1]], ref_lse,
                            low_lse, dtype=q.dtype)
        ours = (_rows(dq, cu_q, b)[None], _rows(dk, cu_k, b)[None], _rows(dv, cu_k, b)[None],
                dslopes[b])
        for name, g, r, lo in zip(("dq", "dk", "dv", "dslopes"), ours, grads64, grads_low):
            assert_close_to_ref(f"{name} of sequence {b}", g, r, lo, dtype=q.dtype)


def test_the_next_call_raises(emulated):
    # The public path: the call after the bad one raises, naming the argument; then it is clean.
    cu_q, cu_k, max_q, _, match = BAD_VARLEN["q_past_total"]
    q, k, v = _inputs()
    mpt_ext.flash_attn_varlen_func(q, k, v, _as_cu(cu_q), _as_cu(cu_k), max_q, MAX_K)
    good_q, good_k = _as_cu(GOOD_CU_Q), _as_cu(GOOD_CU_K)
    with pytest.raises(ValueError, match=match + ".*not written"):
        mpt_ext.flash_attn_varlen_func(q, k, v, good_q, good_k, MAX_Q, MAX_K)
    out = mpt_ext.flash_attn_varlen_func(q, k, v, good_q, good_k, MAX_Q, MAX_K)
    assert not torch.isnan(out).any()


def test_uncovered_rows_are_filled_on_the_device(emulated):
    # Rows past cu_seqlens[-1] (the host does not know where that is) get out 0, lse -inf,
    # zero gradients; a loose max_seqlen is only a bound.
    q, k, v = _inputs()
    cu_q, cu_k = _as_cu([0, 3, 7]), _as_cu([0, 5, 9])
    out, lse, _ = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 1000, 1000, causal=True,
                                                 return_attn_probs=True)
    assert torch.equal(out[7:], torch.zeros_like(out[7:]))
    assert torch.isneginf(lse[:, 7:]).all() and torch.isfinite(lse[:, :7]).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert torch.equal(dq[7:], torch.zeros_like(dq[7:]))
    assert torch.equal(dk[9:], torch.zeros_like(dk[9:]))
    assert torch.equal(dv[9:], torch.zeros_like(dv[9:]))
    assert not torch.isnan(dq).any() and not torch.isnan(dk).any()


@pytest.mark.parametrize("start", [0, 3])
def test_no_sequence_fills_every_row(emulated, start):
    # batch 0: every row belongs to no sequence, wherever cu_seqlens[0] points
    q, k, v = _inputs()
    empty = _as_cu([start])
    out, lse, _ = mpt_ext.flash_attn_varlen_func(q, k, v, empty, empty, 0, 0,
                                                 return_attn_probs=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in (dq, dk, dv))


# ---- flash_attn_with_kvcache: cache_seqlens -----------------------------------------------

@pytest.mark.parametrize("bad_length", [-1, 63, 2**31 - 1], ids=["negative", "no_room", "huge"])
def test_bad_cache_seqlens_attend_to_nothing_and_are_reported(emulated, bad_length):
    # seqlen_cache 64, 2 new keys: sequence 1 does not fit. It must append nothing, attend to
    # no key (out 0, lse -inf), and be reported; sequence 0 is untouched by it.
    inp = _case(batch=2, seqlen_cache=64, heads=HEADS, heads_k=HEADS_K, d=D, seqlen_q=2,
                seqlen_new=2, lengths=[5, 0], device="cpu")
    inp["cache_seqlens"] = _as_cu([5, bad_length])
    k_cache_before = inp["k_cache"].clone()
    v_cache_before = inp["v_cache"].clone()
    out, lse = mpt_ext.flash_attn_with_kvcache(**inp, causal=True, return_softmax_lse=True)
    with pytest.raises(ValueError, match="cache_seqlens: sequence 1.*not appended"):
        emulated.raise_device_input_errors(0)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isneginf(lse[1]).all()
    assert torch.equal(inp["k_cache"][1:].isnan(), k_cache_before[1:].isnan())
    assert torch.equal(inp["k_cache"][1:].nan_to_num(), k_cache_before[1:].nan_to_num())
    assert torch.equal(inp["v_cache"][1:].nan_to_num(), v_cache_before[1:].nan_to_num())
    assert torch.equal(inp["k_cache"][0, 5:7], inp["k"][0])  # sequence 0 appended
    assert torch.isfinite(out[0]).all() and torch.isfinite(lse[0]).all()


def test_bad_cache_seqlens_raise_at_the_next_call(emulated):
    inp = _case(batch=2, seqlen_cache=64, heads=HEADS, heads_k=HEADS_K, d=D, seqlen_new=1,
                lengths=[5, 0], device="cpu")
    good = inp["cache_seqlens"]
    inp["cache_seqlens"] = _as_cu([64, 0])  # one new key at position 64 of a 64-key cache
    mpt_ext.flash_attn_with_kvcache(**inp)
    inp["cache_seqlens"] = good
    with pytest.raises(ValueError, match="cache_seqlens: sequence 0"):
        mpt_ext.flash_attn_with_kvcache(**inp)
    mpt_ext.flash_attn_with_kvcache(**inp)


# ---- flash_attn_with_kvcache: cache_batch_idx, cache_leftpad, block_table ----------------------
BAD_LAYOUT = {
    "batch_idx": ("cache_batch_idx", [0, 7], "cache_batch_idx: sequence 1"),
    "leftpad_past_seqlens": ("cache_leftpad", [0, 9], "cache_leftpad: sequence 1"),
    "leftpad_negative": ("cache_leftpad", [-3, 0], "cache_leftpad: sequence 0"),
}


@pytest.mark.parametrize("case", list(BAD_LAYOUT))
def test_bad_layout_values_attend_to_nothing_and_are_reported(emulated, case):
    from test_attention_kvcache_layout import layout_case
    name, values, match = BAD_LAYOUT[case]
    bad = int(match[-1])
    inp = layout_case(batch=2, seqlen_cache=32, heads=HEADS, heads_k=HEADS_K, d=D, seqlen_q=2,
                      seqlen_new=2, dtype=torch.bfloat16, lengths=[5, 8], batch_idx=True)
    if name == "cache_batch_idx":  # sequence 0 keeps its row
        values = [int(inp[name][0]), values[1]]
    inp[name] = _as_cu(values)
    before = inp["k_cache"].clone()
    out, lse = mpt_ext.flash_attn_with_kvcache(**inp, causal=True, return_softmax_lse=True)
    with pytest.raises(ValueError, match=match):
        emulated.raise_device_input_errors(0)
    assert torch.equal(out[bad], torch.zeros_like(out[bad])) and torch.isneginf(lse[bad]).all()
    good = 1 - bad
    assert torch.isfinite(out[good]).all()
    if case != "batch_idx":  # nothing appended to the bad sequence's row
        row = int(inp["cache_batch_idx"][bad])
        assert torch.equal(inp["k_cache"][row].nan_to_num(), before[row].nan_to_num())


def test_block_table_entry_outside_the_pages_is_reported(emulated):
    from test_attention_kvcache_layout import layout_case
    inp = layout_case(batch=2, seqlen_cache=32, heads=HEADS, heads_k=HEADS_K, d=D, seqlen_q=1,
                      seqlen_new=1, dtype=torch.bfloat16, lengths=[5, 20], page_size=8)
    pool = inp["k_cache"].shape[0]
    inp["block_table"][1, 1] = pool + 100  # the page holding positions 8..15 of sequence 1
    before = inp["k_cache"].clone()
    out = mpt_ext.flash_attn_with_kvcache(**inp, causal=True)
    with pytest.raises(ValueError, match="block_table: sequence 1"):
        emulated.raise_device_input_errors(0)
    # the keys on the bad page are left out; only the two appended positions changed
    assert torch.isfinite(out).all()
    table = inp["block_table"].long()
    expected = before.clone()
    expected[table[0, 0], 5] = inp["k"][0, 0]
    expected[table[1, 2], 4] = inp["k"][1, 0]
    assert bits_equal(inp["k_cache"], expected)
