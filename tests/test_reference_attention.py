"""The attention oracle itself, against a literal per-element loop over docs/DESIGN.md's
formula (tiny shapes): if the reference were wrong, every kernel test would be meaningless."""
import math

import pytest
import torch

from mpt_ext.reference import attention_ref, attention_varlen_ref, kvcache_ref


def loop_attention(q, k, v, scale, causal, window, softcap, slopes):
    """One query row, one head at a time, straight from the spec."""
    batch, sq, nheads, d = q.shape
    sk, nheads_k = k.shape[1], k.shape[2]
    group = nheads // nheads_k
    out = torch.zeros(batch, sq, nheads, d, dtype=torch.float64)
    lse = torch.full((batch, nheads, sq), -math.inf, dtype=torch.float64)
    for b in range(batch):
        for h in range(nheads):
            slope = 0.0 if slopes is None else float(slopes[h] if slopes.dim() == 1 else slopes[b, h])
            for i in range(sq):
                scores, keys = [], []
                for j in range(sk):
                    rel = j - (i + sk - sq)  # > 0: key after the query's aligned position
                    if causal and rel > 0:
                        continue
                    if window[0] >= 0 and rel < -window[0]:
                        continue
                    if window[1] >= 0 and rel > window[1]:
                        continue
                    s = scale * float(q[b, i, h] @ k[b, j, h // group])
                    if softcap > 0:
                        s = softcap * math.tanh(s / softcap)
                    scores.append(s - slope * abs(rel))
                    keys.append(j)
                if not keys:
                    continue
                m = max(scores)
                w = [math.exp(s - m) for s in scores]
                total = sum(w)
                lse[b, h, i] = m + math.log(total)
                for wj, j in zip(w, keys):
                    out[b, i, h] += wj / total * v[b, j, h // group]
    return out, lse


@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (2, 1)),
                                           (True, (1, -1)), (False, (0, 0))], ids=str)
@pytest.mark.parametrize("sq,sk", [(1, 1), (3, 7), (7, 3)], ids=str)
@pytest.mark.parametrize("slopes_shape", [None, (4,), (2, 4)], ids=str)
def test_attention_ref_matches_loop(causal, window, sq, sk, slopes_shape):
    q = torch.randn(2, sq, 4, 5, dtype=torch.float64)
    k = torch.randn(2, sk, 2, 5, dtype=torch.float64)
    v = torch.randn(2, sk, 2, 5, dtype=torch.float64)
    slopes = None if slopes_shape is None else torch.rand(slopes_shape, dtype=torch.float64)
    out, lse = attention_ref(q, k, v, softmax_scale=0.7, causal=causal, window_size=window,
                             softcap=1.3, alibi_slopes=slopes)
    out_l, lse_l = loop_attention(q, k, v, 0.7, causal, window, 1.3, slopes)
    torch.testing.assert_close(out, out_l, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_l, rtol=1e-12, atol=1e-12)


def test_attention_ref_empty_rows_have_finite_grads():
    q = torch.randn(1, 6, 2, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 2, 4, dtype=torch.float64, requires_grad=True)
    slopes = torch.rand(2, dtype=torch.float64, requires_grad=True)
    out, lse = attention_ref(q, k, v, causal=True, alibi_slopes=slopes)
    assert torch.all(out[:, :4] == 0) and torch.all(lse[..., :4] == -math.inf)
    out.sum().backward()
    for t in (q, k, v, slopes):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[:, :4] == 0)


def test_varlen_ref_is_per_sequence():
    q = torch.randn(9, 2, 4, dtype=torch.float64)
    k = torch.randn(7, 1, 4, dtype=torch.float64)
    v = torch.randn(7, 1, 4, dtype=torch.float64)
    cu_q = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 2, 5, 7], dtype=torch.int32)
    slopes = torch.rand(3, 2, dtype=torch.float64)
    out, lse = attention_varlen_ref(q, k, v, cu_q, cu_k, causal=True, alibi_slopes=slopes)
    assert out.shape == q.shape and lse.shape == (2, 9)
    o2, l2 = attention_ref(q[None, 4:9], k[None, 5:7], v[None, 5:7], causal=True,
                           alibi_slopes=slopes[2])
    torch.testing.assert_close(out[4:9], o2[0])
    torch.testing.assert_close(lse[:, 4:9], l2[0])


def test_kvcache_ref_appends_and_masks():
    k_cache = torch.randn(2, 6, 1, 4, dtype=torch.float64)
    v_cache = torch.randn(2, 6, 1, 4, dtype=torch.float64)
    q = torch.randn(2, 2, 1, 4, dtype=torch.float64)
    k_new = torch.randn(2, 2, 1, 4, dtype=torch.float64)
    v_new = torch.randn(2, 2, 1, 4, dtype=torch.float64)
    seqlens = torch.tensor([1, 4], dtype=torch.int32)
    out, lse, kc, vc = kvcache_ref(q, k_cache, v_cache, k_new, v_new, seqlens, causal=True)
    assert torch.equal(kc[0, 1:3], k_new[0]) and torch.equal(kc[1, 4:6], k_new[1])
    assert torch.equal(kc[0, 3:], k_cache[0, 3:]) and torch.equal(kc[1, :4], k_cache[1, :4])
    assert torch.equal(vc[0, :1], v_cache[0, :1])
    o1, _ = attention_ref(q[1:], kc[1:], vc[1:], causal=True)
    torch.testing.assert_close(out[1:], o1)
    o0, _ = attention_ref(q[:1], kc[:1, :3], vc[:1, :3], causal=True)
    torch.testing.assert_close(out[:1], o0)
