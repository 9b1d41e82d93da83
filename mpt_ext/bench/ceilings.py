"""The card's measured ceilings, in every report: a large device-to-device copy (the
bandwidth floor for norms and decoding) and a large bf16 matmul (the FLOP floor for
attention and training). Percent-of-ceiling columns divide by these."""
from __future__ import annotations

from typing import Optional

import torch

from . import counting
from .core import Prepared, Problem, Settings, run_case

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), for MFU. Matched
# by substring of the device name, most specific first; unknown cards report MFU against
# the measured matmul ceiling only.
_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def spec_bf16_tflops(gpu_name: Optional[str]) -> Optional[float]:
    if not gpu_name:
        return None
    for pattern, tflops in _BF16_PEAK_TFLOPS:
        if pattern in gpu_name:
            return tflops
    return None


def _sig(x: float) -> float:
    return float(f"{x:.4g}")  # 4 significant digits: CPU smoke runs give tiny values


def _sizes(settings: Settings) -> tuple[int, int, torch.dtype]:
    if settings.is_cuda:
        return 2**30, 8192, torch.bfloat16  # 1 GiB copy: far beyond any L2
    return 16 * 2**20, 256, torch.float32   # CPU smoke sizes; bf16 matmul is slow on CPUs


def measure_ceilings(settings: Settings) -> dict:
    dev = settings.device
    copy_n, mm, dtype = _sizes(settings)
    dtype_name = str(dtype).replace("torch.", "")

    def prep_copy() -> Prepared:
        src = torch.empty(copy_n, dtype=torch.uint8, device=dev).random_()
        dst = torch.empty_like(src)
        return Prepared(call=lambda x: x[1].copy_(x[0]), inputs=(src, dst))

    def prep_matmul() -> Prepared:
        a = torch.randn(mm, mm, device=dev, dtype=dtype)
        b = torch.randn(mm, mm, device=dev, dtype=dtype)
        return Prepared(call=lambda x: torch.mm(x[0], x[1]), inputs=(a, b))

    copy_p = Problem(key=f"copy {copy_n / 2**20:.0f} MiB", params={"bytes": copy_n},
                     work=counting.copy_bytes(copy_n), metric=counting.GBPS[0],
                     unit=counting.GBPS[1])
    mm_p = Problem(key=f"matmul {dtype_name} {mm}^3", params={"n": mm, "dtype": dtype_name},
                   work=counting.matmul_flops(mm, mm, mm), metric=counting.TFLOPS[0],
                   unit=counting.TFLOPS[1])
    copy_r = run_case("ceilings", copy_p, "copy_", "ceiling", prep_copy, settings)
    mm_r = run_case("ceilings", mm_p, "torch.mm", "ceiling", prep_matmul, settings)
    gpu = torch.cuda.get_device_properties(dev).name if settings.is_cuda else None
    return {
        "copy_gbps": _sig(copy_r.value) if copy_r.ok else None,
        "copy_what": copy_p.key if copy_r.ok else copy_r.status,
        "matmul_tflops": _sig(mm_r.value) if mm_r.ok else None,
        "matmul_what": mm_p.key if mm_r.ok else mm_r.status,
        "spec_bf16_tflops": spec_bf16_tflops(gpu),
    }

