"""flash_attn_varlen_func with block_table (paged keys, flash-attn 2.8): the attention of the
packed keys the pages hold, against the float64 reference and bitwise against the same call
on the packed keys; shared pages; bad block tables. The CPU takes any page size, CUDA
multiples of 128 (a key tile never straddles two pages; flash-attn needs 256)."""
import math

import pytest
import torch

import mpt_ext
from mpt_ext._library import ops
from mpt_ext.reference import attention_varlen_ref

from attention_helpers import (MASK_IDS, MASKS, assert_close_to_ref, cu_seqlens,
                               make_slopes, one_thread)
from devices import devices

UNUSED_ENTRY = 5  # block-table padding: this many past the last page


def paged_copy(k, v, cu_k, page_size, shared_prefix_pages=0, extra_pages=3):
    """k, v (total_k, nheads_k, d) as pages (num_blocks, page_size, nheads_k, d) at shuffled
    block indices, with a block table one entry wider than needed. Unused page rows are NaN
    (a kernel that reads past a sequence's end turns its output NaN) and unused table entries
    point past the pages (a kernel that reads them would fail the bounds checks).
    shared_prefix_pages: every sequence's first pages are sequence 0's (a shared prompt): the
    caller must give the sequences equal keys there."""
    lengths = (cu_k[1:] - cu_k[:-1]).tolist()
    blocks = [math.ceil(n / page_size) for n in lengths]
    width = max(blocks + [0]) + 1
    num_pages = sum(blocks) + extra_pages
    order = torch.randperm(num_pages).tolist()
    shape = (num_pages, page_size) + tuple(k.shape[1:])
    k_pages = torch.full(shape, float("nan"), dtype=k.dtype, device=k.device)
    v_pages = torch.full(shape, float("nan"), dtype=v.dtype, device=v.device)
    table = torch.full((len(lengths), width), num_pages + UNUSED_ENTRY, dtype=torch.int32)
    start = cu_k.tolist()
    for b, n in enumerate(lengths):
        for i in range(blocks[b]):
            share = b > 0 and i < shared_prefix_pages and i < blocks[0]
            page = int(table[0, i]) if share else order.pop()
            table[b, i] = page
            rows = slice(start[b] + i * page_size, start[b] + min(n, (i + 1) * page_size))
            used = rows.stop - rows.start
            if share:  # the same keys as sequence 0's (the caller made them so)
                assert torch.equal(k_pages[page, :used], k[rows]), "shared page differs"
                continue
            k_pages[page, :used] = k[rows]
            v_pages[page, :used] = v[rows]
    return k_pages, v_pages, table.to(k.device)


def packed(lengths_q, lengths_k, nheads, nheads_k, head_dim, dtype, device):
    q = torch.randn(sum(lengths_q), nheads, head_dim, dtype=dtype, device=device)
    k = torch.randn(sum(lengths_k), nheads_k, head_dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    return q, k, v, cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)


def run(q, k, v, cu_q, cu_k, **kw):
    max_q = int((cu_q[1:] - cu_q[:-1]).max())
    max_k = int((cu_k[1:] - cu_k[:-1]).max())
    return mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k,
                                          return_attn_probs=True, **kw)


def check_paged(q, k, v, cu_q, cu_k, page_size, guard=lambda t: t, **kw):
    """The paged call equals the packed call bitwise and the float64 reference within
    docs/DESIGN.md's rule. guard(pages): where the pages sit (NaN guards, misaligned...)."""
    k_pages, v_pages, table = paged_copy(k, v, cu_k, page_size)
    out, lse, _ = run(q, guard(k_pages), guard(v_pages), cu_q, cu_k, block_table=table, **kw)
    packed_out, packed_lse, _ = run(q, k, v, cu_q, cu_k, **kw)
    assert torch.equal(out, packed_out) and torch.equal(lse, packed_lse), \
        "the paged keys' output differs from the packed keys'"
    with one_thread():
        args = [t.cpu() for t in (q, k, v, cu_q, cu_k)]
        ref_kw = {n: (t.cpu() if isinstance(t, torch.Tensor) else t) for n, t in kw.items()}
        ref_out, ref_lse = attention_varlen_ref(*args, **ref_kw)
        low_out, low_lse = attention_varlen_ref(*args, compute_dtype=q.dtype, **ref_kw)
    assert_close_to_ref("out", out.cpu(), ref_out, low_out)
    assert_close_to_ref("lse", lse.cpu(), ref_lse, low_lse, dtype=q.dtype)
    mpt_ext.check_device_input_errors(q.device)  # CUDA: no good sequence noted as bad


