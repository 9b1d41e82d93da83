// CUDA entry points for the norm kernels (norm_fwd.cu, norm_bwd.cu).
#pragma once

#include "norm_params.h"

namespace mpt_ext {

void norm_fwd_cuda(const NormFwdParams& p);
void norm_bwd_cuda(const NormBwdParams& p);
int64_t norm_bwd_workspace_bytes_cuda(const NormBwdParams& p);

}  // namespace mpt_ext
