// CUDA entry points for the attention kernels.
#pragma once

#include "attention_params.h"

namespace mpt_ext {

void attention_fwd_cuda(const AttentionFwdParams& p);
void attention_bwd_cuda(const AttentionBwdParams& p);
int64_t attention_bwd_workspace_bytes_cuda(const AttentionBwdParams& p);
void attention_kvcache_cuda(const AttentionKVCacheParams& p);
// Scratch bytes attention_kvcache_cuda needs in p.workspace for the split-KV partials (0 when
// it runs unsplit). Call it with the params filled as for the run, on the same device: the
// split count depends on the shapes, num_splits and the device's SM count.
int64_t attention_kvcache_workspace_bytes_cuda(const AttentionKVCacheParams& p);

}  // namespace mpt_ext
