"""Shared helpers for the attention tests: random inputs, output poisoning and the
tolerance rule of docs/DESIGN.md, Numerics (our error vs a float64 reference must be at most
twice the error of PyTorch's own math in the input dtype, plus a small floor)."""
from __future__ import annotations

import contextlib

import torch

import mpt_ext
from mpt_ext.reference import attention_ref, attention_varlen_ref

# Floors scale with the magnitude of the reference (gradients such as d(slopes) are sums of
# many terms and can be much larger than 1), and are at least one unit in the last place of
# the dtype at that magnitude: where PyTorch's own math happens to be exact (e.g. a row with a
# single visible key, p = 1), a correct fp32-accumulating kernel may still round one ulp away.
ABS_FLOOR = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-3,
    torch.float16: 1e-3,
}

DTYPE_IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16",
             torch.float16: "fp16"}

# (causal, window_size) pairs covering the mask shapes: none, causal, left / right / both
# window bounds, causal with a left window.
MASKS = [
    (False, (-1, -1)),
    (True, (-1, -1)),
    (False, (5, -1)),
    (False, (-1, 3)),
    (False, (7, 2)),
    (True, (9, -1)),
]
MASK_IDS = ["full", "causal", "left5", "right3", "win7_2", "causal_left9"]


@contextlib.contextmanager
def one_thread():
    """Run the (many tiny ops of the) reference on one thread: on a loaded 2-core machine each
    multi-threaded tiny op can wait ~10 ms for a descheduled worker, 100x the op itself.
    Our kernels keep running with all threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def random_qkv(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype,
               device="cpu", requires_grad=False):
    """Fresh N(0, 1) q (batch, seqlen_q, nheads, d), k and v (batch, seqlen_k, nheads_k, d)."""
    q = torch.randn(batch, seqlen_q, nheads, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, seqlen_k, nheads_k, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, seqlen_k, nheads_k, head_dim, device=device, dtype=dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def make_slopes(kind, batch, nheads, device="cpu", requires_grad=False):
    """None, MPT's slopes (nheads,) ("mpt"), or random positive fp32 slopes (batch, nheads)
    ("batch") / (nheads,) ("head")."""
    if kind is None:
        return None
    if kind == "mpt":
        s = mpt_ext.alibi_slopes(nheads).to(device)
    elif kind == "head":
        s = torch.rand(nheads, device=device) * 0.5
    elif kind == "batch":
        s = torch.rand(batch, nheads, device=device) * 0.5
    else:
        raise ValueError(kind)
    return s.requires_grad_(requires_grad)


def cu_seqlens(lengths, device="cpu"):
    """int32 (len(lengths) + 1) prefix sums starting at 0."""
    c = [0]
    for n in lengths:
        c.append(c[-1] + n)
    return torch.tensor(c, dtype=torch.int32, device=device)


def poison_allocator(*like: torch.Tensor):
    """Fill and free NaN buffers of the outputs' sizes, so that outputs the op allocates
    with empty() are likely to start as NaN (reliably with CUDA's caching allocator, often
    with glibc malloc): a row the kernel forgets to write then shows up as NaN."""
    for _ in range(2):
        bufs = [torch.full((max(t.numel(), 1),), float("nan"), dtype=t.dtype, device=t.device)
                for t in like if t.is_floating_point()]
        del bufs


def max_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |a - ref| over the entries where ref is finite (NaN in a counts as infinite)."""
    a = a.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    finite = torch.isfinite(ref)
    if not finite.any():
        return 0.0
    diff = (a - ref)[finite].abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    return diff.max().item()


def assert_close_to_ref(name, ours, ref64, ref_low, dtype=None):
    """docs/DESIGN.md's rule (Numerics): max|ours - ref64| <= 2 * max|ref_low - ref64| + floor,
    where ref_low is PyTorch's math in the input dtype. Infinite reference entries (lse of rows
    with no visible key) must be matched exactly; NaN never passes."""
    dtype = dtype or ours.dtype
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    ours64 = ours.detach().to(torch.float64)
    ref64 = ref64.detach().to(torch.float64)
    assert not torch.isnan(ours64).any(), f"{name}: NaN in output"
    inf = torch.isinf(ref64)
    assert torch.equal(torch.isinf(ours64), inf) and torch.equal(ours64[inf], ref64[inf]), \
        f"{name}: infinities differ from the reference"
    err = max_error(ours64, ref64)
    base = max_error(ref_low, ref64)
    scale = max(1.0, ref64[~inf].abs().max().item()) if (~inf).any() else 1.0
    tol = 2 * base + max(ABS_FLOOR[dtype], torch.finfo(dtype).eps) * scale
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g} (PyTorch {dtype} error {base:.3g})"


