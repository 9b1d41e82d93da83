// Shared-memory tiles and the fragment loads the attention kernels share.
//
// A tile holds kRows rows of kCols 16-bit elements (kCols a multiple of 64), row-major, with
// the 16-byte units of each row XOR-swizzled by (row % 8) inside each 128-byte group. Eight
// consecutive rows reading the same logical 16-byte column then hit eight different bank
// groups, so ldmatrix (and ldmatrix.trans) are conflict-free without padding.
#pragma once

#include <cstdint>

#include "ptx.cuh"

namespace mpt_ext::attn::cuda {

// Element offset of (row, col) in a swizzled tile; col % 8 == 0 for every vector access.
template <int kCols>
__device__ __forceinline__ int swz(int row, int col) {
  static_assert(kCols % 64 == 0, "swizzled tiles need rows of a multiple of 64 elements");
  const int unit = col >> 3;
  return row * kCols + (((unit ^ row) & 7) | (unit & ~7)) * 8 + (col & 7);
}

// Copies rows [0, kRows) x cols [0, kCols) of a global matrix (rows row_stride elements
// apart) into a swizzled tile. Rows >= rows_valid and columns >= d are zero-filled, so
// padding contributes exact zeros to every dot product. vec_ok: the global rows are 16-byte
// aligned (cp.async path); otherwise a slow element-wise path that needs no alignment.
// `safe` is any valid global address (never read when nothing is to be copied).
template <int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_tile(uint16_t* tile, const uint16_t* g, int64_t row_stride,
                                          int rows_valid, int d, bool vec_ok,
                                          const uint16_t* safe, int tid) {
  constexpr int kUnitsPerRow = kCols / 8;
  constexpr int kUnits = kRows * kUnitsPerRow;
  static_assert(kUnits % kThreads == 0, "tile units must split evenly over the threads");
#pragma unroll
  for (int it = 0; it < kUnits / kThreads; ++it) {
    const int u = tid + it * kThreads;
    const int row = u / kUnitsPerRow;
    const int col = (u % kUnitsPerRow) * 8;
    uint16_t* dst = tile + swz<kCols>(row, col);
    const bool row_ok = row < rows_valid;
    if (vec_ok) {
      int elems = d - col;
      elems = elems < 0 ? 0 : (elems > 8 ? 8 : elems);
      const int bytes = row_ok ? elems * 2 : 0;
      const uint16_t* src = bytes > 0 ? g + row * row_stride + col : safe;
      cp_async_16(dst, src, bytes);
    } else {
      alignas(16) uint16_t vals[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        vals[e] = (row_ok && col + e < d) ? g[row * row_stride + col + e] : uint16_t(0);
      }
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(vals);
    }
  }
}

// A operand (16x16, row-major) at (r0, c0) of a tile laid out [m][k].
template <int kCols>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* tile, int r0, int c0,
                                       int lane) {
  ldmatrix_x4(a, tile + swz<kCols>(r0 + (lane & 15), c0 + (lane >> 4) * 8));
}

// B operands for two adjacent n8 tiles (n0..n0+15) and k16 at k0, from a tile laid out
// [n][k] (e.g. K for Q K^T). b[0], b[1]: tile n0; b[2], b[3]: tile n0 + 8.
template <int kCols>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const uint16_t* tile, int n0, int k0,
                                          int lane) {
  ldmatrix_x4(b, tile + swz<kCols>(n0 + (lane & 7) + (lane >> 4) * 8, k0 + ((lane >> 3) & 1) * 8));
}

// Same from a tile laid out [k][n] (e.g. V for P V), transposed by ldmatrix.
template <int kCols>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const uint16_t* tile, int k0, int n0,
                                          int lane) {
  ldmatrix_x4_trans(b, tile + swz<kCols>(k0 + (lane & 15), n0 + (lane >> 4) * 8));
}

// A operand (16x16, row-major) at rows m0.. and k0.. from a tile laid out [k][m] (e.g. dS^T
// for dS K), transposed by ldmatrix: matrix j covers m0 + 8 (j & 1) and k0 + 8 (j >> 1).
template <int kCols>
__device__ __forceinline__ void load_a_kn(uint32_t (&a)[4], const uint16_t* tile, int k0, int m0,
                                          int lane) {
  ldmatrix_x4_trans(a, tile + swz<kCols>(k0 + (lane & 7) + (lane >> 4) * 8,
                                         m0 + ((lane >> 3) & 1) * 8));
}

// The accumulator fragments of two n8 tiles (16 x 16 fp32, C layout) as one A operand:
// the m16n8 C layout of tiles 2j, 2j+1 is exactly the m16k16 A layout.
// Stores an mma fragment's two adjacent fp32 values (columns col, col + 1 of a row) as T:
// one 32-bit store when the pair is aligned and inside the row (pair_ok: the row starts are
// 4-byte aligned), else element by element, columns >= d skipped.
template <typename T>
__device__ __forceinline__ void store_pair(uint16_t* row, int col, int d, bool pair_ok, float v0,
                                           float v1) {
  if (pair_ok && col + 1 < d) {
    *reinterpret_cast<uint32_t*>(row + col) = ElemOps<T>::pack(v0, v1);
  } else {
    if (col < d) row[col] = ElemOps<T>::from_float(v0);
    if (col + 1 < d) row[col + 1] = ElemOps<T>::from_float(v1);
  }
}

template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4],
                                       const float (&c1)[4]) {
  a[0] = ElemOps<T>::pack(c0[0], c0[1]);
  a[1] = ElemOps<T>::pack(c0[2], c0[3]);
  a[2] = ElemOps<T>::pack(c1[0], c1[1]);
  a[3] = ElemOps<T>::pack(c1[2], c1[3]);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

}  // namespace mpt_ext::attn::cuda
