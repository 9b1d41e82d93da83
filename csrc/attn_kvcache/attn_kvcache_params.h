// Plain parameter block for attn_kvcache (flash_attn_with_kvcache): the forward's params plus
// where each sequence's keys live in the caches, the append, rotary embedding and the split-KV
// plan. No torch types.
#pragma once

#include <cstdint>

#include "../attn/attn_params.h"
#include "../common/page_table.h"

namespace mpt_ext {

// Where sequence b's keys live (flash-attn's cache_seqlens, cache_batch_idx, cache_leftpad and
// block_table). Positions 0 .. seqlen_cache - 1 index a sequence's cache; its keys are the
// positions [leftpad, cache_seqlens[b] + seqlen_new), and the new keys go at
// cache_seqlens[b] + t. kvcache_layout.h turns a position into an element offset.
struct KVCacheLayout {
  int64_t seqlen_cache = 0;  // positions per sequence: k_cache.size(1), or pages * page_size
  const int32_t* cache_seqlens = nullptr;    // (batch): positions in use before the append;
                                             // null: all seqlen_cache (no append)
  const int32_t* cache_batch_idx = nullptr;  // (batch): the cache row of sequence b; null: b
  const int32_t* cache_leftpad = nullptr;    // (batch): the position of key 0; null: 0
  int64_t cache_rows = 0;  // rows of the caches (k_cache.size(0)): pages when paged
  PageTable pages;         // block_table: null when the cache is not paged
};

// Rotary embedding of q and the new keys inside the op (flash-attn's rotary_cos / rotary_sin):
// dims [0, rotary_dim) of a row at position t turn by the angles whose cos / sin are row t of
// the tables; the rest pass through. Keys are at their cache position; queries at
// cache_seqlens[b] (+ i when per_query_position: causal or local attention).
struct RotaryParams {
  const void* cos = nullptr;  // (seqlen_ro, rotary_dim / 2), q's dtype; null: no rotary
  const void* sin = nullptr;
  int64_t cos_row_stride = 0;  // in elements; the last dim is contiguous
  int64_t sin_row_stride = 0;
  int64_t seqlen_ro = 0;
  int64_t rotary_dim = 0;    // a multiple of 16, <= head_dim
  bool interleaved = true;   // pairs (2i, 2i+1); else (i, i + rotary_dim / 2) (GPT-NeoX)
  bool per_query_position = false;
  // The rotated q (batch, seqlen_q, heads, d), contiguous, that the op writes and attends with.
  void* q_rotated = nullptr;
};

// Decode / chunked prefill against a preallocated cache (flash_attn_with_kvcache).
struct AttnKVCacheParams {
  AttnFwdParams fwd;  // q (batch, seqlen_q, heads, d); k/v point at the caches
                      // (cache_rows, seqlen_cache or page_size, heads_k, d); their strides are
                      // the caches'; shape.seqlen_k = layout.seqlen_cache
  KVCacheLayout layout;
  const void* k_new = nullptr;  // (batch, seqlen_new, heads_k, d), appended at cache_seqlens[b]
  const void* v_new = nullptr;
  int64_t seqlen_new = 0;
  TensorStrides k_new_strides, v_new_strides;
  RotaryParams rotary;
  int num_splits = 0;  // 0: heuristic
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

}  // namespace mpt_ext
