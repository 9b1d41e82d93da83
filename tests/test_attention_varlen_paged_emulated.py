"""flash_attn_varlen_func with block_table on the emulated GPU (tests/cuda_emulation): the CUDA
forward's paged key loads (csrc/attn/cuda/paged_tile.cuh) against the same kernel on packed
keys (bitwise) and the float64 reference, with the pages inside NaN guards; a block-table
entry outside the pages and a sequence longer than its row of the table are noted on the
device (device_input_errors.h), never read out of bounds."""
import pytest
import torch

import mpt_ext

from attention_helpers import make_slopes
from test_attention_emulated import guarded, varlen_qkv
from test_attention_varlen_paged import check_paged, paged_copy, run

LENGTHS = ([17, 0, 64, 1, 30], [300, 5, 64, 0, 530])  # up to 5 pages of 128

CASES = {  # name: (head_dim, page_size, keywords)
    "d64_page128_causal_alibi": (64, 128, dict(causal=True, slopes="mpt")),
    "d64_page256_window": (64, 256, dict(window_size=(90, 3))),
    "d128_page128_softcap_batch_slopes": (128, 128, dict(softcap=20.0, slopes="batch")),
    "d96_page384_unaligned": (96, 384, dict(causal=True, misalign=1)),
    "d256_page128": (256, 128, dict()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_paged_varlen_emulated(emulated, case):
    head_dim, page_size, kw = CASES[case]
    kw = dict(kw)
    slopes = make_slopes(kw.pop("slopes", None), len(LENGTHS[0]), 4)
    misalign = kw.pop("misalign", 0)
    q, k, v, cu_q, cu_k = varlen_qkv(*LENGTHS, 4, 2, head_dim)
    check_paged(q, k, v, cu_q, cu_k, page_size, alibi_slopes=slopes,
                guard=lambda t: guarded(t, misalign), **kw)
    emulated.raise_device_input_errors(0)  # no good sequence was noted as bad


def test_block_table_entry_outside_the_pages_is_reported(emulated):
    q, k, v, cu_q, cu_k = varlen_qkv([4, 6, 3], [100, 200, 70], 4, 2, 64)
    k_pages, v_pages, table = paged_copy(k, v, cu_k, 128)
    table[1, 1] = k_pages.shape[0] + 100  # positions 128..199 of sequence 1
    out, lse, _ = run(q, guarded(k_pages), guarded(v_pages), cu_q, cu_k, block_table=table)
    with pytest.raises(ValueError, match="block_table: sequence 1"):
        emulated.raise_device_input_errors(0)
    packed_out, packed_lse, _ = run(q, k, v, cu_q, cu_k)
    good = torch.cat([torch.arange(0, 4), torch.arange(10, 13)])
    assert torch.equal(out[good], packed_out[good]) and torch.isfinite(out).all()


def test_sequence_longer_than_its_table_is_reported(emulated):
    q, k, v, cu_q, cu_k = varlen_qkv([4, 6], [100, 200], 4, 2, 64)
    k_pages, v_pages, table = paged_copy(k, v, cu_k, 128)
    narrow = table[:, :1].contiguous()  # 128 positions: sequence 1's 200 keys do not fit
    out, lse, _ = mpt_ext.flash_attn_varlen_func(q, guarded(k_pages), guarded(v_pages), cu_q,
                                                 cu_k, 6, 200, block_table=narrow,
                                                 return_attn_probs=True)
    with pytest.raises(ValueError, match="cu_seqlens_k: sequence 1"):
        emulated.raise_device_input_errors(0)
    # the bad sequence ran as empty (its rows are not written, as for any bad cu_seqlens_k);
    # the good one is untouched
    packed_out, packed_lse, _ = run(q, k, v, cu_q, cu_k)
    assert torch.equal(out[:4], packed_out[:4]) and torch.equal(lse[:, :4], packed_lse[:, :4])


def test_page_size_not_a_multiple_of_128_is_refused(emulated):
    q, k, v, cu_q, cu_k = varlen_qkv([4, 6], [10, 3], 4, 2, 64)
    k_pages, v_pages, table = paged_copy(k, v, cu_k, 64)
    with pytest.raises(ValueError, match="page_block_size must be a multiple of 128"):
        run(q, k_pages, v_pages, cu_q, cu_k, block_table=table)
