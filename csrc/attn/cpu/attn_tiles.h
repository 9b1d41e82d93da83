// What the CPU forward, backward and KV-cache kernels share: where a sequence lives in the
// params' tensors, loading tiles into the accumulator type, and turning raw q.k products
// into (log2-domain) scores with softcap, ALiBi and the mask of attn_mask.h.
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../attn_mask.h"
#include "../attn_params.h"
#include "cpu_kernel_utils.h"
#include "tile_math.h"

namespace mpt_ext::attn::cpu {

// Tile sizes: queries x keys per tile. 64 x 64 fp32 scores (16 KiB) and the K/V/Q tiles
// stay in L2 for head dims up to 256.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

// Element offset of row 0 of sequence b (batched: b * batch stride; varlen: cu[b] rows).
MPT_CPU_INLINE int64_t sequence_offset(const TensorStrides& s, const int32_t* cu, int64_t b) {
  return cu ? static_cast<int64_t>(cu[b]) * s.row : b * s.batch;
}

MPT_CPU_INLINE int64_t sequence_length(const int32_t* cu, int64_t b, int64_t fixed) {
  return cu ? static_cast<int64_t>(cu[b + 1]) - cu[b] : fixed;
}

// Index of (head 0, query 0) of sequence b in the lse (and the backward's row statistics).
MPT_CPU_INLINE int64_t lse_offset(const AttnFwdParams& p, int64_t b) {
  return p.shape.cu_seqlens_q ? static_cast<int64_t>(p.shape.cu_seqlens_q[b])
                              : b * p.lse_batch_stride;
}

// One past the largest lse index the kernels touch (sizes the backward's row statistics).
inline int64_t lse_extent(const AttnFwdParams& p) {
  int64_t extent = 0;
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    const int64_t sq = sequence_length(p.shape.cu_seqlens_q, b, p.shape.seqlen_q);
    if (sq > 0)
      extent = std::max(extent, lse_offset(p, b) + (p.shape.num_heads - 1) * p.lse_head_stride + sq);
  }
  return extent;
}

template <typename Acc>
MPT_CPU_INLINE Acc alibi_slope(const AttnMaskParams& m, int64_t b, int64_t h) {
  if (!m.alibi_slopes) return Acc(0);
  const int64_t idx = b * m.alibi_batch_stride + h;
  return m.alibi_slopes_fp64 ? static_cast<Acc>(reinterpret_cast<const double*>(m.alibi_slopes)[idx])
                             : static_cast<Acc>(m.alibi_slopes[idx]);
}

// Loads rows [0, n) of a (rows x d) slice with the given row stride into dst (rows x ld),
// zero-filling columns [d, ld) and rows [n, n_pad).
template <typename T, typename Acc>
MPT_CPU_INLINE void load_rows(const T* src, int64_t row_stride, int64_t n, int64_t n_pad, int64_t d,
                              Acc* dst, int64_t ld) {
  for (int64_t r = 0; r < n; ++r) {
    const T* s = src + r * row_stride;
    Acc* o = dst + r * ld;
    for (int64_t x = 0; x < d; ++x) o[x] = to_acc<Acc>(s[x]);
    for (int64_t x = d; x < ld; ++x) o[x] = Acc(0);
  }
  for (int64_t r = n; r < n_pad; ++r)
    for (int64_t x = 0; x < ld; ++x) dst[r * ld + x] = Acc(0);
}

// Zeroes columns [from, ld) of rows [0, d) of dst (a transposed tile's padding keys).
template <typename Acc>
MPT_CPU_INLINE void zero_columns(Acc* dst, int64_t d, int64_t ld, int64_t from) {
  for (int64_t x = 0; x < d; ++x)
    for (int64_t r = from; r < ld; ++r) dst[x * ld + r] = Acc(0);
}

// Loads rows [0, n) transposed: dst[x * ld + r] = src[r][x], and nothing else (a piece of a
// tile: the paged KV cache loads a key tile page by page).
template <typename T, typename Acc>
MPT_CPU_INLINE void load_rows_transposed_only(const T* src, int64_t row_stride, int64_t n,
                                              int64_t d, Acc* dst, int64_t ld) {
  // 8 x 8 blocks through a register-sized buffer: contiguous writes instead of a scatter.
  constexpr int64_t kB = 8;
  int64_t r = 0;
  for (; r + kB <= n; r += kB) {
    int64_t x = 0;
    for (; x + kB <= d; x += kB) {
      Acc blk[kB][kB];
      for (int64_t rr = 0; rr < kB; ++rr)
        for (int64_t xx = 0; xx < kB; ++xx) blk[xx][rr] = to_acc<Acc>(src[(r + rr) * row_stride + x + xx]);
      for (int64_t xx = 0; xx < kB; ++xx)
        for (int64_t rr = 0; rr < kB; ++rr) dst[(x + xx) * ld + r + rr] = blk[xx][rr];
    }
    for (; x < d; ++x)
      for (int64_t rr = 0; rr < kB; ++rr) dst[x * ld + r + rr] = to_acc<Acc>(src[(r + rr) * row_stride + x]);
  }
  for (; r < n; ++r) {
    const T* s = src + r * row_stride;
    for (int64_t x = 0; x < d; ++x) dst[x * ld + r] = to_acc<Acc>(s[x]);
  }
}

