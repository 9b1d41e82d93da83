// Self-test of the emulated GPU, run by tests/test_emulation_harness.py. Two kinds of checks:
//  - the emulated instructions against independent statements of what they compute: matrix
//    products (mma fed by ldmatrix must give A B + C), the CUDA Programming Guide's shuffle
//    semantics, IEEE round-to-nearest-even for the conversions, the ISA's error bounds for the
//    approximate math;
//  - planted bugs in tiny kernels (a read before the cp.async wait, a missing barrier, a
//    divergent warp, a deadlock, an oversized launch) that the emulator must report.
// The sm_90 instructions' checks are in emu_selftest_sm90.cu. Prints one line per check; the
// exit status is the number of failures.
#include <cfloat>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "emu_selftest.h"

namespace {

// ---- tensor cores: D = A B + C through ldmatrix and mma, checked as a matrix product ---------
// A (16 x 16) row-major and B stored as Bt[n][k] (or B[k][n] with .trans) in shared memory; lane
// addresses as the ISA assigns them (threads 8j..8j+7: rows of matrix j); D read back by the
// ISA's C layout (row groupID (+8 for c2, c3), column 2 threadID_in_group (+1)).
void check_mma(bool bf16, bool trans_b) {
  std::mt19937 rng(bf16 * 2 + trans_b);
  std::normal_distribution<float> nd(0.f, 1.f);
  uint16_t A[16][16], B[16][8];  // B[k][n]
  float C[16][8], D[16][8];
  auto to16 = [&](float f) {
    return bf16 ? bits_of(__float2bfloat16_rn(f)) : bits_of(__float2half_rn(f));
  };
  for (auto& r : A) for (auto& e : r) e = to16(nd(rng));
  for (auto& r : B) for (auto& e : r) e = to16(nd(rng));
  for (auto& r : C) for (auto& e : r) e = nd(rng);
  const std::string err = run(1, 32, 1024, [&] {
    uint16_t* sA = reinterpret_cast<uint16_t*>(cuda_emu::dynamic_smem());
    uint16_t* sB = sA + 256;
    const unsigned lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) sA[i] = A[i / 16][i % 16];
    for (int i = lane; i < 128; i += 32) {
      if (trans_b) sB[i] = B[i / 8][i % 8];        // [k][n]
      else sB[i] = B[i % 16][i / 16];              // [n][k]
    }
    __syncwarp();
    const int j = lane / 8, r = lane % 8;
    uint32_t a[4], b[2];
    cuda_emu::ldmatrix_m8n8_b16(4, false, a, sA + (r + 8 * (j & 1)) * 16 + 8 * (j >> 1));
    if (trans_b) cuda_emu::ldmatrix_m8n8_b16(2, true, b, sB + (r + 8 * (j & 1)) * 8);
    else cuda_emu::ldmatrix_m8n8_b16(2, false, b, sB + r * 16 + 8 * (j & 1));
    const int g = lane >> 2, t = lane & 3;
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) c[i] = C[g + 8 * (i >> 1)][2 * t + (i & 1)];
    cuda_emu::mma_m16n8k16_f32(bf16 ? cuda_emu::MmaInput::kBF16 : cuda_emu::MmaInput::kF16, d, a,
                               b[0], b[1], c);
    for (int i = 0; i < 4; ++i) D[g + 8 * (i >> 1)][2 * t + (i & 1)] = d[i];
  });
  double worst = 0;
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      double exact = C[m][n], mag = std::fabs(C[m][n]);
      for (int k = 0; k < 16; ++k) {
        const double p = double(value(A[m][k], bf16)) * value(B[k][n], bf16);
        exact += p;
        mag = std::max(mag, std::fabs(p));
      }
      // truncation to 25 fractional bits of the largest term, 17 terms, then one rounding
      worst = std::max(worst, std::fabs(D[m][n] - exact) / (mag * std::ldexp(1.0, -20)));
    }
  }
  report(std::string("mma.m16n8k16 ") + (bf16 ? "bf16" : "f16") +
             (trans_b ? " (B by ldmatrix.trans)" : " (B by ldmatrix)") + " = A B + C",
         err.empty() && worst <= 1.0, err.empty() ? "error / bound " + std::to_string(worst) : err);
}

