// Pieces shared by the CUDA norm kernels: element conversion, 16-byte packs, the row layout
// (which thread owns which columns), row reductions and the (x, weight) dtype dispatch. No torch headers, no CUDA
// runtime calls: tests/cuda_emulation compiles the kernels with g++ as well.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../norm_params.h"

namespace mpt_ext::norm::cuda {

// ---- element conversion ----------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// kWidth consecutive elements moved as one access: 16 bytes on the fast path, 1 element on
// the general path (rows whose size or address does not allow 16-byte accesses).
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth) Pack {
  T v[kWidth];
};

template <typename T, int kWidth>
__device__ __forceinline__ void load_pack(const T* base, int64_t elem, float (&out)[kWidth]) {
  const Pack<T, kWidth> pk = *reinterpret_cast<const Pack<T, kWidth>*>(base + elem);
#pragma unroll
  for (int j = 0; j < kWidth; ++j) out[j] = to_float(pk.v[j]);
}

template <typename T, int kWidth>
__device__ __forceinline__ void store_pack(T* base, int64_t elem, const float (&in)[kWidth]) {
  Pack<T, kWidth> pk;
#pragma unroll
  for (int j = 0; j < kWidth; ++j) pk.v[j] = from_float<T>(in[j]);
  *reinterpret_cast<Pack<T, kWidth>*>(base + elem) = pk;
}

// ---- row layout ------------------------------------------------------------------------------
// A CTA is (threads_x, rows_y): threadIdx.y picks the row, the threads_x threads of a row
// split it into packs; pack k of thread t is pack index t + k * threads_x (coalesced).
// A row is "cached" when all its packs fit the kPacks registers slots per thread; longer rows
// stream through global memory (L2) in several passes.
constexpr int kMaxThreadsX = 512;  // keeps >= 128 registers per thread available
constexpr int kTargetThreads = 256;

struct RowLayout {
  int threads_x = 32;
  int rows_y = 1;
  bool cached = true;
};

template <int kPacks>
inline RowLayout row_layout(int64_t hidden, int width) {
  RowLayout l;
  const int64_t packs = hidden / width;
  const int64_t want = (packs + kPacks - 1) / kPacks;
  l.cached = want <= kMaxThreadsX;
  int64_t tx = l.cached ? want : kMaxThreadsX;
  tx = ((tx + 31) / 32) * 32;
  l.threads_x = static_cast<int>(tx < 32 ? 32 : tx);
  l.rows_y = l.threads_x >= kTargetThreads ? 1 : kTargetThreads / l.threads_x;
  return l;
}

inline bool aligned(const void* p, int64_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// ---- reductions ------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of v over the threads of this CTA row (threadIdx.y), returned to all of them. Every
// thread of the CTA must call it (it may synchronise the CTA). scratch: blockDim.y * 32 floats.
__device__ __forceinline__ float row_sum(float v, float* scratch) {
  v = warp_sum(v);
  if (blockDim.x == 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  float* mine = scratch + threadIdx.y * 32;
  __syncthreads();  // scratch may still be read by the previous row_sum
  if (lane == 0) mine[warp] = v;
  __syncthreads();
  v = lane < nwarps ? mine[lane] : 0.0f;
  return warp_sum(v);
}

// ---- dtype dispatch (host) ------------------------------------------------------------------
// Calls fn.template operator()<T, W>() for the runtime (x, weight) dtypes.
template <typename T, typename Fn>
void dispatch_w(DType w, Fn&& fn) {
  switch (w) {
    case DType::kFloat32: return fn.template operator()<T, float>();
    case DType::kFloat16: return fn.template operator()<T, __half>();
    case DType::kBFloat16: return fn.template operator()<T, __nv_bfloat16>();
    default: break;
  }
  throw std::invalid_argument(std::string("mpt_ext norm (CUDA): unsupported weight dtype ") +
                              dtype_name(w));
}

template <typename Fn>
void dispatch_dtypes(DType x, DType w, Fn&& fn) {
  switch (x) {
    case DType::kFloat32: return dispatch_w<float>(w, fn);
    case DType::kFloat16: return dispatch_w<__half>(w, fn);
    case DType::kBFloat16: return dispatch_w<__nv_bfloat16>(w, fn);
    default: break;
  }
  throw std::invalid_argument(std::string("mpt_ext norm (CUDA): unsupported x dtype ") +
                              dtype_name(x));
}

}  // namespace mpt_ext::norm::cuda
