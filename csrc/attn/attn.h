// The attention kernels' entry points, one per (op, device): attn_fwd and attn_bwd on the CPU
// (cpu/attn_fwd_cpu.cpp, cpu/attn_bwd_cpu.cpp) and CUDA (cuda/attn_cuda.cu). The bindings
// (python/attn_ops.cpp) fill the params and register these per device.
#pragma once

#include <cstdint>
#include <string>

#include "attn_params.h"

namespace mpt_ext {

void attn_fwd_cpu(const AttnFwdParams& p);
void attn_bwd_cpu(const AttnBwdParams& p);

void attn_fwd_cuda(const AttnFwdParams& p);
void attn_bwd_cuda(const AttnBwdParams& p);
// Scratch bytes attn_bwd_cuda needs in p.workspace (same params as for the run).
int64_t attn_bwd_workspace_bytes_cuda(const AttnBwdParams& p);
// The forward tiles (ROWSxKEYS) and backward dK/dV tiles (KEYSxROWS) per compiled head-dim
// bucket, the default first: "64:128x64;128:64x64,128x32" (cuda/tile_choice.h says how a run
// picks one).
std::string attn_fwd_tiles_cuda();
std::string attn_bwd_tiles_cuda();

}  // namespace mpt_ext
