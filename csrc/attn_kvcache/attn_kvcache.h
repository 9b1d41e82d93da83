// attn_kvcache's entry points (flash_attn_with_kvcache), one per device: cpu/attn_kvcache_cpu.cpp
// and cuda/attn_kvcache_cuda.cu. The bindings (python/attn_kvcache_ops.cpp) fill the params and
// register these per device.
#pragma once

#include <cstdint>

#include "attn_kvcache_params.h"

namespace mpt_ext {

void attn_kvcache_cpu(const AttnKVCacheParams& p);

void attn_kvcache_cuda(const AttnKVCacheParams& p);
// Scratch bytes attn_kvcache_cuda needs in p.workspace for the split-KV partials (0 when it
// runs unsplit). Call it with the params filled as for the run, on the same device: the split
// count depends on the shapes, num_splits and the device's SM count.
int64_t attn_kvcache_workspace_bytes_cuda(const AttnKVCacheParams& p);

}  // namespace mpt_ext
