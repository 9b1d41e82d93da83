"""The attention API's contract beyond numerics: op registration (opcheck), torch.compile,
MPT's ALiBi slopes, and clear errors for bad input."""

import pytest
import torch

import mpt_ext
from mpt_ext._library import ops

from attention_helpers import cu_seqlens, random_qkv

HAS_CUDA = torch.cuda.is_available()


# ---- alibi_slopes ----------------------------------------------------------------------------
@pytest.mark.parametrize("n_heads", [1, 2, 3, 8, 12, 16, 24, 32])
def test_alibi_slopes_match_hf_mpt(n_heads):
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    # HF's MPT port multiplies slopes by positions (1 - seqlen .. 0); position -1 gives -slope
    bias = build_mpt_alibi_tensor(n_heads, 2)  # (n_heads, 1, 2)
    expected = -bias[:, 0, 0].float()
    got = mpt_ext.alibi_slopes(n_heads)
    assert got.dtype == torch.float32 and got.shape == (n_heads,)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_alibi_slopes_known_values():
    # power of two: 2^(-8 i / n), i = 1..n
    torch.testing.assert_close(mpt_ext.alibi_slopes(1), torch.tensor([2.0 ** -8]))
    torch.testing.assert_close(mpt_ext.alibi_slopes(4),
                               torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))
    # 3 heads: slopes of 4 heads, odd positions first, cut to 3
    torch.testing.assert_close(mpt_ext.alibi_slopes(3),
                               torch.tensor([2.0 ** -4, 2.0 ** -8, 2.0 ** -2]))
    # alibi_bias_max rescales the exponents
    torch.testing.assert_close(mpt_ext.alibi_slopes(2, alibi_bias_max=4.0),
                               torch.tensor([2.0 ** -2, 2.0 ** -4]))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_alibi_slopes_bad_heads(bad):
    with pytest.raises((ValueError, TypeError), match="n_heads"):
        mpt_ext.alibi_slopes(bad)


# ---- opcheck -------------------------------------------------------------------------------
def _fwd_args(varlen, slopes, requires_grad=True):
    q, k, v = random_qkv(2, 5, 7, 4, 2, 16, torch.float32, requires_grad=requires_grad)
    s = torch.rand(2, 4) if slopes else None
    if varlen:
        cu_q, cu_k = cu_seqlens([5, 5]), cu_seqlens([7, 7])
        q, k, v = (t.detach().flatten(0, 1).requires_grad_(requires_grad) for t in (q, k, v))
        return (q, k, v, cu_q, cu_k, 5, 7, s, 0.25, True, -1, -1, 0.0, False)
    return (q, k, v, None, None, 0, 0, s, 0.25, True, 3, -1, 1.5, False)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("slopes", [False, True])
def test_opcheck_attn_fwd(varlen, slopes):
    torch.library.opcheck(ops.attn_fwd.default, _fwd_args(varlen, slopes))


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("compute_dslopes", [False, True])
def test_opcheck_attn_bwd(varlen, compute_dslopes):
    args = _fwd_args(varlen, True, requires_grad=False)
    out, lse = ops.attn_fwd(*args)
    q, k, v, cu_q, cu_k, max_q, max_k, s, scale, causal, wl, wr, softcap, det = args
    bwd_args = (torch.randn_like(out), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, s, scale,
                causal, wl, wr, softcap, det, compute_dslopes)
    torch.library.opcheck(ops.attn_bwd.default, bwd_args)


@pytest.mark.parametrize("append", [False, True])
def test_opcheck_attn_kvcache(append):
    q = torch.randn(2, 3, 4, 16)
    k_cache, v_cache = torch.randn(2, 12, 2, 16), torch.randn(2, 12, 2, 16)
    k = torch.randn(2, 3, 2, 16) if append else None
    v = torch.randn(2, 3, 2, 16) if append else None
    seqlens = torch.tensor([2, 9], dtype=torch.int32)
    args = (q, k_cache, v_cache, k, v, None, None, seqlens, None, None, None, torch.rand(4), 0.25,
            True, -1, -1, 0.0, True, 0)
    torch.library.opcheck(ops.attn_kvcache.default, args)


