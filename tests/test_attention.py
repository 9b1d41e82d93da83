"""flash_attn_func (batched BSHD) on CPU and CUDA against the float64 reference: forward
over docs/DESIGN.md's grid (Numerics), backward (q, k, v and trainable ALiBi slopes),
determinism; on the CPU also gradcheck and edge cases.

The CUDA params run bf16/fp16 only, with the GPU's own grid (docs/DESIGN.md's larger sizes:
seqlens 1000 and 4097, head dims 64/128/256); they are skipped without a GPU or when the
build does not dispatch to the CUDA attention kernels (csrc/attn/cuda/, build with
-DMPT_EXT_CUDA_OPS=attn)."""
import pytest
import torch

import mpt_ext
from mpt_ext.reference import attention_varlen_ref

from attention_helpers import (DTYPE_IDS, MASK_IDS, MASKS, assert_close_to_ref, check_bwd,
                               check_dslopes_fp32_accurate, check_fwd, cu_seqlens, make_slopes,
                               poison_allocator, random_qkv)
from devices import cuda_only, devices

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CUDA_DTYPES = [torch.bfloat16, torch.float16]
SEQLENS = [(1, 1), (17, 17), (113, 113), (17, 113), (113, 17), (1, 113), (113, 1)]
CUDA_SEQLENS = [(1, 1), (17, 17), (113, 113), (17, 113), (113, 17), (1, 239), (239, 1)]
LONG_SEQLENS = [(1000, 1000), (4097, 4097), (1000, 4097), (4097, 1000)]


# ---- forward -------------------------------------------------------------------------------
@pytest.mark.parametrize("device,dtype,seqlen_q,seqlen_k,alibi", devices(
    "attn", cpu=[(dt, sq, sk, None) for dt in DTYPES for sq, sk in SEQLENS],
    cuda=[(dt, sq, sk, alibi) for dt in CUDA_DTYPES for sq, sk in CUDA_SEQLENS
          for alibi in (None, "mpt", "batch")]))
@pytest.mark.parametrize("causal,window_size", MASKS, ids=MASK_IDS)
def test_forward(device, dtype, seqlen_q, seqlen_k, alibi, causal, window_size):
    nheads, head_dim = {"cpu": (4, 32), "cuda": (6, 64)}[device]
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, nheads, 2, head_dim, dtype, device=device)
    check_fwd(q, k, v, causal=causal, window_size=window_size,
              alibi_slopes=make_slopes(alibi, 2, nheads, device=device))


@pytest.mark.parametrize("device,dtype,head_dim", devices(
    "attn", cpu=[(dt, d) for dt in (torch.float32, torch.bfloat16)
                 for d in (1, 8, 20, 32, 33, 40, 64, 72, 96, 128, 160, 200, 255, 256)],
    cuda=[(dt, d) for dt in CUDA_DTYPES for d in (32, 40, 64, 72, 96, 128, 160, 192, 200, 256)]))
def test_forward_head_dims(device, dtype, head_dim):
    batch, seqlen_q, seqlen_k = {"cpu": (1, 17, 33), "cuda": (2, 130, 257)}[device]
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, 3, 3, head_dim, dtype, device=device)
    check_fwd(q, k, v, causal=True, alibi_slopes=make_slopes("mpt", batch, 3, device=device))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("nheads", [3, 6, 12])
@pytest.mark.parametrize("slopes", ["mpt", "batch"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(17, 17), (17, 113), (113, 17)], ids=str)
def test_forward_alibi(dtype, nheads, slopes, causal, seqlen_q, seqlen_k):
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, nheads, nheads, 32, dtype)
    check_fwd(q, k, v, causal=causal, alibi_slopes=make_slopes(slopes, 2, nheads))


@pytest.mark.parametrize("device,dtype,nheads,nheads_k,causal,softcap,alibi", devices(
    "attn", cpu=[(dt, h, hk, causal, 0.0, "mpt") for dt in DTYPES
                 for h, hk in [(6, 2), (6, 1), (4, 4), (12, 3)] for causal in (False, True)],
    cuda=[(dt, h, hk, True, softcap, "batch") for dt in CUDA_DTYPES
          for h, hk in [(6, 2), (6, 1), (12, 12)] for softcap in (0.0, 5.0)]))
