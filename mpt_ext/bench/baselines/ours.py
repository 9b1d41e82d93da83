"""mpt_ext's own kernels, called through the public API exactly as a user calls them."""
from __future__ import annotations

import os

import torch

import mpt_ext
from mpt_ext import _library

from ..core import Unavailable
from .spec import AttnFn, AttnSpec, NormFn, NormSpec

FWD_TILE_VARIABLE = "MPT_EXT_ATTN_FWD_TILE"


def _require_cuda_kernel(device: torch.device, built: bool, what: str) -> None:
    """Fail fast (before allocating inputs) when this build does not dispatch `what` on
    CUDA; the case runner reports it as "not built"."""
    if device.type == "cuda" and not built:
        raise NotImplementedError(f"mpt_ext was built without the CUDA {what} kernel")


def build_attention(spec: AttnSpec, deterministic: bool = False) -> AttnFn:
    _require_cuda_kernel(spec.device, _library.CUDA_ATTN, "attn")

    def fn(q, k, v):  # bshd
        return mpt_ext.flash_attn_func(q, k, v, softmax_scale=spec.scale, causal=spec.causal,
                                       alibi_slopes=spec.slopes, deterministic=deterministic)
    return fn


def build_attention_deterministic(spec: AttnSpec) -> AttnFn:
    """deterministic=True: on CUDA the backward's separate dQ kernel, bitwise reproducible,
    against the default atomic dQ (csrc/attn/cuda/bwd_dq_mode.h)."""
    return build_attention(spec, deterministic=True)


def fwd_tile_variants() -> list[str]:
    """The non-default forward tiles of any compiled head-dim bucket (empty without the CUDA
    attention kernels)."""
    tiles = {t for choices in _library.ATTN_FWD_TILES.values() for t in choices[1:]}
    return sorted(tiles, key=lambda t: tuple(int(x) for x in t.split("x")))


def build_attention_tile(tile: str):
    """Ours with the forward tile `tile` (MPT_EXT_ATTN_FWD_TILE, set around each call), where
    the spec's head-dim bucket has it: one run A/B's the variants against the default."""
    def build(spec: AttnSpec) -> AttnFn:
        buckets = [b for b in sorted(_library.ATTN_FWD_TILES) if b >= spec.head_dim]
        if not buckets or tile not in _library.ATTN_FWD_TILES[buckets[0]][1:]:
            raise Unavailable(f"no forward tile {tile} at head dim {spec.head_dim}")
        fn = build_attention(spec)

        def call(q, k, v):
            saved = os.environ.get(FWD_TILE_VARIABLE)
            os.environ[FWD_TILE_VARIABLE] = tile
            try:
                return fn(q, k, v)
            finally:
                if saved is None:
                    del os.environ[FWD_TILE_VARIABLE]
                else:
                    os.environ[FWD_TILE_VARIABLE] = saved
        return call
    return build


def build_kvcache(spec: AttnSpec) -> AttnFn:
    _require_cuda_kernel(spec.device, _library.CUDA_ATTN_KVCACHE, "attn_kvcache")
    # A generation loop keeps cache_seqlens as a tensor; an int would add a fill per call.
    seqlens = torch.full((spec.batch,), spec.seqlen_k, dtype=torch.int32, device=spec.device)

    def fn(q, k_cache, v_cache):  # bshd
        return mpt_ext.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens,
                                               softmax_scale=spec.scale, causal=spec.causal,
                                               alibi_slopes=spec.slopes)
    return fn


def build_norm(spec: NormSpec) -> NormFn:
    _require_cuda_kernel(spec.device, _library.CUDA_NORM, "norm")
    eps = spec.eps
    if spec.op == "layer_norm":
        return lambda x, w: mpt_ext.layer_norm(x, w, None, eps)
    return lambda x, w: mpt_ext.rms_norm(x, w, eps)
