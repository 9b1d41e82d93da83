// Tile arithmetic for the CPU flash kernels: a register-blocked tile product and exp2.
// Plain loops over fixed-size arrays, written so that the compiler vectorises them (no
// intrinsics); all force-inlined into the per-ISA task functions.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu_kernel_utils.h"

namespace mpt_ext::attn::cpu {

// Tiles are padded so every product has M % kTileRows == 0 and N % kTileCols == 0.
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileCols = 16;

// 32-byte vectors (GCC/Clang vector extensions, no intrinsics): one AVX register, or two
// SSE registers in the baseline build.
template <typename Acc>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef float unaligned __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef double unaligned __attribute__((vector_size(32), aligned(8), may_alias));
};

// Unaligned vector load / store, through references (a vector by value would change the
// calling convention between the baseline and AVX2 builds). memcpy into a vector went
// through the stack and stalled on store forwarding (3x slower).
template <typename Acc>
MPT_CPU_INLINE void load_vec(typename Vec32<Acc>::type& v, const Acc* p) {
  v = *reinterpret_cast<const typename Vec32<Acc>::unaligned*>(p);
}
template <typename Acc>
MPT_CPU_INLINE void store_vec(Acc* p, const typename Vec32<Acc>::type& v) {
  *reinterpret_cast<typename Vec32<Acc>::unaligned*>(p) = v;
}

// C[M x N] (+)= A[M x K] * B[K x N], all row-major with leading dimensions lda/ldb/ldc.
// A 4 x 16 block of C stays in registers across the K loop (explicit vectors: left to
// itself GCC vectorised along K with shuffles, 10x slower).
template <bool Accumulate, typename Acc>
MPT_CPU_INLINE void tile_matmul_body(int64_t M, int64_t N, int64_t K, const Acc* __restrict A,
                                     int64_t lda, const Acc* __restrict B, int64_t ldb,
                                     Acc* __restrict C, int64_t ldc) {
  using V = typename Vec32<Acc>::type;
  constexpr int64_t kW = sizeof(V) / sizeof(Acc);
  constexpr int64_t kVecs = kTileCols / kW;
  for (int64_t i = 0; i < M; i += kTileRows) {
    for (int64_t n = 0; n < N; n += kTileCols) {
      V c[kTileRows][kVecs];
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t v = 0; v < kVecs; ++v) {
          if (Accumulate)
            load_vec<Acc>(c[r][v], C + (i + r) * ldc + n + v * kW);
          else
            c[r][v] = V{};
        }
      const Acc* a = A + i * lda;
      for (int64_t k = 0; k < K; ++k) {
        V b[kVecs];
        for (int64_t v = 0; v < kVecs; ++v) load_vec<Acc>(b[v], B + k * ldb + n + v * kW);
        for (int64_t r = 0; r < kTileRows; ++r) {
          const Acc ar = a[r * lda + k];
          for (int64_t v = 0; v < kVecs; ++v) c[r][v] += ar * b[v];
        }
      }
      for (int64_t r = 0; r < kTileRows; ++r)
        for (int64_t v = 0; v < kVecs; ++v)
          store_vec<Acc>(C + (i + r) * ldc + n + v * kW, c[r][v]);
    }
  }
}

// Out of line: one copy per instruction set; callers pick one with tile_matmul_for().
template <typename Acc>
__attribute__((noinline)) void tile_matmul_baseline(int64_t M, int64_t N, int64_t K, const Acc* A,
                                                    int64_t lda, const Acc* B, int64_t ldb, Acc* C,
                                                    int64_t ldc, bool accumulate) {
  if (accumulate)
    tile_matmul_body<true>(M, N, K, A, lda, B, ldb, C, ldc);
  else
    tile_matmul_body<false>(M, N, K, A, lda, B, ldb, C, ldc);
}

template <typename Acc>
MPT_CPU_TARGET_AVX2 __attribute__((noinline)) void tile_matmul_avx2(
    int64_t M, int64_t N, int64_t K, const Acc* A, int64_t lda, const Acc* B, int64_t ldb, Acc* C,
    int64_t ldc, bool accumulate) {
  if (accumulate)
    tile_matmul_body<true>(M, N, K, A, lda, B, ldb, C, ldc);
  else
    tile_matmul_body<false>(M, N, K, A, lda, B, ldb, C, ldc);
}

