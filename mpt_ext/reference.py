"""Plain-PyTorch implementations of every op's semantics: the oracle for tests and
benchmarks. Written for clarity, not speed; pass float64 inputs for a reference."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["layer_norm_ref", "rms_norm_ref", "attention_ref", "attention_varlen_ref", "kvcache_ref",
           "rotary_ref"]


def _fused_sum(x, residual, compute_dtype, sum_dtype):
    """x + residual as the fused norms define it: the exact sum rounded once to sum_dtype
    (the dtype residual_out is returned in), so that the forward normalises, and the
    backward differentiates, the same tensor the caller gets back. The rounding is a value
    change only: gradients pass through it unrounded (straight through)."""
    s = x.to(compute_dtype)
    if residual is None:
        return s
    s = s + residual.to(compute_dtype)
    if sum_dtype is not None:
        s = s + (s.to(sum_dtype).to(compute_dtype) - s).detach()
    return s


def layer_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
                   residual: Optional[torch.Tensor] = None, compute_dtype=torch.float64,
                   sum_dtype: Optional[torch.dtype] = None):
    """LayerNorm over the last dim, computed in compute_dtype, returned in that dtype.
    With residual: (norm(x + residual), x + residual). sum_dtype: the dtype the op returns
    x + residual in (the input dtype); the op normalises that rounded sum (see _fused_sum)."""
    s = _fused_sum(x, residual, compute_dtype, sum_dtype)
    mean = s.mean(-1, keepdim=True)
    var = (s - mean).pow(2).mean(-1, keepdim=True)
    y = (s - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype)
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return (y, s) if residual is not None else y


def rms_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-5,
                 residual: Optional[torch.Tensor] = None, compute_dtype=torch.float64,
                 sum_dtype: Optional[torch.dtype] = None):
    """RMSNorm over the last dim, computed in compute_dtype, returned in that dtype.
    With residual: (norm(x + residual), x + residual); sum_dtype as in layer_norm_ref."""
    s = _fused_sum(x, residual, compute_dtype, sum_dtype)
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(compute_dtype)
    return (y, s) if residual is not None else y


# ---- attention ---------------------------------------------------------------------------
# Written from docs/DESIGN.md's semantics (flash-attn 2.x), independently of the kernels' masking
# code: the full score matrix is materialised, so keep shapes small.

def _visible(seqlen_q: int, seqlen_k: int, causal: bool, window_size, device) -> torch.Tensor:
    """(seqlen_q, seqlen_k) bool: key j visible to query i. Query i is aligned with key
    i + seqlen_k - seqlen_q (bottom-right); -1 in window_size means unbounded."""
    left, right = window_size
    i = torch.arange(seqlen_q, device=device).view(-1, 1)
    j = torch.arange(seqlen_k, device=device).view(1, -1)
    offset = j - (i + seqlen_k - seqlen_q)  # > 0: key in the future of the query
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if causal:
        visible &= offset <= 0
    if left >= 0:
        visible &= offset >= -left
    if right >= 0:
        visible &= offset <= right
    return visible


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  softmax_scale: Optional[float] = None, causal: bool = False,
                  window_size=(-1, -1), softcap: float = 0.0,
                  alibi_slopes: Optional[torch.Tensor] = None,
                  compute_dtype: torch.dtype = torch.float64):
    """Attention with flash-attn 2.x semantics on materialised scores.

    q (batch, seqlen_q, nheads, d); k, v (batch, seqlen_k, nheads_k, d) with
    nheads % nheads_k == 0 (GQA: each k/v head serves nheads // nheads_k consecutive q heads).
    score = softmax_scale * q.k (scale defaults to d ** -0.5), then softcap * tanh(score /
    softcap) if softcap > 0, then - slope[b, h] * |i + seqlen_k - seqlen_q - j| with
    alibi_slopes of shape (nheads,) or (batch, nheads). Masks (causal, window_size) are aligned
    bottom-right. Everything is computed in compute_dtype (float64 for an oracle; a low dtype
    gives "PyTorch's own math" in that dtype) and differentiable, alibi_slopes included.

    Returns (out (batch, seqlen_q, nheads, d), lse (batch, nheads, seqlen_q)), both in
    compute_dtype. A query row that sees no key gets out = 0 and lse = -inf (no NaN, also in
    the gradients).
    """
    batch, seqlen_q, nheads, head_dim = q.shape
    seqlen_k, nheads_k = k.shape[1], k.shape[2]
    if nheads % nheads_k != 0:
        raise ValueError(f"nheads {nheads} is not a multiple of nheads_k {nheads_k}")
    scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    if nheads_k != nheads:
        kc = kc.repeat_interleave(nheads // nheads_k, dim=2)
        vc = vc.repeat_interleave(nheads // nheads_k, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", qc, kc) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        i = torch.arange(seqlen_q, device=q.device).view(-1, 1)
        j = torch.arange(seqlen_k, device=q.device).view(1, -1)
        distance = (i + seqlen_k - seqlen_q - j).abs().to(compute_dtype)
        slopes = alibi_slopes.to(compute_dtype)
        slopes = slopes.view(1, nheads, 1, 1) if slopes.dim() == 1 else slopes.view(batch, nheads, 1, 1)
        scores = scores - slopes * distance
    visible = _visible(seqlen_q, seqlen_k, causal, window_size, q.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    # Softmax by hand so that fully masked rows give 0 (not NaN) in values and gradients:
    # the row max is a constant shift (detached), the normaliser of an empty row is 0.
    row_max = scores.amax(dim=-1, keepdim=True).detach() if seqlen_k > 0 else \
        scores.new_zeros(batch, nheads, seqlen_q, 1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    total = weights.sum(dim=-1, keepdim=True)
    probs = weights / torch.where(total > 0, total, torch.ones_like(total))
    out = torch.einsum("bhij,bjhd->bihd", probs, vc)
    lse = (torch.log(total) + row_max).squeeze(-1)
    return out, lse


def attention_varlen_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         softmax_scale: Optional[float] = None, causal: bool = False,
                         window_size=(-1, -1), softcap: float = 0.0,
                         alibi_slopes: Optional[torch.Tensor] = None,
                         compute_dtype: torch.dtype = torch.float64):
    """attention_ref over packed sequences: q (total_q, nheads, d), k/v (total_k, nheads_k, d);
    sequence b is rows cu_seqlens[b]:cu_seqlens[b+1] of each, with its own bottom-right
    alignment and ALiBi positions (alibi_slopes (nheads,) or (batch, nheads)).

    Returns (out (total_q, nheads, d), lse (nheads, total_q)) in compute_dtype. Rows of q
    past cu_seqlens_q[-1] belong to no sequence: out 0, lse -inf."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(len(cq) - 1):
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
        out_b, lse_b = attention_ref(
            q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]], v[None, ck[b]:ck[b + 1]],
            softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
            alibi_slopes=slopes, compute_dtype=compute_dtype)
        outs.append(out_b[0])
        lses.append(lse_b[0])
    tail = q.shape[0] - cq[-1]
    outs.append(q.new_zeros((tail,) + tuple(q.shape[1:]), dtype=compute_dtype))
    lses.append(q.new_full((q.shape[1], tail), float("-inf"), dtype=compute_dtype))
    return torch.cat(outs, dim=0), torch.cat(lses, dim=1)


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
               interleaved: bool, compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rotary embedding (flash-attn's apply_rotary_emb): x (..., n, heads, d) with row r at
    position positions[r]; cos/sin (seqlen_ro, rotary_dim / 2). Dims [0, rotary_dim) turn in
    pairs ((0, 1), (2, 3), ... if interleaved, else (i, i + rotary_dim / 2)); the rest pass
    through. Returns compute_dtype."""
    rd = 2 * cos.shape[1]
    c = cos[positions].to(compute_dtype)[:, None, :]  # (n, 1, rd / 2)
    s = sin[positions].to(compute_dtype)[:, None, :]
    x = x.to(compute_dtype)
    rot, rest = x[..., :rd], x[..., rd:]
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        turned = torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)
    else:
        a, b = rot[..., :rd // 2], rot[..., rd // 2:]
        turned = torch.cat((a * c - b * s, b * c + a * s), dim=-1)
    return torch.cat((turned, rest), dim=-1)


def _lengths(arg, batch, default):
    if arg is None:
        return [default] * batch
    if isinstance(arg, int):
        return [arg] * batch
    return [int(x) for x in arg.tolist()]


def kvcache_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                k: Optional[torch.Tensor] = None, v: Optional[torch.Tensor] = None,
                rotary_cos: Optional[torch.Tensor] = None,
                rotary_sin: Optional[torch.Tensor] = None, cache_seqlens=None,
                cache_batch_idx: Optional[torch.Tensor] = None,
                cache_leftpad: Optional[torch.Tensor] = None,
                block_table: Optional[torch.Tensor] = None,
                softmax_scale: Optional[float] = None, causal: bool = False,
                window_size=(-1, -1), softcap: float = 0.0, rotary_interleaved: bool = True,
                alibi_slopes: Optional[torch.Tensor] = None,
                compute_dtype: torch.dtype = torch.float64):
    """flash_attn_with_kvcache's semantics (its arguments, in its order) without touching the
    inputs.

    q (batch, seqlen_q, nheads, d); caches (batch_cache, seqlen_cache, nheads_k, d), or pages
    (num_blocks, page_size, nheads_k, d) with block_table (batch, pages_per_seq): position c
    of sequence b is row c % page_size of page block_table[b, c // page_size]; otherwise row c
    of cache row cache_batch_idx[b] (default b). The caches are cloned; if k, v
    (batch, seqlen_new, nheads_k, d) are given they are written at positions
    cache_seqlens[b] + t (k rotated first when rotary_cos / rotary_sin are given). Sequence b
    then attends (attention_ref semantics) to positions [cache_leftpad[b],
    cache_seqlens[b] + seqlen_new), with q rotated at position cache_seqlens[b] (+ i when
    causal or local: a window side below seqlen_cache). cache_seqlens: int, int tensor (batch,), or None (the whole cache).

    Returns (out, lse (batch, nheads, seqlen_q)) in compute_dtype and the updated caches
    (k_cache, v_cache) in the caches' dtype.
    """
    batch = q.shape[0]
    if block_table is not None:
        page = k_cache.shape[1]
        seqlen_cache = block_table.shape[1] * page
    else:
        seqlen_cache = k_cache.shape[1]
    ends = _lengths(cache_seqlens, batch, seqlen_cache)
    firsts = _lengths(cache_leftpad, batch, 0)
    rows = _lengths(cache_batch_idx, batch, 0) if cache_batch_idx is not None else range(batch)

    def where(b, positions):  # cache indices (dim 0, dim 1) of sequence b's positions
        positions = torch.as_tensor(positions, dtype=torch.long)
        if block_table is None:
            return torch.full_like(positions, rows[b]), positions
        return block_table[b].long().cpu()[positions // page], positions % page

    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    rotary = rotary_cos is not None
    seqlen_new = 0
    if k is not None:
        seqlen_new = k.shape[1]
        for b in range(batch):
            positions = torch.arange(ends[b], ends[b] + seqlen_new)
            k_b = k[b]
            if rotary:
                k_b = rotary_ref(k_b, rotary_cos, rotary_sin, positions, rotary_interleaved)
            idx = where(b, positions)
            k_cache[idx] = k_b.to(k_cache.dtype)
            v_cache[idx] = v[b]
    # flash-attn reads a window side as wide as the cache as unbounded before it decides
    local = any(0 <= w < seqlen_cache for w in window_size)
    outs, lses = [], []
    for b in range(batch):
        idx = where(b, torch.arange(firsts[b], ends[b] + seqlen_new))
        q_b = q[b]
        if rotary:
            positions = ends[b] + (torch.arange(q.shape[1]) if causal or local
                                   else torch.zeros(q.shape[1], dtype=torch.long))
            q_b = rotary_ref(q_b, rotary_cos, rotary_sin, positions, rotary_interleaved,
                             compute_dtype)
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
        out_b, lse_b = attention_ref(
            q_b[None], k_cache[idx][None], v_cache[idx][None], softmax_scale=softmax_scale,
            causal=causal, window_size=window_size, softcap=softcap, alibi_slopes=slopes,
            compute_dtype=compute_dtype)
        outs.append(out_b)
        lses.append(lse_b)
    if batch == 0:
        out = q.new_zeros(q.shape, dtype=compute_dtype)
        lse = q.new_zeros((0, q.shape[2], q.shape[1]), dtype=compute_dtype)
    else:
        out, lse = torch.cat(outs), torch.cat(lses)
    return out, lse, k_cache, v_cache
