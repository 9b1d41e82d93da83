// Where a (batch, head) lives in memory (batched or varlen) and how a raw q.k dot product
// becomes the score the kernels exponentiate (ScoreKind, ScoreUnits). Masking itself comes from
// ../attn_mask.h so that the CPU and CUDA paths can never disagree.
#pragma once

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../../common/cuda_math.cuh"
#include "../../common/device_input_errors.h"
#include "../attn_mask.h"
#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// One sequence of the batch: its lengths and first rows (varlen) in the packed tensors.
struct SeqInfo {
  int sq = 0;
  int sk = 0;
  int64_t q_row0 = 0;  // varlen: cu_seqlens_q[b]; batched: 0
  int64_t k_row0 = 0;
  bool varlen = false;
};

// Varlen rows [lo, hi) of sequence b are usable when they lie inside the tensor's `total`
// rows, run forwards, fit `max_len` (the grid covers no more), and sequence 0 starts at row 0.
__device__ __forceinline__ bool varlen_rows_ok(int64_t lo, int64_t hi, int b, int64_t total,
                                               int64_t max_len) {
  return lo >= 0 && lo <= hi && hi <= total && hi - lo <= max_len && (b != 0 || lo == 0);
}

// Out of line: inlined, this rare path cost the 128x64 forward tile 108 bytes more of spills.
__device__ inline MPT_NOINLINE void note_bad_varlen(int32_t* input_errors, bool q_ok, int b) {
  if (threadIdx.x == 0) {
    note_bad_sequence(input_errors, q_ok ? SeqlensArg::kCuSeqlensK : SeqlensArg::kCuSeqlensQ, b);
  }
}

// The host never reads cu_seqlens (device_input_errors.h): a sequence whose rows are not
// usable runs as empty (0 queries, 0 keys: nothing is read or written for it), and the
// block's thread 0 notes it for the next host check.
__device__ __forceinline__ SeqInfo seq_info(const AttnShape& s, int b) {
  SeqInfo r;
  if (s.cu_seqlens_q != nullptr) {
    r.varlen = true;
    const int64_t q0 = s.cu_seqlens_q[b], q1 = s.cu_seqlens_q[b + 1];
    const int64_t k0 = s.cu_seqlens_k[b], k1 = s.cu_seqlens_k[b + 1];
    const bool q_ok = varlen_rows_ok(q0, q1, b, s.total_q, s.seqlen_q);
    const bool k_ok = varlen_rows_ok(k0, k1, b, s.total_k, s.seqlen_k);
    if (q_ok && k_ok) {
      r.q_row0 = q0;
      r.k_row0 = k0;
      r.sq = static_cast<int>(q1 - q0);
      r.sk = static_cast<int>(k1 - k0);
    } else {
      note_bad_varlen(s.input_errors, q_ok, b);
    }
  } else {
    r.sq = static_cast<int>(s.seqlen_q);
    r.sk = static_cast<int>(s.seqlen_k);
  }
  return r;
}

// Element offset of row 0 of sequence b (head 0) in a tensor with these strides.
__device__ __forceinline__ int64_t seq_offset(const TensorStrides& st, int b, int64_t row0,
                                              bool varlen) {
  return varlen ? row0 * st.row : static_cast<int64_t>(b) * st.batch;
}

// Row of query i of sequence b in the backward's [H][rows] workspaces (attn_bwd_workspace.h):
// batched b * sq + i, varlen cu_seqlens_q[b] + i.
__device__ __forceinline__ int64_t ws_row(const SeqInfo& si, int b, int i) {
  return si.varlen ? si.q_row0 + i : static_cast<int64_t>(b) * si.sq + i;
}

// Element offset of (sequence b, head h, row 0) in the fp32 lse (batched (B, H, Sq);
// varlen (H, total_q)).
__device__ __forceinline__ int64_t lse_offset(const AttnFwdParams& p, const SeqInfo& si,
                                              int b, int h) {
  return si.varlen ? h * p.lse_head_stride + si.q_row0
                   : static_cast<int64_t>(b) * p.lse_batch_stride + h * p.lse_head_stride;
}

// The score: log2(e) * (softcap(scale * q.k) - slope * |i + sk - sq - j|). Which of its
// features a kernel instantiation carries is picked on the host (score_kind), so that the
// common cases pay nothing for the features they do not use:
//   kPlain   : softmax_scale * q.k
//   kAlibi   : softmax_scale * q.k - slope * |distance|
//   kGeneral : softcap (slopes or not), or a scale the other two cannot fold into the softmax
//              (kMinFoldedScale): the whole formula.
enum class ScoreKind { kPlain, kAlibi, kGeneral };

