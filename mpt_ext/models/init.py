"""llm-foundry's parameter initialisation for MPT, driven by config.init_config.

Defaults (MPT's): kaiming_normal_ with a=init_gain=0, mode fan_in, nonlinearity relu, i.e.
normal(0, sqrt(2 / fan_in)), on every Linear weight and on the embedding; a fused Wqkv is
initialised as its separate q, k, v matrices; biases zero; norm weights one; weights of
residual projections (attn.out_proj, ffn.down_proj) divided by sqrt(2 * n_layers).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .config import MPTConfig

__all__ = ["init_mpt_parameters"]


def _weight_init_fn(init: dict):
    name = init["name"]
    if name == "kaiming_normal_":
        return partial(nn.init.kaiming_normal_, a=float(init.get("init_gain") or 0.0),
                       mode=init.get("fan_mode", "fan_in"),
                       nonlinearity=init.get("init_nonlinearity", "relu"))
    if name == "baseline_":
        std = init.get("init_std")
        if std is None:
            raise ValueError("init_config.init_std must be set for init_config.name='baseline_'")
        return partial(nn.init.normal_, mean=0.0, std=float(std))
    raise ValueError(f"init_config.name={name!r} is not supported")


def _residual_divisor(init: dict, n_layers: int) -> float:
    div = init.get("init_div_is_residual", True)
    if div is True:
        return math.sqrt(2 * n_layers)
    if div is False:
        return 1.0
    try:
        return float(div)
    except (TypeError, ValueError):
        raise ValueError(f"init_config.init_div_is_residual must be a bool or a number, got "
                         f"{div!r}") from None


def _embedding_init_fn(init: dict, weight_init):
    std = init.get("emb_init_std")
    if std is not None:
        return partial(nn.init.normal_, mean=0.0, std=float(std))
    lim = init.get("emb_init_uniform_lim")
    if lim is not None:
        lo, hi = (lim if isinstance(lim, (list, tuple)) else (-lim, lim))
        return partial(nn.init.uniform_, a=float(lo), b=float(hi))
    return weight_init


@torch.no_grad()
def init_mpt_parameters(model: nn.Module, config: MPTConfig) -> None:
    init = config.init_config
    weight_init = _weight_init_fn(init)
    divisor = _residual_divisor(init, config.n_layers)
    emb_init = _embedding_init_fn(init, weight_init)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fused = getattr(module, "_fused", None)
            if fused is not None:
                dim, splits = fused
                bounds = (0, *splits, module.weight.shape[dim])
                for lo, hi in zip(bounds[:-1], bounds[1:]):
                    weight_init(module.weight.narrow(dim, lo, hi - lo))
            else:
                weight_init(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if getattr(module, "_is_residual", False):
                module.weight.div_(divisor)
        elif isinstance(module, nn.Embedding):
            emb_init(module.weight)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
