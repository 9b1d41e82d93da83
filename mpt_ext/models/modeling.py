"""MPT causal LM on mpt_ext's kernels, with Hugging Face's state_dict layout.

Blocks are pre-norm: x = x + attn(norm_1(x)); x = x + ffn(norm_2(x)). Each residual add
is fused with the norm that follows it (mpt_ext.layer_norm(..., residual=...)), so a block
receives the previous branch output and the residual stream separately. Padding never
reaches attention: an attention_mask packs the tokens (flash_attn_varlen_func).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import nn as mnn
from ..attention import (alibi_slopes, flash_attn_func, flash_attn_varlen_func,
                         flash_attn_with_kvcache)
from ..norm import layer_norm, rms_norm
from .config import MPTConfig
from .layout import TokenLayout, layout_from_cu_seqlens, layout_from_mask

__all__ = ["MPTForCausalLM", "MPTModel", "MPTBlock", "MPTAttention", "MPTMLP",
           "CausalLMOutput"]


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None


def make_norm(config: MPTConfig, size: int, device=None) -> nn.Module:
    bias = not config.no_bias
    eps = config.layer_norm_epsilon
    if config.norm_type == "low_precision_layernorm":
        return mnn.LPLayerNorm(size, eps=eps, bias=bias, device=device)
    if config.norm_type == "layernorm":
        return mnn.LayerNorm(size, eps=eps, bias=bias, device=device)
    return mnn.RMSNorm(size, eps=eps, device=device)  # rmsnorm variants: weight only


def add_norm(norm: nn.Module, x: torch.Tensor, residual: Optional[torch.Tensor]):
    """(norm(x + residual), x + residual) in one fused pass; (norm(x), x) without residual.

    The residual stream keeps its dtype (as llm-foundry's, whose embeddings start it):
    under autocast a low-precision branch output is widened before the add."""
    if residual is not None and x.dtype != residual.dtype:
        x = x.to(residual.dtype)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    if isinstance(norm, nn.RMSNorm):
        out = rms_norm(x, norm.weight, eps, residual=residual)
    else:
        out = layer_norm(x, norm.weight, norm.bias, eps, residual=residual)
    return out if residual is not None else (out, x)


class MPTAttention(nn.Module):
    """Fused-QKV ALiBi attention (MHA, MQA or GQA) with optional clip_qkv and qk_ln."""

    def __init__(self, config: MPTConfig, layer_idx: int, device=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.kv_n_heads = config.kv_n_heads
        self.head_dim = config.head_dim
        self.d_model = config.d_model
        self.kv_dim = self.kv_n_heads * self.head_dim
        self.softmax_scale = config.softmax_scale
        self.clip_qkv = config.attn_config.clip_qkv
        self.alibi_bias_max = float(config.attn_config.alibi_bias_max)
        bias = not config.no_bias
        self.Wqkv = nn.Linear(self.d_model, self.d_model + 2 * self.kv_dim, bias=bias,
                              device=device)
        # Output rows of q, k, v: initialised as three matrices (llm-foundry's _fused).
        self.Wqkv._fused = (0, (self.d_model, self.d_model + self.kv_dim))
        self.qk_ln = config.attn_config.qk_ln
        if self.qk_ln:
            self.q_ln = make_norm(config, self.d_model, device)
            self.k_ln = make_norm(config, self.kv_dim, device)
        self.out_proj = nn.Linear(self.d_model, self.d_model, bias=bias, device=device)
        self.out_proj._is_residual = True
        self._slopes: dict = {}

    def slopes(self, device: torch.device) -> torch.Tensor:
        s = self._slopes.get(device)
        if s is None:
            s = alibi_slopes(self.n_heads, self.alibi_bias_max, device=device)
            self._slopes[device] = s
        return s

    def forward(self, x: torch.Tensor, layout: TokenLayout, cache=None) -> torch.Tensor:
        """x: (batch, seqlen, d_model) dense or (tokens, d_model) packed."""
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split((self.d_model, self.kv_dim, self.kv_dim), dim=-1)
        if self.qk_ln:
            q, k = self.q_ln(q), self.k_ln(k)
        lead = x.shape[:-1]
        q = q.reshape(*lead, self.n_heads, self.head_dim)
        k = k.reshape(*lead, self.kv_n_heads, self.head_dim)
        v = v.reshape(*lead, self.kv_n_heads, self.head_dim)
        slopes = self.slopes(x.device)
        if cache is not None and cache.decoding:
            out = flash_attn_with_kvcache(
                q, cache.k[self.layer_idx], cache.v[self.layer_idx], k, v,
                cache_seqlens=cache.seqlens, softmax_scale=self.softmax_scale, causal=True,
                alibi_slopes=slopes)
        else:
            if layout.packed:
                out = flash_attn_varlen_func(
                    q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen,
                    layout.max_seqlen, softmax_scale=self.softmax_scale, causal=True,
                    alibi_slopes=slopes)
            else:
                out = flash_attn_func(q, k, v, softmax_scale=self.softmax_scale, causal=True,
                                      alibi_slopes=slopes)
            if cache is not None:
                cache.write_prompt(self.layer_idx, k, v, layout)
        return self.out_proj(out.reshape(*lead, self.d_model))


class MPTMLP(nn.Module):
    def __init__(self, config: MPTConfig, device=None):
        super().__init__()
        bias = not config.no_bias
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=bias, device=device)
        self.act = nn.GELU(approximate="none")
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=bias,
                                   device=device)
        self.down_proj._is_residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class MPTBlock(nn.Module):
    def __init__(self, config: MPTConfig, layer_idx: int, device=None):
        super().__init__()
        self.norm_1 = make_norm(config, config.d_model, device)
        self.attn = MPTAttention(config, layer_idx, device=device)
        self.norm_2 = make_norm(config, config.d_model, device)
        self.ffn = MPTMLP(config, device=device)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_ffn_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, branch: torch.Tensor, residual: Optional[torch.Tensor],
                layout: TokenLayout, cache=None):
        """branch: the previous block's output to add to residual (the embeddings, with
        residual None, for the first block). Returns (this block's ffn output, residual)."""
        h, residual = add_norm(self.norm_1, branch, residual)
        a = self.resid_attn_dropout(self.attn(h, layout, cache))
        h, residual = add_norm(self.norm_2, a, residual)
        return self.resid_ffn_dropout(self.ffn(h)), residual


class MPTModel(nn.Module):
    def __init__(self, config: MPTConfig, device=None):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model, device=device)
        self.emb_drop = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(MPTBlock(config, i, device=device)
                                    for i in range(config.n_layers))
        self.norm_f = make_norm(config, config.d_model, device)
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor, layout: TokenLayout, cache=None) -> torch.Tensor:
        """Final hidden states: (batch, seqlen, d) dense or (tokens, d) packed."""
        ids = layout.pack(input_ids) if layout.packed else input_ids
        x = self.wte(ids)
        frac = self.config.embedding_fraction
        if frac != 1:  # scales the embedding's gradient, not its value (llm-foundry)
            x = x * frac + x.detach() * (1 - frac)
        branch, residual = self.emb_drop(x), None
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if ckpt:
                branch, residual = checkpoint(block, branch, residual, layout, cache,
                                              use_reentrant=False)
            else:
                branch, residual = block(branch, residual, layout, cache)
        return add_norm(self.norm_f, branch, residual)[0]


