"""The backward's precision where docs/DESIGN.md's 2x-PyTorch rule is too loose to see it
(issue 18, item 5): rows whose ALiBi bias is far from 0 (non-causal, seqlen_q much larger
than seqlen_k) recompute P from an fp32 lse near -100, which scales every P of the row by
1 +- 1e-5.
- fp16 / bf16: with one visible key P is exactly 1, so dv is a plain sum of dout rows, and
  PyTorch's own math gets it correctly rounded; so must we (P rounded to the input dtype
  before dv += P^T dout, as FlashAttention does).
- fp64: every gradient must be fp64-accurate, not off by the fp32 lse's 1e-5.
"""
import pytest
import torch

import mpt_ext
from mpt_ext.reference import attention_ref

from attention_helpers import DTYPE_IDS, one_thread, random_qkv
from devices import devices


# Explicit mantissa widths: one unit in the last place at |x| is 2^(floor(log2|x|) - bits).
MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}


def reference_grads(q, k, v, dout, **kw):
    """Exact (float64, not rounded to the input dtype) dq, dk, dv."""
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    with one_thread():
        out = attention_ref(*leaves, **kw)[0]
        return torch.autograd.grad(out, leaves, dout.double())


@pytest.mark.parametrize("device", devices("attn"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("seqlen_q, slope", [(183, 0.5), (1000, 0.125), (97, 2.0)])
def test_dv_correctly_rounded_with_one_key(device, dtype, seqlen_q, slope):
    q, k, v = random_qkv(2, seqlen_q, 1, 6, 3, 64, dtype, device=device, requires_grad=True)
    slopes = torch.full((6,), slope, device=device)
    dout = torch.randn_like(q)
    out = mpt_ext.flash_attn_func(q, k, v, alibi_slopes=slopes)
    dv = torch.autograd.grad(out, v, dout)[0]
    ref_dv = reference_grads(q, k, v, dout, alibi_slopes=slopes)[2]
    half_ulp = 0.5 * torch.pow(2.0, torch.floor(torch.log2(ref_dv.abs())) - MANTISSA_BITS[dtype])
    # Correct rounding of the exact sum, up to one fp32 rounding of the summed terms' size (the
    # fp32 accumulation; measured at most 0.05 of it, where P = 1 +- 1e-5 gives 10 or more).
    terms = dout.double().abs().unflatten(2, (3, 2)).sum((1, 3)).unsqueeze(1)  # GQA groups
    excess = (dv.double() - ref_dv).abs() - (half_ulp + 2.0 ** -24 * terms)
    assert excess.max().item() <= 0, (
        f"dv not correctly rounded: worst error {(dv.double() - ref_dv).abs().max().item():.3g}")


FP64_CASES = [  # (seqlen_q, seqlen_k, causal, window_size, slope)
    (300, 7, False, (-1, -1), 0.5),     # rows far from every key: bias near -150
    (183, 1, False, (-1, -1), 0.5),     # one key, P = 1
    (130, 130, True, (-1, -1), 0.5),    # the usual causal case: bias within a few units of 0
    (64, 200, False, (9, 4), 1.0),      # a window
]


@pytest.mark.parametrize("seqlen_q, seqlen_k, causal, window_size, slope", FP64_CASES)
def test_fp64_gradients_are_fp64_accurate(seqlen_q, seqlen_k, causal, window_size, slope):
    q, k, v = random_qkv(2, seqlen_q, seqlen_k, 4, 2, 32, torch.float64, requires_grad=True)
    slopes = torch.full((4,), slope, dtype=torch.float64).requires_grad_(True)
    kw = dict(causal=causal, window_size=window_size)
    dout = torch.randn_like(q)
    out = mpt_ext.flash_attn_func(q, k, v, alibi_slopes=slopes, **kw)
    ours = torch.autograd.grad(out, (q, k, v, slopes), dout)
    with one_thread():
        ref_out = attention_ref(q, k, v, alibi_slopes=slopes, **kw)[0]
        ref = torch.autograd.grad(ref_out, (q, k, v, slopes), dout)
    for name, g, r in zip(["dq", "dk", "dv", "dslopes"], ours, ref):
        # d(slopes) sums dS * distance terms that cancel: scale by the distances' size.
        scale = r.abs().max().item() * (seqlen_q + seqlen_k if name == "dslopes" else 1)
        err = (g - r).abs().max().item()
        assert err <= 1e-12 * max(scale, 1.0), f"{name}: error {err:.3g} (scale {scale:.3g})"