# ---- torch.compile -------------------------------------------------------------------------
class _TinyAttention(torch.nn.Module):
    def __init__(self, d_model=32, nheads=4, varlen=False):
        super().__init__()
        self.nheads, self.varlen = nheads, varlen
        self.wqkv = torch.nn.Linear(d_model, 3 * d_model)
        self.slopes = torch.nn.Parameter(mpt_ext.alibi_slopes(nheads))

    def forward(self, x, cu=None, max_len=0):
        qkv = self.wqkv(x).unflatten(-1, (3, self.nheads, -1))
        q, k, v = qkv.unbind(-3)
        if self.varlen:
            out = mpt_ext.flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, causal=True,
                                                 alibi_slopes=self.slopes)
        else:
            out = mpt_ext.flash_attn_func(q, k, v, causal=True, alibi_slopes=self.slopes)
        return out.flatten(-2)


def _compile_matches_eager(backend, varlen, max_len=7):
    model = _TinyAttention(varlen=varlen)
    if varlen:
        x = torch.randn(12, 32)
        args = (x, cu_seqlens([5, 0, 7]), max_len)
    else:
        x = torch.randn(2, 9, 32)
        args = (x,)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out_c = compiled(*args)
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(*args)
    out_e.square().sum().backward()
    torch.testing.assert_close(out_c, out_e)
    for gc, p in zip(grads_c, model.parameters()):
        torch.testing.assert_close(gc, p.grad)
    assert model.slopes.grad.abs().sum() > 0  # trainable slopes got a gradient


@pytest.mark.parametrize("varlen", [False, True])
def test_compile_fullgraph_aot_eager(varlen):
    _compile_matches_eager("aot_eager", varlen)


def test_compile_varlen_huge_max_seqlen():
    # max_seqlen is an upper bound: a huge one traces (fake kernels) and runs bounded
    _compile_matches_eager("aot_eager", True, max_len=2**40)


@pytest.mark.slow
@pytest.mark.parametrize("varlen", [False, True])
def test_compile_fullgraph_inductor(varlen):
    _compile_matches_eager("inductor", varlen)


# ---- bad input -----------------------------------------------------------------------------
def _qkv(**over):
    q, k, v = random_qkv(2, 5, 6, 4, 2, 16, torch.float32)
    d = dict(q=q, k=k, v=v)
    d.update(over)
    return d["q"], d["k"], d["v"]


def test_dropout_not_implemented():
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="dropout"):
        mpt_ext.flash_attn_func(q, k, v, dropout_p=0.1)
    cu = cu_seqlens([5])
    with pytest.raises(NotImplementedError, match="dropout"):
        mpt_ext.flash_attn_varlen_func(q[0], k[0, :5], v[0, :5], cu, cu, 5, 5, dropout_p=0.5)


