"""The attention oracle itself, against a literal per-element loop over docs/DESIGN.md's
formula (tiny shapes): if the reference were wrong, every kernel test would be meaningless."""
import math

import pytest
import torch

from mpt_ext.reference import attention_ref, attention_varlen_ref, kvcache_ref, rotary_ref


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
    out, lse, kc, vc = kvcache_ref(q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens,
                                   causal=True)
    assert torch.equal(kc[0, 1:3], k_new[0]) and torch.equal(kc[1, 4:6], k_new[1])
    assert torch.equal(kc[0, 3:], k_cache[0, 3:]) and torch.equal(kc[1, :4], k_cache[1, :4])
    assert torch.equal(vc[0, :1], v_cache[0, :1])
    o1, _ = attention_ref(q[1:], kc[1:], vc[1:], causal=True)
    torch.testing.assert_close(out[1:], o1)
    o0, _ = attention_ref(q[:1], kc[:1, :3], vc[:1, :3], causal=True)
    torch.testing.assert_close(out[:1], o0)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_ref_is_a_complex_rotation(interleaved):
    # each rotated pair (a, b) is the complex number a + ib times e^(i angle)
    x = torch.randn(5, 2, 24, dtype=torch.float64)
    angles = torch.rand(9, 8, dtype=torch.float64) * 6
    positions = torch.tensor([0, 3, 8, 8, 1])
    out = rotary_ref(x, angles.cos(), angles.sin(), positions, interleaved)
    pairs = (x[..., :16].unflatten(-1, (8, 2)) if interleaved
             else torch.stack((x[..., :8], x[..., 8:16]), dim=-1))
    turned = torch.view_as_real(torch.view_as_complex(pairs.contiguous())
                                * torch.polar(torch.ones(5, 1, 8, dtype=torch.float64),
                                              angles[positions][:, None, :]))
    expected = turned.flatten(-2) if interleaved else torch.cat((turned[..., 0], turned[..., 1]), -1)
    torch.testing.assert_close(out[..., :16], expected)
    assert torch.equal(out[..., 16:], x[..., 16:])


def test_kvcache_ref_layouts_agree():
    """A paged cache, a permuted cache (cache_batch_idx) and a left-padded cache hold the same
    keys as a plain one: the reference gives the same result and writes the same keys."""
    g = torch.Generator().manual_seed(0)
    batch, cache, hk, d = 2, 12, 1, 8
    q = torch.randn(batch, 2, 2, d, dtype=torch.float64, generator=g)
    kc = torch.randn(batch, cache, hk, d, dtype=torch.float64, generator=g)
    vc = torch.randn(batch, cache, hk, d, dtype=torch.float64, generator=g)
    kn = torch.randn(batch, 2, hk, d, dtype=torch.float64, generator=g)
    vn = torch.randn(batch, 2, hk, d, dtype=torch.float64, generator=g)
    seqlens = torch.tensor([3, 9], dtype=torch.int32)
    kw = dict(causal=True, alibi_slopes=torch.tensor([0.5, 0.25]))
    out, lse, kc1, vc1 = kvcache_ref(q, kc, vc, kn, vn, cache_seqlens=seqlens, **kw)
    # paged: pages of 4 positions, scattered over a pool in reverse order
    pool_k = torch.zeros(6, 4, hk, d, dtype=torch.float64)
    pool_v = torch.zeros_like(pool_k)
    table = torch.tensor([[5, 4, 3], [2, 1, 0]], dtype=torch.int32)
    for b in range(batch):
        for p in range(3):
            pool_k[table[b, p]] = kc[b, 4 * p:4 * p + 4]
            pool_v[table[b, p]] = vc[b, 4 * p:4 * p + 4]
    o2, l2, pk, _ = kvcache_ref(q, pool_k, pool_v, kn, vn, cache_seqlens=seqlens,
                                block_table=table, **kw)
    torch.testing.assert_close(o2, out)
    torch.testing.assert_close(l2, lse)
    assert torch.equal(pk[table[1].long()].flatten(0, 1), kc1[1])
    # cache_batch_idx: sequence b in row 2 - b of a 3-row cache
    rows = torch.tensor([2, 1], dtype=torch.int32)
    kc3 = torch.zeros(3, cache, hk, d, dtype=torch.float64)
    vc3 = torch.zeros_like(kc3)
    kc3[rows.long()], vc3[rows.long()] = kc, vc
    o3, l3, k3, _ = kvcache_ref(q, kc3, vc3, kn, vn, cache_seqlens=seqlens,
                                cache_batch_idx=rows, **kw)
    torch.testing.assert_close(o3, out)
    assert torch.equal(k3[rows.long()], kc1) and torch.equal(k3[0], kc3[0])
    # cache_leftpad: 2 junk positions shifted in front of every sequence
    kc4 = torch.cat((torch.full((batch, 2, hk, d), 1e3, dtype=torch.float64), kc), 1)
    vc4 = torch.cat((torch.full((batch, 2, hk, d), 1e3, dtype=torch.float64), vc), 1)
    o4, l4, _, _ = kvcache_ref(q, kc4, vc4, kn, vn, cache_seqlens=seqlens + 2,
                               cache_leftpad=torch.tensor([2, 2], dtype=torch.int32), **kw)
    torch.testing.assert_close(o4, out)
    torch.testing.assert_close(l4, lse)