def test_forward_gqa(device, dtype, nheads, nheads_k, causal, softcap, alibi):
    seqlen_q, seqlen_k, head_dim = {"cpu": (17, 40, 64), "cuda": (77, 200, 128)}[device]
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype, device=device)
    check_fwd(q, k, v, causal=causal, softcap=softcap,
              alibi_slopes=make_slopes(alibi, 2, nheads, device=device))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_softcap_below_the_dtype_is_no_cap(dtype):
    # 1e-46 is 0 in fp32 and below: no cap, as in the kernels' own precision, never 0 * inf
    q, k, v = random_qkv(1, 9, 9, 2, 2, 16, dtype)
    q[0, 0] = 0  # q.k == 0: tanh(inf * 0) would be NaN
    out = mpt_ext.flash_attn_func(q, k, v, softcap=1e-46)
    assert torch.equal(out, mpt_ext.flash_attn_func(q, k, v))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("softcap", [0.5, 5.0, 30.0])
@pytest.mark.parametrize("alibi", [None, "batch"])
def test_forward_softcap(dtype, softcap, alibi):
    # Scaled-up q so that the cap actually bends the scores.
    q, k, v = random_qkv(2, 33, 50, 4, 2, 32, dtype)
    q = (q.float() * 4).to(dtype)
    check_fwd(q, k, v, causal=True, softcap=softcap, alibi_slopes=make_slopes(alibi, 2, 4))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("softmax_scale", [0.05, 1.0])
def test_forward_softmax_scale(dtype, softmax_scale):
    q, k, v = random_qkv(2, 17, 29, 2, 2, 64, dtype)
    check_fwd(q, k, v, softmax_scale=softmax_scale, window_size=(4, 4))


@pytest.mark.parametrize("causal,window_size", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("alibi", [None, "batch"])
def test_forward_float64(causal, window_size, alibi):
    q, k, v = random_qkv(2, 19, 23, 4, 2, 16, torch.float64)
    slopes = make_slopes(alibi, 2, 4)
    check_fwd(q, k, v, causal=causal, window_size=window_size, softcap=3.0, alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_forward_strided_inputs(dtype):
    # MPT splits a fused Wqkv output: q, k, v are strided views with a contiguous last dim.
    qkv = torch.randn(2, 37, 3, 4, 64, dtype=dtype)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    check_fwd(q, k, v, causal=True, alibi_slopes=make_slopes("mpt", 2, 4))
    # and a head-major k/v (B, H, S, D) seen through transpose
    kt = torch.randn(2, 2, 37, 64, dtype=dtype).transpose(1, 2)
    vt = torch.randn(2, 2, 37, 64, dtype=dtype).transpose(1, 2)
    check_fwd(q, kt, vt, causal=False)


# ---- rows with no visible key, empty inputs --------------------------------------------------
ROWS_WITHOUT_KEYS = [
    (40, 17, True, (-1, -1)),     # bottom-right causal: the first 23 rows see nothing
    (17, 40, False, (0, 0)),      # each row sees exactly its diagonal key
    (40, 17, False, (0, 0)),      # early rows' diagonal is before key 0
    (17, 17, False, (-1, -1)),
    (9, 5, False, (-1, -1)),
]


@pytest.mark.parametrize("device,dtype,seqlen_q,seqlen_k,causal,window_size,alibi", devices(
    "attn", cpu=[(dt, *case, "batch") for dt in DTYPES for case in ROWS_WITHOUT_KEYS],
    cuda=[(dt, 300, 100, True, (-1, -1), None) for dt in CUDA_DTYPES]))
def test_rows_without_keys(device, dtype, seqlen_q, seqlen_k, causal, window_size, alibi):
    head_dim = {"cpu": 32, "cuda": 64}[device]
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 4, 2, head_dim, dtype, device=device)
    slopes = make_slopes(alibi, 2, 4, device=device)
    out, lse = check_fwd(q, k, v, causal=causal, window_size=window_size, alibi_slopes=slopes)
    empty = torch.isinf(lse)  # (B, H, Sq); check_fwd matched these with the reference
    if seqlen_q > seqlen_k and window_size == (0, 0) or causal:
        assert empty.any()
    if causal:  # bottom-right alignment: the first seqlen_q - seqlen_k rows see no key
        n = max(seqlen_q - seqlen_k, 0)
        assert torch.all(out[:, :n] == 0) and torch.all(lse[:, :, :n] == float("-inf"))
    assert torch.all(out.permute(0, 2, 1, 3)[empty] == 0)
    assert torch.isfinite(out).all()


def test_window_excludes_everything():
    # right window ending before the first key for every row: sq > sk, window (0, 0) and a
    # left window of 0 with causal on the rows whose diagonal is negative.
    q, k, v = random_qkv(1, 30, 4, 2, 2, 16, torch.float32)
    out, lse = check_fwd(q, k, v, causal=True, window_size=(0, 0))
    assert torch.all(lse[:, :, :26] == float("-inf"))
    assert torch.all(out[:, :26] == 0)


@pytest.mark.parametrize("device,dtype,batch,seqlen_q,seqlen_k,causal,alibi", devices(
    "attn", cpu=[(dt, *sizes, causal, "batch") for dt in DTYPES
                 for sizes in [(0, 17, 17), (2, 0, 17), (2, 17, 0), (2, 0, 0), (0, 0, 0)]
                 for causal in (False, True)],
    cuda=[(dt, *sizes, True, None) for dt in CUDA_DTYPES
          for sizes in [(0, 17, 17), (2, 0, 17), (2, 17, 0)]]))
def test_empty(device, dtype, batch, seqlen_q, seqlen_k, causal, alibi):
    head_dim = {"cpu": 32, "cuda": 64}[device]
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, 4, 2, head_dim, dtype, device=device,
                         requires_grad=True)
    slopes = make_slopes(alibi, batch, 4, device=device, requires_grad=True)
    out, lse, _ = mpt_ext.flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes,
                                          return_attn_probs=True)
    assert out.shape == q.shape and lse.shape == (batch, 4, seqlen_q)
    # no key at all: output 0, lse -inf
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    out.backward(torch.randn_like(out))
    for name, x in (("q", q), ("k", k), ("v", v), ("slopes", slopes)):
        if x is None:
            continue
        assert x.grad is not None and x.grad.shape == x.shape, name
        assert torch.all(x.grad == 0), f"d{name} of an empty attention must be 0"


