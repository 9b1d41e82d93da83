// Shared pieces of the CUDA decode (flash_attn_with_kvcache) kernels: the argument block
// the kernels read, element conversions and 16-byte loads. No torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "../../attn/attn_params.h"
#include "../kvcache_layout.h"
#include "../../common/device_input_errors.h"
#include "../../common/host_device.h"

namespace mpt_ext::attn_kvcache::cuda {

constexpr int kThreads = 128;   // threads per split-KV block
constexpr int kVec = 8;         // bf16/fp16 elements per 16-byte load
constexpr int kMaxSplits = 128; // split count cap (explicit counts above it are clamped)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Everything the split-KV kernel needs, with sizes narrowed to int where the host has
// checked they fit, and every memory offset computed in int64 on the device.
struct SplitKvArgs {
  const void* q;  // the rotated copy when rotary is on
  const void* k;  // caches (rows or pages, positions, heads_k, d), new keys already appended
  const void* v;
  void* out;
  float* lse;
  TensorStrides q_strides, k_strides, v_strides, out_strides;  // in elements
  int64_t lse_batch, lse_head;
  KVCacheLayout layout;   // where each sequence's keys are (../kvcache_layout.h)
  int32_t* input_errors;  // where a sequence that does not fit is noted
  int seqlen_new;
  int seqlen_q;
  int heads;
  int heads_k;
  int group;      // heads / heads_k: query heads per KV head, handled in one block
  int head_dim;
  int row_tiles;  // ceil(group * seqlen_q / rows per block)
  int num_splits;
  float scale;    // softmax_scale, folded into q
  float softcap;  // > 0: softcap * tanh(score / softcap)
  bool causal;
  int64_t window_left, window_right;
  const float* slopes;  // ALiBi, null: none
  int64_t slopes_batch_stride;
  // num_splits > 1: per-split results, combined by combine_splits. Row id
  // ((b * heads + h) * seqlen_q + i); partial_out[(split * rows + row) * head_dim + d] is the
  // split's normalised output, partial_lse[split * rows + row] its log2-domain logsumexp.
  float* partial_out;
  float* partial_lse;
  int64_t rows;  // batch * heads * seqlen_q
};

// The host never reads cache_seqlens, cache_batch_idx, cache_leftpad or block_table
// (device_input_errors.h): a sequence whose values do not fit (kvcache::cache_sequence) gets
// no append, attends to no key, and is noted; a block-table entry outside the pages is noted
// and its positions are neither read nor written.
MPT_HOST_DEVICE kvcache::CacheSequence checked_sequence(const KVCacheLayout& l, int64_t b,
                                                        int64_t seqlen_new,
                                                        int32_t* input_errors, bool note) {
  const kvcache::CacheSequence s = kvcache::cache_sequence(l, b, seqlen_new);
  if (!s.ok && note) note_bad_sequence(input_errors, kvcache::misfit_argument(l, s, seqlen_new), b);
  return s;
}

template <typename T>
struct ElemOps;

template <>
struct ElemOps<__nv_bfloat16> {
  // A bf16 is the top half of an fp32: shifting is exact and cheaper than cvt.
  static __device__ __forceinline__ float2 pair_to_float2(uint32_t w) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) {
    return __float2bfloat16_rn(x);
  }
};

template <>
struct ElemOps<__half> {
  static __device__ __forceinline__ float2 pair_to_float2(uint32_t w) {
    __half2 h;
    memcpy(&h, &w, sizeof(h));
    return __half22float2(h);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

// 8 packed elements -> 8 floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[kVec]) {
  const float2 a = ElemOps<T>::pair_to_float2(u.x);
  const float2 b = ElemOps<T>::pair_to_float2(u.y);
  const float2 c = ElemOps<T>::pair_to_float2(u.z);
  const float2 d = ElemOps<T>::pair_to_float2(u.w);
  f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
  f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

// Read-only 16-byte load through the non-coherent path (the cache is not written while
// the attention kernel runs; the append kernel ran before it on the same stream).
__device__ __forceinline__ uint4 load16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

}  // namespace mpt_ext::attn_kvcache::cuda
