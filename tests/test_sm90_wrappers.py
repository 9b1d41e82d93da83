"""The sm_90a instruction wrappers (csrc/attn/cuda/sm90) as the GPU build compiles them: nvcc
and ptxas must accept every wrapper's inline assembly (each wgmma shape, both operand
sources, both B majors; TMA, mbarrier, bulk groups, setmaxnreg) and emit the Hopper
instructions for them. The same wrappers run on the emulated GPU in emu_selftest
(tests/test_emulation_harness.py: the GEMM probe against a matrix product)."""
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SM90 = ROOT / "csrc" / "attn" / "cuda" / "sm90"


def _nvcc() -> str | None:
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuobjdump() -> str | None:
    """The toolkit's, else the one triton (a torch dependency) ships."""
    if NVCC is not None and Path(NVCC).with_name("cuobjdump").exists():
        return str(Path(NVCC).with_name("cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    return shutil.which("cuobjdump")


NVCC = _nvcc()
CUOBJDUMP = _cuobjdump()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit), not a GPU")


def nvcc_sm90a(*args: str, timeout: int = 600) -> str:
    """nvcc -std=c++17 -O3 for sm_90a with the tree on the include path, then `args`; fails the
    test on an error; returns the compiler's log (ptxas -v's lines when args ask for them)."""
    run = subprocess.run([NVCC, "-std=c++17", "-O3", "-gencode", "arch=compute_90a,code=sm_90a",
                          "-I", str(ROOT), *args], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stderr


def sass_of(obj: Path) -> str:
    """The SASS of an object file's embedded cubin."""
    return subprocess.run([CUOBJDUMP, "-sass", str(obj)], capture_output=True, text=True,
                          timeout=300).stdout

# Every generated wgmma wrapper, and the probe kernel in each of its four forms.
PROGRAM = r"""
#include "tests/cuda_emulation/sm90_gemm_probe.cuh"

using namespace mpt_ext::attn::cuda::sm90;

template <typename T, int N>
__device__ void every_form(float* out, uint64_t desc_a, uint64_t desc_b, const uint32_t (&a)[4]) {
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = out[i];
  wgmma_fence();
  Wgmma<N, T>::template ss<0>(d, desc_a, desc_b, 1);
  Wgmma<N, T>::template ss<1>(d, desc_a, desc_b, 1);
  Wgmma<N, T>::template rs<0>(d, a, desc_b, 1);
  Wgmma<N, T>::template rs<1>(d, a, desc_b, 1);
  wgmma_commit_group();
  wgmma_wait_group<0>(d);
  for (int i = 0; i < N / 2; ++i) out[i] += d[i];
}

template <typename T>
__global__ void all_shapes(float* out, uint64_t desc_a, uint64_t desc_b, uint4 regs) {
  const uint32_t a[4] = {regs.x, regs.y, regs.z, regs.w};
  every_form<T, 8>(out, desc_a, desc_b, a);
  every_form<T, 16>(out, desc_a, desc_b, a);
  every_form<T, 32>(out, desc_a, desc_b, a);
  every_form<T, 64>(out, desc_a, desc_b, a);
  every_form<T, 96>(out, desc_a, desc_b, a);
  every_form<T, 128>(out, desc_a, desc_b, a);
  every_form<T, 192>(out, desc_a, desc_b, a);
  every_form<T, 256>(out, desc_a, desc_b, a);
}

// the host side: the driver's tensor-map encoder through the runtime
sm90_probe::Params host_side(const void* a, const void* b, void* d) {
  return sm90_probe::make_params(a, b, d, 50, 320, true);
}

template __global__ void all_shapes<__nv_bfloat16>(float*, uint64_t, uint64_t, uint4);
template __global__ void all_shapes<__half>(float*, uint64_t, uint64_t, uint4);
template __global__ void sm90_probe::gemm_probe_kernel<false, false>(const __grid_constant__ sm90_probe::Params, int, int);
template __global__ void sm90_probe::gemm_probe_kernel<true, false>(const __grid_constant__ sm90_probe::Params, int, int);
template __global__ void sm90_probe::gemm_probe_kernel<false, true>(const __grid_constant__ sm90_probe::Params, int, int);
template __global__ void sm90_probe::gemm_probe_kernel<true, true>(const __grid_constant__ sm90_probe::Params, int, int);
"""


@pytest.fixture(scope="module")
def cubin(tmp_path_factory):
    work = tmp_path_factory.mktemp("sm90")
    source = work / "sm90_wrappers.cu"
    source.write_text(PROGRAM)
    out = work / "sm90_wrappers.o"  # host and device code; cuobjdump reads the embedded cubin
    return out, nvcc_sm90a("-c", "-Xptxas", "-v", str(source), "-o", str(out))


@needs_nvcc
def test_wrappers_assemble_for_sm90a(cubin):
    out, ptxas_log = cubin
    probe_lines = [line for line in ptxas_log.splitlines() if "gemm_probe_kernel" in line or
                   ("Used" in line and "registers" in line)]
    print("\n".join(probe_lines))
    assert out.stat().st_size > 0
    assert re.search(r"[1-9]\d* bytes spill stores", ptxas_log) is None, "a wrapper spills"


@needs_nvcc
@pytest.mark.skipif(CUOBJDUMP is None, reason="needs cuobjdump (the CUDA toolkit or triton's)")
def test_wrappers_emit_the_hopper_instructions(cubin):
    out, _ = cubin
    sass = sass_of(out)
    for instruction in ("HGMMA", "UTMALDG", "UTMASTG", "SYNCS", "USETMAXREG"):
        assert instruction in sass, f"no {instruction} in the sm_90a SASS"


@needs_nvcc
def test_gpu_probe_program_builds(tmp_path):
    # scripts/gpu-check's first stage: the probe's host program, as the GPU machine builds it
    nvcc_sm90a(str(ROOT / "scripts" / "sm90_probe.cu"), "-o", str(tmp_path / "sm90_probe"))


def test_generated_wgmma_header_is_current():
    spec = importlib.util.spec_from_file_location("gen_wgmma", SM90 / "gen_wgmma.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (SM90 / "wgmma.cuh").read_text() == gen.generate(), (
        "wgmma.cuh differs from gen_wgmma.py's output: run python csrc/attn/cuda/sm90/gen_wgmma.py")
