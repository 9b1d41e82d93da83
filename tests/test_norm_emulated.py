"""The CUDA LayerNorm / RMSNorm kernels (csrc/norm/cuda: forward, backward and the dweight /
dbias partial sums) run on the CPU by the emulated GPU (tests/cuda_emulation), through
mpt_ext.layer_norm / rms_norm and autograd, against the float64 reference under docs/DESIGN.md's
rule (norm_testing.py). The shapes reach every path the launcher picks: scalar and 16-byte
rows, one warp or several per row, cached and streaming, misaligned rows, many rows per
backward CTA."""
import pytest
import torch

from norm_testing import assert_close_rule, check_against_reference, run_op, run_ref, run_torch

b16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
# (shape, x dtype, weight dtype, affine, rms, residual)
CASES = {
    "hidden1_bias_only_output": ((5, 1), b16, f32, "weight_bias", False, False),
    "scalar_8_rows_per_cta": ((9, 7), f16, f16, "weight", True, True),
    "vec16_warp_per_row": ((37, 64), b16, b16, "weight_bias", False, True),
    "no_weight": ((37, 64), f32, f32, "none", True, False),
    "scalar_multi_warp": ((21, 769), f32, f32, "weight_bias", False, True),
    "cached_vec16": ((11, 4096), b16, f32, "weight_bias", False, True),
    "cached_vec16_rms": ((11, 4096), f16, f32, "weight", True, False),
    "fp32_packs": ((3, 5000), f32, f32, "weight_bias", False, True),
    "streaming_scalar": ((3, 4097), f32, f32, "weight_bias", False, True),
    "streaming_vec16": ((2, 16392), b16, b16, "weight", True, True),
    "many_rows_per_bwd_cta": ((300, 32), b16, f32, "weight_bias", False, True),
    "batch_dims": ((2, 3, 64), f16, f32, "weight", False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_norm_emulated(emulated, case):
    shape, x_dtype, w_dtype, affine, is_rms, residual = CASES[case]
    check_against_reference(shape, x_dtype, w_dtype, affine, is_rms, residual, "cpu")


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_norm_emulated_misaligned_rows(emulated, is_rms):
    # x starts one element past a 16-byte boundary: the launchers must take the scalar path
    base = torch.randn(13 * 768 + 1, dtype=b16, requires_grad=True)
    x = base[1:].view(13, 768)
    w = torch.randn(768, dtype=f32, requires_grad=True)
    dy = torch.randn(13, 768, dtype=b16)
    results = []
    for fn, cast in ((run_op, None), (run_ref, torch.float64), (run_torch, None)):
        xi, wi = (x, w) if cast is None else (x.detach().to(cast).requires_grad_(),
                                              w.detach().to(cast).requires_grad_())
        y = fn(xi, wi, None, None, is_rms)[0]
        results.append((y, *torch.autograd.grad(y, (xi, wi), dy.to(y.dtype))))
    for name, ours, ref, pt in zip(("y", "dx", "dweight"), *results):
        assert_close_rule(name, ours, ref, pt)
