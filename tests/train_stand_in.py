"""TEST DOUBLE for the trainer tests: a tiny pure-PyTorch causal LM with the slice of
MPTForCausalLM's interface the trainer uses (config.{n_layers,d_model,vocab_size,to_dict},
forward(input_ids).logits, generate, save_pretrained). Not shipped in mpt_ext/; the trainer
tests that need a real MPT model use mpt_ext.models when it is present."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class StandInConfig:
    vocab_size: int = 259
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 2

    def to_dict(self):
        return asdict(self)


@dataclass
class Output:
    logits: torch.Tensor


class Block(nn.Module):
    def __init__(self, c: StandInConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.norm_1, self.norm_2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.out = nn.Linear(c.d_model, c.d_model)
        self.up, self.down = nn.Linear(c.d_model, 4 * c.d_model), nn.Linear(4 * c.d_model, c.d_model)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm_1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        return x + self.down(F.gelu(self.up(self.norm_2(x))))


class StandInLM(nn.Module):
    def __init__(self, config: StandInConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.wte.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(512, config.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(config.d_model)
        # a scalar the NaN test can poison
        self.logit_scale = nn.Parameter(torch.ones(1))  # 1-D: FSDP2 shards no scalars

    def forward(self, input_ids, attention_mask=None, labels=None):
        x = self.wte(input_ids) + self.pos[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return Output(F.linear(self.norm_f(x), self.wte.weight) * self.logit_scale)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_token_id=None):
        for _ in range(max_new_tokens):
            logits = self(input_ids[:, -512:]).logits[:, -1].float() / max(temperature, 1e-6)
            if top_k:
                kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1)
            input_ids = torch.cat([input_ids, nxt], 1)
            if eos_token_id is not None and bool((nxt == eos_token_id).all()):
                break
        return input_ids

    def save_pretrained(self, path):
        path = Path(path)
        (path / "config.json").write_text(json.dumps(self.config.to_dict()))
        torch.save(self.state_dict(), path / "weights.pt")


def stand_in_factory(cfg, vocab_size):
    """model_factory for Trainer: cfg.model overrides the stand-in's config fields."""
    return StandInLM(StandInConfig(vocab_size=vocab_size, **cfg.model))
