// LayerNorm / RMSNorm backward kernels (device code and launch planning; launched from
// norm_bwd_cuda.cu). dx in one pass per row over x and dy (registers when the row fits, otherwise
// two streaming passes). dweight / dbias in two deterministic stages, no atomics: each CTA
// walks a fixed set of rows (grid-stride) and leaves one fp32 partial row in the workspace;
// a second kernel sums the partials of every column in a fixed order.
#pragma once

#include <algorithm>

#include "norm_cuda_common.cuh"

namespace mpt_ext::norm::cuda {

constexpr int kBwdPacks = 2;  // packs per thread cached: x, dy and two accumulators each

struct BwdLaunch {
  RowLayout layout;
  int width = 1;
  int64_t blocks = 0;         // CTAs of the row kernel = partial rows in the workspace
  int n_partials = 0;         // 0, 1 (dweight) or 2 (dweight and dbias)
};

template <typename T, typename W, int kWidth>
__device__ __forceinline__ void load_row_pack(const NormBwdParams& p, const T* x, const T* dy,
                                              int64_t idx, float mean, float rstd,
                                              float (&xhat)[kWidth], float (&dyv)[kWidth],
                                              float (&g)[kWidth]) {
  load_pack<T, kWidth>(x, idx * kWidth, xhat);
  load_pack<T, kWidth>(dy, idx * kWidth, dyv);
#pragma unroll
  for (int j = 0; j < kWidth; ++j) xhat[j] = (xhat[j] - mean) * rstd;
  if (p.weight != nullptr) {
    float w[kWidth];
    load_pack<W, kWidth>(static_cast<const W*>(p.weight), idx * kWidth, w);
#pragma unroll
    for (int j = 0; j < kWidth; ++j) g[j] = dyv[j] * w[j];
  } else {
#pragma unroll
    for (int j = 0; j < kWidth; ++j) g[j] = dyv[j];
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dresidual_out); mean_g = 0 for RMS.
template <typename T, int kWidth>
__device__ __forceinline__ void store_dx(const T* dres, T* dx, int64_t idx, float rstd,
                                         float mean_g, float mean_gx, const float (&xhat)[kWidth],
                                         const float (&g)[kWidth]) {
  float out[kWidth];
#pragma unroll
  for (int j = 0; j < kWidth; ++j) out[j] = rstd * (g[j] - mean_g - xhat[j] * mean_gx);
  if (dres != nullptr) {
    float d[kWidth];
    load_pack<T, kWidth>(dres, idx * kWidth, d);
#pragma unroll
    for (int j = 0; j < kWidth; ++j) out[j] += d[j];
  }
  store_pack<T, kWidth>(dx, idx * kWidth, out);
}

template <typename T, typename W, int kWidth>
__global__ void __launch_bounds__(kMaxThreadsX)
    norm_bwd_kernel(const NormBwdParams p, bool cached, float* dw_part, float* db_part) {
  __shared__ float scratch[kTargetThreads];
  const int64_t packs = p.hidden / kWidth;
  const float inv_h = 1.0f / static_cast<float>(p.hidden);
  // This CTA's partial rows (one per CTA; rows_y rows of the CTA are folded in below).
  float* dw_mine = dw_part ? dw_part + static_cast<int64_t>(blockIdx.x) * p.hidden : nullptr;
  float* db_mine = db_part ? db_part + static_cast<int64_t>(blockIdx.x) * p.hidden : nullptr;

  float dw_acc[kBwdPacks][kWidth] = {};
  float db_acc[kBwdPacks][kWidth] = {};
  if (!cached) {  // streaming: rows_y == 1, each thread accumulates straight into its columns
    for (int64_t idx = threadIdx.x; idx < packs; idx += blockDim.x) {
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        if (dw_mine) dw_mine[idx * kWidth + j] = 0.0f;
        if (db_mine) db_mine[idx * kWidth + j] = 0.0f;
      }
    }
  }

  // Every thread runs the same number of iterations (row_sum synchronises the CTA).
  const int64_t groups = (p.rows + blockDim.y - 1) / blockDim.y;
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t row = grp * blockDim.y + threadIdx.y;
    const bool active = row < p.rows;
    const int64_t r = active ? row : 0;
    const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    const T* dy = static_cast<const T*>(p.dy) + r * p.dy_row_stride;
    const T* dres = p.dresidual_out
                        ? static_cast<const T*>(p.dresidual_out) + r * p.dresidual_out_row_stride
                        : nullptr;
    T* dx = static_cast<T*>(p.dx) + r * p.dx_row_stride;
    const float mean = (p.is_rms || !active) ? 0.0f : p.mean[r];
    const float rstd = active ? p.rstd[r] : 0.0f;

    float sum_g = 0.0f, sum_gx = 0.0f;
    if (cached) {
      float xhat[kBwdPacks][kWidth], g[kBwdPacks][kWidth];
#pragma unroll
      for (int k = 0; k < kBwdPacks; ++k) {
        const int64_t idx = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (active && idx < packs) {
          float dyv[kWidth];
          load_row_pack<T, W, kWidth>(p, x, dy, idx, mean, rstd, xhat[k], dyv, g[k]);
#pragma unroll
          for (int j = 0; j < kWidth; ++j) {
            dw_acc[k][j] += dyv[j] * xhat[k][j];
            db_acc[k][j] += dyv[j];
            sum_g += g[k][j];
            sum_gx += g[k][j] * xhat[k][j];
          }
        }
      }
      const float mean_g = p.is_rms ? 0.0f : row_sum(sum_g, scratch) * inv_h;
      const float mean_gx = row_sum(sum_gx, scratch) * inv_h;
      if (active) {
#pragma unroll
        for (int k = 0; k < kBwdPacks; ++k) {
          const int64_t idx = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
          if (idx < packs) store_dx<T, kWidth>(dres, dx, idx, rstd, mean_g, mean_gx, xhat[k], g[k]);
        }
      }
    } else {
      for (int64_t idx = threadIdx.x; active && idx < packs; idx += blockDim.x) {
        float xhat[kWidth], dyv[kWidth], g[kWidth];
        load_row_pack<T, W, kWidth>(p, x, dy, idx, mean, rstd, xhat, dyv, g);
#pragma unroll
        for (int j = 0; j < kWidth; ++j) {
          if (dw_mine) dw_mine[idx * kWidth + j] += dyv[j] * xhat[j];
          if (db_mine) db_mine[idx * kWidth + j] += dyv[j];
          sum_g += g[j];
          sum_gx += g[j] * xhat[j];
        }
      }
      const float mean_g = p.is_rms ? 0.0f : row_sum(sum_g, scratch) * inv_h;
      const float mean_gx = row_sum(sum_gx, scratch) * inv_h;
      for (int64_t idx = threadIdx.x; active && idx < packs; idx += blockDim.x) {
        float xhat[kWidth], dyv[kWidth], g[kWidth];
        load_row_pack<T, W, kWidth>(p, x, dy, idx, mean, rstd, xhat, dyv, g);
        store_dx<T, kWidth>(dres, dx, idx, rstd, mean_g, mean_gx, xhat, g);
      }
    }
  }

