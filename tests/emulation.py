"""The CUDA kernels' source run on the CPU (tests/cuda_emulation, README there): builds the
emulation libraries once per session and routes mpt_ext's public API to them.

Inside ``emulated_cuda_kernels()``, flash_attn_func, flash_attn_varlen_func,
flash_attn_with_kvcache, layer_norm and rms_norm on CPU tensors run the CUDA launchers and
kernels (torch.ops.mpt_ext_emu, the same op bodies as torch.ops.mpt_ext) instead of the C++
CPU kernels, so the shared checks in attention_helpers.py / norm_testing.py apply unchanged.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpt_ext.attention
import mpt_ext.norm

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "cuda_emulation"
BUILD = Path(os.environ.get("MPT_EXT_EMU_BUILD_DIR", ROOT / "build" / "emulation"))
KERNELS_LIB = "libmpt_emu_kernels.so"
OPS_LIB = "libmpt_ext_emu.so"


def _tool(name: str) -> str | None:
    """cmake / ninja from this Python's pip packages (scripts/setup installs them), else PATH."""
    try:
        module = __import__(name)
        path = Path(module.CMAKE_BIN_DIR if name == "cmake" else module.BIN_DIR) / name
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    return shutil.which(name)


def cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_bf16.h").exists():
            return Path(root) / "include"
    return None


def missing_tools() -> str | None:
    """Why the harness cannot be built here (None: it can)."""
    if cuda_include() is None:
        return "needs the CUDA toolkit headers (CUDA_HOME or /usr/local/cuda), not a GPU"
    for tool in ("cmake", "ninja"):
        if _tool(tool) is None:
            return f"needs {tool}"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "needs a C++ compiler"
    return None


def build(build_dir: Path = BUILD, source_dir: Path = ROOT, target: str | None = None,
          head_dims: str = "", timeout: int = 1200) -> Path:
    """Configures (once) and builds the emulation libraries of source_dir's csrc/ and python/
    into build_dir; returns build_dir. Serialised across processes by a lock file."""
    build_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(_tool('ninja')).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build_dir / "build.ninja").exists():
            subprocess.run([_tool("cmake"), "-S", str(HARNESS), "-B", str(build_dir), "-G", "Ninja",
                            f"-DPython3_EXECUTABLE={sys.executable}",
                            f"-DMPT_EXT_SOURCE_DIR={source_dir}",
                            f"-DMPT_EXT_HEAD_DIMS={head_dims}",
                            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}"],
                           check=True, capture_output=True, text=True, env=env, timeout=timeout)
        cmd = [_tool("cmake"), "--build", str(build_dir), "-j", os.environ.get("MAX_JOBS", "2")]
        if target:
            cmd += ["--target", target]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"emulation build failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}")
    return build_dir


_LOADED: Path | None = None
_KERNELS: ctypes.CDLL | None = None  # the kernels library the ops run (a mutant's or the build's)


def load(build_dir: Path = BUILD, kernels_lib: Path | None = None):
    """Loads the emulated ops (torch.ops.mpt_ext_emu) once per process. kernels_lib: a
    libmpt_emu_kernels.so to use in place of build_dir's (a mutant's); it must be the first
    load in the process."""
    global _LOADED, _KERNELS
    if _LOADED is None:
        # A mutant's is found by soname when the ops library asks for it.
        _KERNELS = ctypes.CDLL(str(kernels_lib or build_dir / KERNELS_LIB),
                               mode=ctypes.RTLD_GLOBAL)
        _KERNELS.cuda_emu_take_launch_log.restype = ctypes.c_char_p
        torch.ops.load_library(str(build_dir / OPS_LIB))
        for op, backward, setup in (
                ("attn_fwd", mpt_ext.attention._attn_backward,
                 mpt_ext.attention._attn_setup_context),
                ("norm_fwd", mpt_ext.norm._norm_backward, mpt_ext.norm._norm_setup_context)):
            torch.library.register_autograd(f"mpt_ext_emu::{op}", backward, setup_context=setup)
        _LOADED = build_dir
    return torch.ops.mpt_ext_emu


def take_launches() -> list[tuple[str, tuple[int, int, int]]]:
    """The launches since the last call, oldest first: each kernel's demangled name (template
    arguments included) and its grid (x, y, z)."""
    launches = []
    for line in _KERNELS.cuda_emu_take_launch_log().decode().splitlines():
        name, grid = line.split("\t")
        launches.append((name, tuple(int(n) for n in grid.split())))
    return launches


def take_launched_kernels() -> list[str]:
    """The kernels launched since the last call, oldest first: which variant a call ran."""
    return [name for name, _ in take_launches()]


@contextlib.contextmanager
def block_order(seed: int):
    """Blocks of every launch inside run in a permutation drawn from seed (and the launch's
    number) instead of CUDA's numbering: a result that depends on which block adds first
    changes with the seed (emu_runtime.h, set_block_order_seed)."""
    _KERNELS.cuda_emu_set_block_order_seed(ctypes.c_uint64(seed))
    try:
        yield
    finally:
        _KERNELS.cuda_emu_set_block_order_seed(ctypes.c_uint64(0))


@contextlib.contextmanager
def sm_count(sms: int):
    """The emulated device reports `sms` SMs inside (an H100 / H200's 132 outside): the host
    code's plans that follow the SM count (the split dQ's) take another branch."""
    previous = _KERNELS.cuda_emu_set_sm_count(sms)
    try:
        yield
    finally:
        _KERNELS.cuda_emu_set_sm_count(previous)


@contextlib.contextmanager
def compute_capability(cc: int):
    """The emulated device reports compute capability cc (major * 10 + minor) inside, sm_90
    outside: the dispatcher's architecture checks take the other branch."""
    previous = _KERNELS.cuda_emu_set_compute_capability(cc)
    try:
        yield
    finally:
        _KERNELS.cuda_emu_set_compute_capability(previous)


@contextlib.contextmanager
def emulated_cuda_kernels():
    """mpt_ext's public API on CPU tensors runs the emulated CUDA kernels while inside, and
    allocations start out poisoned (glibc M_PERTURB: 0x7f bytes, NaN in fp16 and ~3e38 in
    bf16 / fp32), so that an output element a kernel never writes cannot pass."""
    ops = torch.ops.mpt_ext_emu
    saved = mpt_ext.attention.ops, mpt_ext.norm.ops
    libc = ctypes.CDLL(None)
    m_perturb = -6
    libc.mallopt(m_perturb, 0x80)
    mpt_ext.attention.ops = mpt_ext.norm.ops = ops
    try:
        yield ops
    finally:
        mpt_ext.attention.ops, mpt_ext.norm.ops = saved
        libc.mallopt(m_perturb, 0)


@pytest.fixture(scope="session")
def emulation_build():
    why = missing_tools()
    if why:
        pytest.skip(f"CUDA emulation {why}")
    return build()


@pytest.fixture
def emulated(emulation_build):
    """The public API on the emulated CUDA kernels for the duration of a test. With
    MPT_EXT_EMU_KERNELS_LIB set (test_emulation_mutations.py), that kernels library (a
    mutant's) runs in place of the build's."""
    mutant = os.environ.get("MPT_EXT_EMU_KERNELS_LIB")
    load(emulation_build, kernels_lib=Path(mutant) if mutant else None)
    with emulated_cuda_kernels() as ops:
        yield ops