// kPlain / kAlibi divide the slopes by the scale; below this a slope could overflow.
constexpr float kMinFoldedScale = 0x1p-32f;
// A one-sided tile splits ALiBi into a column part (up to slope * tile size) and a row part
// (slope * the row's offset from the tile) that cancel in the softmax's FMA. Past this slope
// (in log2 units per key) the column part alone could round by more than 2^-6 and such
// tiles take the full form; every key but the diagonal's has probability < 2^-4096 there,
// so no real model is affected. The row part's size is the forward's fma_exp_ok's concern.
constexpr float kMaxSplitSlopeLog2 = 0x1p12f;
constexpr float kMaxFmaExpLog2 = 0x1p20f;  // ScoreUnits::fma_exp_ok

inline ScoreKind score_kind(const AttnMaskParams& m) {
  if (static_cast<float>(m.softcap) > 0.f || !(m.softmax_scale >= kMinFoldedScale)) {
    return ScoreKind::kGeneral;
  }
  return m.alibi_slopes != nullptr ? ScoreKind::kAlibi : ScoreKind::kPlain;
}

// Calls f(std::integral_constant<ScoreKind, kind>{}) for the params' kind: one instantiation each.
template <typename F>
void with_score_kind(const AttnMaskParams& m, F&& f) {
  switch (score_kind(m)) {
    case ScoreKind::kPlain: f(std::integral_constant<ScoreKind, ScoreKind::kPlain>{}); break;
    case ScoreKind::kAlibi: f(std::integral_constant<ScoreKind, ScoreKind::kAlibi>{}); break;
    case ScoreKind::kGeneral: f(std::integral_constant<ScoreKind, ScoreKind::kGeneral>{}); break;
  }
}

// Scores in units u whose log2-domain score is exp_scale * (u + row_shift). kPlain / kAlibi
// (FlashAttention-2's form): u is the raw q.k plus the ALiBi term divided by the scale, so the
// scale rides in the softmax's exp2 FMA; on a tile whose keys all lie on one side of every
// row's diagonal (tile_slope) the ALiBi term splits into a column part, one FMA per score, and
// a row part, row_shift, added once per row and tile. kGeneral: u is the natural-log score
// and every tile takes the full form.
template <ScoreKind kKind>
struct ScoreUnits {
  static constexpr bool kFolded = kKind != ScoreKind::kGeneral;
  static constexpr bool kHasSlopes = kKind != ScoreKind::kPlain;
  float exp_scale = 0.f;  // log2 score = exp_scale * u
  float slope = 0.f;      // in units of u
  float acc_scale = 0.f;  // kGeneral: u = acc_scale * q.k, or cap * tanh(cap_in * q.k)
  float cap_in = 0.f;
  float cap = 0.f;
  bool split_ok = true;  // one-sided tiles may split ALiBi (kMaxSplitSlopeLog2)

  __device__ __forceinline__ static ScoreUnits make(const AttnMaskParams& m, int b, int h) {
    ScoreUnits u;
    const float scale = static_cast<float>(m.softmax_scale);
    const float softcap = static_cast<float>(m.softcap);
    const float slope = kHasSlopes && m.alibi_slopes != nullptr
                            ? m.alibi_slopes[static_cast<int64_t>(b) * m.alibi_batch_stride + h]
                            : 0.f;
    if (kFolded) {
      u.exp_scale = scale * kLog2e;
      // A finite slope whose quotient overflows (slope > FLT_MAX * scale) keeps FLT_MAX, so
      // that distance 0 gives 0, not inf * 0 = NaN; an inf or NaN slope stays what it is (the
      // reference's NaN).
      const float folded = slope / scale;
      const bool overflowed = fabsf(folded) > FLT_MAX && fabsf(slope) <= FLT_MAX;
      u.slope = overflowed ? copysignf(FLT_MAX, folded) : folded;
      u.split_ok = fabsf(u.slope * u.exp_scale) <= kMaxSplitSlopeLog2;  // false for NaN
    } else {
      u.exp_scale = kLog2e;
      u.slope = slope;
      u.acc_scale = scale;
      u.cap_in = softcap > 0.f ? scale / softcap : 0.f;
      u.cap = softcap;
    }
    return u;
  }

  // u of a score at |distance| dist (alibi_dist) on any tile; *tanh_out receives the softcap's
  // tanh (for the backward's chain rule) when softcap is on.
  __device__ __forceinline__ float full(float acc, float dist, float* tanh_out) const {
    float v = acc;
    if (!kFolded) {
      if (cap > 0.f) {
        const float t = softcap_tanh(acc * cap_in);
        *tanh_out = t;
        v = cap * t;
      } else {
        v = acc * acc_scale;
      }
    }
    return kHasSlopes ? fmaf(-slope, dist, v) : v;
  }

