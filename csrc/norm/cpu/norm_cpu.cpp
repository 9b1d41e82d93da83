// LayerNorm / RMSNorm on the CPU, forward and backward, over (rows, hidden) row views.
// Statistics in fp32 (fp64 for fp64 input); output in x's dtype. Parallel over rows with
// at::parallel_for; dweight/dbias reduced in two fixed-order stages, so results do not
// depend on the thread count.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../norm.h"

namespace mpt_ext {
namespace {

// Row sums are pairwise (numpy's scheme): blocks of kPairBlock elements are summed with
// kLanes independent accumulators (they vectorise without -ffast-math reassociation), and
// the block sums are added in a binary tree. The rounding error then grows with
// log2(n / kPairBlock) + kPairBlock / kLanes instead of n / kLanes: with 8 running lanes,
// a row of 2^23 elements came out with y off by 2.5e-3; pairwise, 1.3e-6 (PyTorch: 1.1e-6).
constexpr int kLanes = 8;
constexpr int64_t kPairBlock = 128;

// term(i) is the i-th summand; every function below inlines it into the lane loop.
template <typename Acc, typename Term>
Acc block_sum(int64_t begin, int64_t n, const Term& term) {
  Acc lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += term(begin + i + l);
  }
  for (; i < n; ++i) lanes[i % kLanes] += term(begin + i);
  // a fixed tree over the lanes as well
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  }
  return lanes[0];
}

template <typename Acc, typename Term>
Acc pairwise_sum(int64_t begin, int64_t n, const Term& term) {
  if (n <= kPairBlock) return block_sum<Acc>(begin, n, term);
  // split at a multiple of the block size: every leaf but the last is a full block
  const int64_t half = ((n / kPairBlock + 1) / 2) * kPairBlock;
  return pairwise_sum<Acc>(begin, half, term) + pairwise_sum<Acc>(begin + half, n - half, term);
}

template <typename Acc>
Acc lane_sum(const Acc* v, int64_t n) {
  return pairwise_sum<Acc>(0, n, [v](int64_t i) { return v[i]; });
}

template <typename Acc>
Acc lane_sum_sq_dev(const Acc* v, int64_t n, Acc center) {
  return pairwise_sum<Acc>(0, n, [v, center](int64_t i) {
    const Acc d = v[i] - center;
    return d * d;
  });
}

template <typename Acc>
Acc lane_dot(const Acc* a, const Acc* b, int64_t n) {
  return pairwise_sum<Acc>(0, n, [a, b](int64_t i) { return a[i] * b[i]; });
}

// weight / bias (any float dtype) -> a dense Acc vector; absent -> empty.
template <typename Acc>
std::vector<Acc> load_param(const void* ptr, DType dtype, int64_t n) {
  std::vector<Acc> out;
  if (ptr == nullptr) return out;
  out.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kFloat32: out[i] = static_cast<Acc>(static_cast<const float*>(ptr)[i]); break;
      case DType::kFloat16: out[i] = static_cast<Acc>(static_cast<const c10::Half*>(ptr)[i]); break;
      case DType::kBFloat16:
        out[i] = static_cast<Acc>(static_cast<const c10::BFloat16*>(ptr)[i]);
        break;
      case DType::kFloat64: out[i] = static_cast<Acc>(static_cast<const double*>(ptr)[i]); break;
    }
  }
  return out;
}

// Rows per parallel task: enough elements per task to amortise scheduling.
int64_t row_grain(int64_t hidden) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(hidden, 1)); }