@pytest.mark.parametrize("case,match", [
    ("int_q", "q must be"),
    ("mixed_k", "k must have the dtype"),
    ("mixed_v", "v must have the dtype"),
    ("rank_q", "q must have 4 dimensions"),
    ("rank_k", "k must have 4 dimensions"),
    ("head_dim_big", "head dim"),
    ("head_dim_mismatch", "head dim"),
    ("gqa_ratio", "heads"),
    ("kv_shape", "k and v"),
    ("batch_mismatch", "batch"),
    ("noncontig_q", "q must have a contiguous last dimension"),
    ("noncontig_v", "v must have a contiguous last dimension"),
    ("window", "window_size"),
    ("window_pair", "window_size"),
    ("softcap", "softcap"),
    ("slopes_shape", "alibi_slopes must have shape"),
    ("slopes_batch_shape", "alibi_slopes must have shape"),
    ("slopes_fp64_bf16", "alibi_slopes must be float32"),
    ("slopes_bf16", "alibi_slopes must be float32"),
])
def test_bad_input_batched(case, match):
    kw = {}
    q, k, v = _qkv()
    if case == "int_q":
        q, k, v = (torch.randint(0, 3, (2, 5, 4, 16)),) * 3
    elif case == "mixed_k":
        k = k.half()
    elif case == "mixed_v":
        v = v.bfloat16()
    elif case == "rank_q":
        q = q[0]
    elif case == "rank_k":
        k = k[..., None]
    elif case == "head_dim_big":
        q, k, v = _qkv(**{n: torch.randn(2, 5, h, 264) for n, h in (("q", 4), ("k", 2), ("v", 2))})
    elif case == "head_dim_mismatch":
        k = torch.randn(2, 6, 2, 32)
    elif case == "gqa_ratio":
        k, v = torch.randn(2, 6, 3, 16), torch.randn(2, 6, 3, 16)
    elif case == "kv_shape":
        v = torch.randn(2, 7, 2, 16)
    elif case == "batch_mismatch":
        k, v = torch.randn(3, 6, 2, 16), torch.randn(3, 6, 2, 16)
    elif case == "noncontig_q":
        q = torch.randn(2, 5, 4, 32)[..., ::2]
    elif case == "noncontig_v":
        v = torch.randn(2, 6, 2, 16, 2)[..., 0]
    elif case == "window":
        kw["window_size"] = (-2, 3)
    elif case == "window_pair":
        kw["window_size"] = (1, 2, 3)
    elif case == "softcap":
        kw["softcap"] = -1.0
    elif case == "slopes_shape":
        kw["alibi_slopes"] = torch.rand(3)
    elif case == "slopes_batch_shape":
        kw["alibi_slopes"] = torch.rand(3, 4)
    elif case == "slopes_fp64_bf16":
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
        kw["alibi_slopes"] = torch.rand(4, dtype=torch.float64)
    elif case == "slopes_bf16":
        kw["alibi_slopes"] = torch.rand(4, dtype=torch.bfloat16)
    with pytest.raises((ValueError, TypeError), match=match):
        mpt_ext.flash_attn_func(q, k, v, **kw)


def test_device_mismatch():
    q, k, v = _qkv()
    other = "cuda" if HAS_CUDA else "meta"
    with pytest.raises((ValueError, RuntimeError), match="device"):
        mpt_ext.flash_attn_func(q, k.to(other), v)
    with pytest.raises((ValueError, RuntimeError), match="device"):
        mpt_ext.flash_attn_func(q, k, v, alibi_slopes=torch.rand(4, device=other))


def test_not_a_tensor():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        mpt_ext.flash_attn_func(q, k.tolist(), v)


@pytest.mark.parametrize("case,match", [
    ("decreasing", "cu_seqlens_q must be non-decreasing"),
    ("not_int32", "cu_seqlens_k must be int32"),
    ("not_zero_start", r"cu_seqlens_q\[0\] must be 0"),
    ("size_mismatch", "same size"),
    ("rank", "cu_seqlens_q must be 1-D"),
    ("last_over_total", "exceeds the number of tokens"),
    ("len_over_max", "max_seqlen_q = 5 is smaller than the longest sequence"),
    ("len_over_max_k", "max_seqlen_k = 6 is smaller than the longest sequence"),
    ("max_negative", "max_seqlen_q must be >= 0"),
    ("max_float", "max_seqlen_q must be an int"),
    ("max_none", "max_seqlen_k must be an int"),
    ("slopes_list", "alibi_slopes must be a float32 torch.Tensor"),
    ("not_tensor", "cu_seqlens_q must be an int32"),
    ("q_rank", "q must have 3 dimensions"),
    ("slopes_shape", "alibi_slopes must have shape"),
])
def test_bad_input_varlen(case, match):
    q, k, v = torch.randn(10, 4, 16), torch.randn(12, 2, 16), torch.randn(12, 2, 16)
    cu_q, cu_k = cu_seqlens([4, 6]), cu_seqlens([5, 7])
    max_q, max_k, kw = 6, 7, {}
    if case == "decreasing":
        cu_q = torch.tensor([0, 6, 4], dtype=torch.int32)
    elif case == "not_int32":
        cu_k = cu_k.long()
    elif case == "not_zero_start":
        cu_q = torch.tensor([1, 4, 10], dtype=torch.int32)
    elif case == "size_mismatch":
        cu_k = cu_seqlens([5, 3, 4])
    elif case == "rank":
        cu_q = cu_q[None]
    elif case == "last_over_total":
        cu_q = cu_seqlens([4, 7])
        max_q = 7
    elif case == "len_over_max":
        max_q = 5
    elif case == "len_over_max_k":
        max_k = 6
    elif case == "max_negative":
        max_q = -1
    elif case == "max_float":
        max_q = 6.0
    elif case == "max_none":
        max_k = None
    elif case == "slopes_list":
        kw["alibi_slopes"] = [0.5] * 4
    elif case == "not_tensor":
        cu_q = [0, 4, 10]
    elif case == "q_rank":
        q = q[None]
    elif case == "slopes_shape":
        kw["alibi_slopes"] = torch.rand(3, 4)  # batch is 2
    with pytest.raises((ValueError, TypeError), match=match):
        mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


