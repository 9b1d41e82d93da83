"""ALiBi as a PyTorch user builds it without a fused kernel: a float bias tensor."""
from __future__ import annotations

import torch

from .spec import AttnSpec


def _relative_positions(spec: AttnSpec) -> torch.Tensor:
    """j - (i + seqlen_k - seqlen_q): 0 on the bottom-right aligned diagonal, negative for
    visible past keys, positive for masked future keys. Shape (seqlen_q, seqlen_k)."""
    i = torch.arange(spec.seqlen_q, device=spec.device)[:, None]
    j = torch.arange(spec.seqlen_k, device=spec.device)[None, :]
    return (j - (i + spec.seqlen_k - spec.seqlen_q)).to(torch.float32)


def full_alibi_bias(spec: AttnSpec) -> torch.Tensor:
    """(1, heads, seqlen_q, seqlen_k) bias with the causal mask folded in as -inf: SDPA
    cannot combine attn_mask with is_causal, so a user has to materialise all of it."""
    rel = _relative_positions(spec)
    masked = rel > 0 if spec.causal else None
    bias = torch.empty((1, spec.heads, spec.seqlen_q, spec.seqlen_k), dtype=spec.dtype,
                       device=spec.device)
    for h in range(spec.heads):  # one head at a time: no fp32 (heads, N, N) transient
        b = spec.slopes[h] * rel
        bias[0, h] = b.masked_fill(masked, float("-inf")) if masked is not None else b
    return bias


def key_alibi_bias(spec: AttnSpec) -> torch.Tensor:
    """(heads, 1, seqlen_k) bias over key positions only, as Hugging Face's MPT builds it:
    it differs from -slope*|i-j| by a constant per row, which softmax ignores."""
    j = torch.arange(spec.seqlen_k, device=spec.device, dtype=torch.float32)
    return (spec.slopes[:, None, None] * (j - (spec.seqlen_k - 1))[None, None]).to(spec.dtype)


def causal_mask(spec: AttnSpec) -> torch.Tensor:
    """Bool (seqlen_q, seqlen_k), True where a key is masked (bottom-right aligned)."""
    return _relative_positions(spec) > 0
