// Backward steps 1, 3 (atomic dQ) and 4 (see attn_bwd_kernels.cuh): the D = dot(dO, O) /
// lse2 preprocess, the conversion of the fp32 dQ sums and the fixed-order d(slopes)
// reduction. Small and head-dim independent, so compiled once here rather than in every
// bucket's file.
#include <cuda_runtime.h>

#include <climits>
#include <stdexcept>

#include "attn_bwd_prep.h"
#include "launch.cuh"
#include "seq_score.cuh"
#include "tile.cuh"

namespace mpt_ext::attn::cuda {
namespace {

// ---- 1. preprocess --------------------------------------------------------------------

constexpr int kPreRowsPerCta = 8;  // one warp per row

// The query row a warp of a per-row kernel takes (grid: row blocks, heads, batch).
struct WarpRow {
  int lane, i, h, b;
  SeqInfo si;
  __device__ __forceinline__ bool exists() const { return i < si.sq; }
};

__device__ __forceinline__ WarpRow warp_row(const AttnShape& s) {
  WarpRow r;
  r.lane = threadIdx.x & 31;
  r.i = blockIdx.x * kPreRowsPerCta + (threadIdx.x >> 5);
  r.h = blockIdx.y;
  r.b = blockIdx.z;
  r.si = seq_info(s, r.b);
  return r;
}

template <typename T>
__global__ void __launch_bounds__(256)
    attn_bwd_preprocess_kernel(const AttnBwdParams p, float* lse2, float* dsum,
                               int64_t rows) {
  using Ops = ElemOps<T>;
  const AttnFwdParams& f = p.fwd;
  const WarpRow w = warp_row(f.shape);
  if (!w.exists()) return;
  const int lane = w.lane, i = w.i, h = w.h, b = w.b;
  const SeqInfo& si = w.si;
  const uint16_t* o = static_cast<const uint16_t*>(f.out) +
                      seq_offset(f.out_strides, b, si.q_row0, si.varlen) +
                      h * f.out_strides.head + i * f.out_strides.row;
  const uint16_t* g = static_cast<const uint16_t*>(p.dout) +
                      seq_offset(p.dout_strides, b, si.q_row0, si.varlen) +
                      h * p.dout_strides.head + i * p.dout_strides.row;
  float acc = 0.f;
  for (int c = lane; c < f.shape.head_dim; c += 32) acc += Ops::to_float(o[c]) * Ops::to_float(g[c]);
  acc = warp_sum(acc);
  if (lane == 0) {
    const int64_t row = ws_row(si, b, i);
    const float lse = f.lse[lse_offset(f, si, b, h) + i];
    // A row that saw no key (lse -inf) gets +inf: exp2(score - inf) = 0 for every key.
    lse2[h * rows + row] = lse == -INFINITY ? INFINITY : lse * kLog2e;
    dsum[h * rows + row] = acc;
  }
}

// ---- 3. dQ from its fp32 sums (BwdDq::kAtomic, kSplit) ------------------------------------

template <typename T>
__global__ void __launch_bounds__(256)
    attn_bwd_dq_convert_kernel(const AttnBwdParams p, const float* dq_accum, int64_t rows,
                               int cols, int64_t splits, int64_t split_stride) {
  using Ops = ElemOps<T>;
  const AttnFwdParams& f = p.fwd;
  const WarpRow w = warp_row(f.shape);
  if (!w.exists()) return;
  const float* a = dq_accum + (w.h * rows + ws_row(w.si, w.b, w.i)) * cols;
  uint16_t* g = static_cast<uint16_t*>(p.dq) +
                seq_offset(p.dq_strides, w.b, w.si.q_row0, w.si.varlen) +
                w.h * p.dq_strides.head + w.i * p.dq_strides.row;
  const float scale = static_cast<float>(f.mask.softmax_scale);
  for (int c = w.lane; c < f.shape.head_dim; c += 32) {
    float sum = a[c];
    for (int64_t s = 1; s < splits; ++s) sum += a[s * split_stride + c];  // fixed order
    g[c] = Ops::from_float(sum * scale);
  }
}

// ---- 4. d(slopes) ----------------------------------------------------------------------

constexpr int kReduceThreads = 256;

// One block per entry of dslopes (the slopes' shape, contiguous; the binding allocates it):
// (H,) sums every row of head h (the rows of all sequences; rows no sequence covers hold 0),
// (B, H) the rows of sequence b. Strided per-thread sums, then a fixed tree: the same order,
// so the same bits, on every run.
__global__ void __launch_bounds__(kReduceThreads)
    attn_bwd_dslope_reduce_kernel(const AttnBwdParams p, const float* terms, int64_t rows,
                                  bool per_batch) {
  const int heads = static_cast<int>(p.fwd.shape.num_heads);
  const int h = blockIdx.x % heads;
  int64_t lo = 0, hi = rows;
  if (per_batch) {
    const int b = blockIdx.x / heads;
    const SeqInfo si = seq_info(p.fwd.shape, b);  // a bad varlen sequence has no rows
    lo = ws_row(si, b, 0);
    hi = lo + si.sq;
  }
  const float* t = terms + h * rows;
  float sum = 0.f;
  for (int64_t r = lo + threadIdx.x; r < hi; r += kReduceThreads) sum += t[r];
  float* partial = reinterpret_cast<float*>(dynamic_smem());  // kReduceThreads floats
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int n = kReduceThreads / 2; n > 0; n /= 2) {
    if (static_cast<int>(threadIdx.x) < n) partial[threadIdx.x] += partial[threadIdx.x + n];
    __syncthreads();
  }
  if (threadIdx.x == 0) p.dslopes[blockIdx.x] = partial[0];
}

// One warp per query row: grid (row blocks, heads, batch); nothing to launch without rows.
template <typename... Params, typename... Args>
void launch_per_row(void (*kernel)(Params...), const char* name, const AttnBwdParams& p,
                    const Args&... args) {
  const AttnShape& s = p.fwd.shape;
  const int64_t seqlen_q = grid_seqlen(s, s.seqlen_q);
  if (s.batch == 0 || s.num_heads == 0 || seqlen_q == 0) return;
  check_grid_yz(s.num_heads, s.batch, "attention backward");
  const dim3 grid(static_cast<unsigned>(ceil_div(seqlen_q, kPreRowsPerCta)),
                  static_cast<unsigned>(s.num_heads), static_cast<unsigned>(s.batch));
  const auto stream = static_cast<cudaStream_t>(p.fwd.stream);
  launch_kernel(kernel, grid, 32 * kPreRowsPerCta, 0, stream, p, args...);
  check_launch(name, stream);
}

}  // namespace