def test_op_rejects_negative_max_seqlen():
    q, k, v = torch.randn(10, 4, 16), torch.randn(12, 2, 16), torch.randn(12, 2, 16)
    cu_q, cu_k = cu_seqlens([4, 6]), cu_seqlens([5, 7])
    with pytest.raises(ValueError, match="max_seqlen_q and max_seqlen_k must be >= 0"):
        ops.attn_fwd(q, k, v, cu_q, cu_k, 6, -1, None, 0.25, False, -1, -1, 0.0, False)


def _argument_type_cases():
    q, k, v = _qkv()
    cu = cu_seqlens([5])
    kc, vc = torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    fa, va, kv = mpt_ext.flash_attn_func, mpt_ext.flash_attn_varlen_func, \
        mpt_ext.flash_attn_with_kvcache
    return {
        "slopes_list": (lambda: fa(q, k, v, alibi_slopes=[0.5] * 4), "alibi_slopes must be"),
        "scale_str": (lambda: fa(q, k, v, softmax_scale="0.25"), "softmax_scale must be a float"),
        "scale_list": (lambda: fa(q, k, v, softmax_scale=[0.25]), "softmax_scale must be a float"),
        "softcap_none": (lambda: fa(q, k, v, softcap=None), "softcap must be a float"),
        "causal_tensor": (lambda: fa(q, k, v, causal=torch.ones(2)), "causal must be a bool"),
        "deterministic_tensor": (lambda: fa(q, k, v, deterministic=torch.ones(3)),
                                 "deterministic must be a bool"),
        "varlen_softcap": (lambda: va(q[0], k[0, :5], v[0, :5], cu, cu, 5, 5, softcap="1"),
                           "softcap must be a float"),
        "kv_k_list": (lambda: kv(q, kc, vc, k=[0.0], v=[0.0], cache_seqlens=1),
                      "k must be a torch.Tensor"),
        "kv_slopes_list": (lambda: kv(q, kc, vc, alibi_slopes=[0.5] * 4), "alibi_slopes must be"),
        "kv_seqlens_float": (lambda: kv(q, kc, vc, cache_seqlens=1.5), "cache_seqlens must be"),
        "kv_seqlens_bool": (lambda: kv(q, kc, vc, cache_seqlens=True), "cache_seqlens must be"),
        "kv_num_splits": (lambda: kv(q, kc, vc, num_splits="2"), "num_splits must be an int"),
        "kv_softcap": (lambda: kv(q, kc, vc, softcap=[1.0]), "softcap must be a float"),
        "slopes_bias_max": (lambda: mpt_ext.alibi_slopes(4, alibi_bias_max="8"),
                            "alibi_bias_max must be a float"),
    }


@pytest.mark.parametrize("case", list(_argument_type_cases()))
def test_argument_types_are_named(case):
    call, match = _argument_type_cases()[case]
    with pytest.raises(TypeError, match=match):
        call()


def test_varlen_cu_seqlens_device():
    q, k, v = torch.randn(10, 4, 16), torch.randn(12, 2, 16), torch.randn(12, 2, 16)
    other = "cuda" if HAS_CUDA else "meta"
    cu_q, cu_k = cu_seqlens([4, 6], device=other), cu_seqlens([5, 7])
    with pytest.raises((ValueError, RuntimeError), match="device"):
        mpt_ext.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 7)


