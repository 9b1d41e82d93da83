"""Telemetry: throughput, MFU, memory, a JSONL metrics log and the progress bar.

MFU follows llm-foundry's definition: model FLOPs per token for one forward+backward are
6 * n_params (a multiply-add per parameter, times three passes) plus the attention
matmuls, 12 * n_layers * d_model * seq_len (QK^T and PV, forward + backward); recomputation
by activation checkpointing is not counted. Peak is the device's dense bf16 rate.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of the device name.
# Longer names first: 'H100 PCIe' must win over 'H100'.
BF16_PEAK_FLOPS = [
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),        # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
]


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> int:
    return 6 * n_params + 12 * n_layers * d_model * seq_len


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device for MFU, or None where not known (CPU; fp32 runs; unknown
    GPUs: set MPT_EXT_PEAK_FLOPS to report MFU anyway)."""
    env = os.environ.get("MPT_EXT_PEAK_FLOPS")
    if env:
        return float(env)
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in sorted(BF16_PEAK_FLOPS, key=lambda kv: -len(kv[0])):
        if key in name:
            return value
    return None


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"mem_alloc_gb": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30}
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"max_rss_gb": rss / (2**30 if sys.platform == "darwin" else 2**20)}


class Throughput:
    """Tokens/s and MFU over the steps since the last report."""

    def __init__(self, flops_per_tok: int, peak: float | None, world_size: int):
        self.flops_per_tok, self.peak, self.world = flops_per_tok, peak, world_size
        self.reset()

    def reset(self):
        self.t0, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int):
        self.tokens += tokens

    def report(self) -> dict:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tps = self.tokens / dt
        out = {"tokens_per_s": tps}
        if self.peak:
            out["mfu"] = tps * self.flops_per_tok / (self.peak * self.world)
        self.reset()
        return out


class MetricsLog:
    """One JSON object per line (step, loss, lr, tokens/s, ...): easy to plot with pandas
    or matplotlib. Appends, so a resumed run continues the same file."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar on stderr, only where stderr is a terminal: redirected to a file or a CI
    log, a bar is kilobytes of carriage-return lines (the log lines say the same)."""
    isatty = getattr(sys.stderr, "isatty", None)
    if not enabled or not (isatty and isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


def format_metrics(m: dict) -> str:
    parts = [f"step {m['step']}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}"]
    if "tokens_per_s" in m:
        parts.append(f"{m['tokens_per_s']:,.0f} tok/s")
    parts.append(f"MFU {m['mfu'] * 100:.1f}%" if "mfu" in m else "MFU n/a")
    if "grad_norm" in m:
        parts.append(f"gnorm {m['grad_norm']:.2f}")
    return " | ".join(parts)