// ---- cp.async ------------------------------------------------------------------------------
void check_cp_async() {
  alignas(16) static uint8_t src[64];
  for (int i = 0; i < 64; ++i) src[i] = uint8_t(i + 1);
  bool zero_fill_ok = true, groups_ok = true;
  std::string err = run(1, 32, 256, [&] {
    unsigned char* s = cuda_emu::dynamic_smem();
    if (threadIdx.x == 0) {
      cuda_emu::cp_async(s, src, 16, 6, true);
      cuda_emu::cp_async_commit_group();
      cuda_emu::cp_async(s + 16, src + 16, 16, 16, true);
      cuda_emu::cp_async_commit_group();
      cuda_emu::cp_async(s + 32, src + 32, 8, 8, false);
      cuda_emu::cp_async_commit_group();
      cuda_emu::cp_async_wait_group(1);  // the first two groups, not the last
      groups_ok = cuda_emu::shadow(s + 16)->state == cuda_emu::ByteState::kLanded &&
                  cuda_emu::shadow(s + 32)->state == cuda_emu::ByteState::kPending &&
                  s[32] == 0xff;  // poison until waited for
      for (int i = 0; i < 16; ++i) zero_fill_ok &= s[i] == (i < 6 ? src[i] : 0);
      cuda_emu::cp_async_wait_all();
      groups_ok &= s[39] == src[39];
    }
  });
  report("cp.async zero-fills past src-size", err.empty() && zero_fill_ok, err);
  report("cp.async.wait_group N lands all but the N newest groups", err.empty() && groups_ok, err);

  err = run(1, 32, 256, [&] {
    uint16_t* s = reinterpret_cast<uint16_t*>(cuda_emu::dynamic_smem());
    if (threadIdx.x < 8) cuda_emu::cp_async(s + 8 * threadIdx.x, src, 16, 16, true);  // a row each
    cuda_emu::cp_async_commit_group();
    uint32_t r[1];
    cuda_emu::ldmatrix_m8n8_b16(1, false, r, s + 8 * (threadIdx.x % 8));
    cuda_emu::cp_async_wait_all();
  });
  expect_error("planted: ldmatrix before cp.async.wait_group", err, "has not been waited for");

  // warp 1 copies and waits, warp 0 reads without a barrier. Warp 1 first: the read comes
  // after the landing. Warp 0 first: it reads bytes nothing has written yet (poison).
  auto unordered = [&] {
    uint16_t* s = reinterpret_cast<uint16_t*>(cuda_emu::dynamic_smem());
    const unsigned lane = threadIdx.x % 32;
    if (threadIdx.x >= 32) {
      if (lane < 8) cuda_emu::cp_async(s + 8 * lane, src, 16, 16, true);
      cuda_emu::cp_async_wait_all();
    } else {
      uint32_t r[1];
      cuda_emu::ldmatrix_m8n8_b16(1, false, r, s + 8 * (lane % 8));
    }
  };
  cuda_emu::set_schedule(cuda_emu::Schedule::kHighFirst);
  err = run(1, 64, 256, unordered);
  expect_error("planted: another warp's landed copy read without __syncthreads", err,
               "reads a cp.async that thread");
  cuda_emu::set_schedule(cuda_emu::Schedule::kLowFirst);
  err = run(1, 64, 256, unordered);
  expect_error("planted: ldmatrix of shared memory nothing has written", err,
               "nothing has written");

  // warp 0 reads written data, then warp 1 copies over it in the same barrier interval
  err = run(1, 64, 256, [&] {
    uint16_t* s = reinterpret_cast<uint16_t*>(cuda_emu::dynamic_smem());
    const unsigned lane = threadIdx.x % 32;
    s[threadIdx.x] = 1;
    __syncthreads();
    if (threadIdx.x < 32) {
      uint32_t r[1];
      cuda_emu::ldmatrix_m8n8_b16(1, false, r, s + 8 * (lane % 8));
    } else {
      if (lane < 8) cuda_emu::cp_async(s + 8 * lane, src, 16, 16, true);
      cuda_emu::cp_async_wait_all();
    }
  });
  cuda_emu::set_schedule(cuda_emu::Schedule::kSkewAlternating);
  expect_error("planted: cp.async over another warp's read without __syncthreads", err,
               "overwrites shared memory that another warp read");

  err = run(1, 32, 256, [&] {
    cuda_emu::cp_async(cuda_emu::dynamic_smem() + 16 * (threadIdx.x % 4), src, 16, 16, true);
    cuda_emu::cp_async_commit_group();
  });
  expect_error("planted: thread exits with a copy in flight", err, "still in flight");

  err = run(1, 32, 256, [&] { cuda_emu::cp_async(cuda_emu::dynamic_smem() + 8, src, 16, 16, true); });
  expect_error("planted: misaligned cp.async", err, "not aligned");
}