  if (!cached || (dw_mine == nullptr && db_mine == nullptr)) return;
  // Fold the rows_y register accumulators into the CTA's partial row in threadIdx.y order.
  for (int yy = 0; yy < static_cast<int>(blockDim.y); ++yy) {
    if (threadIdx.y == yy) {
#pragma unroll
      for (int k = 0; k < kBwdPacks; ++k) {
        const int64_t idx = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (idx >= packs) continue;
#pragma unroll
        for (int j = 0; j < kWidth; ++j) {
          const int64_t col = idx * kWidth + j;
          if (dw_mine) dw_mine[col] = (yy == 0 ? 0.0f : dw_mine[col]) + dw_acc[k][j];
          if (db_mine) db_mine[col] = (yy == 0 ? 0.0f : db_mine[col]) + db_acc[k][j];
        }
      }
    }
    __syncthreads();
  }
}

// Stage 2: out[col] = sum over partial rows, in a fixed order. blockDim (32 columns, kSumLanes):
// lane l sums rows l, l + kSumLanes, ...; the lanes are then added in index order.
constexpr int kSumLanes = 16;

template <int kLanes = kSumLanes>
__global__ void __launch_bounds__(32 * kLanes)
    sum_partials_kernel(const float* dw_part, const float* db_part, int64_t n_rows,
                        int64_t hidden, float* dweight, float* dbias) {
  __shared__ float lanes[kLanes][33];
  const float* part = blockIdx.y == 0 ? dw_part : db_part;
  float* out = blockIdx.y == 0 ? dweight : dbias;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.0f;
  if (col < hidden) {
    for (int64_t r = threadIdx.y; r < n_rows; r += kLanes) s += part[r * hidden + col];
  }
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < hidden) {
    float total = 0.0f;
#pragma unroll
    for (int l = 0; l < kLanes; ++l) total += lanes[l][threadIdx.x];
    out[col] = total;
  }
}

template <typename T, typename W>
bool bwd_vectorizable(const NormBwdParams& p) {
  constexpr int kWidth = 16 / sizeof(T);
  constexpr int64_t kWBytes = sizeof(W) * kWidth;
  return p.hidden % kWidth == 0 && p.x_row_stride % kWidth == 0 &&
         p.dy_row_stride % kWidth == 0 && p.dx_row_stride % kWidth == 0 &&
         (p.dresidual_out == nullptr || p.dresidual_out_row_stride % kWidth == 0) &&
         aligned(p.x, 16) && aligned(p.dy, 16) && aligned(p.dx, 16) &&
         aligned(p.dresidual_out, 16) && aligned(p.weight, kWBytes);
}

// The launch shape depends only on the params and the device, so the workspace size asked for
// beforehand and the launch agree, and the reduction order is the same on every run.
inline BwdLaunch plan_bwd(const NormBwdParams& p, int64_t sms) {
  BwdLaunch plan;
  plan.n_partials = (p.dweight != nullptr) + (p.dbias != nullptr);
  dispatch_dtypes(p.x_dtype, p.weight != nullptr ? p.w_dtype : DType::kFloat32,
                  [&]<typename T, typename W>() {
                    plan.width = bwd_vectorizable<T, W>(p) ? 16 / sizeof(T) : 1;
                  });
  plan.layout = row_layout<kBwdPacks>(p.hidden, plan.width);
  const int threads = plan.layout.threads_x * plan.layout.rows_y;
  const int64_t groups = (p.rows + plan.layout.rows_y - 1) / plan.layout.rows_y;
  int64_t blocks = sms * (2048 / threads);  // about one wave of resident CTAs
  // Bound the partial sums (<= 64 MiB unless that leaves fewer CTAs than SMs: huge rows).
  const int64_t per_block = p.hidden * (plan.n_partials > 0 ? plan.n_partials : 1);
  const int64_t max_blocks = std::max<int64_t>(sms, (int64_t{1} << 24) / per_block);
  blocks = std::min(blocks, max_blocks);
  plan.blocks = std::min(groups, blocks);
  return plan;
}

}  // namespace mpt_ext::norm::cuda
