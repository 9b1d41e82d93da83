"""The sm_90a forward (csrc/attn/cuda/sm90/attn_fwd_sm90_kernel.cuh: TMA, mbarrier pipeline,
warp specialisation, wgmma) on the emulated GPU, through the public API with
MPT_EXT_ATTN_FWD_KERNEL=sm90, against the float64 reference under docs/DESIGN.md's rule; and
the choice between it and the portable kernel (csrc/attn/cuda/fwd_kernel_choice.h).

The emulator runs the Hopper instructions from the PTX ISA (tests/cuda_emulation/emu_sm90.cpp)
and fails a launch on a read of a tile before its mbarrier phase, a stage refilled while a
wgmma may still read it, a missing wgmma fence, an mbarrier deadlock and the like. The
backward (portable) runs on the sm90 forward's output and lse."""
import pytest
import torch

import emulation
import mpt_ext

from attention_helpers import check_bwd, check_fwd, make_slopes
from test_attention_emulated import qkv, varlen_qkv

VARIABLE = "MPT_EXT_ATTN_FWD_KERNEL"


def fwd_kernels() -> list[str]:
    """The forward kernels launched since the last call: "sm90" or "portable" each."""
    names = [n for n in emulation.take_launched_kernels() if "attn_fwd" in n]
    return ["sm90" if "attn_fwd_sm90_kernel" in n else "portable" for n in names]


def run_case(d, seqlen_q, seqlen_k, dtype=torch.bfloat16, heads=4, heads_k=2, batch=2,
             causal=False, window=(-1, -1), softcap=0.0, slopes=None, backward=False,
             softmax_scale=None):
    q, k, v = qkv(batch, seqlen_q, seqlen_k, heads, heads_k, d, dtype)
    s = make_slopes(slopes, batch, heads, requires_grad=backward)
    kw = dict(causal=causal, window_size=window, softcap=softcap, softmax_scale=softmax_scale)
    emulation.take_launched_kernels()
    check_fwd(q, k, v, alibi_slopes=s, **kw)
    assert fwd_kernels() == ["sm90"]
    if backward:
        check_bwd(q, k, v, alibi_slopes=s, **kw)


# 128-row blocks of two 64-row consumer warpgroups, 128-key tiles, 3 K/V stages at d 64 and 2
# at d 128: 260-300 keys wrap the stage ring; 130 rows leave the second block's second
# warpgroup wholly past the sequence.
FAST = {
    "d64_causal_alibi_gqa_bwd": dict(d=64, seqlen_q=130, seqlen_k=130, causal=True,
                                     slopes="mpt", backward=True),
    "d128_fp16_sq<sk_softcap_batch_slopes": dict(d=128, seqlen_q=17, seqlen_k=300,
                                                 dtype=torch.float16, softcap=30.0,
                                                 slopes="batch"),
    "d96_sq>sk_window": dict(d=96, seqlen_q=150, seqlen_k=17, window=(7, 2), slopes="head"),
    "d64_fp16_one_query": dict(d=64, seqlen_q=1, seqlen_k=64, dtype=torch.float16,
                               causal=True, heads=3, heads_k=1),
    "d40_causal_left_window": dict(d=40, seqlen_q=130, seqlen_k=64, causal=True,
                                   window=(9, -1), slopes="batch", batch=1),
    # key tiles wholly after (block 0) and before (block 1) the rows' diagonals: ALiBi's
    # one-FMA form with both signs; the stage ring wraps
    "d128_alibi_both_sides": dict(d=128, seqlen_q=260, seqlen_k=260, slopes="mpt", heads=2,
                                  heads_k=1, batch=1, backward=True),
    "d64_plain_ring_wraps": dict(d=64, seqlen_q=70, seqlen_k=520, heads=2, heads_k=2, batch=1),
    # rows 0..259 see no key (causal, sq > sk): whole blocks write 0 and lse -inf
    "d64_causal_empty_blocks": dict(d=64, seqlen_q=300, seqlen_k=40, causal=True, slopes="head",
                                    heads=2, heads_k=1, batch=1),
    "d128_scale_general": dict(d=128, seqlen_q=65, seqlen_k=129, slopes="head",
                               softmax_scale=2.0**-33, heads=2, heads_k=2, batch=1),
}


@pytest.mark.parametrize("case", list(FAST))
def test_sm90_fwd_emulated(emulated, monkeypatch, case):
    monkeypatch.setenv(VARIABLE, "sm90")
    run_case(**FAST[case])


SLOW = {
    "d128_bf16_causal_long": dict(d=128, seqlen_q=400, seqlen_k=400, causal=True, slopes="mpt",
                                  heads=2, heads_k=1, batch=1),
    "d64_window_both": dict(d=64, seqlen_q=257, seqlen_k=300, window=(100, 30), slopes="batch",
                            heads=2, heads_k=1),
    "d128_fp16_plain_sq<sk": dict(d=128, seqlen_q=129, seqlen_k=385, dtype=torch.float16,
                                  heads=2, heads_k=2, batch=1, backward=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW))