// ---- shuffles, against the CUDA Programming Guide's definition --------------------------------
void check_shuffles() {
  int out[4][32];
  const std::string err = run(1, 32, 0, [&] {
    const int lane = threadIdx.x;
    const int v = 100 + lane;
    out[0][lane] = __shfl_xor_sync(0xffffffffu, v, 5);
    out[1][lane] = __shfl_sync(0xffffffffu, v, 3 * lane + 1, 8);
    out[2][lane] = __shfl_up_sync(0xffffffffu, v, 3, 16);
    out[3][lane] = __shfl_down_sync(0xffffffffu, v, 2, 8);
  });
  bool ok = err.empty();
  for (int lane = 0; lane < 32 && ok; ++lane) {
    const int seg8 = lane / 8 * 8, seg16 = lane / 16 * 16;
    ok &= out[0][lane] == 100 + (lane ^ 5);
    ok &= out[1][lane] == 100 + seg8 + (3 * lane + 1) % 8;  // srcLane % width in own segment
    ok &= out[2][lane] == 100 + (lane - 3 >= seg16 ? lane - 3 : lane);
    ok &= out[3][lane] == 100 + (lane + 2 < seg8 + 8 ? lane + 2 : lane);
  }
  report("shfl.sync bfly / idx / up / down with widths 32, 8, 16", ok, err);
}

// ---- red.global.add.f32: every update lands once, rounded to nearest even, subnormals flushed --
void check_red_add() {
  float sums[4] = {0.f, 1.f, 0.f, 1.5f * FLT_MIN};
  std::string err = run(3, 64, 0, [&] {
    cuda_emu::red_global_add_f32(&sums[0], 1.f);  // 192 exact updates
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      cuda_emu::red_global_add_f32(&sums[1], 3 * std::ldexp(1.f, -24));  // 1.5 ulp of 1
      cuda_emu::red_global_add_f32(&sums[2], 1e-40f);                    // subnormal input
      cuda_emu::red_global_add_f32(&sums[3], -FLT_MIN);                  // subnormal result
    }
  });
  report("red.global.add.f32: 192 updates, round to nearest even, subnormals flushed",
         err.empty() && sums[0] == 192.f && sums[1] == 1.f + std::ldexp(1.f, -22) &&
             sums[2] == 0.f && !std::signbit(sums[2]) && sums[3] == 0.f,
         err);
  alignas(8) float pair[2] = {0.f, 0.f};
  err = run(1, 32, 0, [&] {
    cuda_emu::red_global_add_f32(reinterpret_cast<float*>(reinterpret_cast<char*>(pair) + 2), 1.f);
  });
  expect_error("planted: red.global.add.f32 on a misaligned address", err, "not 4-byte aligned");
  err = run(1, 32, 64, [&] {
    cuda_emu::red_global_add_f32(reinterpret_cast<float*>(cuda_emu::dynamic_smem()), 1.f);
  });
  expect_error("planted: red.global.add.f32 on shared memory", err, "shared-memory address");
}

