// Host-side interface between the attn_kvcache entry point (attn_kvcache_cuda.cu) and the
// kernels' translation units: it sees these declarations, never the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../../attn/attn_params.h"
#include "../attn_kvcache_params.h"

namespace mpt_ext::attn_kvcache::cuda {

struct SplitKvArgs;  // attn_kvcache_common.cuh

struct AppendSide {
  const void* src;  // k_new or v_new (batch, seqlen_new, heads_k, d)
  void* cache;      // (batch_cache, seqlen_cache, heads_k, d)
  TensorStrides src_strides;  // in elements
  TensorStrides cache_strides;
};

struct AppendArgs {
  AppendSide k, v;
  KVCacheLayout layout;   // cache_seqlens never null when appending
  RotaryParams rotary;    // cos null: no rotary; else the new keys rotate on the way in and
                          // q is rotated into rotary.q_rotated
  const void* q;          // rotary: q (batch, seqlen_q, heads, d) with q_strides
  TensorStrides q_strides;
  int32_t* input_errors;  // where a sequence that does not fit is noted
  int batch;
  int seqlen_new;
  int seqlen_q;
  int heads;
  int heads_k;
  int head_dim;
  int64_t row_bytes;   // head_dim * elem_bytes
  int64_t elem_bytes;  // 2 (bf16 / fp16)
};

// The new keys and values into the caches (and, with rotary, the rotated q), before the
// attention kernel. vectorised: every source and cache row start is 16-byte aligned (checked
// by the caller).
void launch_append(const AppendArgs& a, bool bf16, bool vectorised, cudaStream_t stream);
void launch_combine(const SplitKvArgs& a, bool bf16, cudaStream_t stream);

// split_kv_kernel<T, kDPad, rows_per_block> (attn_kvcache_split_kv.cuh), instantiated per
// (dtype, head-dim bucket 64 / 128 / 256) in instantiations/.
using SplitKvKernel = void (*)(const SplitKvArgs);
template <typename T, int kDPad>
SplitKvKernel split_kv_kernel_ptr(int rows_per_block);

}  // namespace mpt_ext::attn_kvcache::cuda