def test_return_attn_probs_shapes():
    q, k, v = random_qkv(3, 5, 7, 6, 3, 16, torch.float32)
    res = mpt_ext.flash_attn_func(q, k, v, return_attn_probs=True)
    assert isinstance(res, tuple) and len(res) == 3 and res[2] is None
    assert res[1].shape == (3, 6, 5) and res[1].dtype == torch.float32
    plain = mpt_ext.flash_attn_func(q, k, v)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, res[0])


def test_output_fresh_and_inputs_untouched():
    q, k, v = random_qkv(2, 17, 17, 4, 4, 32, torch.bfloat16)
    copies = [t.clone() for t in (q, k, v)]
    out = mpt_ext.flash_attn_func(q, k, v, causal=True)
    for t, c in zip((q, k, v), copies):
        assert torch.equal(t, c)
    assert out.data_ptr() not in (q.data_ptr(), k.data_ptr(), v.data_ptr())
    assert out.is_contiguous()


def test_repeated_calls_identical():
    # Poisoned memory between calls must not leak into the result.
    q, k, v = random_qkv(2, 113, 17, 4, 2, 32, torch.float32)
    a = mpt_ext.flash_attn_func(q, k, v, causal=True)
    poison_allocator(a, a)
    b = mpt_ext.flash_attn_func(q, k, v, causal=True)
    assert torch.equal(a, b)


# ---- backward ------------------------------------------------------------------------------
BWD_MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (7, 2)), (True, (9, -1))]
CUDA_BWD_MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (64, 16))]


@pytest.mark.parametrize("device,dtype,causal,window_size,seqlen_q,seqlen_k", devices(
    "attn", cpu=[(dt, *mask, *seqlens) for dt in DTYPES for mask in BWD_MASKS
                 for seqlens in [(17, 17), (17, 50), (50, 17), (1, 33)]],
    cuda=[(dt, *mask, *seqlens) for dt in CUDA_DTYPES for mask in CUDA_BWD_MASKS
          for seqlens in [(113, 113), (77, 300), (300, 77)]]))