# An empty sequence, sq > sk, sq < sk, and key counts that span several pages of either size.
LENGTHS = ([5, 0, 17, 1, 33, 8], [7, 0, 17, 1, 20, 300])
PAGE = {"cpu": 16, "cuda": 128}  # the page size of the tests that are not about it
CPU_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("device,dtype,page_size", devices(
    "attn", cpu=[(t, n) for t in CPU_DTYPES for n in (1, 3, 16, 64, 256)],
    cuda=[(torch.bfloat16, 128), (torch.float16, 256)]))
@pytest.mark.parametrize("causal,window_size", MASKS, ids=MASK_IDS)
def test_paged_matches_packed(device, dtype, page_size, causal, window_size):
    q, k, v, cu_q, cu_k = packed(*LENGTHS, 6, 2, 64, dtype, device)
    check_paged(q, k, v, cu_q, cu_k, page_size, causal=causal, window_size=window_size)


@pytest.mark.parametrize("device", devices("attn"))
@pytest.mark.parametrize("slopes", ["mpt", "batch"])
@pytest.mark.parametrize("nheads,nheads_k", [(6, 2), (6, 1), (3, 3)], ids=str)
def test_paged_alibi_gqa_softcap(device, slopes, nheads, nheads_k):
    q, k, v, cu_q, cu_k = packed(*LENGTHS, nheads, nheads_k, 128, torch.bfloat16, device)
    check_paged(q, k, v, cu_q, cu_k, PAGE[device], causal=True, softcap=8.0,
                alibi_slopes=make_slopes(slopes, len(LENGTHS[0]), nheads, device=device))


@pytest.mark.parametrize("device,page_size", devices("attn", cpu=[(7,)], cuda=[(128,)]))
@pytest.mark.parametrize("head_dim", [8, 72, 256])
def test_paged_head_dims(device, page_size, head_dim):
    q, k, v, cu_q, cu_k = packed([3, 20], [9, 141], 2, 2, head_dim, torch.float16, device)
    check_paged(q, k, v, cu_q, cu_k, page_size, causal=True)


@pytest.mark.parametrize("device", devices("attn"))
def test_shared_prefix_pages(device):
    # three sequences share a 2-page prompt (prefix caching): same pages, same table entries
    page = PAGE[device]
    prompt = 2 * page
    lengths_k = [prompt + 5, prompt + 19, prompt]
    q, k, v, cu_q, cu_k = packed([4, 9, 1], lengths_k, 4, 2, 64, torch.bfloat16, device)
    starts = cu_k.tolist()
    for s in starts[1:-1]:  # give every sequence sequence 0's prompt keys
        k[s:s + prompt] = k[:prompt]
        v[s:s + prompt] = v[:prompt]
    k_pages, v_pages, table = paged_copy(k, v, cu_k, page, shared_prefix_pages=2)
    assert table[1, 0] == table[0, 0] and table[2, 1] == table[0, 1]
    out, lse, _ = run(q, k_pages, v_pages, cu_q, cu_k, block_table=table, causal=True)
    packed_out, packed_lse, _ = run(q, k, v, cu_q, cu_k, causal=True)
    assert torch.equal(out, packed_out) and torch.equal(lse, packed_lse)


@pytest.mark.parametrize("device", devices("attn", cpu=(), cuda=((),)))
def test_cuda_page_size_must_be_a_multiple_of_128(device):
    q, k, v, cu_q, cu_k = packed([4, 6], [10, 3], 2, 2, 64, torch.bfloat16, device)
    k_pages, v_pages, table = paged_copy(k, v, cu_k, 64)
    with pytest.raises(ValueError, match="page_block_size must be a multiple of 128"):
        run(q, k_pages, v_pages, cu_q, cu_k, block_table=table)


