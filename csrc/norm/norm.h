// The norm kernels' entry points (LayerNorm / RMSNorm, fused residual), one per (op, device):
// cpu/norm_cpu.cpp and cuda/norm_fwd_cuda.cu, cuda/norm_bwd_cuda.cu. The bindings
// (python/norm_ops.cpp) fill the params and register these per device.
#pragma once

#include <cstdint>

#include "norm_params.h"

namespace mpt_ext {

void norm_fwd_cpu(const NormFwdParams& p);
void norm_bwd_cpu(const NormBwdParams& p);

void norm_fwd_cuda(const NormFwdParams& p);
void norm_bwd_cuda(const NormBwdParams& p);
// Scratch bytes norm_bwd_cuda needs in p.workspace (partial dweight/dbias sums).
int64_t norm_bwd_workspace_bytes_cuda(const NormBwdParams& p);

}  // namespace mpt_ext