@pytest.mark.parametrize("alibi", [None, "head", "batch"])
def test_backward(device, dtype, causal, window_size, seqlen_q, seqlen_k, alibi):
    head_dim = {"cpu": 32, "cuda": 64}[device]
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 6, 2, head_dim, dtype, device=device,
                         requires_grad=True)
    slopes = make_slopes(alibi, 2, 6, device=device, requires_grad=True)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=causal, window_size=window_size)


@pytest.mark.parametrize("device,dtype,head_dim", devices(
    "attn", cpu=[(torch.float32, d) for d in (1, 8, 33, 40, 72, 128, 200, 256)],
    cuda=[(dt, d) for dt in CUDA_DTYPES for d in (64, 128, 256)]))
def test_backward_head_dims(device, dtype, head_dim):
    seqlen_q, seqlen_k = {"cpu": (17, 23), "cuda": (1000, 1000)}[device]
    q, k, v = random_qkv(1, seqlen_q, seqlen_k, 2, 1, head_dim, dtype, device=device,
                         requires_grad=True)
    slopes = make_slopes("mpt", 1, 2, device=device, requires_grad=True)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_backward_softcap_gqa(dtype):
    q, k, v = random_qkv(2, 33, 40, 6, 1, 32, dtype, requires_grad=True)
    with torch.no_grad():
        q.mul_(4)
    slopes = make_slopes("batch", 2, 6, requires_grad=True)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=True, softcap=2.0, window_size=(20, -1))


@pytest.mark.parametrize("device,dtype,causal,window_size,softcap,seqlen_q,seqlen_k", devices(
    "attn", cpu=[(torch.bfloat16, False, (-1, -1), 0.0, 130, 130),
                 (torch.float16, True, (-1, -1), 0.0, 113, 200),
                 (torch.bfloat16, False, (7, 2), 20.0, 200, 64)],
    cuda=[(dt, causal, (-1, -1), 0.0, 1000, 1000) for dt in CUDA_DTYPES
          for causal in (False, True)]))
@pytest.mark.parametrize("alibi", ["head", "batch"])
def test_backward_dslopes_fp32_accurate(device, dtype, causal, window_size, softcap, seqlen_q,
                                        seqlen_k, alibi):
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 4, 2, 64, dtype, device=device,
                         requires_grad=True)
    slopes = make_slopes(alibi, 2, 4, device=device, requires_grad=True)
    check_dslopes_fp32_accurate(q, k, v, slopes, causal=causal, window_size=window_size,
                                softcap=softcap)


@pytest.mark.parametrize("device,dtype,head_dim", devices(
    "attn", cpu=[], cuda=[(dt, d) for dt in CUDA_DTYPES for d in (64, 128, 256)]))
@pytest.mark.parametrize("dq", ["atomic", "split", "separate"])
def test_backward_dq_variants(device, dtype, head_dim, dq, monkeypatch):
    # The CUDA backward's three ways to dQ (csrc/attn/cuda/bwd_dq_mode.h), at sizes with many
    # key blocks adding into each dQ row (split: 16 slices of 18 key blocks, so each split CTA
    # walks one or two); frozen slopes, as MPT has them.
    monkeypatch.setenv("MPT_EXT_ATTN_BWD_DQ", dq)
    check_many_blocks(check_bwd, head_dim, dtype, device)


def check_many_blocks(check, head_dim, dtype, device):
    """check (check_fwd or check_bwd) at sizes with many blocks per row and column, causal and
    with a window and softcap; frozen MPT slopes."""
    q, k, v = random_qkv(2, 1000, 1100, 4, 2, head_dim, dtype, device=device,
                         requires_grad=check is check_bwd)
    slopes = make_slopes("mpt", 2, 4, device=device)
    check(q, k, v, alibi_slopes=slopes, causal=True)
    check(q, k, v, alibi_slopes=slopes, window_size=(300, 40), softcap=30.0)