  __device__ __forceinline__ bool softcap() const { return !kFolded && cap > 0.f; }

  // u of the score `col` keys into a one-sided tile (kFolded only): the column part of ALiBi.
  __device__ __forceinline__ float column(float acc, float tile_slope, int col) const {
    return kHasSlopes ? fmaf(tile_slope, static_cast<float>(col), acc) : acc;
  }

  // exp2(fmaf(u, exp_scale, (row_shift - ref) * exp_scale)) rounds the bias on its own, by
  // up to 2^-4 while ref and row_shift stay within 2^20 / exp_scale (log2 scores below 2^20,
  // which only extreme slopes or logits exceed): beyond that the bias's rounding could
  // overflow the exp2 of the row's largest score, and the row subtracts before scaling.
  __device__ __forceinline__ bool fma_exp_ok(float ref, float row_shift) const {
    return fabsf(ref) * exp_scale <= kMaxFmaExpLog2 &&  // false for NaN
           fabsf(row_shift) * exp_scale <= kMaxFmaExpLog2;
  }

  // The ALiBi slope of a tile of n keys from key n0 for rows whose diagonals lie in
  // [first_diag, last_diag] (key positions; row i's is i + sk - sq): +slope when every key is
  // at or before every diagonal (distance = diag - key >= 0), -slope when at or after, and
  // *one_sided false when the tile straddles a diagonal (then |distance| is needed per score).
  // u = column(acc, tile_slope, col) + row_shift(tile_slope, row_offset) on such a tile.
  __device__ __forceinline__ float tile_slope(int first_diag, int last_diag, int n0, int n,
                                              bool* one_sided) const {
    const bool before = n0 + n - 1 <= first_diag, after = n0 >= last_diag;
    *one_sided = !kHasSlopes || (split_ok && (before || after));
    return before ? slope : -slope;
  }
  // row_offset: the row's diagonal minus the tile's column 0 of this thread (alibi_dist).
  __device__ __forceinline__ float row_shift(float tile_slope, int row_offset) const {
    return kHasSlopes ? -tile_slope * static_cast<float>(row_offset) : 0.f;
  }
};

// A key's distance to a query row's diagonal, per tile: the kernels convert one integer per
// (row, tile), row_offset = i + sk - sq - (the column's first key), to float; the element
// `col` keys further on is then at signed distance row_offset - col (exact integers below
// 2^24, as a direct int-to-float conversion would be), so ALiBi costs a subtraction and an
// FMA per score instead of integer work and a conversion.
__device__ __forceinline__ float alibi_dist(int row_offset, int col) {
  return fabsf(static_cast<float>(row_offset) - static_cast<float>(col));
}

// visible_keys (attn_mask.h) as a test on one element, with no per-row state: key j is hidden
// from query i when j - (i + sk - sq) lies outside [-window_left, right] (the bounds that are
// set; right = 0 when causal) or j >= sk. Keys j < 0 do not occur.
struct DiagMask {
  int max_behind;  // keys up to this far before the query's diagonal: window_left, or INT_MAX
  int max_ahead;   // keys up to this far after it: 0 (causal), window_right, or INT_MAX
  int sk;

  __device__ __forceinline__ static DiagMask make(const AttnMaskParams& m, const SeqInfo& si) {
    return {bound(m.window_left), bound(m.causal ? 0 : m.window_right), si.sk};
  }
  __device__ __forceinline__ static int bound(int64_t window) {  // -1: unbounded
    return window < 0 || window > INT_MAX ? INT_MAX : static_cast<int>(window);
  }
  // signed_dist = i + sk - sq - j (> 0: the key is behind the query's diagonal).
  __device__ __forceinline__ bool hidden(int signed_dist, int j) const {
    return signed_dist > max_behind || -signed_dist > max_ahead || j >= sk;
  }
};

// Visible keys of the rows [m_first, m_last] of a tile (lo and hi both grow with the row).
struct TileKeys {
  KeyRange first;  // of row m_first: the smallest hi
  KeyRange last;   // of row m_last: the largest lo
  // A key tile [n0, n0 + n) needs no per-element mask when every row sees all of it.
  __device__ __forceinline__ bool fully_visible(int n0, int n) const {
    return n0 >= last.lo && n0 + n <= first.hi;
  }
};

__device__ __forceinline__ TileKeys tile_keys(int m_first, int m_last, const SeqInfo& si,
                                              const AttnMaskParams& m) {
  TileKeys t;
  t.first = visible_keys(m_first, si.sq, si.sk, m.causal, m.window_left, m.window_right);
  t.last = visible_keys(m_last, si.sq, si.sk, m.causal, m.window_left, m.window_right);
  return t;
}

}  // namespace mpt_ext::attn::cuda
