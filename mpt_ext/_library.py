"""Loads the compiled extension; importing it registers the torch.ops.mpt_ext ops."""
import torch  # noqa: F401  (torch's libraries must be loaded before _C)

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "mpt_ext._C is not built: run `pip install --no-build-isolation -e .` "
        "(or scripts/dev-build) from the source tree"
    ) from e

ops = torch.ops.mpt_ext

#: the extension was compiled with nvcc (CUDA kernels present)
WITH_CUDA = bool(_C.with_cuda)
#: the CUDA kernel families dispatched to (CMake's MPT_EXT_CUDA_OPS): a subset of
#: {"norm", "attn", "attn_kvcache"}; a CUDA tensor reaching any other raises NotImplementedError
CUDA_FAMILIES = frozenset(_C.cuda_families.split())
#: the CUDA LayerNorm / RMSNorm kernels (norm_fwd, norm_bwd) are dispatched to
CUDA_NORM = "norm" in CUDA_FAMILIES
#: the CUDA attention kernels (attn_fwd, attn_bwd: flash_attn_func, flash_attn_varlen_func)
CUDA_ATTN = "attn" in CUDA_FAMILIES
#: the CUDA decode kernels (attn_kvcache: flash_attn_with_kvcache)
CUDA_ATTN_KVCACHE = "attn_kvcache" in CUDA_FAMILIES


def _tiles(listing: str) -> dict[int, tuple[str, ...]]:
    """'64:a,b;128:c' (csrc/attn/cuda/attn_tiles.cu) as {64: ("a", "b"), 128: ("c",)}."""
    return {int(bucket): tuple(tiles.split(","))
            for bucket, tiles in (item.split(":") for item in listing.split(";") if item)}


#: the CUDA attention forward's tiles ("ROWSxKEYS": query rows per CTA x keys per step) per
#: compiled head-dim bucket (the largest head dim it serves), the default first;
#: MPT_EXT_ATTN_FWD_TILE picks another for A/B runs. Empty without the CUDA attention kernels.
ATTN_FWD_TILES = _tiles(_C.attn_fwd_tiles)
#: the same for the backward's dK/dV kernel ("KEYSxROWS": keys per CTA x query rows per
#: step), picked by MPT_EXT_ATTN_BWD_TILE.
ATTN_BWD_TILES = _tiles(_C.attn_bwd_tiles)