def check_fwd(q, k, v, **kw):
    """flash_attn_func (out and lse) against attention_ref; returns (out, lse)."""
    with one_thread():
        ref_out, ref_lse = attention_ref(q, k, v, **kw)
        low_out, low_lse = attention_ref(q, k, v, compute_dtype=q.dtype, **kw)
    poison_allocator(q, ref_lse.float())
    out, lse, probs = mpt_ext.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    assert probs is None
    assert out.dtype == q.dtype and out.shape == q.shape and out.device == q.device
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    assert_close_to_ref("out", out, ref_out, low_out)
    assert_close_to_ref("lse", lse, ref_lse, low_lse, dtype=lse_dtype(q.dtype))
    return out, lse


def lse_dtype(dtype):
    """The lse is fp32 whatever the input: with float64 inputs hold it to fp32's floor."""
    return torch.float32 if dtype == torch.float64 else dtype


def _grads(fn, inputs, dout):
    out = fn()
    grads = torch.autograd.grad(out, inputs, dout, allow_unused=True)
    return out, grads


def check_bwd(q, k, v, alibi_slopes=None, deterministic=False, **kw):
    """Gradients of flash_attn_func w.r.t. q, k, v (and alibi_slopes if it requires grad)
    against autograd through attention_ref in float64, with the low-dtype reference as the
    error baseline."""
    inputs = [q, k, v] + ([alibi_slopes] if alibi_slopes is not None and
                          alibi_slopes.requires_grad else [])
    dout = torch.randn_like(q)
    ours_out, ours = _grads(lambda: mpt_ext.flash_attn_func(
        q, k, v, alibi_slopes=alibi_slopes, deterministic=deterministic, **kw), inputs, dout)
    with one_thread():
        _, ref64 = _grads(lambda: attention_ref(q, k, v, alibi_slopes=alibi_slopes, **kw)[0],
                          inputs, dout.double())
        _, low = _grads(lambda: attention_ref(q, k, v, alibi_slopes=alibi_slopes,
                                              compute_dtype=q.dtype, **kw)[0], inputs, dout)
    names = ["dq", "dk", "dv", "dslopes"]
    for name, g, r, lo, x in zip(names, ours, ref64, low, inputs):
        assert g is not None and g.shape == x.shape and g.dtype == x.dtype, name
        assert_close_to_ref(name, g, r, lo, dtype=q.dtype)
    return ours


