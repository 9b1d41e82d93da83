// The sm_90 GEMM probe (tests/cuda_emulation/sm90_gemm_probe.cuh) on a real Hopper GPU: the
// project's wrappers (TMA pipeline -> wgmma -> TMA store) against a float64 matrix product,
// in its four forms (A from shared memory or registers, B K- or N-major), the same check the
// emulator's self-test makes on the CPU. scripts/gpu-check builds and runs it first:
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a -I . scripts/sm90_probe.cu \
//     -o sm90_probe
//   ./sm90_probe   # one line per form; the exit status is the number of failures
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "tests/cuda_emulation/sm90_gemm_probe.cuh"

namespace {

#define CHECK_CUDA(call)                                                             \
  do {                                                                               \
    const cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                         \
      std::printf("FAIL %s: %s\n", #call, cudaGetErrorString(e_));                   \
      return false;                                                                  \
    }                                                                                \
  } while (0)

uint16_t bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
double bf16_value(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }

template <bool kBNMajor, bool kARegisters>
bool run_form(int rows, int k) {
  std::mt19937 rng(kBNMajor * 2 + kARegisters);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> a(size_t(rows) * k), b(size_t(64) * k);  // b: [k][64] or [64][k]
  for (auto& x : a) x = bf16_bits(nd(rng));
  for (auto& x : b) x = bf16_bits(nd(rng));
  std::vector<float> d(64 * 64, 12345.f);
  void *da, *db, *dd;
  CHECK_CUDA(cudaMalloc(&da, a.size() * 2));
  CHECK_CUDA(cudaMalloc(&db, b.size() * 2));
  CHECK_CUDA(cudaMalloc(&dd, d.size() * 4));
  CHECK_CUDA(cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dd, d.data(), d.size() * 4, cudaMemcpyHostToDevice));
  const sm90_probe::Params p = sm90_probe::make_params(da, db, dd, rows, k, kBNMajor);
  auto kernel = sm90_probe::gemm_probe_kernel<kBNMajor, kARegisters>;
  CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  sm90_probe::kSmemBytes));
  kernel<<<1, 256, sm90_probe::kSmemBytes>>>(p, k / 64, 0);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaMemcpy(d.data(), dd, d.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(da);
  cudaFree(db);
  cudaFree(dd);
  double worst = 0;
  bool tail_untouched = true;
  for (int m = 0; m < 64; ++m) {
    for (int n = 0; n < 64; ++n) {
      if (m >= rows) {
        tail_untouched &= d[m * 64 + n] == 12345.f;
        continue;
      }
      double exact = 0, mag = 0;
      for (int kk = 0; kk < k; ++kk) {
        const double bv = bf16_value(kBNMajor ? b[size_t(kk) * 64 + n] : b[size_t(n) * k + kk]);
        const double prod = bf16_value(a[size_t(m) * k + kk]) * bv;
        exact += prod;
        mag += std::fabs(prod);
      }
      // k / 16 wgmma steps, each within 2^-20 of its terms' magnitude (emu_selftest_sm90.cu)
      worst = std::max(worst, std::fabs(d[m * 64 + n] - exact) /
                                  (mag * (k / 16) * std::ldexp(1.0, -20)));
    }
  }
  const bool ok = worst <= 1.0 && tail_untouched;
  std::printf("%s sm90 probe, A from %s, B %s, %d x 64 x %d: error / bound %.4f%s\n",
              ok ? "ok  " : "FAIL", kARegisters ? "registers" : "shared memory",
              kBNMajor ? "N-major" : "K-major", rows, k, worst,
              tail_untouched ? "" : ", rows past the tensor written");
  return ok;
}

}  // namespace

int main() {
  int failures = 0;
  failures += !run_form<false, false>(50, 320);
  failures += !run_form<true, false>(50, 320);
  failures += !run_form<false, true>(50, 320);
  failures += !run_form<true, true>(50, 320);
  std::printf("%d failed\n", failures);
  return failures;
}