# The CUDA kernels' other tiles (csrc/attn/cuda/tile_choice.h: what mpt-bench A/B's against
# the defaults), at sizes with many blocks; the backward's with each dQ variant (split: 9
# key blocks of 128 in one launch).
TILE_VARIANTS = [("MPT_EXT_ATTN_FWD_TILE", 128, "128x32", None),
                 ("MPT_EXT_ATTN_FWD_TILE", 128, "128x64", None),
                 *(("MPT_EXT_ATTN_BWD_TILE", d, tile, dq) for d, tile in ((64, "128x64"),
                                                                          (128, "128x32"))
                   for dq in ("atomic", "split", "separate"))]


@pytest.mark.parametrize("device,dtype,variable,head_dim,tile,dq", devices(
    "attn", cpu=[], cuda=[(dt, *v) for dt in CUDA_DTYPES for v in TILE_VARIANTS]))
def test_tile_variants(device, dtype, variable, head_dim, tile, dq, monkeypatch):
    backward = variable == "MPT_EXT_ATTN_BWD_TILE"
    listing = mpt_ext._library.ATTN_BWD_TILES if backward else mpt_ext._library.ATTN_FWD_TILES
    if head_dim not in listing:
        pytest.skip(f"head-dim bucket {head_dim} not compiled (MPT_EXT_HEAD_DIMS)")
    assert tile in listing[head_dim][1:]
    monkeypatch.setenv(variable, tile)
    if dq is not None:
        monkeypatch.setenv("MPT_EXT_ATTN_BWD_DQ", dq)
    check_many_blocks(check_bwd if backward else check_fwd, head_dim, dtype, device)


# The sm_90a forward (csrc/attn/cuda/sm90, MPT_EXT_ATTN_FWD_KERNEL=sm90) on an H100 / H200:
# the many-block sizes and docs/DESIGN.md's mask grid at odd sizes, each head dim it covers
# (96 and 40 run zero-padded in the 128 and 64 buckets); the backward on its lse.
SM90_HEAD_DIMS = (40, 64, 96, 128)


def _sm90_or_skip(monkeypatch):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90 forward needs an sm_90 GPU")
    monkeypatch.setenv("MPT_EXT_ATTN_FWD_KERNEL", "sm90")


@pytest.mark.parametrize("device,dtype,head_dim", devices(
    "attn", cpu=[], cuda=[(dt, d) for dt in CUDA_DTYPES for d in SM90_HEAD_DIMS]))
def test_sm90_forward(device, dtype, head_dim, monkeypatch):
    _sm90_or_skip(monkeypatch)
    check_many_blocks(check_fwd, head_dim, dtype, device)
    for causal, window in MASKS:
        for seqlen_q, seqlen_k in ((1, 239), (239, 1), (113, 113), (300, 1025)):
            q, k, v = random_qkv(2, seqlen_q, seqlen_k, 4, 2, head_dim, dtype, device=device)
            check_fwd(q, k, v, alibi_slopes=make_slopes("batch", 2, 4, device=device),
                      causal=causal, window_size=window)


@pytest.mark.parametrize("device,dtype", devices("attn", cpu=[], cuda=[(dt,) for dt in CUDA_DTYPES]))
def test_sm90_forward_then_backward(device, dtype, monkeypatch):
    _sm90_or_skip(monkeypatch)
    check_many_blocks(check_bwd, 128, dtype, device)


def test_backward_slopes_without_grad():
    # Slopes given but frozen: no d(slopes), q/k/v grads still right.
    q, k, v = random_qkv(2, 17, 17, 3, 3, 32, torch.float32, requires_grad=True)
    slopes = make_slopes("mpt", 2, 3)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=True)
    assert slopes.grad is None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_backward_rows_without_keys(dtype):
    q, k, v = random_qkv(2, 40, 17, 4, 2, 32, dtype, requires_grad=True)
    slopes = make_slopes("batch", 2, 4, requires_grad=True)
    dq, dk, dv, ds = check_bwd(q, k, v, alibi_slopes=slopes, causal=True)
    assert torch.all(dq[:, :23] == 0)  # rows that see no key get no gradient
    for g in (dq, dk, dv, ds):
        assert torch.isfinite(g).all()


