// Merges the per-split partial results of split_kv_kernel: out = sum_s w_s * out_s with
// w_s = exp2(lse_s - max) / sum_s exp2(lse_s - max), and lse = log of that sum (natural log).
#include <cuda_runtime.h>

#include <cmath>

#include "../../common/cuda_host.h"
#include "attn_kvcache_common.cuh"
#include "attn_kvcache_kernels.h"

namespace mpt_ext::attn_kvcache::cuda {
namespace {

constexpr int kWarps = 4;  // one warp per (b, h, i) row

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) combine_kernel(const SplitKvArgs a) {
  __shared__ float s_weight[kWarps][kMaxSplits];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  if (row >= a.rows) return;  // whole warps leave; no block-wide barrier below

  float mx = -INFINITY;
  for (int s = lane; s < a.num_splits; s += 32) mx = fmaxf(mx, a.partial_lse[s * a.rows + row]);
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  const float shift = mx == -INFINITY ? 0.f : mx;  // all splits empty: weights 0, not NaN
  float sum = 0.f;
  for (int s = lane; s < a.num_splits; s += 32) {
    const float w = exp2f(a.partial_lse[s * a.rows + row] - shift);
    s_weight[warp][s] = w;
    sum += w;
  }
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  __syncwarp();
  const float inv = sum != 0.f ? 1.f / sum : 0.f;  // NaN partials propagate (!= not >)

  const int i = static_cast<int>(row % a.seqlen_q);
  const int64_t bh = row / a.seqlen_q;
  const int h = static_cast<int>(bh % a.heads);
  const int64_t b = bh / a.heads;
  const TensorStrides& os = a.out_strides;
  T* out = static_cast<T*>(a.out) + b * os.batch + int64_t(i) * os.row + int64_t(h) * os.head;
  for (int d = lane; d < a.head_dim; d += 32) {
    float o = 0.f;
    for (int s = 0; s < a.num_splits; ++s) {
      o = fmaf(s_weight[warp][s], a.partial_out[(int64_t(s) * a.rows + row) * a.head_dim + d], o);
    }
    out[d] = ElemOps<T>::from_float(o * inv);
  }
  if (lane == 0) {
    a.lse[b * a.lse_batch + int64_t(h) * a.lse_head + i] = sum != 0.f ? (mx + log2f(sum)) * kLn2 : -INFINITY;
  }
}

}  // namespace

void launch_combine(const SplitKvArgs& a, bool bf16, cudaStream_t stream) {
  const int64_t blocks = ceil_div(a.rows, kWarps);
  if (blocks == 0) return;
  launch_kernel(bf16 ? combine_kernel<__nv_bfloat16> : combine_kernel<__half>,
                static_cast<unsigned>(blocks), kWarps * 32, 0, stream, a);
  check_launch("attn_kvcache combine_kernel (merge splits)", stream);
}

}  // namespace mpt_ext::attn_kvcache::cuda
