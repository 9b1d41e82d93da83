"""ALiBi flash attention with flash-attn 2.x's Python API (layout BSHD).

The ops live in C++ (torch.ops.mpt_ext.attn_*); this module adds their fake (meta) kernels
and autograd so that torch.compile traces them, plus the user-facing functions whose
signatures and semantics follow flash-attn's.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from ._args import integer, real, tensor_arg
from ._library import ops

__all__ = [
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "alibi_slopes",
    "check_device_input_errors",
]


# ---- fake kernels: shapes and dtypes only -------------------------------------------------
def _check_devices(q, **others):
    # The C++ ops check devices too, but a mix with a meta tensor dispatches here, not there.
    for name, t in others.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} must be on the same device as q ({q.device}), got {t.device}")


@torch.library.register_fake("mpt_ext::attn_fwd")
def _attn_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                   alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,
                   deterministic=False, block_table=None):
    # deterministic and block_table have schema defaults: the dispatcher drops them when they
    # equal the default
    _check_devices(q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                   alibi_slopes=alibi_slopes, block_table=block_table)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.dim() == 3:  # varlen: (total_q, heads, d) -> lse (heads, total_q)
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    else:
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("mpt_ext::attn_bwd")
def _attn_bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                   max_seqlen_k, alibi_slopes, softmax_scale, causal, window_left, window_right,
                   softcap, deterministic, compute_dslopes, block_table=None):
    _check_devices(q, dout=dout, k=k, v=v, out=out, lse=lse, cu_seqlens_q=cu_seqlens_q,
                   cu_seqlens_k=cu_seqlens_k, alibi_slopes=alibi_slopes,
                   block_table=block_table)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if compute_dslopes:
        dslopes = torch.empty_like(alibi_slopes, memory_format=torch.contiguous_format)
    else:
        dslopes = q.new_empty((0,), dtype=torch.float32)
    return dq, dk, dv, dslopes


@torch.library.register_fake("mpt_ext::attn_kvcache")
def _attn_kvcache_fake(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                       cache_batch_idx, cache_leftpad, block_table, alibi_slopes, softmax_scale,
                       causal, window_left, window_right, softcap, rotary_interleaved,
                       num_splits):
    _check_devices(q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, rotary_cos=rotary_cos,
                   rotary_sin=rotary_sin, cache_seqlens=cache_seqlens,
                   cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad,
                   block_table=block_table, alibi_slopes=alibi_slopes)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    return out, lse


# ---- autograd ----------------------------------------------------------------------------
# attn_fwd's and attn_bwd's arguments by name, read from the schemas (python/torch_bindings.cpp
# is their one definition): adding an argument there needs no index changed here.
def _schema_args(op):
    return op.default._schema.arguments


def _is_tensor(arg) -> bool:
    t = arg.type
    if isinstance(t, torch.OptionalType):
        t = t.getElementType()
    return isinstance(t, torch.TensorType)


_FWD_ARGS = tuple(a.name for a in _schema_args(ops.attn_fwd))
_FWD_DEFAULTS = {a.name: a.default_value for a in _schema_args(ops.attn_fwd)
                 if a.has_default_value()}
_FWD_TENSORS = tuple(a.name for a in _schema_args(ops.attn_fwd) if _is_tensor(a))
_BWD_ARGS = tuple(a.name for a in _schema_args(ops.attn_bwd))


def _attn_setup_context(ctx, inputs, output):
    # arguments equal to their schema default (deterministic) may be missing from inputs
    args = {**_FWD_DEFAULTS, **dict(zip(_FWD_ARGS, inputs))}
    out, lse = output
    # The backward kernels take no d(lse) (as in flash-attn): say so rather than return a
    # silently wrong zero gradient through lse.
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(out, lse, *(args.pop(name) for name in _FWD_TENSORS))
    ctx.args = args  # the non-tensor arguments


def _attn_backward(ctx, dout, dlse):
    out, lse, *tensors = ctx.saved_tensors
    args = {**dict(zip(_FWD_TENSORS, tensors)), **ctx.args}
    want_dslopes = (args["alibi_slopes"] is not None
                    and ctx.needs_input_grad[_FWD_ARGS.index("alibi_slopes")])
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dslopes = ops.attn_bwd(
        dout=dout.contiguous(), out=out, lse=lse, compute_dslopes=want_dslopes,
        **{name: args[name] for name in _BWD_ARGS if name in args})
    grads = {"q": dq, "k": dk, "v": dv, "alibi_slopes": dslopes if want_dslopes else None}
    return tuple(grads.get(name) for name in _FWD_ARGS)


torch.library.register_autograd("mpt_ext::attn_fwd", _attn_backward,
                                setup_context=_attn_setup_context)



# ---- public API ---------------------------------------------------------------------------
def alibi_slopes(n_heads: int, alibi_bias_max: float = 8.0,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """MPT's ALiBi slopes (llm-foundry's gen_slopes), fp32 of shape (n_heads,).

    For a non-power-of-two head count the slopes of the next power of two are interleaved
    (odd positions first) and cut to n_heads, exactly as MPT does."""
    n_heads = integer("n_heads", n_heads)
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    alibi_bias_max = _float("alibi_bias_max", alibi_bias_max)
    if not alibi_bias_max > 0:
        raise ValueError(f"alibi_bias_max must be > 0, got {alibi_bias_max!r}")
    n_pow2 = 2 ** math.ceil(math.log2(n_heads))
    m = torch.arange(1, n_pow2 + 1, dtype=torch.float32, device=device)
    m = m * (alibi_bias_max / n_pow2)
    slopes = 1.0 / torch.pow(2, m)
    if n_pow2 != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes.contiguous()


_INT64_MAX = 2**63 - 1


def _window(window_size: Sequence[int]) -> tuple[int, int]:
    try:
        left, right = (integer("window_size", w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"window_size must be a pair of ints (left, right), got "
                         f"{window_size!r}") from None
    if not (-1 <= left <= _INT64_MAX and -1 <= right <= _INT64_MAX):
        raise ValueError(f"window_size must be (left, right) with each in [-1, 2**63 - 1] "
                         f"(-1: unbounded), got {window_size!r}")
    return left, right


# ---- argument types: checked here and named (see _args.py) ----------------------------------
def _float(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:   # as flash-attn accepts
        return float(value)
    return real(name, value)


def _flag(name: str, value) -> bool:
    try:
        return bool(value)
    except (RuntimeError, TypeError, ValueError):  # e.g. a tensor of several elements
        got = type(value).__name__
        if isinstance(value, torch.Tensor):
            got += f" of shape {tuple(value.shape)}"
        raise TypeError(f"{name} must be a bool, got {got}") from None


_SLOPES = "a float32 torch.Tensor of shape (nheads,) or (batch, nheads)"


# cu_seqlens are int32, so no sequence is longer than this: a larger max_seqlen (legal, an
# upper bound) is cut to it here. The binding cuts it further: on the CPU to the longest
# sequence; on CUDA (which never reads cu_seqlens on the host) to the tensor's rows, and the
# grid then has a block row per 64 of them for every sequence, as in flash-attn: pass the
# true longest length where it is known.
_MAX_SEQLEN_CAP = 2**31 - 1


def _max_seqlen(name: str, value) -> Union[int, torch.SymInt]:
    value = integer(name, value, "an int (an upper bound on the sequence lengths)", symint=True)
    if isinstance(value, torch.SymInt):  # traced (torch.compile with dynamic shapes)
        return value
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return min(value, _MAX_SEQLEN_CAP)


def _scale(softmax_scale: Optional[float], head_dim: int) -> float:
    if softmax_scale is not None:
        return _float("softmax_scale", softmax_scale)
    # head_dim 0 is rejected by the op with a clear message; don't divide by zero first
    return head_dim ** -0.5 if head_dim > 0 else 1.0


def _no_dropout(dropout_p: float) -> None:
    if dropout_p != 0.0:
        raise NotImplementedError(
            f"mpt_ext attention has no dropout (got dropout_p={dropout_p}); MPT trains with "
            "attn_pdrop=0. Pass dropout_p=0.0.")


def _check_tensor(name: str, t, dims: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions {layout}, got shape {tuple(t.shape)}")


def _call_fwd(q, k, v, cu_q, cu_k, max_q, max_k, slopes, scale, causal, window, softcap,
              deterministic, block_table=None):
    tensor_arg("alibi_slopes", slopes, _SLOPES)
    tensor_arg("block_table", block_table, "an int32 torch.Tensor (batch, max_num_blocks_per_seq)")
    wl, wr = window
    return ops.attn_fwd(q, k, v, cu_q, cu_k, max_q, max_k, slopes, scale, _flag("causal", causal),
                        wl, wr, _float("softcap", softcap), _flag("deterministic", deterministic),
                        block_table)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """Attention over (batch, seqlen, nheads, headdim) tensors, flash-attn 2.x semantics.

    k and v may have fewer heads than q (GQA/MQA). alibi_slopes (fp32, (nheads,) or
    (batch, nheads)) adds ``-slope * |i + seqlen_k - seqlen_q - j|``; causal masking is
    aligned bottom-right. Returns out, or (out, softmax_lse, None) with return_attn_probs.
    Gradients flow to q, k, v and, when it requires grad, to alibi_slopes; softmax_lse is
    not differentiable (requires_grad=False). softmax_lse is the true logsumexp of the biased
    scores; with causal ALiBi flash-attn 2's lse leaves out the row term of the bias:
    theirs = ours + slope[h] * (i + seqlen_k - seqlen_q) for query row i."""
    _no_dropout(dropout_p)
    layout = "(batch, seqlen, nheads, headdim)"
    _check_tensor("q", q, 4, layout)
    _check_tensor("k", k, 4, layout)
    _check_tensor("v", v, 4, layout)
    out, lse = _call_fwd(q, k, v, None, None, 0, 0, alibi_slopes,
                         _scale(softmax_scale, q.shape[-1]), causal, _window(window_size),
                         softcap, deterministic)
    return (out, lse, None) if _flag("return_attn_probs", return_attn_probs) else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    """Attention over packed sequences: q (total_q, nheads, d), k/v (total_k, nheads_k, d);
    sequence b is rows cu_seqlens[b]:cu_seqlens[b+1] (int32, on q's device). Each sequence
    gets its own causal alignment and ALiBi positions. softmax_lse is (nheads, total_q).

    block_table (int32 (batch, max_num_blocks_per_seq)), as in flash-attn 2.8: k and v are a
    paged cache (num_blocks, page_block_size, nheads_k, d) and sequence b's key j is row
    j % page_block_size of block block_table[b, j // page_block_size]; cu_seqlens_k then only
    gives the sequences' key counts. On the CPU any page_block_size >= 1 works; the CUDA
    kernel needs a multiple of 128 (flash-attn needs 256). Forward only, as in flash-attn:
    paged keys are for inference."""
    _no_dropout(dropout_p)
    layout = "(total_tokens, nheads, headdim)"
    _check_tensor("q", q, 3, layout)
    paged = block_table is not None
    kv_layout = "(num_blocks, page_block_size, nheads_k, headdim)" if paged else layout
    _check_tensor("k", k, 4 if paged else 3, kv_layout)
    _check_tensor("v", v, 4 if paged else 3, kv_layout)
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be an int32 torch.Tensor, got {type(t).__name__}")
    max_q = _max_seqlen("max_seqlen_q", max_seqlen_q)
    max_k = _max_seqlen("max_seqlen_k", max_seqlen_k)
    out, lse = _call_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, alibi_slopes,
                         _scale(softmax_scale, q.shape[-1]), causal, _window(window_size),
                         softcap, deterministic, block_table)
    return (out, lse, None) if _flag("return_attn_probs", return_attn_probs) else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None,
                            cache_seqlens: Union[None, int, torch.Tensor] = None,
                            cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    """Attention of q (batch, seqlen_q, nheads, d) against a preallocated KV cache, with
    flash-attn 2.8's signature and semantics.

    k_cache, v_cache: (batch_cache, seqlen_cache, nheads_k, d), or with block_table
    (num_blocks, page_block_size, nheads_k, d) (any page_block_size >= 1; flash-attn needs a
    multiple of 256). If k and v (batch, seqlen_new, nheads_k, d) are given they are written
    into the cache at cache_seqlens[b] (in place) before attending; sequence b then attends
    to the cache positions [cache_leftpad[b], cache_seqlens[b] + seqlen_new).

    - cache_seqlens: int (the same for every sequence), int32 (batch,), or None (the whole
      cache is valid; no append).
    - cache_batch_idx: int32 (batch,), the cache row of each sequence (default b).
    - cache_leftpad: int32 (batch,), the first valid cache position of each sequence.
    - block_table: int32 (batch, max_num_blocks_per_seq), the paged cache's blocks.
    - rotary_cos, rotary_sin: (seqlen_ro, rotary_dim / 2) in q's dtype (rotary_dim a multiple
      of 16): q and the new keys are rotated inside the op (they need k and v), the keys at
      their cache positions, q at cache_seqlens[b] (+ i when causal or local: a window side
      below the cache's length).
      rotary_interleaved pairs dims (0, 1), (2, 3), ...; False pairs (i, i + rotary_dim / 2).
    - num_splits: split-KV count on CUDA (0: a heuristic); the CPU kernel ignores it.

    Returns out, or (out, softmax_lse (batch, nheads, seqlen_q)) with return_softmax_lse.
    With ALiBi, lse is the true logsumexp of the biased scores (see flash_attn_func)."""
    _check_tensor("q", q, 4, "(batch, seqlen_q, nheads, headdim)")
    _check_tensor("k_cache", k_cache, 4, "(batch_cache, seqlen_cache, nheads_k, headdim)")
    _check_tensor("v_cache", v_cache, 4, "(batch_cache, seqlen_cache, nheads_k, headdim)")
    for name, t in (("k", k), ("v", v)):
        tensor_arg(name, t, "a torch.Tensor (batch, seqlen_new, nheads_k, headdim)")
    for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        tensor_arg(name, t, "a torch.Tensor (seqlen_ro, rotary_dim / 2)")
    for name, t in (("cache_batch_idx", cache_batch_idx), ("cache_leftpad", cache_leftpad)):
        tensor_arg(name, t, "an int32 torch.Tensor (batch,)")
    tensor_arg("block_table", block_table, "an int32 torch.Tensor (batch, max_num_blocks_per_seq)")
    tensor_arg("alibi_slopes", alibi_slopes, _SLOPES)
    if cache_seqlens is not None and not isinstance(cache_seqlens, torch.Tensor):
        cache_seqlens = integer("cache_seqlens", cache_seqlens,
                                "an int, an int32 torch.Tensor (batch,) or None", allow_bool=False)
    num_splits = integer("num_splits", num_splits)
    if isinstance(cache_seqlens, int):
        if not 0 <= cache_seqlens < 2**31:
            raise ValueError(f"cache_seqlens must be in [0, 2**31), got {cache_seqlens}")
        cache_seqlens = torch.full((q.shape[0],), cache_seqlens, dtype=torch.int32,
                                   device=q.device)
    wl, wr = _window(window_size)
    # An inference op, as in flash-attn: its outputs carry no autograd history (the op
    # mutates the caches, so it has no autograd formula).
    with torch.no_grad():
        out, lse = ops.attn_kvcache(
            q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
            cache_leftpad, block_table, alibi_slopes, _scale(softmax_scale, q.shape[-1]),
            _flag("causal", causal), wl, wr, _float("softcap", softcap),
            _flag("rotary_interleaved", rotary_interleaved), num_splits)
    return (out, lse) if _flag("return_softmax_lse", return_softmax_lse) else out


def check_device_input_errors(device=None) -> None:
    """Raise now the ValueError a CUDA kernel noted for a bad cu_seqlens or cache_seqlens.

    On CUDA the ops never read those tensors on the host: that would synchronise the stream
    on every varlen call and every decode step, and cannot happen inside CUDA graph capture.
    Their kernels check each sequence instead, run a bad one as empty (nothing is read or
    written out of bounds) and note it; the next mpt_ext attention call on that device raises.
    This synchronises `device` (default: the current CUDA device) and raises at once. On the
    CPU the ops check on the host and raise in the call itself, so there is nothing to do."""
    if device is None:
        if not torch.cuda.is_available():
            return
        device = torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.synchronize(index)
    ops.raise_device_input_errors(index)