GRADCHECK_CASES = [
    dict(causal=False),
    dict(causal=True),
    dict(causal=True, window_size=(2, -1)),
    dict(window_size=(1, 2)),
    dict(softcap=1.5),
    dict(causal=True, softcap=2.0, window_size=(3, 1)),
]


@pytest.mark.parametrize("kw", GRADCHECK_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("slopes_shape", [None, "head", "batch"])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(3, 5), (5, 3)], ids=str)
def test_gradcheck(kw, slopes_shape, seqlen_q, seqlen_k):
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 4, 2, 4, torch.float64, requires_grad=True)
    inputs = [q, k, v]
    if slopes_shape is not None:
        shape = (4,) if slopes_shape == "head" else (2, 4)
        # float64 slopes (allowed with float64 q on CPU) so that gradcheck can perturb them
        inputs.append((torch.rand(shape, dtype=torch.float64) * 0.5).requires_grad_(True))

    def fn(q, k, v, slopes=None):
        return mpt_ext.flash_attn_func(q, k, v, alibi_slopes=slopes, **kw)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("device,dtype", devices(
    "attn", cpu=[(torch.float32,), (torch.bfloat16,)], cuda=[(dt,) for dt in CUDA_DTYPES]))
@pytest.mark.parametrize("slopes_grad", [True, False])
@pytest.mark.parametrize("dq", ["", "split"])
def test_deterministic_backward(device, dtype, slopes_grad, dq, monkeypatch):
    # On CUDA deterministic=True keeps dQ off the atomic path: trainable slopes run the
    # separate dQ kernel; frozen ones split where it fills the GPU, else separate (this grid
    # of 4 (batch, kv head) pairs: separate), and "split" forces it: 1100 keys, 18 key blocks
    # in launches of 16 and 2, so two launches add into slices 0 and 1.
    monkeypatch.setenv("MPT_EXT_ATTN_BWD_DQ", dq)
    seqlen_q, seqlen_k, nheads, head_dim = {"cpu": (113, 77, 6, 64),
                                            "cuda": (1000, 1100, 8, 128)}[device]
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, nheads, 2, head_dim, dtype, device=device,
                         requires_grad=True)
    slopes = make_slopes("batch", 2, nheads, device=device, requires_grad=slopes_grad)
    dout = torch.randn_like(q)

    def grads():
        out = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=slopes,
                                      deterministic=True)
        return torch.autograd.grad(out, (q, k, v, slopes)[:4 if slopes_grad else 3], dout)

    first, second = grads(), grads()
    for name, a, b in zip(("dq", "dk", "dv", "dslopes"), first, second):
        assert torch.equal(a, b), f"{name} differs between two deterministic backward runs"


def test_lse_is_not_differentiable():
    # The kernels take no d(lse): lse must say so instead of giving a silent zero gradient.
    q, k, v = random_qkv(1, 5, 7, 2, 1, 8, torch.float32, requires_grad=True)
    out, lse, _ = mpt_ext.flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.requires_grad and not lse.requires_grad


@pytest.mark.parametrize("device,dtype,seqlen_q,seqlen_k,head_dim", devices(
    "attn", cpu=[(dt, *seqlens, 64) for dt in (torch.float32, torch.bfloat16)
                 for seqlens in LONG_SEQLENS],
    cuda=[(dt, *seqlens, d) for dt in CUDA_DTYPES for seqlens in LONG_SEQLENS
          for d in (64, 128, 256)],
    cpu_marks=[pytest.mark.slow]))
def test_forward_long(device, dtype, seqlen_q, seqlen_k, head_dim):
    # docs/DESIGN.md's long sizes; the reference materialises seqlen_q x seqlen_k scores.
    q, k, v = random_qkv(1, seqlen_q, seqlen_k, 2, 1, head_dim, dtype, device=device)
    check_fwd(q, k, v, causal=True, alibi_slopes=make_slopes("mpt", 1, 2, device=device))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_backward_long(dtype):
    q, k, v = random_qkv(1, 1000, 1000, 2, 1, 64, dtype, requires_grad=True)
    slopes = make_slopes("batch", 1, 2, requires_grad=True)
    check_bwd(q, k, v, alibi_slopes=slopes, causal=True, window_size=(300, -1))


