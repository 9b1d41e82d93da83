"""The CUDA norm kernels' source, run on the CPU by tests/cuda_emulation (every CUDA thread a
std::thread): checks their indexing, reductions and dweight/dbias partials against float64 on
machines without a GPU. Needs g++ and the CUDA headers (not a GPU)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"


@pytest.mark.slow
def test_cuda_norm_kernels_emulated(tmp_path, fresh_seed):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None or not (CUDA_INCLUDE / "cuda_bf16.h").exists():
        pytest.skip("needs g++ and the CUDA toolkit headers")
    exe = tmp_path / "norm_emulated"
    subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", f"-I{CUDA_INCLUDE}",
                    str(HERE / "cuda_emulation" / "norm_emulated.cpp"), "-o", str(exe)],
                   check=True, timeout=600)
    run = subprocess.run([str(exe), str(fresh_seed)], capture_output=True, text=True, timeout=900)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
