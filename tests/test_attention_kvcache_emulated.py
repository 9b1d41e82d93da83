"""The CUDA decode kernels (csrc/attn_kvcache/cuda: append, split-KV attention, combine) run on
the CPU by the emulated GPU (tests/cuda_emulation), through flash_attn_with_kvcache, with the
checks the GPU tests use (test_attention_kvcache.check_kvcache with the CUDA bar: float64
reference under docs/DESIGN.md's rule plus an absolute floor, caches bit for bit after the
append, NaN wherever no sequence may read). The default run holds a fast slice; the grid over
head dims, split counts, row tiles and masks is marked slow."""
import itertools

import pytest
import torch

from test_attention_kvcache import _case, check_kvcache


def run(num_splits=0, causal=True, window_size=(-1, -1), softcap=0.0, drop_seqlens=False,
        **case):
    inp = _case(device="cpu", **case)
    if drop_seqlens:
        inp["cache_seqlens"] = None
    return check_kvcache(**inp, against_cpu=False, cuda_bar=True, causal=causal,
                         window_size=window_size, softcap=softcap, num_splits=num_splits)


FAST = {
    "decode_gqa_splits3": dict(batch=3, seqlen_cache=257, heads=8, heads_k=2, d=128,
                               lengths=[0, 113, 200], num_splits=3),
    "decode_mha_one_split_fp16": dict(batch=2, seqlen_cache=130, heads=4, heads_k=4, d=64,
                                      dtype=torch.float16, lengths=[17, 128], num_splits=1),
    "chunked_prefill_row_tiles": dict(batch=2, seqlen_cache=200, heads=4, heads_k=1, d=96,
                                      seqlen_q=9, seqlen_new=9, lengths=[0, 150],
                                      num_splits=2),
    "window_softcap_batch_slopes": dict(batch=2, seqlen_cache=160, heads=6, heads_k=3, d=256,
                                        seqlen_q=2, lengths=[1, 150], per_batch_slopes=True,
                                        window_size=(16, 0), softcap=5.0, num_splits=4),
    "rows_without_keys": dict(batch=2, seqlen_cache=64, heads=4, heads_k=2, d=64, seqlen_q=5,
                              seqlen_new=0, lengths=[0, 3], num_splits=2),
    "whole_cache_no_alibi_heuristic_splits": dict(batch=1, seqlen_cache=77, heads=2, heads_k=2,
                                                  d=40, seqlen_new=0, lengths=[77],
                                                  alibi=False, causal=False,
                                                  drop_seqlens=True),
}


@pytest.mark.parametrize("case", list(FAST))
def test_kvcache_emulated(emulated, case):
    run(**FAST[case])


def test_kvcache_emulated_rows_without_keys_are_zero(emulated):
    out, lse = run(**FAST["rows_without_keys"])
    assert torch.isneginf(lse[0]).all() and (out[0] == 0).all()
    assert torch.isneginf(lse[1, :, :2]).all() and torch.isfinite(lse[1, :, 2:]).all()


# ---- the grid (slow) ------------------------------------------------------------------------
GRID = list(itertools.product([64, 128, 96], [1, 4], [(8, 2), (6, 6), (12, 1)], [1, 3, 128]))


@pytest.mark.slow
@pytest.mark.parametrize("d,seqlen_q,heads,num_splits",
                         [(d, sq, h, n) for d, sq, h, n in GRID],
                         ids=[f"d{d}-sq{sq}-h{h[0]}/{h[1]}-splits{n}" for d, sq, h, n in GRID])
def test_kvcache_emulated_grid(emulated, d, seqlen_q, heads, num_splits):
    i = GRID.index((d, seqlen_q, heads, num_splits))
    windows = [(-1, -1), (5, 3), (16, 0), (-1, 2)]
    run(batch=2, seqlen_cache=150, heads=heads[0], heads_k=heads[1], d=d, seqlen_q=seqlen_q,
        seqlen_new=(seqlen_q, 0)[i % 2], lengths=[(i * 37) % 140, 149 - seqlen_q],
        dtype=(torch.bfloat16, torch.float16)[i % 2], per_batch_slopes=i % 3 == 0,
        alibi=i % 5 != 0, causal=i % 4 != 1, window_size=windows[i % 4],
        softcap=(0.0, 7.0)[i % 2], num_splits=num_splits)


# ---- flash-attn's cache layouts and rotary (test_attention_kvcache_layout.layout_case) --------
LAYOUTS = {
    "paged_16_gqa_splits": dict(batch=3, seqlen_cache=200, heads=8, heads_k=2, d=64,
                                lengths=[0, 100, 199], page_size=16, num_splits=3),
    "paged_3_prefill_leftpad": dict(batch=2, seqlen_cache=60, heads=4, heads_k=4, d=64,
                                    seqlen_q=5, seqlen_new=5, lengths=[20, 50],
                                    leftpad=[4, 13], page_size=3, num_splits=2),
    "batch_idx_fp16": dict(batch=3, seqlen_cache=70, heads=4, heads_k=1, d=64,
                           dtype=torch.float16, lengths=[3, 0, 69], batch_idx=True),
    "leftpad_window": dict(batch=2, seqlen_cache=90, heads=6, heads_k=3, d=96, seqlen_q=2,
                           seqlen_new=2, lengths=[40, 88], leftpad=[39, 10],
                           window_size=(20, 0)),
    "rotary_interleaved_causal": dict(batch=2, seqlen_cache=64, heads=4, heads_k=2, d=64,
                                      seqlen_q=3, seqlen_new=3, lengths=[0, 50], rotary_dim=32),
    "rotary_neox_not_causal_full_dim": dict(batch=2, seqlen_cache=64, heads=4, heads_k=4, d=64,
                                            seqlen_q=2, seqlen_new=2, lengths=[9, 61],
                                            rotary_dim=64, interleaved=False, causal=False),
    "rotary_paged_leftpad_unaligned_new": dict(batch=2, seqlen_cache=48, heads=8, heads_k=2,
                                               d=128, seqlen_q=2, seqlen_new=2,
                                               lengths=[9, 44], leftpad=[2, 30], page_size=8,
                                               rotary_dim=48, interleaved=False,
                                               unaligned_new=True, softcap=5.0),
}


def run_layout(num_splits=0, causal=True, window_size=(-1, -1), softcap=0.0,
               unaligned_new=False, **case):
    from test_attention_kvcache_layout import layout_case
    inp = layout_case(**{"dtype": torch.bfloat16, **case})
    if unaligned_new:  # new keys that are not 16-byte aligned: the element-wise append path
        for name in ("k", "v"):
            wide = torch.randn(*inp[name].shape[:-1], inp[name].shape[-1] + 1,
                               dtype=inp[name].dtype)
            inp[name] = wide[..., 1:]
    return check_kvcache(**inp, against_cpu=False, cuda_bar=True, causal=causal,
                         window_size=window_size, softcap=softcap, num_splits=num_splits)


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_kvcache_layouts_emulated(emulated, case):
    run_layout(**LAYOUTS[case])
