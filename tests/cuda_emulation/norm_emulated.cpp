// The CUDA norm kernels (csrc/norm/cuda/*_kernel.cuh) run on the CPU through cuda_emulation.h,
// against a float64 reference computed here. Built and run by tests/test_norm_cuda_emulated.py
// on machines without a GPU; exit status = number of failed cases.
#include "cuda_emulation.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/norm/cuda/norm_bwd_kernel.cuh"
#include "../../csrc/norm/cuda/norm_fwd_kernel.cuh"

using namespace mpt_ext;
using namespace mpt_ext::norm::cuda;

namespace {

struct Case {
  int64_t rows, hidden;
  DType x_dtype, w_dtype;
  bool rms, weight, bias, residual;
  int misalign;  // elements by which x starts past its allocation (0: aligned)
};

template <typename T>
double eps_of() {
  if constexpr (sizeof(T) == 4) return 1e-5;  // fp32 output: allow fp32 accumulation error
  else if constexpr (std::is_same_v<T, __half>) return 1.0 / 1024;
  else return 1.0 / 128;
}

template <typename T>
std::vector<T> random_vec(int64_t n, std::mt19937& rng, float mean, float scale) {
  std::normal_distribution<float> dist(mean, scale);
  std::vector<T> v(n);
  for (auto& e : v) e = from_float<T>(dist(rng));
  return v;
}

struct Err {
  double max_err = 0, scale = 0;
  void add(double got, double want) {
    max_err = std::max(max_err, std::isfinite(got) ? std::abs(got - want) : 1e30);
    scale = std::max(scale, std::abs(want));
  }
  bool ok(double eps) const { return max_err <= 2 * eps * std::max(1.0, scale); }
};

template <typename T, typename W, int kWidth>
void launch_fwd(const NormFwdParams& p) {
  const RowLayout l = row_layout<kFwdPacks>(p.hidden, kWidth);
  const dim3 grid(static_cast<unsigned>((p.rows + l.rows_y - 1) / l.rows_y));
  cuda_emu::launch(grid, dim3(l.threads_x, l.rows_y),
                   [&] { norm_fwd_kernel<T, W, kWidth>(p, l.cached); });
}

template <typename T, typename W, int kWidth>
void launch_bwd(const NormBwdParams& p, const BwdLaunch& plan, std::vector<float>& ws) {
  const int64_t part = plan.blocks * p.hidden;
  ws.assign(std::max<int64_t>(1, plan.n_partials * part), -12345.0f);  // poisoned
  float* dw_part = p.dweight ? ws.data() : nullptr;
  float* db_part = p.dbias ? ws.data() + (p.dweight ? part : 0) : nullptr;
  cuda_emu::launch(dim3(static_cast<unsigned>(plan.blocks)),
                   dim3(plan.layout.threads_x, plan.layout.rows_y),
                   [&] { norm_bwd_kernel<T, W, kWidth>(p, plan.layout.cached, dw_part, db_part); });
  if (plan.n_partials > 0) {
    cuda_emu::launch(dim3(static_cast<unsigned>((p.hidden + 31) / 32), plan.n_partials),
                     dim3(32, kSumLanes), [&] {
                       sum_partials_kernel<kSumLanes>(dw_part ? dw_part : db_part, db_part,
                                                      plan.blocks, p.hidden,
                                                      p.dweight ? p.dweight : p.dbias, p.dbias);
                     });
  }
}

template <typename T, typename W>
bool run_case(const Case& c, std::mt19937& rng) {
  const int64_t R = c.rows, H = c.hidden, n = R * H;
  std::vector<T> xbuf = random_vec<T>(n + c.misalign, rng, 0.5f, 2.0f);
  const T* x = xbuf.data() + c.misalign;
  std::vector<T> res = random_vec<T>(n, rng, 0.0f, 1.0f);
  std::vector<W> w = random_vec<W>(H, rng, 1.0f, 0.5f), b = random_vec<W>(H, rng, 0.0f, 0.3f);
  std::vector<T> y(n, from_float<T>(-777.0f)), res_out(n, from_float<T>(-777.0f));
  std::vector<float> mean(R, -777.0f), rstd(R, -777.0f);

  NormFwdParams p;
  p.rows = R;
  p.hidden = H;
  p.is_rms = c.rms;
  p.eps = 1e-5f;
  p.x_dtype = c.x_dtype;
  p.w_dtype = c.w_dtype;
  p.x = x;
  p.residual = c.residual ? res.data() : nullptr;
  p.weight = c.weight ? w.data() : nullptr;
  p.bias = c.bias ? b.data() : nullptr;
  p.y = y.data();
  p.residual_out = c.residual ? res_out.data() : nullptr;
  p.mean = c.rms ? nullptr : mean.data();
  p.rstd = rstd.data();
  p.x_row_stride = p.residual_row_stride = p.y_row_stride = p.residual_out_row_stride = H;
  const bool vec_fwd = fwd_vectorizable<T, W>(p);
  if (vec_fwd) launch_fwd<T, W, 16 / sizeof(T)>(p);
  else launch_fwd<T, W, 1>(p);

  // Backward from the forward's own outputs, as autograd would call it.
  std::vector<T> dy = random_vec<T>(n, rng, 0.0f, 1.0f), dres = random_vec<T>(n, rng, 0.0f, 1.0f);
  std::vector<T> dx(n, from_float<T>(-777.0f));
  std::vector<float> dweight(H, -777.0f), dbias(H, -777.0f), ws;
  NormBwdParams q;
  q.rows = R;
  q.hidden = H;
  q.is_rms = c.rms;
  q.x_dtype = c.x_dtype;
  q.w_dtype = c.w_dtype;
  q.dy = dy.data();
  q.x = c.residual ? static_cast<const void*>(res_out.data()) : static_cast<const void*>(x);
  q.weight = p.weight;
  q.mean = p.mean;
  q.rstd = rstd.data();
  q.dresidual_out = c.residual ? dres.data() : nullptr;
  q.dx = dx.data();
  q.dweight = c.weight ? dweight.data() : nullptr;
  q.dbias = c.bias ? dbias.data() : nullptr;
  q.dy_row_stride = q.x_row_stride = q.dresidual_out_row_stride = q.dx_row_stride = H;
  const BwdLaunch plan = plan_bwd(q, /*sms=*/1);  // few CTAs: each walks several rows
  if (plan.width > 1) launch_bwd<T, W, 16 / sizeof(T)>(q, plan, ws);
  else launch_bwd<T, W, 1>(q, plan, ws);

  // float64 reference on the same (rounded) inputs.
  Err e_y, e_s, e_stat, e_dx, e_dw, e_db;
  std::vector<double> dw_ref(H, 0.0), db_ref(H, 0.0), s(H), xhat(H), g(H);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t i = 0; i < H; ++i) {
      const int64_t k = r * H + i;
      if (c.residual) {
        const T rounded = from_float<T>(to_float(x[k]) + to_float(res[k]));
        e_s.add(to_float(res_out[k]), to_float(rounded));
        s[i] = to_float(rounded);
      } else {
        s[i] = to_float(x[k]);
      }
    }
    double mu = 0, var = 0;
    if (!c.rms) {
      for (double v : s) mu += v;
      mu /= H;
    }
    for (double v : s) var += (v - mu) * (v - mu);
    var /= H;
    const double rs = 1.0 / std::sqrt(var + 1e-5);
    if (!c.rms) e_stat.add(mean[r], mu);
    e_stat.add(rstd[r] / rs, 1.0);  // relative
    double sum_g = 0, sum_gx = 0;
    for (int64_t i = 0; i < H; ++i) {
      const int64_t k = r * H + i;
      xhat[i] = (s[i] - mu) * rs;
      double out = xhat[i];
      if (c.weight) out *= to_float(w[i]);
      if (c.bias) out += to_float(b[i]);
      e_y.add(to_float(y[k]), out);
      const double d = to_float(dy[k]);
      g[i] = c.weight ? d * to_float(w[i]) : d;
      sum_g += g[i];
      sum_gx += g[i] * xhat[i];
      dw_ref[i] += d * xhat[i];
      db_ref[i] += d;
    }
    for (int64_t i = 0; i < H; ++i) {
      const int64_t k = r * H + i;
      double want = rs * (g[i] - (c.rms ? 0.0 : sum_g / H) - xhat[i] * sum_gx / H);
      if (c.residual) want += to_float(dres[k]);
      e_dx.add(to_float(dx[k]), want);
    }
  }
  for (int64_t i = 0; i < H; ++i) {
    if (c.weight) e_dw.add(dweight[i], dw_ref[i]);
    if (c.bias) e_db.add(dbias[i], db_ref[i]);
  }

  const double eps = eps_of<T>();
  // dx: hidden-long fp32 sums feed it; dweight/dbias: fp32 sums over rows (no output rounding).
  const bool ok = e_y.ok(eps) && e_s.max_err == 0 && e_stat.ok(1e-5) && e_dx.ok(eps) &&
                  e_dw.ok(1e-5) && e_db.ok(1e-5);
  std::printf("%s rows=%lld hidden=%lld x=%s w=%s %s%s%s%s misalign=%d vec=%d/%d cached=%d/%d "
              "bwd_blocks=%lld | y %.3g s %.3g stat %.3g dx %.3g dw %.3g db %.3g\n",
              ok ? "ok  " : "FAIL", static_cast<long long>(R), static_cast<long long>(H),
              dtype_name(c.x_dtype), dtype_name(c.w_dtype), c.rms ? "rms" : "layer",
              c.weight ? "+w" : "", c.bias ? "+b" : "", c.residual ? "+res" : "", c.misalign,
              vec_fwd, plan.width > 1, row_layout<kFwdPacks>(H, vec_fwd ? 16 / sizeof(T) : 1).cached,
              plan.layout.cached, static_cast<long long>(plan.blocks), e_y.max_err, e_s.max_err,
              e_stat.max_err, e_dx.max_err, e_dw.max_err, e_db.max_err);
  return ok;
}