template <typename Acc>
using TileMatmul = void (*)(int64_t, int64_t, int64_t, const Acc*, int64_t, const Acc*, int64_t,
                            Acc*, int64_t, bool);

template <typename Acc>
TileMatmul<Acc> tile_matmul_for(bool avx2) {
  return avx2 ? &tile_matmul_avx2<Acc> : &tile_matmul_baseline<Acc>;
}

// Max and sum of s[0, n), n a multiple of the vector width: explicit vectors, because
// without -ffast-math the compiler may not reorder a float reduction itself.
template <typename Acc>
MPT_CPU_INLINE Acc row_max(const Acc* s, int64_t n) {
  using V = typename Vec32<Acc>::type;
  constexpr int64_t kW = sizeof(V) / sizeof(Acc);
  V m, x;
  load_vec<Acc>(m, s);
  for (int64_t i = kW; i < n; i += kW) {
    load_vec<Acc>(x, s + i);
    m = ((m > x) | (m != m)) ? m : x;  // NaN wins: a NaN score must not read as "no key"
  }
  Acc r = m[0];
  for (int64_t l = 1; l < kW; ++l) r = (r > m[l] || r != r) ? r : m[l];
  return r;
}

template <typename Acc>
MPT_CPU_INLINE Acc row_sum(const Acc* s, int64_t n) {
  using V = typename Vec32<Acc>::type;
  constexpr int64_t kW = sizeof(V) / sizeof(Acc);
  V t{};
  for (int64_t i = 0; i < n; i += kW) {
    V x;
    load_vec<Acc>(x, s + i);
    t += x;
  }
  Acc r = 0;
  for (int64_t l = 0; l < kW; ++l) r += t[l];
  return r;
}

// s[x] = 2^(s[x] - shift) for x < n (n a multiple of 8), arguments <= 0 (softmax weights
// shifted by the running max); 0 below 2^-126 and for -inf. A polynomial on explicit
// vectors (relative error ~1 ulp): GCC will not if-convert the clamps of a scalar version.
MPT_CPU_INLINE void exp2_shifted_row(float* s, float shift, int64_t n) {
  using V = Vec32<float>::type;
  typedef int32_t VI __attribute__((vector_size(32)));
  constexpr float kShifter = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const V lo = V{} - 126.f;
  for (int64_t i = 0; i < n; i += 8) {
    V x;
    load_vec<float>(x, s + i);
    x -= shift;
    const V xc = x < lo ? lo : x;
    const V t = xc + kShifter;
    const V rounded = t - kShifter;
    const VI e = ((VI)t - std::bit_cast<int32_t>(kShifter) + 127) << 23;
    const V f = (xc - rounded) * 0.693147180559945309f;  // |f| <= ln2 / 2
    // e^f, Taylor to degree 7: truncation < 6e-9 on |f| <= 0.347.
    V p = f * (1.f / 5040.f) + 1.f / 720.f;
    p = p * f + 1.f / 120.f;
    p = p * f + 1.f / 24.f;
    p = p * f + 1.f / 6.f;
    p = p * f + 0.5f;
    p = p * f + 1.f;
    p = p * f + 1.f;
    const V r = p * (V)e;  // vector casts reinterpret the bits
    store_vec<float>(s + i, x < lo ? V{} : r);
  }
}
MPT_CPU_INLINE void exp2_shifted_row(double* s, double shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = std::exp2(s[i] - shift);
}

// Scalar 2^x for one value (x <= 0 or -inf), same accuracy as the row version.
template <typename Acc>
MPT_CPU_INLINE Acc exp2_nonpositive(Acc x) {
  return x == -std::numeric_limits<Acc>::infinity() ? Acc(0) : std::exp2(x);
}

template <typename Acc>
constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
template <typename Acc>
constexpr Acc kLog2e = Acc(1.4426950408889634073599);
template <typename Acc>
constexpr Acc kLn2 = Acc(0.6931471805599453094172);

}  // namespace mpt_ext::attn::cpu