@pytest.mark.parametrize("layout", ["sliced", "expanded"])
def test_strided_slopes(layout):
    # (batch, nheads) slopes that are a view: a column slice (row stride > nheads) or a
    # per-head vector expanded over the batch (row stride 0). d(slopes) must land right.
    q, k, v = random_qkv(2, 9, 11, 4, 2, 16, torch.float32, requires_grad=True)
    if layout == "sliced":
        slopes = torch.rand(2, 8)[:, :4].requires_grad_(True)
        check_bwd(q, k, v, alibi_slopes=slopes, causal=True)
    else:
        leaf = torch.rand(4, requires_grad=True)
        check_fwd(q.detach(), k.detach(), v.detach(), alibi_slopes=leaf.detach().expand(2, 4))
        dout = torch.randn_like(q)
        ours = torch.autograd.grad(mpt_ext.flash_attn_func(q, k, v, alibi_slopes=leaf.expand(2, 4)),
                                   leaf, dout)[0]
        ref = torch.autograd.grad(mpt_ext.flash_attn_func(q, k, v, alibi_slopes=leaf), leaf, dout)[0]
        torch.testing.assert_close(ours, ref)


def test_large_scores_stable():
    # scores in the hundreds: the online softmax must subtract its running max
    q, k, v = random_qkv(2, 33, 40, 2, 2, 32, torch.float32)
    check_fwd(q * 40, k, v, causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_inputs_propagate(dtype):
    # A NaN score must surface as NaN (as in flash-attn and SDPA), not look like a masked row.
    q = torch.randn(1, 9, 2, 16, dtype=dtype)
    k = torch.randn(1, 9, 2, 16, dtype=dtype)
    v = torch.randn_like(k)
    k_nan = k.clone()
    k_nan[0, 1, 0, 0] = float("nan")  # one key of head 0
    out, lse, _ = mpt_ext.flash_attn_func(q, k_nan, v, return_attn_probs=True)
    assert out[:, :, 0].isnan().all() and lse[:, 0].isnan().all()
    assert out[:, :, 1].isfinite().all()
    q_nan = q.clone()
    q_nan[0, 3, 1, 0] = float("nan")  # one query row of head 1
    out, lse, _ = mpt_ext.flash_attn_func(q_nan, k, v, causal=True, return_attn_probs=True)
    assert out[0, 3, 1].isnan().all() and lse[0, 1, 3].isnan()
    assert out[0, 2, 1].isfinite().all() and out[0, 4, 1].isfinite().all()


# ---- CUDA only -----------------------------------------------------------------------------
@cuda_only("attn")
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_varlen(dtype, causal):
    lq, lk = [5, 0, 130, 1, 333, 64], [7, 0, 130, 1, 200, 500]
    q = torch.randn(sum(lq), 6, 128, dtype=dtype, device="cuda", requires_grad=True)
    k = torch.randn(sum(lk), 2, 128, dtype=dtype, device="cuda", requires_grad=True)
    v = torch.randn(sum(lk), 2, 128, dtype=dtype, device="cuda", requires_grad=True)
    cu_q, cu_k = cu_seqlens(lq, "cuda"), cu_seqlens(lk, "cuda")
    slopes = make_slopes("batch", len(lq), 6, device="cuda", requires_grad=True)
    kw = dict(causal=causal, alibi_slopes=slopes)
    out, lse, _ = mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk),
                                                 return_attn_probs=True, **kw)
    ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, **kw)
    low_out, low_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, compute_dtype=dtype, **kw)
    assert_close_to_ref("out", out, ref_out, low_out)
    assert_close_to_ref("lse", lse, ref_lse, low_lse, dtype=dtype)
    dout = torch.randn_like(out)
    inputs = (q, k, v, slopes)
    ours = torch.autograd.grad(out, inputs, dout)
    ref = torch.autograd.grad(ref_out, inputs, dout.double())
    low = torch.autograd.grad(low_out, inputs, dout)
    for name, g, r, lo in zip(("dq", "dk", "dv", "dslopes"), ours, ref, low):
        assert_close_to_ref(name, g, r, lo, dtype=dtype)