bool run(const Case& c, std::mt19937& rng) {
  bool ok = false;
  dispatch_dtypes(c.x_dtype, c.w_dtype, [&]<typename T, typename W>() { ok = run_case<T, W>(c, rng); });
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? std::atoi(argv[1]) : 1234);
  const DType f32 = DType::kFloat32, bf16 = DType::kBFloat16, f16 = DType::kFloat16;
  // rows, hidden, x, w, rms, weight, bias, residual, misalign
  const Case cases[] = {
      {5, 1, bf16, f32, false, true, true, false, 0},     // hidden 1: y = bias
      {9, 7, f16, f16, true, true, false, true, 0},       // scalar path, 8 rows per CTA
      {37, 64, bf16, bf16, false, true, true, true, 0},   // 16-byte path, warp per row
      {37, 64, f32, f32, true, false, false, false, 0},   // no weight
      {21, 769, f32, f32, false, true, true, true, 0},    // scalar, several warps per row
      {13, 768, bf16, f32, false, true, true, false, 1},  // misaligned x: scalar path
      {11, 4096, bf16, f32, false, true, true, true, 0},  // cached 16-byte, 128/256 threads
      {11, 4096, f16, f32, true, true, false, false, 0},
      {3, 5000, f32, f32, false, true, true, true, 0},    // fp32 packs, multi-warp rows
      {3, 4097, f32, f32, false, true, true, true, 0},    // scalar, streaming fwd and bwd
      {2, 16392, bf16, bf16, true, true, false, true, 0}, // 16-byte, streaming fwd and bwd
      {300, 32, bf16, f32, false, true, true, true, 0},   // many rows per bwd CTA
  };
  int failed = 0;
  for (const Case& c : cases) failed += run(c, rng) ? 0 : 1;
  std::printf("%d failed\n", failed);
  return failed;
}
