// Host-side interface between the decode entry point (attention_kvcache_cuda.cu) and the
// kernels' translation units.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mpt_ext::decode {

struct SplitKvArgs;  // decode_common.cuh

struct AppendSide {
  const void* src;  // k_new or v_new (batch, seqlen_new, heads_k, d)
  void* cache;      // (batch_cache, seqlen_cache, heads_k, d)
  int64_t src_batch, src_row, src_head;  // strides in elements
  int64_t cache_batch, cache_row, cache_head;
};

struct AppendArgs {
  AppendSide k, v;
  const int32_t* cache_seqlens;  // never null when appending
  int batch;
  int seqlen_new;
  int heads_k;
  int seqlen_cache;
  int64_t row_bytes;   // head_dim * elem_bytes
  int64_t elem_bytes;  // 2 (bf16 / fp16)
};

// Throws std::runtime_error naming the kernel if its launch failed.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext: CUDA launch of ") + kernel +
                             " failed: " + cudaGetErrorString(err));
  }
}

// vectorised: every source and cache row start is 16-byte aligned (checked by the caller).
void launch_append(const AppendArgs& a, bool vectorised, cudaStream_t stream);
void launch_combine(const SplitKvArgs& a, bool bf16, cudaStream_t stream);

}  // namespace mpt_ext::decode
