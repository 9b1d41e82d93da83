"""Model-specific swaps for mpt_ext.patch(): attention modules of known architectures.

transformers' MptForCausalLM: each MptAttention's forward is replaced (on the instance,
parameters untouched) by one on mpt_ext's ALiBi flash attention, and the model's mask
builder is switched to one that hands attention the (batch, keys) padding mask instead of
a (batch, 1, queries, keys) one. Nothing of size queries x keys is allocated, so contexts
far past the point where transformers' own bias and mask run out of memory work.
"""
from __future__ import annotations

import types

import torch

from .attention import alibi_slopes, flash_attn_func, flash_attn_varlen_func

__all__ = ["patch_attention", "ATTN_IMPLEMENTATION"]

#: the name under which the O(keys) padding mask is registered with transformers
ATTN_IMPLEMENTATION = "mpt_ext"


def _key_padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                      mask_function=None, attention_mask=None, **kwargs):
    """transformers mask-interface hook: (batch, kv_length) bool, True = padding key
    (transformers' MPT treats True as masked)."""
    if attention_mask is None:
        device = kwargs.get("device")
        return torch.zeros(batch_size, kv_length, dtype=torch.bool, device=device)
    valid = attention_mask[:, kv_offset:kv_offset + kv_length].bool()
    return ~valid


def _unused_attention(*args, **kwargs):
    raise NotImplementedError(
        f"attn_implementation={ATTN_IMPLEMENTATION!r} only serves MPT models patched by "
        "mpt_ext.patch(model); other attention modules cannot use it")


def _register_with_transformers() -> None:
    from transformers import AttentionInterface  # noqa: PLC0415
    from transformers.masking_utils import AttentionMaskInterface  # noqa: PLC0415
    AttentionInterface.register(ATTN_IMPLEMENTATION, _unused_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _key_padding_mask)


def _slopes(module, position_bias, device) -> torch.Tensor:
    """transformers' MPT passes its ALiBi row slope * (j - (max_seq_len - 1)); reading the
    slopes back from it keeps exactly the bias transformers uses (its alibi_bias_max)."""
    if position_bias is not None and position_bias.dim() == 3 and position_bias.shape[-1] >= 2:
        return (-position_bias[:, 0, -2]).to(device=device, dtype=torch.float32).contiguous()
    return alibi_slopes(module.n_heads, 8.0, device=device)


def _padding_from_mask(attention_mask, batch, kv_length):
    """(batch, kv_length) bool, True = padding, or None when nothing is padded."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        # A materialised (batch, 1, q, k) mask (e.g. after set_attn_implementation("eager")):
        # its last query row masks exactly the padding keys, for left and right padding.
        pad = attention_mask[:, 0, -1, :].bool()
    else:
        pad = attention_mask.bool()
    if tuple(pad.shape) != (batch, kv_length):
        raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)} does not match "
                         f"batch {batch} and {kv_length} keys")
    return pad if bool(pad.any()) else None


def _mpt_attention_forward(self, hidden_states, position_bias=None, cache=None,
                           attention_mask=None, **kwargs):
    """Drop-in for transformers' MptAttention.forward on mpt_ext's flash attention."""
    if cache is None:  # older transformers name the cache argument differently
        cache = kwargs.get("past_key_values", kwargs.get("layer_past"))
    batch, seqlen, _ = hidden_states.shape
    heads, head_dim = self.n_heads, self.head_dim
    qkv = self.Wqkv(hidden_states)
    if self.clip_qkv:
        qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
    q, k, v = qkv.chunk(3, dim=2)
    q = q.reshape(batch, seqlen, heads, head_dim)
    k = k.reshape(batch, seqlen, heads, head_dim)
    v = v.reshape(batch, seqlen, heads, head_dim)
    if cache is not None:  # transformers' caches hold (batch, heads, keys, head_dim)
        k, v = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    kv_length = k.shape[1]
    slopes = _slopes(self, position_bias, hidden_states.device)
    pad = _padding_from_mask(attention_mask, batch, kv_length)
    if pad is None:
        out = flash_attn_func(q, k, v, softmax_scale=self.softmax_scale, causal=True,
                              alibi_slopes=slopes)
    else:
        # Pack the real tokens; queries are the last seqlen key positions. Causal masking
        # is bottom-right aligned per sequence, so each query sees its own prefix.
        k_valid = ~pad
        q_valid = k_valid[:, kv_length - seqlen:]
        cu_q = torch.zeros(batch + 1, dtype=torch.int32, device=q.device)
        cu_k = torch.zeros(batch + 1, dtype=torch.int32, device=q.device)
        cu_q[1:] = q_valid.sum(1).cumsum(0)
        cu_k[1:] = k_valid.sum(1).cumsum(0)
        packed = flash_attn_varlen_func(
            q[q_valid], k[k_valid], v[k_valid], cu_q, cu_k, int(q_valid.sum(1).max()),
            int(k_valid.sum(1).max()), softmax_scale=self.softmax_scale, causal=True,
            alibi_slopes=slopes)
        out = q.new_zeros(batch, seqlen, heads, head_dim)
        out[q_valid] = packed
    return self.out_proj(out.reshape(batch, seqlen, heads * head_dim)), None


def _mpt_attention_class():
    try:
        from transformers.models.mpt import modeling_mpt  # noqa: PLC0415
    except ImportError:
        return None
    return modeling_mpt.MptAttention


def patch_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces, in place, the attention of supported models (transformers'
    MptForCausalLM / MptModel); other modules are left alone. Returns model."""
    mpt_attention = _mpt_attention_class()
    if mpt_attention is None:
        return model
    patched = False
    for module in model.modules():
        if isinstance(module, mpt_attention):
            module.forward = types.MethodType(_mpt_attention_forward, module)
            patched = True
    if patched:
        _register_with_transformers()
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and getattr(config, "model_type", None) == "mpt":
                config._attn_implementation = ATTN_IMPLEMENTATION
    return model