template <typename T, typename Acc>
void norm_fwd_impl(const NormFwdParams& p) {
  const int64_t H = p.hidden;
  const std::vector<Acc> w = load_param<Acc>(p.weight, p.w_dtype, H);
  const std::vector<Acc> b = load_param<Acc>(p.bias, p.w_dtype, H);
  const Acc eps = static_cast<Acc>(p.eps);
  const Acc inv_h = Acc(1) / static_cast<Acc>(H);

  at::parallel_for(0, p.rows, row_grain(H), [&](int64_t begin, int64_t end) {
    std::vector<Acc> s(H);
    for (int64_t r = begin; r < end; ++r) {
      const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
      if (p.residual != nullptr) {
        const T* res = static_cast<const T*>(p.residual) + r * p.residual_row_stride;
        T* res_out = static_cast<T*>(p.residual_out) + r * p.residual_out_row_stride;
        for (int64_t i = 0; i < H; ++i) {
          // Normalise the rounded sum the caller gets back, so that the backward (which
          // sees residual_out) differentiates exactly the function the forward computed.
          const T rounded = static_cast<T>(static_cast<Acc>(x[i]) + static_cast<Acc>(res[i]));
          res_out[i] = rounded;
          s[i] = static_cast<Acc>(rounded);
        }
      } else {
        for (int64_t i = 0; i < H; ++i) s[i] = static_cast<Acc>(x[i]);
      }

      Acc mean = 0, rstd;
      if (p.is_rms) {
        rstd = Acc(1) / std::sqrt(lane_dot(s.data(), s.data(), H) * inv_h + eps);
      } else {
        mean = lane_sum(s.data(), H) * inv_h;  // two passes: no cancellation in the variance
        rstd = Acc(1) / std::sqrt(lane_sum_sq_dev(s.data(), H, mean) * inv_h + eps);
        p.mean[r] = static_cast<float>(mean);
      }
      p.rstd[r] = static_cast<float>(rstd);

      T* y = static_cast<T*>(p.y) + r * p.y_row_stride;
      for (int64_t i = 0; i < H; ++i) {
        Acc v = (s[i] - mean) * rstd;
        if (!w.empty()) v *= w[i];
        if (!b.empty()) v += b[i];
        y[i] = static_cast<T>(v);
      }
    }
  });
}

// Rows per dweight/dbias partial: a function of rows only (never of the thread count), so
// the two-stage sum is the same bit pattern on every machine and run.
int64_t bwd_rows_per_chunk(int64_t rows) {
  constexpr int64_t kMaxChunks = 64;
  return std::max<int64_t>(16, (rows + kMaxChunks - 1) / kMaxChunks);
}

// dweight/dbias column sums: a chunk's rows are summed in Acc kRowBlock rows at a time
// (short sums, vectorised, straight into the chunk's partial row), each block's sum moved
// into a double accumulator, and the chunk partials are summed in double. A plain fp32
// running sum over a chunk of rows / 64 rows would lose ~rows / 64 * 2^-24 relative
// (the error of dbias grew 10x from 1e4 to 2e5 rows).
constexpr int64_t kRowBlock = 32;

