"""The sm_90a attention kernels (csrc/attn/cuda/sm90) as the GPU build compiles them, checked
on a machine without a GPU: ptxas accepts them, keeps every wgmma asynchronous (no
"serialized" warning), spills nothing, and the SASS holds the Hopper instructions (wgmma,
TMA, mbarrier, setmaxnreg). Their results are tested on the emulated GPU
(test_attention_sm90_emulated.py) and, with a GPU, in test_attention.py."""
import re

import pytest

from test_sm90_wrappers import CUOBJDUMP, needs_nvcc, nvcc_sm90a, sass_of

# One instantiation per head-dim bucket, element type and score kind the tests below look
# at: the forward's d 128 (bf16, ALiBi: the MPT case) and d 64 (fp16, softcap: the general
# score), as attn_fwd_launch.cuh instantiates them.
PROGRAM = r"""
#include "csrc/attn/cuda/sm90/attn_fwd_sm90_launch.cuh"

using namespace mpt_ext::attn::cuda;
template __global__ void sm90::attn_fwd_sm90_kernel<__nv_bfloat16, sm90::FwdSm90ConfigFor<128>,
    ScoreKind::kAlibi>(const __grid_constant__ sm90::FwdSm90Params);
template __global__ void sm90::attn_fwd_sm90_kernel<__half, sm90::FwdSm90ConfigFor<64>,
    ScoreKind::kGeneral>(const __grid_constant__ sm90::FwdSm90Params);
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    work = tmp_path_factory.mktemp("sm90_kernels")
    source = work / "sm90_kernels.cu"
    source.write_text(PROGRAM)
    out = work / "sm90_kernels.o"
    # the flags of the extension's build (CMakeLists.txt), for sm_90a only
    return out, nvcc_sm90a("--use_fast_math", "--expt-relaxed-constexpr", "-DMPT_EXT_HAS_SM90A",
                           "-c", "-Xptxas", "-v", str(source), "-o", str(out), timeout=900)


@needs_nvcc
def test_sm90_kernels_assemble_without_spills_or_serialized_wgmma(compiled):
    out, ptxas_log = compiled
    print("\n".join(line for line in ptxas_log.splitlines() if "Used" in line or "spill" in line))
    assert "attn_fwd_sm90_kernel" in ptxas_log
    assert "serialized" not in ptxas_log, "ptxas serialises wgmma:\n" + ptxas_log[-3000:]
    assert re.search(r"[1-9]\d* bytes spill stores", ptxas_log) is None, "a kernel spills"
    assert re.search(r"[1-9]\d* bytes stack frame", ptxas_log) is None, "a kernel uses stack"


@needs_nvcc
@pytest.mark.skipif(CUOBJDUMP is None, reason="needs cuobjdump (the CUDA toolkit or triton's)")
def test_sm90_kernels_emit_the_hopper_instructions(compiled):
    out, _ = compiled
    sass = sass_of(out)
    for instruction in ("HGMMA", "UTMALDG", "SYNCS", "USETMAXREG"):
        assert instruction in sass, f"no {instruction} in the sm_90a SASS"
