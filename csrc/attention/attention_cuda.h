// CUDA entry points for the attention kernels.
#pragma once

#include "attention_params.h"

namespace mpt_ext {

void attention_fwd_cuda(const AttentionFwdParams& p);
void attention_bwd_cuda(const AttentionBwdParams& p);
int64_t attention_bwd_workspace_bytes_cuda(const AttentionBwdParams& p);
void attention_kvcache_cuda(const AttentionKVCacheParams& p);

}  // namespace mpt_ext
