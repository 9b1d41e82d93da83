// Plain parameter block for attn_kvcache (flash_attn_with_kvcache): the forward's params plus
// the cache append and the split-KV plan. No torch types.
#pragma once

#include <cstdint>

#include "../attn/attn_params.h"

namespace mpt_ext {

// Decode / chunked prefill against a preallocated cache (flash_attn_with_kvcache).
struct AttnKVCacheParams {
  AttnFwdParams fwd;  // q (batch, seqlen_q, heads, d); k/v point at the caches
                      // (batch_cache, seqlen_cache, heads_k, d); shape.seqlen_k = seqlen_cache
  const int32_t* cache_seqlens = nullptr;  // (batch): valid cached keys before the append; null: all
  const void* k_new = nullptr;  // (batch, seqlen_new, heads_k, d), appended at cache_seqlens[b]
  const void* v_new = nullptr;
  int64_t seqlen_new = 0;
  TensorStrides k_new_strides, v_new_strides;
  int num_splits = 0;  // 0: heuristic
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

}  // namespace mpt_ext