@pytest.mark.parametrize("case,match", [
    ("overflow", "does not fit in the cache"),
    ("negative", "does not fit in the cache"),
    ("seqlens_dtype", "cache_seqlens must be int32"),
    ("seqlens_shape", "cache_seqlens must have shape"),
    ("k_without_v", "k and v must be given together"),
    ("append_without_seqlens", "needs cache_seqlens"),
    ("new_k_shape", "k and v must have shape"),
    ("cache_dtype", "k_cache must have the dtype"),
    ("cache_rank", "k_cache must have 4 dimensions"),
    ("cache_batch", "k_cache must"),
    ("num_splits", "num_splits"),
    ("gqa", "heads"),
])
def test_bad_input_kvcache(case, match):
    q = torch.randn(2, 1, 4, 16)
    k_cache, v_cache = torch.randn(2, 10, 2, 16), torch.randn(2, 10, 2, 16)
    k, v = torch.randn(2, 1, 2, 16), torch.randn(2, 1, 2, 16)
    seqlens = torch.tensor([3, 9], dtype=torch.int32)
    kw = {}
    if case == "overflow":
        seqlens = torch.tensor([3, 10], dtype=torch.int32)
    elif case == "negative":
        seqlens = torch.tensor([-1, 3], dtype=torch.int32)
    elif case == "seqlens_dtype":
        seqlens = seqlens.long()
    elif case == "seqlens_shape":
        seqlens = torch.tensor([3, 4, 5], dtype=torch.int32)
    elif case == "k_without_v":
        v = None
    elif case == "append_without_seqlens":
        seqlens = None
    elif case == "new_k_shape":
        k = torch.randn(2, 1, 4, 16)
    elif case == "cache_dtype":
        k_cache = k_cache.half()
    elif case == "cache_rank":
        k_cache = k_cache[0]
    elif case == "cache_batch":
        k_cache, v_cache = k_cache[:1], v_cache[:1]
    elif case == "num_splits":
        kw["num_splits"] = -1
    elif case == "gqa":
        k_cache, v_cache = torch.randn(2, 10, 3, 16), torch.randn(2, 10, 3, 16)
        k, v = torch.randn(2, 1, 3, 16), torch.randn(2, 1, 3, 16)
    kc0 = k_cache.clone() if k_cache.dim() == 4 else None
    with pytest.raises((ValueError, TypeError), match=match):
        mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=seqlens, **kw)
    if kc0 is not None:
        assert torch.equal(k_cache, kc0), "a rejected call must not write the cache"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device to hold the tensors")
def test_cuda_without_kernels_not_implemented():
    # never a silent slow path: a build without a CUDA kernel says so
    q, k, v = (t.cuda() for t in _qkv())
    if mpt_ext.CUDA_ATTN and mpt_ext.CUDA_ATTN_KVCACHE:
        pytest.skip("this build has the CUDA attention and decode kernels")
    if not mpt_ext.CUDA_ATTN:
        with pytest.raises(NotImplementedError):
            mpt_ext.flash_attn_func(q, k, v)
        cu = cu_seqlens([5, 5], device="cuda")
        with pytest.raises(NotImplementedError):
            mpt_ext.flash_attn_varlen_func(q.flatten(0, 1), k[:, :5].flatten(0, 1),
                                           v[:, :5].flatten(0, 1), cu, cu, 5, 5)
    if not mpt_ext.CUDA_ATTN_KVCACHE:
        with pytest.raises(NotImplementedError):
            mpt_ext.flash_attn_with_kvcache(q, k, v, cache_seqlens=6)


def test_huge_windows_mean_unbounded():
    # windows near 2**63 must not overflow the kernels' position arithmetic
    q = torch.randn(1, 10, 2, 16)
    k = torch.randn(1, 10, 2, 16)
    big = 2**63 - 1
    torch.testing.assert_close(mpt_ext.flash_attn_func(q, k, k, window_size=(big, big)),
                               mpt_ext.flash_attn_func(q, k, k))
    torch.testing.assert_close(mpt_ext.flash_attn_func(q, k, k, window_size=(big, 0)),
                               mpt_ext.flash_attn_func(q, k, k, causal=True))
