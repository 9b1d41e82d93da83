// Tile arithmetic for the CPU flash kernels: a register-blocked tile product and exp2.
// Plain loops over fixed-size arrays, written so that the compiler vectorises them (no
// intrinsics); all force-inlined into the per-ISA task functions.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu_kernel_utils.h"

namespace mpt_ext::cpu {

// Tiles are padded so every product has M % kTileRows == 0 and N % kTileCols == 0.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 16;

// C[M x N] (+)= A[M x K] * B[K x N], all row-major with leading dimensions lda/ldb/ldc.
// A 4 x 16 block of C stays in registers across the K loop.
template <typename Acc>
MPT_CPU_INLINE void tile_matmul(int64_t M, int64_t N, int64_t K, const Acc* __restrict A,
                                int64_t lda, const Acc* __restrict B, int64_t ldb,
                                Acc* __restrict C, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < M; i += kTileRows) {
    for (int64_t n = 0; n < N; n += kTileCols) {
      Acc c[kTileRows][kTileCols];
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t x = 0; x < kTileCols; ++x)
          c[r][x] = accumulate ? C[(i + r) * ldc + n + x] : Acc(0);
      const Acc* a = A + i * lda;
      for (int64_t k = 0; k < K; ++k) {
        const Acc* b = B + k * ldb + n;
        for (int64_t r = 0; r < kTileRows; ++r) {
          const Acc ar = a[r * lda + k];
          for (int64_t x = 0; x < kTileCols; ++x) c[r][x] += ar * b[x];
        }
      }
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t x = 0; x < kTileCols; ++x) C[(i + r) * ldc + n + x] = c[r][x];
    }
  }
}

// 2^x for x <= 0 (softmax arguments are shifted by the running max); 0 below 2^-126 and for
// -inf. Branch-free polynomial (relative error ~1 ulp) so that the row loops vectorise.
MPT_CPU_INLINE float exp2_nonpositive(float x) {
  const float xc = x < -126.f ? -126.f : x;
  const float n = std::floor(xc + 0.5f);
  const float f = (xc - n) * 0.693147180559945309f;  // |f| <= ln2 / 2
  // e^f, Taylor to degree 7: truncation < 6e-9 on |f| <= 0.347.
  float p = 1.f / 5040.f;
  p = p * f + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < -126.f ? 0.f : p * scale;
}
MPT_CPU_INLINE double exp2_nonpositive(double x) { return std::exp2(x); }

template <typename Acc>
constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
template <typename Acc>
constexpr Acc kLog2e = Acc(1.4426950408889634073599);
template <typename Acc>
constexpr Acc kLn2 = Acc(0.6931471805599453094172);

}  // namespace mpt_ext::cpu
