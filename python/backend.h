// Chooses the kernel backend for a device and hands it the current stream. The only place
// that knows which kernels exist per device; CUDA ops without a kernel raise
// NotImplementedError here, never fall back to a slow path.
#pragma once

#include <c10/core/Device.h>

#include "../csrc/attention/attention_params.h"
#include "../csrc/norm/norm_params.h"

namespace mpt_ext::backend {

void attention_fwd(const c10::Device& device, AttentionFwdParams& p);
void attention_bwd(const c10::Device& device, AttentionBwdParams& p);
void attention_kvcache(const c10::Device& device, AttentionKVCacheParams& p);
void norm_fwd(const c10::Device& device, NormFwdParams& p);
void norm_bwd(const c10::Device& device, NormBwdParams& p);

// Scratch bytes the backward kernels want from the caching allocator (0: none).
int64_t attention_bwd_workspace_bytes(const c10::Device& device, const AttentionBwdParams& p);
int64_t norm_bwd_workspace_bytes(const c10::Device& device, const NormBwdParams& p);
int64_t attention_kvcache_workspace_bytes(const c10::Device& device,
                                          const AttentionKVCacheParams& p);

}  // namespace mpt_ext::backend
