"""mpt_ext's own kernels, called through the public API exactly as a user calls them."""
from __future__ import annotations

import torch

import mpt_ext
from mpt_ext import _library

from ..core import Unavailable
from ..counting import FWD_BWD
from .spec import OURS, AttentionImpl, AttnFn, AttnSpec, NormFn, NormSpec

#: the variable that picks a tile of the CUDA attention forward / backward (dK/dV) kernel
#: (csrc/attn/cuda/tile_choice.h)
TILE_VARIABLES = {"fwd": "MPT_EXT_ATTN_FWD_TILE", "bwd": "MPT_EXT_ATTN_BWD_TILE"}


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
    """deterministic=True against the default atomic dQ: on CUDA the backward's split dQ
    (fixed-order sums of per-split slices) where its launches fill the GPU, else the separate
    dQ kernel (csrc/attn/cuda/bwd_dq_mode.h). Before 2026-11-29 always the separate kernel:
    older reports under this name time that."""
    return build_attention(spec, deterministic=True)


DQ_VARIABLE = "MPT_EXT_ATTN_BWD_DQ"


def dq_separate_contender() -> AttentionImpl:
    """The backward's separate dQ kernel (seven matmuls, no fp32 dQ workspace): the other
    bitwise-reproducible way, A/B'd against split (deterministic) and atomic (the default)."""
    return AttentionImpl("mpt_ext dQ separate", OURS, "bshd", build_attention, cuda_only=True,
                         passes=(FWD_BWD,), env=((DQ_VARIABLE, "separate"),))


FWD_KERNEL_VARIABLE = "MPT_EXT_ATTN_FWD_KERNEL"


def build_attention_sm90(spec: AttnSpec) -> AttnFn:
    """Ours with the sm_90a forward (csrc/attn/cuda/sm90) where it runs: an sm_90 GPU, head
    dims up to 128, the batched layout; the backward is the portable one either way."""
    if spec.device.type != "cuda" or torch.cuda.get_device_capability(spec.device) != (9, 0):
        raise Unavailable("the sm90 forward needs an sm_90 GPU")
    if spec.head_dim > 128:
        raise Unavailable(f"no sm90 forward at head dim {spec.head_dim}")
    return build_attention(spec)


def sm90_contender() -> AttentionImpl:
    """The sm_90a forward (wgmma, TMA, warp specialisation) A/B'd against the portable
    mma.sync one, the default until it has passed on a GPU (csrc/attn/cuda/fwd_kernel_choice.h)."""
    return AttentionImpl("mpt_ext sm90", OURS, "bshd", build_attention_sm90, cuda_only=True,
                         env=((FWD_KERNEL_VARIABLE, "sm90"),))


def tile_listing(which: str) -> dict[int, tuple[str, ...]]:
    """Each compiled head-dim bucket's tiles for `which` ("fwd" or "bwd"), default first."""
    return _library.ATTN_FWD_TILES if which == "fwd" else _library.ATTN_BWD_TILES


def tile_variants(which: str) -> list[str]:
    """The non-default tiles of `which` in any compiled head-dim bucket (empty without the
    CUDA attention kernels)."""
    tiles = {t for choices in tile_listing(which).values() for t in choices[1:]}
    return sorted(tiles, key=lambda t: tuple(int(x) for x in t.split("x")))


def build_attention_tile(which: str, tile: str):
    """Ours where the spec's head-dim bucket has `tile` for `which`; the contender sets the
    variable itself around each timed call (AttentionImpl.env), forward and backward alike."""
    def build(spec: AttnSpec) -> AttnFn:
        listing = tile_listing(which)
        buckets = [b for b in sorted(listing) if b >= spec.head_dim]
        if not buckets or tile not in listing[buckets[0]][1:]:
            raise Unavailable(f"no {which} tile {tile} at head dim {spec.head_dim}")
        return build_attention(spec)
    return build


def tile_contenders() -> list[AttentionImpl]:
    """One contender per non-default tile (the A/B that picks each default, issue 16): the
    forward's in both passes, the backward's in forward+backward only (same forward)."""
    out = []
    for which, passes in (("fwd", None), ("bwd", (FWD_BWD,))):
        out += [AttentionImpl(f"mpt_ext {which} tile {tile}", OURS, "bshd",
                              build_attention_tile(which, tile), cuda_only=True, passes=passes,
                              env=((TILE_VARIABLES[which], tile),))
                for tile in tile_variants(which)]
    return out


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
