"""The implementations each benchmark compares, one small adapter each.

Registries list them in table order: ours first, then what a user would pick instead,
then the no-ALiBi ceilings. Entries marked cuda_only are skipped on a CPU run."""
from __future__ import annotations

from ..counting import FWD_BWD
from . import eager, flash_attn_pkg, flex, norms, ours, sdpa
from .spec import BASELINE, CEILING, OURS, AttentionImpl, AttnSpec, NormImpl, NormSpec

__all__ = ["attention_impls", "decode_impls", "norm_impls", "AttnSpec", "NormSpec",
           "AttentionImpl", "NormImpl", "OURS", "BASELINE", "CEILING"]


def attention_impls() -> list[AttentionImpl]:
    return [
        AttentionImpl("mpt_ext", OURS, "bshd", ours.build_attention),
        # the forward's and backward's other tiles, for the A/B that picks the defaults
        *ours.tile_contenders(),
        ours.sm90_contender(),
        # the backward's reproducible dQ (split, and the separate kernel) against the default
        # atomic dQ (same forward)
        AttentionImpl("mpt_ext deterministic", OURS, "bshd", ours.build_attention_deterministic,
                      cuda_only=True, passes=(FWD_BWD,)),
        ours.dq_separate_contender(),
        AttentionImpl("flash-attn", BASELINE, "bshd", flash_attn_pkg.build, cuda_only=True),
        AttentionImpl("flex ALiBi", BASELINE, "bhsd", flex.build, cuda_only=True),
        AttentionImpl("SDPA+bias cuDNN", BASELINE, "bhsd", sdpa.build_with_bias("cudnn"),
                      cuda_only=True),
        AttentionImpl("SDPA+bias efficient", BASELINE, "bhsd",
                      sdpa.build_with_bias("efficient"), cuda_only=True),
        AttentionImpl("SDPA+bias math", BASELINE, "bhsd", sdpa.build_with_bias("math"),
                      cuda_only=True),
        # On a CPU, SDPA picks its own (CPU) backend.
        AttentionImpl("SDPA+bias", BASELINE, "bhsd", sdpa.build_with_bias(None),
                      note="cpu"),
        AttentionImpl("eager (HF MPT)", BASELINE, "bhsd", eager.build),
        AttentionImpl("SDPA flash, no ALiBi", CEILING, "bhsd", sdpa.build_no_bias("flash"),
                      cuda_only=True),
        AttentionImpl("SDPA cuDNN, no ALiBi", CEILING, "bhsd", sdpa.build_no_bias("cudnn"),
                      cuda_only=True),
    ]


def decode_impls() -> list[AttentionImpl]:
    return [
        AttentionImpl("mpt_ext", OURS, "bshd", ours.build_kvcache),
        AttentionImpl("flash-attn", BASELINE, "bshd", flash_attn_pkg.build_kvcache,
                      cuda_only=True),
        AttentionImpl("eager (HF MPT)", BASELINE, "bhsd", eager.build),
        AttentionImpl("SDPA+bias efficient", BASELINE, "bhsd",
                      sdpa.build_with_bias("efficient"), cuda_only=True),
        AttentionImpl("SDPA+bias cuDNN", BASELINE, "bhsd", sdpa.build_with_bias("cudnn"),
                      cuda_only=True),
        AttentionImpl("SDPA+bias", BASELINE, "bhsd", sdpa.build_with_bias(None), note="cpu"),
        AttentionImpl("SDPA flash, no ALiBi", CEILING, "bhsd", sdpa.build_no_bias("flash"),
                      cuda_only=True),
    ]


def norm_impls() -> list[NormImpl]:
    return [
        NormImpl("mpt_ext", OURS, ours.build_norm),
        NormImpl("torch eager", BASELINE, norms.build_eager),
        NormImpl("torch.compile", BASELINE, norms.build_compiled, cuda_only=True),
        NormImpl("liger-kernel", BASELINE, norms.build_liger, cuda_only=True),
    ]


def runs_on(impl, device_type: str) -> bool:
    """cuda_only impls are skipped on a CPU; "cpu"-noted ones (SDPA with its default
    backend) stand in there for the per-backend CUDA entries."""
    if device_type != "cuda":
        return not impl.cuda_only
    return getattr(impl, "note", None) != "cpu"