// ---- control flow the emulator must refuse ---------------------------------------------------
void check_control_flow() {
  std::string err = run(1, 64, 0, [&] {
    if (threadIdx.x < 32) __syncthreads();
    else cuda_emu::barrier_sync(1, 64);
  });
  expect_error("planted: threads wait at different barriers (deadlock)", err, "deadlock");

  err = run(1, 32, 0, [&] {
    if (threadIdx.x < 16) (void)__shfl_xor_sync(0xffffffffu, 1.f, 1);
    else __syncwarp();
  });
  expect_error("planted: divergent warp-collective instructions", err, "divergent");

  // Low lanes first: they wait in the shuffle when the high ones leave (high first, the
  // exit is seen by the shuffle instead: a different message for the same bug).
  cuda_emu::set_schedule(cuda_emu::Schedule::kLowFirst);
  err = run(1, 32, 0, [&] {
    if (threadIdx.x >= 16) return;
    (void)__shfl_xor_sync(0xffffffffu, 1.f, 1);
  });
  expect_error("planted: lanes exit while the others wait in a shuffle", err,
               "exits while other lanes");
  cuda_emu::set_schedule(cuda_emu::Schedule::kSkewAlternating);

  err = run(1, 64, 0, [&] {
    if (threadIdx.x == 0) return;  // lane 0 of warp 0 leaves; the block barrier does not wait
    __syncthreads();
    (void)__shfl_xor_sync(0xffffffffu, 1.f, 1);
  });
  expect_error("planted: full-mask shuffle after a lane exited", err, "live lanes");

  err = run(1, 64, 0, [&] {
    if (threadIdx.x < 32) __syncthreads();
    else __syncthreads();
  });
  expect_error("planted: threads meet at two different __syncthreads", err,
               "divergent __syncthreads");

  float seen = 0;
  err = run(2, 32, 0, [&] {
    __shared__ float slot[1];
    if (blockIdx.x == 1 && threadIdx.x == 0) seen = slot[0];  // never written in this block
    if (threadIdx.x == 0) slot[0] = 1.f;
  });
  report("static __shared__ starts poisoned in every block", err.empty() && std::isnan(seen), err);
}

// ---- launch configuration, as the CUDA runtime reports it ------------------------------------
void check_launch_config() {
  (void)cudaGetLastError();
  run(1, 32, 64 * 1024, [] {});
  const bool refused = cudaGetLastError() == cudaErrorInvalidValue;
  cudaFuncSetAttribute(&kernel_tag, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  run(1, 32, 64 * 1024, [] {});
  const bool accepted = cudaGetLastError() == cudaSuccess;
  run(1, 1025, 0, [] {});
  const bool too_many = cudaGetLastError() == cudaErrorInvalidConfiguration;
  report("launch: > 48 KB dynamic smem needs the opt-in; > 1024 threads refused",
         refused && accepted && too_many);
}

// ---- approximate math: within the ISA's bounds, special values as tabulated -------------------
// Distance from the correctly rounded result, in its ulps (how the ISA states the bounds).
double ulp_distance(float got, double exact) {
  const float e = static_cast<float>(exact);
  return std::fabs(double(got) - e) / (std::nextafter(std::fabs(e), INFINITY) - std::fabs(e));
}

void check_math() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> wide(-120.f, 120.f), pos(1e-30f, 1e30f);
  double ex2 = 0, lg2 = 0, tanh_rel = 0, rcp = 0;
  for (int i = 0; i < 20000; ++i) {
    const float x = wide(rng), y = std::exp2(wide(rng) / 2);
    ex2 = std::max(ex2, ulp_distance(exp2f(x), std::exp2(double(x))));
    const double l = std::log2(double(y));
    const double lerr = std::fabs(log2f(y) - l);
    lg2 = std::max(lg2, (y > 0.5f && y < 2.f) ? lerr / std::ldexp(1.0, -22)
                                              : lerr / (std::fabs(l) * std::ldexp(1.0, -22)));
    const float z = wide(rng) / 20;
    tanh_rel = std::max(tanh_rel, std::fabs(tanhf(z) - std::tanh(double(z))) /
                                      (std::fabs(std::tanh(double(z))) * std::ldexp(1.0, -11)));
    rcp = std::max(rcp, ulp_distance(cuda_emu::rcp_approx_ftz(y), 1.0 / y));
  }
  report("ex2.approx within 2 ulp", ex2 <= 2.0, std::to_string(ex2));
  report("lg2.approx within 2^-22 (absolute in (0.5, 2), else relative)", lg2 <= 1.0,
         std::to_string(lg2));
  report("tanh.approx within 2^-11 relative", tanh_rel <= 1.0, std::to_string(tanh_rel));
  report("rcp.approx within 1 ulp", rcp <= 1.0, std::to_string(rcp));
  const float sub = 1e-40f;  // subnormal: flushed (.ftz) before and after
  report("ex2 / lg2 specials and flush-to-zero",
         exp2f(-INFINITY) == 0.f && exp2f(0.f) == 1.f && exp2f(sub) == 1.f &&
             exp2f(-140.f) == 0.f && std::isnan(exp2f(NAN)) && exp2f(INFINITY) == INFINITY &&
             log2f(0.f) == -INFINITY && log2f(sub) == -INFINITY && std::isnan(log2f(-1.f)) &&
             log2f(INFINITY) == INFINITY);
}