def test_sm90_fwd_emulated_slow(emulated, monkeypatch, case):
    monkeypatch.setenv(VARIABLE, "sm90")
    run_case(**SLOW[case])


def test_sm90_size_one_dims_with_any_stride(emulated, monkeypatch):
    # one sequence, one head: their strides (0 here) are never stepped along, and the tensor
    # maps replace them with ones the driver accepts
    monkeypatch.setenv(VARIABLE, "sm90")
    q, k, v = (torch.randn(n, 64, dtype=torch.bfloat16).as_strided((1, n, 1, 64), (0, 64, 0, 1))
               for n in (70, 150, 150))
    emulation.take_launched_kernels()
    check_fwd(q, k, v, causal=True, alibi_slopes=make_slopes("head", 1, 1))
    assert fwd_kernels() == ["sm90"]
    # a broadcast head (stride 0 over two heads) is not a layout TMA takes
    k2 = k.as_strided((1, 150, 2, 64), (0, 64, 0, 1))
    with pytest.raises(ValueError, match="nonzero strides"):
        mpt_ext.flash_attn_func(q.expand(1, 70, 2, 64), k2, k2)


def test_sm90_no_keys_runs_the_portable_kernel(emulated, monkeypatch):
    # a zero-length slice of real keys: no tensor map has a zero extent, nothing to attend to
    monkeypatch.setenv(VARIABLE, "sm90")
    q, k, v = qkv(1, 40, 40, 2, 1, 64, torch.bfloat16)
    emulation.take_launched_kernels()
    out, lse, _ = mpt_ext.flash_attn_func(q, k[:, :0], v[:, :0], return_attn_probs=True)
    assert fwd_kernels() == ["portable"]
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))


def _forward(d=64, **kw):
    q, k, v = qkv(1, 40, 40, 2, 1, d, torch.bfloat16, **kw)
    emulation.take_launched_kernels()
    return mpt_ext.flash_attn_func(q, k, v, causal=True)


def test_choice_default_is_portable(emulated, monkeypatch):
    monkeypatch.delenv(VARIABLE, raising=False)
    _forward()
    assert fwd_kernels() == ["portable"]
    monkeypatch.setenv(VARIABLE, "")
    _forward()
    assert fwd_kernels() == ["portable"]
    monkeypatch.setenv(VARIABLE, "portable")
    _forward()
    assert fwd_kernels() == ["portable"]


def test_choice_same_result_either_kernel(emulated, monkeypatch):
    q, k, v = qkv(1, 100, 150, 2, 1, 128, torch.bfloat16)
    slopes = make_slopes("head", 1, 2)
    monkeypatch.setenv(VARIABLE, "portable")
    portable = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes)
    monkeypatch.setenv(VARIABLE, "sm90")
    sm90 = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes)
    # both within the DESIGN rule of the reference; bf16 outputs agree to a few ulps
    torch.testing.assert_close(sm90, portable, atol=2e-2, rtol=2e-2)


def test_choice_auto_falls_back(emulated, monkeypatch):
    monkeypatch.setenv(VARIABLE, "auto")
    _forward()
    assert fwd_kernels() == ["sm90"]
    with emulation.compute_capability(80):
        _forward()
    assert fwd_kernels() == ["portable"]
    _forward(d=200)  # bucket 256: no sm90 kernel
    assert fwd_kernels() == ["portable"]
    _forward(misalign=3)  # rows not 16-byte aligned: no TMA
    assert fwd_kernels() == ["portable"]
    q, k, v, cu_q, cu_k = varlen_qkv([17, 30], [20, 33], 2, 1, 64)
    emulation.take_launched_kernels()
    mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 30, 33, causal=True)
    assert fwd_kernels() == ["portable"]


@pytest.mark.parametrize("where,match", [
    ("sm_90a", "the device is sm_89, not sm_90"),
    ("bucket", "head-dim bucket 256 has no sm90 kernel"),
    ("aligned", "q, k and v need 16-byte aligned data"),
    ("varlen", "varlen inputs"),
])
def test_choice_forced_sm90_says_why_not(emulated, monkeypatch, where, match):
    monkeypatch.setenv(VARIABLE, "sm90")
    with pytest.raises(ValueError, match=f"{VARIABLE}=sm90: {match}"):
        if where == "sm_90a":
            with emulation.compute_capability(89):
                _forward()
        elif where == "bucket":
            _forward(d=200)
        elif where == "aligned":
            _forward(misalign=3)
        else:
            q, k, v, cu_q, cu_k = varlen_qkv([17, 30], [20, 33], 2, 1, 64)
            mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 30, 33)
    assert fwd_kernels() == []


def test_choice_bad_value(emulated, monkeypatch):
    monkeypatch.setenv(VARIABLE, "hopper")
    with pytest.raises(ValueError, match=f"{VARIABLE}: expected portable, sm90 or auto"):
        _forward()
