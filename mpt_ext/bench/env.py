"""The environment a report was measured in: card, driver, software versions, commit and
mpt_ext's build flags. Every field is best-effort: a missing tool gives None, never an error."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Optional

import torch

_OPTIONAL_PACKAGES = ("triton", "transformers", "flash-attn", "liger-kernel", "numpy", "matplotlib")


def _run(cmd: list[str], cwd: Optional[str] = None) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> dict:
    """The source tree's commit when mpt_ext runs from a git checkout (an installed wheel
    has none)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return {"commit": None, "dirty": None}
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _package_version(dist: str) -> Optional[str]:
    """Installed version from package metadata: no import (importing transformers alone
    takes seconds)."""
    for name in (dist, dist.replace("-", "_"), dist.replace("_", "-")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def build_flags() -> dict:
    """Which kernels this build of mpt_ext dispatches to."""
    try:
        from .. import _library
    except Exception as exc:  # the extension failed to load: say so in the report
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"with_cuda": _library.WITH_CUDA, "cuda_families": sorted(_library.CUDA_FAMILIES)}


def gpu_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"gpu": None}
    props = torch.cuda.get_device_properties(device)
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                   f"--id={device.index or 0}"])
    return {
        "gpu": props.name,
        "sm": f"{props.major}.{props.minor}",
        "sms": props.multi_processor_count,
        "mem_gib": round(props.total_memory / 2**30, 1),
        "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        "driver": driver,
    }


def collect(device: torch.device) -> dict:
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": str(device),
        **gpu_info(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{name.replace("-", "_"): _package_version(name) for name in _OPTIONAL_PACKAGES},
        **git_commit(),
        "mpt_ext_build": build_flags(),
        "argv": sys.argv[:],
    }
    return env
