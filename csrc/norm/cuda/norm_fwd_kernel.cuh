// LayerNorm / RMSNorm forward kernel (device code only; launched from norm_fwd_cuda.cu).
// One CTA row (threadIdx.y) per norm row; statistics in fp32, two passes over registers when
// the row fits them (cached), otherwise three streaming passes (the row stays in L1/L2).
#pragma once

#include "norm_cuda_common.cuh"

namespace mpt_ext::norm::cuda {

constexpr int kFwdPacks = 4;  // packs per thread kept in registers on the cached path

// s = x (+ residual, rounded to T as stored in residual_out) for pack idx of this row.
template <typename T, int kWidth>
__device__ __forceinline__ void load_input(const T* x, const T* res,
                                           T* res_out, int64_t idx, float (&s)[kWidth]) {
  load_pack<T, kWidth>(x, idx * kWidth, s);
  if (res != nullptr) {
    float r[kWidth];
    load_pack<T, kWidth>(res, idx * kWidth, r);
#pragma unroll
    for (int j = 0; j < kWidth; ++j) s[j] = to_float(from_float<T>(s[j] + r[j]));
    store_pack<T, kWidth>(res_out, idx * kWidth, s);
  }
}

// y = (s - mean) * rstd * weight + bias for one pack.
template <typename T, typename W, int kWidth>
__device__ __forceinline__ void store_output(const NormFwdParams& p, T* y, int64_t idx,
                                             const float (&s)[kWidth], float mean, float rstd) {
  float out[kWidth];
#pragma unroll
  for (int j = 0; j < kWidth; ++j) out[j] = (s[j] - mean) * rstd;
  if (p.weight != nullptr) {
    float w[kWidth];
    load_pack<W, kWidth>(static_cast<const W*>(p.weight), idx * kWidth, w);
#pragma unroll
    for (int j = 0; j < kWidth; ++j) out[j] *= w[j];
  }
  if (p.bias != nullptr) {
    float b[kWidth];
    load_pack<W, kWidth>(static_cast<const W*>(p.bias), idx * kWidth, b);
#pragma unroll
    for (int j = 0; j < kWidth; ++j) out[j] += b[j];
  }
  store_pack<T, kWidth>(y, idx * kWidth, out);
}

template <typename T, typename W, int kWidth>
__global__ void __launch_bounds__(kMaxThreadsX) norm_fwd_kernel(const NormFwdParams p, bool cached) {
  __shared__ float scratch[kTargetThreads];  // rows_y * 32 floats, rows_y <= kTargetThreads / 32
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < p.rows;
  const int64_t r = active ? row : 0;  // inactive threads still join the reductions
  const int64_t packs = p.hidden / kWidth;
  const float inv_h = 1.0f / static_cast<float>(p.hidden);
  const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
  const T* res = p.residual ? static_cast<const T*>(p.residual) + r * p.residual_row_stride : nullptr;
  T* res_out = p.residual ? static_cast<T*>(p.residual_out) + r * p.residual_out_row_stride : nullptr;
  T* y = static_cast<T*>(p.y) + r * p.y_row_stride;

  float mean = 0.0f, rstd;
  if (cached) {
    float s[kFwdPacks][kWidth];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kFwdPacks; ++k) {
      const int64_t idx = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (active && idx < packs) {
        load_input<T, kWidth>(x, res, res_out, idx, s[k]);
      } else {
#pragma unroll
        for (int j = 0; j < kWidth; ++j) s[k][j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < kWidth; ++j) sum += p.is_rms ? s[k][j] * s[k][j] : s[k][j];
    }
    sum = row_sum(sum, scratch);
    if (p.is_rms) {
      rstd = rsqrtf(sum * inv_h + p.eps);
    } else {
      mean = sum * inv_h;
      float sq = 0.0f;  // second pass from registers: no cancellation
#pragma unroll
      for (int k = 0; k < kFwdPacks; ++k) {
        const int64_t idx = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (idx < packs) {
#pragma unroll
          for (int j = 0; j < kWidth; ++j) sq += (s[k][j] - mean) * (s[k][j] - mean);
        }
      }
      rstd = rsqrtf(row_sum(sq, scratch) * inv_h + p.eps);
    }
    if (active) {
#pragma unroll
      for (int k = 0; k < kFwdPacks; ++k) {
        const int64_t idx = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (idx < packs) store_output<T, W, kWidth>(p, y, idx, s[k], mean, rstd);
      }
    }
  } else {
    // Streaming: pass 1 sums (and writes residual_out), pass 2 the centred squares from the
    // stored values, pass 3 the output. Each thread re-reads only what it wrote itself.
    const T* src = res != nullptr ? res_out : x;
    float sum = 0.0f;
    for (int64_t idx = threadIdx.x; active && idx < packs; idx += blockDim.x) {
      float s[kWidth];
      load_input<T, kWidth>(x, res, res_out, idx, s);
#pragma unroll
      for (int j = 0; j < kWidth; ++j) sum += p.is_rms ? s[j] * s[j] : s[j];
    }
    sum = row_sum(sum, scratch);
    if (p.is_rms) {
      rstd = rsqrtf(sum * inv_h + p.eps);
    } else {
      mean = sum * inv_h;
      float sq = 0.0f;
      for (int64_t idx = threadIdx.x; active && idx < packs; idx += blockDim.x) {
        float s[kWidth];
        load_pack<T, kWidth>(src, idx * kWidth, s);
#pragma unroll
        for (int j = 0; j < kWidth; ++j) sq += (s[j] - mean) * (s[j] - mean);
      }
      rstd = rsqrtf(row_sum(sq, scratch) * inv_h + p.eps);
    }
    for (int64_t idx = threadIdx.x; active && idx < packs; idx += blockDim.x) {
      float s[kWidth];
      load_pack<T, kWidth>(src, idx * kWidth, s);
      store_output<T, W, kWidth>(p, y, idx, s, mean, rstd);
    }
  }
  if (active && threadIdx.x == 0) {
    if (p.mean != nullptr) p.mean[row] = mean;
    p.rstd[row] = rstd;
  }
}

// 16-byte accesses need every row start and every pointer aligned to a whole pack.
template <typename T, typename W>
bool fwd_vectorizable(const NormFwdParams& p) {
  constexpr int kWidth = 16 / sizeof(T);
  constexpr int64_t kBytes = 16;
  constexpr int64_t kWBytes = sizeof(W) * kWidth;
  return p.hidden % kWidth == 0 && p.x_row_stride % kWidth == 0 && p.y_row_stride % kWidth == 0 &&
         (p.residual == nullptr ||
          (p.residual_row_stride % kWidth == 0 && p.residual_out_row_stride % kWidth == 0)) &&
         aligned(p.x, kBytes) && aligned(p.y, kBytes) && aligned(p.residual, kBytes) &&
         aligned(p.residual_out, kBytes) && aligned(p.weight, kWBytes) && aligned(p.bias, kWBytes);
}

}  // namespace mpt_ext::norm::cuda