def dslopes_scale(q, k, v, alibi_slopes, dout, causal=False, window_size=(-1, -1),
                  softcap=0.0):
    """sum |dS_ij| |distance_ij| in float64 per slopes entry (the slopes' shape): the natural
    scale of d(slopes), a sum of dS * -|distance| whose terms mostly cancel."""
    from mpt_ext.reference import _visible
    batch, sq, nheads, d = q.shape
    sk, group = k.shape[1], nheads // k.shape[2]
    q64, k64, v64 = (t.detach().double().cpu() for t in (q, k, v))
    k64, v64 = k64.repeat_interleave(group, 2), v64.repeat_interleave(group, 2)
    scores = torch.einsum("bihd,bjhd->bhij", q64, k64) * d ** -0.5
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    i, j = torch.arange(sq).view(-1, 1), torch.arange(sk).view(1, -1)
    distance = (i + sk - sq - j).abs().double()
    slopes = alibi_slopes.detach().double().cpu()
    scores = scores - slopes.view(-1 if slopes.dim() == 2 else 1, nheads, 1, 1) * distance
    scores = scores.masked_fill(~_visible(sq, sk, causal, window_size, "cpu"), float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num()  # rows with no visible key: 0
    dp = torch.einsum("bihd,bjhd->bhij", dout.double().cpu(), v64)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    per_batch = (ds.abs() * distance).sum((-1, -2))
    return per_batch if slopes.dim() == 2 else per_batch.sum(0)


def check_dslopes_fp32_accurate(q, k, v, alibi_slopes, **kw):
    """d(slopes) within 2 fp32 epsilons of dslopes_scale, per entry: far inside docs/DESIGN.md's
    rule. With D_i = dot(dO_i, O_i) read from the 16-bit output (as FlashAttention's dq and dk
    use it), D's rounding times the distances lands in every row's term: ~1e-5 of the scale,
    about once in 40 runs past the rule. Our kernels use the D that their own P and dP imply
    (csrc/attn/cuda/attn_bwd_kernels.cuh, DslopeRowSums): measured below 1e-8."""
    dout = torch.randn_like(q)
    out = mpt_ext.flash_attn_func(q, k, v, alibi_slopes=alibi_slopes, **kw)
    ours = torch.autograd.grad(out, alibi_slopes, dout)[0]
    with one_thread():
        ref = torch.autograd.grad(attention_ref(q, k, v, alibi_slopes=alibi_slopes, **kw)[0],
                                  alibi_slopes, dout.double())[0]
        scale = dslopes_scale(q, k, v, alibi_slopes, dout, **kw).to(ref.device)
    err = (ours.double() - ref).abs()
    bound = 2 * torch.finfo(torch.float32).eps * scale + 1e-30
    worst = (err / bound).max().item()
    assert worst <= 1, f"dslopes: error {worst:.3g}x the fp32 bound (max error {err.max():.3g})"


# ---- varlen (packed sequences) -------------------------------------------------------------
def packed_inputs(lengths_q, lengths_k, nheads, nheads_k, head_dim, dtype, requires_grad=False,
                  extra_q_rows=0):
    total_q, total_k = sum(lengths_q) + extra_q_rows, sum(lengths_k)
    q = torch.randn(total_q, nheads, head_dim, dtype=dtype)
    k = torch.randn(total_k, nheads_k, head_dim, dtype=dtype)
    v = torch.randn(total_k, nheads_k, head_dim, dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, cu_seqlens(lengths_q), cu_seqlens(lengths_k)


def run_varlen(q, k, v, cu_q, cu_k, **kw):
    max_q = int((cu_q[1:] - cu_q[:-1]).max()) if cu_q.numel() > 1 else 0
    max_k = int((cu_k[1:] - cu_k[:-1]).max()) if cu_k.numel() > 1 else 0
    return mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


def check_varlen_fwd(q, k, v, cu_q, cu_k, **kw):
    with one_thread():
        ref_out, ref_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, **kw)
        low_out, low_lse = attention_varlen_ref(q, k, v, cu_q, cu_k, compute_dtype=q.dtype, **kw)
    poison_allocator(q, ref_lse.float())
    out, lse, probs = run_varlen(q, k, v, cu_q, cu_k, return_attn_probs=True, **kw)
    assert probs is None and out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == torch.float32
    n = int(cu_q[-1])  # rows past cu_seqlens_q[-1] belong to no sequence
    assert_close_to_ref("out", out[:n], ref_out[:n], low_out[:n])
    assert_close_to_ref("lse", lse[:, :n], ref_lse[:, :n], low_lse[:, :n], dtype=q.dtype)
    return out, lse


def check_varlen_bwd(q, k, v, cu_q, cu_k, alibi_slopes=None, **kw):
    """Gradients of flash_attn_varlen_func w.r.t. q, k, v (and alibi_slopes if it requires
    grad) against autograd through attention_varlen_ref, as check_bwd."""
    inputs = [q, k, v] + ([alibi_slopes] if alibi_slopes is not None and
                          alibi_slopes.requires_grad else [])
    kw = dict(kw, alibi_slopes=alibi_slopes)
    dout = torch.randn_like(q)
    ours = torch.autograd.grad(run_varlen(q, k, v, cu_q, cu_k, **kw), inputs, dout)
    with one_thread():
        ref64 = torch.autograd.grad(attention_varlen_ref(q, k, v, cu_q, cu_k, **kw)[0], inputs,
                                    dout.double())
        low = torch.autograd.grad(attention_varlen_ref(q, k, v, cu_q, cu_k,
                                                       compute_dtype=q.dtype, **kw)[0],
                                  inputs, dout)
    for name, g, r, lo in zip(("dq", "dk", "dv", "dslopes"), ours, ref64, low):
        assert_close_to_ref(name, g, r, lo, dtype=q.dtype)
    return ours