// Loads rows [0, n) transposed: dst[x * ld + r] = src[r][x]; columns [n, ld) zeroed.
// Rows x >= d of dst are left alone (the caller keeps them zero).
template <typename T, typename Acc>
MPT_CPU_INLINE void load_rows_transposed(const T* src, int64_t row_stride, int64_t n, int64_t d,
                                         Acc* dst, int64_t ld) {
  load_rows_transposed_only(src, row_stride, n, d, dst, ld);
  zero_columns(dst, d, ld, n);
}

template <typename T, typename Acc>
MPT_CPU_INLINE void store_row(const Acc* src, int64_t d, Acc factor, T* dst) {
  for (int64_t x = 0; x < d; ++x) dst[x] = from_acc<T>(src[x] * factor);
}

// 0, 1, ..., kBlockK - 1 in Acc: with it, ALiBi distances of a tile row vectorise.
template <typename Acc>
struct ColumnIota {
  Acc v[kBlockK];
  constexpr ColumnIota() : v{} {
    for (int64_t c = 0; c < kBlockK; ++c) v[c] = Acc(c);
  }
};
template <typename Acc>
inline constexpr ColumnIota<Acc> kColumnIota{};

// alibi_distance(i, j0 + c, sq, sk) == |offset - c| for the returned offset (the signed
// distance of key j0 from query i's diagonal), so a row's distances are one vector
// expression instead of a call per key.
MPT_CPU_INLINE int64_t alibi_row_offset(int64_t i, int64_t j0, int64_t sq, int64_t sk) {
  const int64_t offset = i + sk - sq - j0;
  assert(static_cast<float>(offset < 0 ? -offset : offset) == alibi_distance(i, j0, sq, sk));
  return offset;
}

// Turns raw q.k products into log2-domain scores:
//   s2 = log2(e) * (softcap > 0 ? softcap * tanh(scale * qk / softcap) : scale * qk
//                   - slope * |i + sk - sq - j|),
// and -inf for keys outside visible_keys(). With softcap, tanh values are kept for the
// backward's chain rule.
template <typename Acc>
struct ScoreMath {
  Acc raw_scale;    // multiplies q.k: scale / softcap, or scale * log2(e) without softcap
  Acc cap_log2;     // softcap * log2(e); 0: no softcap
  Acc slope_log2;   // slope * log2(e); 0: no ALiBi
  bool has_cap;
  bool has_alibi;

  ScoreMath(const AttnMaskParams& m, Acc slope) {
    has_cap = Acc(m.softcap) > Acc(0);  // in Acc: a cap that rounds to 0 is none
    has_alibi = m.alibi_slopes != nullptr;
    raw_scale = has_cap ? Acc(m.softmax_scale) / Acc(m.softcap) : Acc(m.softmax_scale) * kLog2e<Acc>;
    cap_log2 = has_cap ? Acc(m.softcap) * kLog2e<Acc> : Acc(0);
    slope_log2 = slope * kLog2e<Acc>;
  }

  // s[0, n_cols): raw products of query i with keys j0 + c (c < n_keys are real keys).
  // tanh_out (softcap only, may be null) receives tanh values for the visible columns.
  MPT_CPU_INLINE void row(Acc* __restrict s, Acc* __restrict tanh_out, int64_t i, int64_t j0,
                          int64_t n_keys, int64_t n_cols, KeyRange vis, int64_t sq,
                          int64_t sk) const {
    const int64_t c_lo = std::clamp<int64_t>(vis.lo - j0, 0, n_keys);
    const int64_t c_hi = std::clamp<int64_t>(vis.hi - j0, c_lo, n_keys);
    for (int64_t c = 0; c < c_lo; ++c) s[c] = kNegInf<Acc>;
    if (has_cap) {
      for (int64_t c = c_lo; c < c_hi; ++c) {
        const Acc t = std::tanh(s[c] * raw_scale);
        if (tanh_out) tanh_out[c] = t;
        s[c] = cap_log2 * t;
      }
    } else {
      for (int64_t c = c_lo; c < c_hi; ++c) s[c] *= raw_scale;
    }
    if (has_alibi) {
      const Acc offset = static_cast<Acc>(alibi_row_offset(i, j0, sq, sk));
      const Acc* iota = kColumnIota<Acc>.v;
      for (int64_t c = c_lo; c < c_hi; ++c) s[c] -= slope_log2 * std::abs(offset - iota[c]);
    }
    for (int64_t c = c_hi; c < n_cols; ++c) s[c] = kNegInf<Acc>;
  }
};

// The query rows [i0, i0 + n) of a block: each row's visible keys and their union.
struct BlockKeys {
  KeyRange rows[kBlockQ];
  int64_t lo = 0, hi = 0;  // union over rows that see anything; hi <= lo: none

  void compute(int64_t i0, int64_t n, int64_t sq, int64_t sk, const AttnMaskParams& m) {
    lo = sk;
    hi = 0;
    for (int64_t r = 0; r < n; ++r) {
      rows[r] = visible_keys(i0 + r, sq, sk, m.causal, m.window_left, m.window_right);
      if (rows[r].hi > rows[r].lo) {
        lo = std::min(lo, rows[r].lo);
        hi = std::max(hi, rows[r].hi);
      }
    }
  }
  // Does any row see a key in [j0, j1)?
  bool touches(int64_t j0, int64_t j1, int64_t n) const {
    for (int64_t r = 0; r < n; ++r)
      if (rows[r].hi > rows[r].lo && rows[r].lo < j1 && rows[r].hi > j0) return true;
    return false;
  }
};

}  // namespace mpt_ext::attn::cpu