def test_block_table_padding_is_never_read():
    # entries past a sequence's last page may hold anything (flash-attn reads only what it needs)
    q, k, v, cu_q, cu_k = packed([4, 6], [10, 3], 2, 2, 32, torch.float32, "cpu")
    k_pages, v_pages, table = paged_copy(k, v, cu_k, 4)
    table[:, -1] = -12345
    out, _, _ = run(q, k_pages, v_pages, cu_q, cu_k, block_table=table)
    assert torch.isfinite(out).all()


# ---- bad input -----------------------------------------------------------------------------
def _paged_case():
    q, k, v, cu_q, cu_k = packed([4, 6], [10, 3], 2, 2, 32, torch.float32, "cpu")
    k_pages, v_pages, table = paged_copy(k, v, cu_k, 4)
    return q, k_pages, v_pages, cu_q, cu_k, table


@pytest.mark.parametrize("bad,error,match", [
    (lambda t: t.long(), TypeError, "block_table must be int32"),
    (lambda t: t[0], ValueError, r"block_table must have shape \(batch, max_num_blocks_per_seq\)"),
    (lambda t: t[:1], ValueError, r"block_table must have shape"),
    (lambda t: t.t().contiguous().t(), ValueError, "contiguous last dimension"),
    (lambda t: t.index_fill(1, torch.tensor([0]), -1), ValueError,
     r"block_table\[0, 0\] = -1 is not a block of k"),
    (lambda t: t.index_fill(1, torch.tensor([1]), 10 ** 6), ValueError,
     r"block_table\[0, 1\] = 1000000 is not a block of k"),
    (lambda t: t[:, :2], ValueError, r"sequence 0 has 10 keys .* holds 2 blocks of 4"),
], ids=["int64", "1d", "batch", "strided", "negative", "past_the_pages", "too_narrow"])
def test_bad_block_table(bad, error, match):
    q, k, v, cu_q, cu_k, table = _paged_case()
    with pytest.raises(error, match=match):
        run(q, k, v, cu_q, cu_k, block_table=bad(table))


def test_block_table_needs_paged_keys_and_a_tensor():
    q, k, v, cu_q, cu_k, table = _paged_case()
    with pytest.raises(ValueError, match=r"k must have 4 dimensions \(num_blocks, page_block_size"):
        run(q, k.flatten(0, 1), v.flatten(0, 1), cu_q, cu_k, block_table=table)
    with pytest.raises(TypeError, match="block_table must be an int32 torch.Tensor"):
        run(q, k, v, cu_q, cu_k, block_table=table.tolist())
    with pytest.raises(ValueError, match="block_table needs cu_seqlens_q and cu_seqlens_k"):
        ops.attn_fwd(q[None], k[:1], v[:1], None, None, 0, 0, None, 1.0, False, -1, -1, 0.0,
                     False, table[:1])


def test_paged_backward_says_forward_only():
    q, k, v, cu_q, cu_k, table = _paged_case()
    q.requires_grad_(True)
    out, _, _ = run(q, k, v, cu_q, cu_k, block_table=table)
    with pytest.raises(NotImplementedError, match="block_table has no backward"):
        out.sum().backward()


def test_compile_paged_forward_of_inputs_that_require_grad():
    # torch.compile traces the backward of a call whose inputs require grad: the missing
    # backward must raise only when one runs
    q, k, v, cu_q, cu_k, table = _paged_case()
    k, v = (torch.nan_to_num(t) for t in (k, v))
    w = torch.nn.Parameter(torch.eye(32))

    def attend(x):
        return mpt_ext.flash_attn_varlen_func(x @ w, k, v, cu_q, cu_k, 6, 10, causal=True,
                                              block_table=table)

    torch._dynamo.reset()
    out = torch.compile(attend, backend="aot_eager", fullgraph=True)(q)
    assert torch.equal(out, attend(q))
    with pytest.raises(NotImplementedError, match="block_table has no backward"):
        out.sum().backward()


def test_opcheck_paged():
    q, k, v, cu_q, cu_k, table = _paged_case()
    k, v = (torch.nan_to_num(t) for t in (k, v))  # opcheck compares whole outputs
    torch.library.opcheck(ops.attn_fwd.default,
                          (q, k, v, cu_q, cu_k, 6, 10, None, 0.25, True, -1, -1, 0.0, False, table))
