"""The two MPT implementations the end-to-end benchmark compares: mpt_ext.models (ours,
on our kernels) and transformers' MptForCausalLM (what users run today), built with the
same shape and initialised directly on the device."""
from __future__ import annotations

import torch

from ..core import Unavailable


def our_config(preset: str, max_seq_len: int):
    """mpt_ext's preset (llm-foundry's shapes); also the shape the baseline is given."""
    try:
        from mpt_ext.models import MPTConfig
    except Exception as exc:  # the model package is missing or broken in this build
        raise Unavailable(f"mpt_ext.models not importable ({type(exc).__name__}: {exc})") \
            from None
    return MPTConfig.preset(preset, max_seq_len=max_seq_len)


def build_ours(preset: str, max_seq_len: int, device: torch.device) -> torch.nn.Module:
    cfg = our_config(preset, max_seq_len)  # raises Unavailable without mpt_ext.models
    from mpt_ext.models import MPTForCausalLM
    return MPTForCausalLM(cfg, device=device)


def build_hf(preset: str, max_seq_len: int, device: torch.device) -> torch.nn.Module:
    cfg = our_config(preset, max_seq_len)
    try:
        from transformers import MptConfig, MptForCausalLM
    except Exception as exc:
        raise Unavailable(f"transformers not importable ({type(exc).__name__})") from None
    hf_cfg = MptConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers,
                       expansion_ratio=int(cfg.expansion_ratio), max_seq_len=cfg.max_seq_len,
                       vocab_size=cfg.vocab_size, no_bias=cfg.no_bias, norm_type=cfg.norm_type,
                       attn_config={"alibi": True,
                                    "alibi_bias_max": cfg.attn_config.alibi_bias_max})
    with torch.device(device):
        return MptForCausalLM(hf_cfg)


def generate_ours(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    # Greedy, no eos: exactly new_tokens steps, like the baseline's call below.
    return model.generate(ids, max_new_tokens=new_tokens, do_sample=False)


def generate_hf(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                          pad_token_id=0)
