"""The emulated GPU itself (tests/cuda_emulation): its instructions against independent
statements of what they compute (mma fed by ldmatrix gives A B + C; shuffles as the CUDA
Programming Guide defines them; IEEE round-to-nearest-even conversions; the ISA's error bounds
for ex2 / lg2 / rcp / tanh), and planted bugs in tiny kernels that it must report (a read
before the cp.async wait, a missing barrier, divergent warps, a deadlock, an oversized
launch). The sm_90 part (emu_selftest_sm90.cu): TMA loads against the ISA's swizzle tables,
mbarrier phases, wgmma over every canonical layout against a matrix product and against mma
register by register, in-flight hazards (operands, A registers, accumulators, two
warpgroups), the GEMM probe through the project's sm_90 wrappers (a two-stage TMA pipeline ->
wgmma -> TMA store), and its planted bugs (no mbarrier wait, no wgmma.fence, an operand
overwritten in flight, a short expect_tx, a stage released early or refilled unreleased, one
A register buffer, an exit before the TMA store's read). Runs emu_selftest; every line of its
output is one check."""
import subprocess

import torch



def test_emulator_self_test(emulation_build):
    run = subprocess.run([str(emulation_build / "emu_selftest")], capture_output=True, text=True,
                         timeout=300)
    print(run.stdout)
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert run.returncode == 0 and not failed, "\n".join(failed) or run.stderr
    assert run.stdout.count("\nok") >= 70, "the self-test ran fewer checks than it has"


def test_allocations_start_poisoned(emulated):
    # an output element a kernel never writes must not pass by holding a stale, right value:
    # inside emulated_cuda_kernels() fresh CPU allocations are filled with 0x7f bytes (glibc's
    # M_PERTURB; a malloc that ignored it would make this fail, not the kernels' tests pass)
    for numel in (7, 1000, 50_000):
        before = torch.full((numel,), 1.0)
        del before
        fresh = torch.empty(numel, dtype=torch.float32).view(torch.uint8)
        assert (fresh == 0x7F).all(), f"allocation of {numel} floats not poisoned"