// ---- conversions: the CUDA headers' host code against round-to-nearest-even -------------------
void check_conversions() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  std::vector<float> xs = {0.f, -0.f, 1.f, 65504.f, 65519.99f, 65520.f, -65520.f, 1e-8f,
                           5.96e-8f, 2.98e-8f, 2.99e-8f, 6.1e-5f, INFINITY, -INFINITY,
                           FLT_MAX, -FLT_MIN, 3.4e38f};
  for (int i = 0; i < 200000; ++i) xs.push_back(__uint_as_float(bits(rng)));
  for (uint32_t m = 0; m < 4096; ++m) {  // exact ties for both formats
    xs.push_back(__uint_as_float((uint32_t(120 + m % 20) << 23) | (m << 8) | 0x8000u));
    xs.push_back(__uint_as_float((uint32_t(110 + m % 30) << 23) | (m << 11) | 0x1000u));
  }
  int bad_bf16 = 0, bad_f16 = 0;
  for (float x : xs) {
    const uint16_t b = bits_of(__float2bfloat16_rn(x)), h = bits_of(__float2half_rn(x));
    const uint16_t rb = cuda_emu::cvt_rn_bf16_f32(x), rh = cuda_emu::cvt_rn_f16_f32(x);
    if (std::isnan(x)) {
      bad_bf16 += (b & 0x7f80) != 0x7f80 || (b & 0x7f) == 0;
      bad_f16 += (h & 0x7c00) != 0x7c00 || (h & 0x3ff) == 0;
    } else {
      bad_bf16 += b != rb;
      bad_f16 += h != rh;
    }
  }
  report("cvt.rn.bf16.f32 (cuda_bf16.h host code) rounds to nearest even",
         bad_bf16 == 0, std::to_string(bad_bf16) + " differ");
  report("cvt.rn.f16.f32 (cuda_fp16.h host code) rounds to nearest even",
         bad_f16 == 0, std::to_string(bad_f16) + " differ");
  const __half2 h2 = __floats2half2_rn(1.f, 2.f);
  uint32_t packed;
  std::memcpy(&packed, &h2, 4);
  report("__floats2half2_rn(lo, hi): lo in bits 15:0 (the mma operand order)",
         (packed & 0xffff) == cuda_emu::cvt_rn_f16_f32(1.f) &&
             (packed >> 16) == cuda_emu::cvt_rn_f16_f32(2.f));
}

}  // namespace

int main() {
  for (bool bf16 : {true, false}) {
    for (bool trans : {false, true}) check_mma(bf16, trans);
  }
  check_cp_async();
  check_shuffles();
  check_red_add();
  check_control_flow();
  check_launch_config();
  check_math();
  check_conversions();
  check_sm90();
  std::printf("%d failed\n", failures);
  return failures;
}