template <typename T, typename Acc>
void norm_bwd_impl(const NormBwdParams& p) {
  const int64_t H = p.hidden;
  const std::vector<Acc> w = load_param<Acc>(p.weight, p.w_dtype, H);
  const bool want_dw = p.dweight != nullptr;
  const bool want_db = p.dbias != nullptr;
  const Acc inv_h = Acc(1) / static_cast<Acc>(H);

  const int64_t chunk_rows = bwd_rows_per_chunk(p.rows);
  const int64_t n_chunks = (p.rows + chunk_rows - 1) / chunk_rows;
  // Stage 1 scratch: one partial row of dweight (and dbias) per chunk.
  std::vector<Acc> dw_part(want_dw ? n_chunks * H : 0, Acc(0));
  std::vector<Acc> db_part(want_db ? n_chunks * H : 0, Acc(0));
  const bool blocked = chunk_rows > kRowBlock;  // else a chunk is one short block

  const int64_t chunk_grain = std::max<int64_t>(1, row_grain(H) / chunk_rows);
  at::parallel_for(0, n_chunks, chunk_grain, [&](int64_t c_begin, int64_t c_end) {
    std::vector<Acc> xhat(H), g(H);
    std::vector<double> dw_acc(want_dw && blocked ? H : 0), db_acc(want_db && blocked ? H : 0);
    for (int64_t c = c_begin; c < c_end; ++c) {
      Acc* dw = want_dw ? dw_part.data() + c * H : nullptr;
      Acc* db = want_db ? db_part.data() + c * H : nullptr;
      const int64_t r_begin = c * chunk_rows;
      const int64_t r_end = std::min(p.rows, (c + 1) * chunk_rows);
      for (int64_t r = r_begin; r < r_end; ++r) {
        const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
        const T* dy = static_cast<const T*>(p.dy) + r * p.dy_row_stride;
        const Acc mean = p.is_rms ? Acc(0) : static_cast<Acc>(p.mean[r]);
        const Acc rstd = static_cast<Acc>(p.rstd[r]);
        for (int64_t i = 0; i < H; ++i) {
          const Acc dyi = static_cast<Acc>(dy[i]);
          xhat[i] = (static_cast<Acc>(x[i]) - mean) * rstd;
          g[i] = w.empty() ? dyi : dyi * w[i];
          if (dw != nullptr) dw[i] += dyi * xhat[i];
          if (db != nullptr) db[i] += dyi;
        }
        if (blocked && ((r - r_begin + 1) % kRowBlock == 0 || r + 1 == r_end)) {
          // end of a row block: move its sum into the double accumulator; at the end of the
          // chunk, the accumulator (rounded once) becomes the chunk's partial
          const bool last = r + 1 == r_end;
          for (int64_t i = 0; i < H && dw != nullptr; ++i) {
            const double sum = dw_acc[i] + static_cast<double>(dw[i]);
            dw_acc[i] = last ? 0.0 : sum;
            dw[i] = last ? static_cast<Acc>(sum) : Acc(0);
          }
          for (int64_t i = 0; i < H && db != nullptr; ++i) {
            const double sum = db_acc[i] + static_cast<double>(db[i]);
            db_acc[i] = last ? 0.0 : sum;
            db[i] = last ? static_cast<Acc>(sum) : Acc(0);
          }
        }
        // d(xhat) = g; dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (LayerNorm),
        // without the mean(g) term for RMSNorm.
        const Acc mean_gx = lane_dot(g.data(), xhat.data(), H) * inv_h;
        const Acc mean_g = p.is_rms ? Acc(0) : lane_sum(g.data(), H) * inv_h;
        T* dx = static_cast<T*>(p.dx) + r * p.dx_row_stride;
        if (p.dresidual_out != nullptr) {
          const T* dres = static_cast<const T*>(p.dresidual_out) + r * p.dresidual_out_row_stride;
          for (int64_t i = 0; i < H; ++i) {
            dx[i] = static_cast<T>(rstd * (g[i] - mean_g - xhat[i] * mean_gx) +
                                   static_cast<Acc>(dres[i]));
          }
        } else {
          for (int64_t i = 0; i < H; ++i) {
            dx[i] = static_cast<T>(rstd * (g[i] - mean_g - xhat[i] * mean_gx));
          }
        }
      }
    }
  });

  // Stage 2: every column sums its chunk partials in chunk order.
  if (!want_dw && !want_db) return;
  at::parallel_for(0, H, std::max<int64_t>(1, 4096 / std::max<int64_t>(n_chunks, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double sw = 0, sb = 0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        if (want_dw) sw += dw_part[c * H + i];
        if (want_db) sb += db_part[c * H + i];
      }
      if (want_dw) p.dweight[i] = static_cast<float>(sw);
      if (want_db) p.dbias[i] = static_cast<float>(sb);
    }
  });
}

template <template <typename, typename> class Fn, typename Params>
void dispatch_x_dtype(DType dtype, const Params& p) {
  switch (dtype) {
    case DType::kFloat32: return Fn<float, float>::run(p);
    case DType::kFloat16: return Fn<c10::Half, float>::run(p);
    case DType::kBFloat16: return Fn<c10::BFloat16, float>::run(p);
    case DType::kFloat64: return Fn<double, double>::run(p);
  }
  throw std::invalid_argument(std::string("norm (CPU): unsupported x dtype ") + dtype_name(dtype));
}

template <typename T, typename Acc>
struct FwdFn {
  static void run(const NormFwdParams& p) { norm_fwd_impl<T, Acc>(p); }
};
template <typename T, typename Acc>
struct BwdFn {
  static void run(const NormBwdParams& p) { norm_bwd_impl<T, Acc>(p); }
};

}  // namespace

void norm_fwd_cpu(const NormFwdParams& p) {
  if (p.rows <= 0) return;
  dispatch_x_dtype<FwdFn>(p.x_dtype, p);
}

void norm_bwd_cpu(const NormBwdParams& p) {
  if (p.rows <= 0) {
    if (p.dweight != nullptr) std::fill(p.dweight, p.dweight + p.hidden, 0.0f);
    if (p.dbias != nullptr) std::fill(p.dbias, p.dbias + p.hidden, 0.0f);
    return;
  }
  dispatch_x_dtype<BwdFn>(p.x_dtype, p);
}

}  // namespace mpt_ext
