"""flash-attn 2.8's packed forms (qkvpacked, kvpacked and their varlen forms): each equals the
unpacked call on the same numbers, outputs, lse and gradients (which land in the packed
tensor), positional arguments in flash-attn's order, and shape errors name the argument."""
import pytest
import torch

import mpt_ext
from mpt_ext import alibi_slopes

from attention_helpers import cu_seqlens

KW = dict(causal=True, window_size=(7, 0), softcap=0.0)


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def test_qkvpacked_equals_unpacked():
    qkv = torch.randn(2, 9, 3, 4, 16, dtype=torch.float64, requires_grad=True)
    slopes = alibi_slopes(4)
    out, lse, _ = mpt_ext.flash_attn_qkvpacked_func(qkv, 0.0, None, True, (7, 0), 0.0, slopes,
                                                    False, True)
    q, k, v = (t.detach().clone().requires_grad_() for t in qkv.unbind(2))
    ref, ref_lse, _ = mpt_ext.flash_attn_func(q, k, v, alibi_slopes=slopes,
                                              return_attn_probs=True, **KW)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    dout = torch.randn_like(out)
    (dqkv,) = _grads(out, (qkv,), dout)
    assert torch.equal(dqkv, torch.stack(_grads(ref, (q, k, v), dout), dim=2))


def test_kvpacked_gqa_equals_unpacked():
    q = torch.randn(2, 5, 6, 16, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(2, 11, 2, 2, 16, dtype=torch.float64, requires_grad=True)
    out = mpt_ext.flash_attn_kvpacked_func(q, kv, alibi_slopes=alibi_slopes(6), **KW)
    k, v = (t.detach().clone().requires_grad_() for t in kv.unbind(2))
    q2 = q.detach().clone().requires_grad_()
    ref = mpt_ext.flash_attn_func(q2, k, v, alibi_slopes=alibi_slopes(6), **KW)
    assert torch.equal(out, ref)
    dout = torch.randn_like(out)
    dq, dkv = _grads(out, (q, kv), dout)
    rq, rk, rv = _grads(ref, (q2, k, v), dout)
    assert torch.equal(dq, rq) and torch.equal(dkv, torch.stack((rk, rv), dim=2))


def test_varlen_qkvpacked_equals_unpacked():
    cu = cu_seqlens([4, 0, 9])
    qkv = torch.randn(13, 3, 4, 16, dtype=torch.float64, requires_grad=True)
    out, lse, _ = mpt_ext.flash_attn_varlen_qkvpacked_func(
        qkv, cu, 9, 0.0, 0.5, True, (-1, -1), 2.0, alibi_slopes(4), False, True)
    q, k, v = (t.detach().clone().requires_grad_() for t in qkv.unbind(1))
    ref, ref_lse, _ = mpt_ext.flash_attn_varlen_func(q, k, v, cu, cu, 9, 9, softmax_scale=0.5,
                                                     causal=True, softcap=2.0,
                                                     alibi_slopes=alibi_slopes(4),
                                                     return_attn_probs=True)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    dout = torch.randn_like(out)
    (dqkv,) = _grads(out, (qkv,), dout)
    assert torch.equal(dqkv, torch.stack(_grads(ref, (q, k, v), dout), dim=1))


def test_varlen_kvpacked_equals_unpacked():
    cu_q, cu_k = cu_seqlens([3, 5]), cu_seqlens([7, 6])
    q = torch.randn(8, 4, 16, dtype=torch.float64)
    kv = torch.randn(13, 2, 2, 16, dtype=torch.float64)
    out = mpt_ext.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, 5, 7, **KW)
    ref = mpt_ext.flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_q, cu_k, 5, 7, **KW)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("call,match", [
    (lambda: mpt_ext.flash_attn_qkvpacked_func(torch.randn(2, 5, 2, 4, 16)),
     r"qkv must have shape \(batch, seqlen, 3, nheads, headdim\)"),
    (lambda: mpt_ext.flash_attn_qkvpacked_func(torch.randn(5, 3, 4, 16)),
     r"qkv must have shape \(batch, seqlen, 3"),
    (lambda: mpt_ext.flash_attn_kvpacked_func(torch.randn(2, 5, 4, 16), torch.randn(2, 5, 3, 4, 16)),
     r"kv must have shape \(batch, seqlen_k, 2, nheads_k, headdim\)"),
    (lambda: mpt_ext.flash_attn_varlen_qkvpacked_func(torch.randn(5, 2, 4, 16), cu_seqlens([5]), 5),
     r"qkv must have shape \(total, 3, nheads, headdim\)"),
    (lambda: mpt_ext.flash_attn_varlen_kvpacked_func(torch.randn(5, 4, 16), [1, 2],
                                                     cu_seqlens([5]), cu_seqlens([5]), 5, 5),
     "kv must be a torch.Tensor"),
], ids=["qkv_count", "qkv_rank", "kv_count", "varlen_qkv_count", "kv_type"])
def test_packed_shape_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