class MPTForCausalLM(nn.Module):
    """MPT causal LM. state_dict keys are Hugging Face's (transformer.*); the LM head is
    tied to transformer.wte unless config.tie_word_embeddings is False (then lm_head.weight)."""

    def __init__(self, config: MPTConfig, device=None):
        super().__init__()
        if not isinstance(config, MPTConfig):
            raise TypeError(f"config must be an MPTConfig, got {type(config).__name__}")
        self.config = config
        if device is None and config.init_device not in (None, "cpu"):
            device = config.init_device  # e.g. "meta"; "cpu" defers to torch's default device
        self.transformer = MPTModel(config, device=device)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device)
        if self.transformer.wte.weight.device.type != "meta":
            self.reset_parameters()
        self._warned_long = False

    # ---- parameters ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    def output_weight(self) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return self.transformer.wte.weight
        return self.lm_head.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """llm-foundry's initialisation (init_config): kaiming_normal_ (fan_in, relu) or
        normal(init_std) on Linear weights (fused Wqkv per q/k/v block) and embeddings,
        zero biases, unit norm weights, residual projections divided by sqrt(2 n_layers)."""
        from .init import init_mpt_parameters  # noqa: PLC0415
        init_mpt_parameters(self, self.config)

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (activation checkpointing)."""
        self.transformer.gradient_checkpointing = enabled

    # ---- forward -------------------------------------------------------------------------
    def _check_input_ids(self, input_ids) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32, got {input_ids.dtype}")

    def warn_if_long(self, length: int) -> None:
        if length > self.config.max_seq_len and not self._warned_long:
            self._warned_long = True
            warnings.warn(f"sequence length {length} exceeds max_seq_len="
                          f"{self.config.max_seq_len}: running on ALiBi extrapolation",
                          stacklevel=3)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        logits = F.linear(h, self.output_weight())
        scale = self.config.logit_scale_value
        return logits * scale if scale is not None else logits

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> CausalLMOutput:
        """logits (batch, seqlen, vocab); with labels, loss is the mean next-token cross
        entropy (labels shifted inside, -100 ignored, as Hugging Face's). With an
        attention_mask (1 token, 0 padding; left or right padding), padding positions get
        zero logits and are ignored by the loss. cu_seqlens (int32, (n_docs + 1,)) instead
        splits the row-major flattened tokens into documents that attend only within
        themselves (packed training); max_seqlen is then their longest length."""
        self._check_input_ids(input_ids)
        batch, seqlen = input_ids.shape
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError("pass attention_mask or cu_seqlens, not both")
            layout = layout_from_cu_seqlens(cu_seqlens, max_seqlen, batch, seqlen,
                                            input_ids.device)
            self.warn_if_long(layout.max_seqlen)
        else:
            self.warn_if_long(seqlen)
            layout = layout_from_mask(attention_mask, batch, seqlen, input_ids.device)
        h = self.transformer(input_ids, layout)
        logits = self.logits_from_hidden(h)
        if layout.packed:
            logits = layout.unpack(logits)
        loss = None
        if labels is not None:
            loss = self.loss(logits, labels, attention_mask if layout.index is not None else None)
        return CausalLMOutput(logits=logits, loss=loss)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor,
             attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must have input_ids' shape {tuple(logits.shape[:2])}, got "
                             f"{tuple(labels.shape)}")
        target = labels[:, 1:]
        if attention_mask is not None:
            m = attention_mask.bool()
            target = target.masked_fill(~(m[:, 1:] & m[:, :-1]), -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                               ignore_index=-100)

    # ---- checkpoints and generation (in hf_io.py and generation.py) ------------------------
    @classmethod
    def from_pretrained(cls, path, dtype: Optional[torch.dtype] = None, device=None):
        """Loads a Hugging Face MPT checkpoint dir (config.json + model.safetensors, sharded
        safetensors with an index, or pytorch_model.bin)."""
        from .hf_io import load_pretrained  # noqa: PLC0415
        return load_pretrained(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path, safe_serialization: bool = True,
                        max_shard_size=None) -> None:
        """Writes config.json and the weights so that transformers.MptForCausalLM (and
        from_pretrained) read them."""
        from .hf_io import save_pretrained  # noqa: PLC0415
        save_pretrained(self, path, safe_serialization=safe_serialization,
                        max_shard_size=max_shard_size)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k=None, top_p=None, eos_token_id=None, attention_mask=None, do_sample=None,
                 generator=None, pad_token_id=None, streamer=None,
                 logits_processor=None) -> torch.Tensor:
        """KV-cache generation; see mpt_ext.models.generation.generate."""
        from .generation import generate  # noqa: PLC0415
        return generate(self, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                        attention_mask, do_sample, generator, pad_token_id, streamer,
                        logits_processor)
