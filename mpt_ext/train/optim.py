"""Optimizers and the learning-rate schedule.

LionW (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") with weight
decay decoupled from the learning rate as Composer's DecoupledLionW does it: the decay
step is wd * lr / initial_lr, so `weight_decay` means "fraction per step at peak lr"
and the schedule scales it. AdamW is torch's (fused kernel on CUDA).
"""
from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class LionW(torch.optim.Optimizer):
    """p <- p * (1 - wd * lr / initial_lr) - lr * sign(beta1 * m + (1 - beta1) * g);
    m <- beta2 * m + (1 - beta2) * g."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"LionW: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LionW: betas must be in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"LionW: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            decay = 1.0 - wd * lr / group["initial_lr"] if wd else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                if decay != 1.0:
                    p.mul_(decay)
                update = m.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear weights, embeddings) only, not on norms or biases
    (the usual GPT rule)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, name: str, lr: float, betas, weight_decay: float,
                    eps: float = 1e-8) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=on_cuda or None)
    if name == "lion":
        return LionW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'lion', got {name!r}")


def warmup_cosine_factor(step: int, warmup: int, total: int, alpha_f: float) -> float:
    """lr multiplier at optimizer step `step` (0-based): linear warmup from 1/warmup to 1
    over `warmup` steps, then cosine from 1 down to alpha_f at step `total`, then alpha_f."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return alpha_f + (1.0 - alpha_f) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, alpha_f: float) -> LambdaLR:
    if warmup < 0 or total < 1:
        raise ValueError(f"scheduler: need warmup >= 0 and total >= 1, got {warmup}, {total}")
    if not 0.0 <= alpha_f <= 1.0:
        raise ValueError(f"scheduler: alpha_f must be in [0, 1], got {alpha_f}")
    # A partial (not a lambda) so LambdaLR.state_dict() stays picklable.
    return LambdaLR(optimizer, functools.partial(warmup_cosine_factor, warmup=warmup, total=total,
                                                 alpha_f=alpha_f))