void launch_bwd_preprocess(const AttnBwdParams& p, float* lse2, float* dsum, int64_t rows) {
  const auto kernel = p.fwd.dtype == DType::kBFloat16 ? attn_bwd_preprocess_kernel<__nv_bfloat16>
                                                       : attn_bwd_preprocess_kernel<__half>;
  launch_per_row(kernel, "attn_bwd_preprocess_kernel", p, lse2, dsum, rows);
}

void launch_bwd_dq_convert(const AttnBwdParams& p, const float* dq_accum, int64_t rows, int cols,
                           int64_t splits, int64_t split_stride) {
  const auto kernel = p.fwd.dtype == DType::kBFloat16 ? attn_bwd_dq_convert_kernel<__nv_bfloat16>
                                                       : attn_bwd_dq_convert_kernel<__half>;
  launch_per_row(kernel, "attn_bwd_dq_convert_kernel", p, dq_accum, rows, cols, splits,
                 split_stride);
}

void launch_bwd_dslope_reduce(const AttnBwdParams& p, const float* terms, int64_t rows) {
  const AttnShape& s = p.fwd.shape;
  const bool per_batch = p.fwd.mask.alibi_batch_stride != 0;
  const int64_t entries = per_batch ? s.batch * s.num_heads : s.num_heads;
  if (entries == 0) return;
  if (entries > INT32_MAX) {
    throw std::invalid_argument("mpt_ext attention (CUDA): batch * heads must be < 2^31 for "
                                "per-sequence ALiBi slope gradients");
  }
  const auto stream = static_cast<cudaStream_t>(p.fwd.stream);
  launch_kernel(attn_bwd_dslope_reduce_kernel, static_cast<unsigned>(entries), kReduceThreads,
                kReduceThreads * sizeof(float), stream, p, terms, rows, per_batch);
  check_launch("attn_bwd_dslope_reduce_kernel", stream);
}

}  // namespace mpt_ext::attn::cuda
