// CPU flash attention backward, deterministic without atomics. P is recomputed from q, k
// and the forward's lse, tile by tile, in two passes that each own their outputs:
//   pass 1, one task per (batch, head, query block): D_i = rowsum(dout_i * out_i), dq, and
//           the block's partial d(slope) into its own slot (see RowDslope);
//   pass 2, one task per (batch, kv head, key block): dk and dv, looping over the query
//           heads of the GQA group and the query blocks that see the key block.
// The d(slope) partials are then summed in a fixed order. Extra memory: tiles per thread
// plus D, the refined lse and the partials, O(batch * heads * seqlen_q).
//
// Precision. The forward's lse is fp32; with ALiBi biases near -100 its rounding scales every
// recomputed P of a row by the same factor c = 1 +- 1e-5, far above fp64's precision. Pass 1
// measures c as the row's sum of P, divides it out of dq and d(slope), and hands pass 2 the
// lse refined by log2(c) (a float lse2 near -100 cannot hold that correction: the refinement
// serves float64). Pass 2 rounds P to the input dtype before dv += P^T dout, as
// FlashAttention does, so that P = 1 (one visible key) stays exactly 1 in fp16 / bf16.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../attn.h"
#include "attn_tiles.h"

namespace mpt_ext {
namespace {

using namespace attn::cpu;

template <typename Acc>
struct BwdContext {
  const AttnBwdParams& p;
  int64_t d, dp;          // head dim, padded to kTileCols
  int64_t q_blocks;       // per (batch, head)
  int64_t k_blocks;       // per (batch, kv head)
  int64_t heads_per_kv;   // GQA group size
  Acc* delta;             // D_i, indexed like the lse
  Acc* lse2;              // lse * log2(e), refined by pass 1 for pass 2, indexed like the lse
  double* dslope_partial; // one per pass-1 task; null: d(slope) not wanted
};

// One query row's d(slope) sums over its key tiles. With dS_ij = P_ij (dP_ij - D_i) and
// R_i = sum_j P_ij |distance_ij|,
//   sum_j dS_ij |distance_ij| - (sum_j dS_ij) R_i = sum_j P_ij (dP_ij - D'_i) |distance_ij|,
// D'_i = sum_j P_ij dP_ij: the gradient with D_i, which reads the output rounded to the input
// dtype, replaced by the value the recomputed P and dP imply. Otherwise D_i's rounding times
// distances up to seqlen_k lands in every row's term (the CUDA dQ kernel does the same).
// Each sum scales by c when every P of the row does (see the top of the file): divided out.
struct RowDslope {
  double ds_dist = 0, ds = 0, p_dist = 0;
  double sum(double c) const { return ds_dist / c - (ds / c) * (p_dist / c); }
};

template <typename Acc>
struct BwdScratch {
  TileMatmul<Acc> matmul = tile_matmul_for<Acc>(cpu_has_avx2_fma());
  std::vector<Acc> q, dout, kt, k, vt, s, dpv, th, pt, dst, acc0, acc1, lse2, delta, terms;
  std::vector<RowDslope> row_dslope;
  std::vector<double> p_sum;  // per row, over the key tiles of pass 1: the c above
  explicit BwdScratch(int64_t dp)
      : q(kBlockQ * dp), dout(kBlockQ * dp), kt(dp * kBlockK, Acc(0)), k(kBlockK * dp),
        vt(dp * kBlockK, Acc(0)), s(kBlockQ * kBlockK), dpv(kBlockQ * kBlockK),
        th(kBlockQ * kBlockK, Acc(0)), pt(kBlockK * kBlockQ), dst(kBlockK * kBlockQ),
        acc0(std::max(kBlockQ, kBlockK) * dp), acc1(kBlockK * dp), lse2(kBlockQ), delta(kBlockQ),
        terms(kBlockK), row_dslope(kBlockQ),
        p_sum(kBlockQ) {}
};

// Where one (batch, head) lives in the params' tensors.
struct HeadView {
  int64_t b, h, hk, sq, sk;
  int64_t q_off, k_off, v_off, out_off, dout_off, dq_off, dk_off, dv_off, lse_off;
};

MPT_CPU_INLINE HeadView head_view(const AttnBwdParams& p, int64_t b, int64_t h, int64_t hk) {
  const AttnFwdParams& f = p.fwd;
  const AttnShape& sh = f.shape;
  const int32_t* cq = sh.cu_seqlens_q;
  const int32_t* ck = sh.cu_seqlens_k;
  HeadView v;
  v.b = b;
  v.h = h;
  v.hk = hk;
  v.sq = sequence_length(cq, b, sh.seqlen_q);
  v.sk = sequence_length(ck, b, sh.seqlen_k);
  v.q_off = sequence_offset(f.q_strides, cq, b) + h * f.q_strides.head;
  v.out_off = sequence_offset(f.out_strides, cq, b) + h * f.out_strides.head;
  v.dout_off = sequence_offset(p.dout_strides, cq, b) + h * p.dout_strides.head;
  v.dq_off = sequence_offset(p.dq_strides, cq, b) + h * p.dq_strides.head;
  v.k_off = sequence_offset(f.k_strides, ck, b) + hk * f.k_strides.head;
  v.v_off = sequence_offset(f.v_strides, ck, b) + hk * f.v_strides.head;
  v.dk_off = sequence_offset(p.dk_strides, ck, b) + hk * p.dk_strides.head;
  v.dv_off = sequence_offset(p.dv_strides, ck, b) + hk * p.dv_strides.head;
  v.lse_off = lse_offset(f, b) + h * f.lse_head_stride;
  return v;
}

// For query rows [i0, i0 + nr) against key tile [j0, j0 + nc) whose K^T and V^T are in
// w.kt / w.vt and whose q, dout, lse2, delta rows are loaded: leaves in w.s the gradient
// with respect to the raw q.k products (dS * dscore/dqk) and, if keep_p, P rounded to T in
// w.dpv. Adds each row's sum of P to w.p_sum and, with want_dslope, the tile's terms to
// w.row_dslope (in double: a row sums up to seqlen_k terms).
template <typename T, typename Acc>
MPT_CPU_INLINE void tile_score_grads(const BwdContext<Acc>& c, BwdScratch<Acc>& w,
                                    const ScoreMath<Acc>& math, const BlockKeys& keys,
                                    int64_t i0, int64_t nr, int64_t mr, int64_t j0, int64_t nc,
                                    int64_t sq, int64_t sk, bool keep_p, bool want_dslope) {
  const Acc scale = Acc(c.p.fwd.mask.softmax_scale);
  w.matmul(mr, kBlockK, c.dp, w.q.data(), c.dp, w.kt.data(), kBlockK, w.s.data(), kBlockK, false);
  w.matmul(mr, kBlockK, c.dp, w.dout.data(), c.dp, w.vt.data(), kBlockK, w.dpv.data(), kBlockK,
              false);
  for (int64_t r = 0; r < mr; ++r) {
    Acc* __restrict s = w.s.data() + r * kBlockK;
    Acc* __restrict dpv = w.dpv.data() + r * kBlockK;
    if (r >= nr || w.lse2[r] == kNegInf<Acc>) {  // padding, or a row that sees no key
      std::fill(s, s + kBlockK, Acc(0));
      if (keep_p) std::fill(dpv, dpv + kBlockK, Acc(0));
      continue;
    }
    Acc* __restrict th = w.th.data() + r * kBlockK;
    math.row(s, th, i0 + r, j0, nc, kBlockK, keys.rows[r], sq, sk);
    const Acc lse2 = w.lse2[r];
    const Acc delta = w.delta[r];
    // s -> dS = P * (dP - D) (d loss / d final score); with keep_p, dpv -> P.
    exp2_shifted_row(s, lse2, kBlockK);  // P
    w.p_sum[r] += static_cast<double>(row_sum(s, kBlockK));
    const Acc offset = static_cast<Acc>(alibi_row_offset(i0 + r, j0, sq, sk));
    const Acc* iota = kColumnIota<Acc>.v;
    Acc* terms = w.terms.data();  // times |distance|; masked columns have P = dS = 0
    if (want_dslope) {
      for (int64_t x = 0; x < kBlockK; ++x) terms[x] = s[x] * std::abs(offset - iota[x]);
      w.row_dslope[r].p_dist += static_cast<double>(row_sum(terms, kBlockK));
    }
    if (keep_p) {
      for (int64_t x = 0; x < kBlockK; ++x) {
        const Acc prob = s[x];
        s[x] = prob * (dpv[x] - delta);
        dpv[x] = to_acc<Acc>(from_acc<T>(prob));
      }
    } else {
      for (int64_t x = 0; x < kBlockK; ++x) s[x] *= dpv[x] - delta;
    }
    if (want_dslope) {
      for (int64_t x = 0; x < kBlockK; ++x) terms[x] = s[x] * std::abs(offset - iota[x]);
      w.row_dslope[r].ds_dist += static_cast<double>(row_sum(terms, kBlockK));
      w.row_dslope[r].ds += static_cast<double>(row_sum(s, kBlockK));
    }
    if (math.has_cap) {  // d(softcap * tanh(u)) / du = softcap * (1 - tanh^2) ... times 1/softcap
      for (int64_t x = 0; x < kBlockK; ++x) s[x] *= scale * (Acc(1) - th[x] * th[x]);
    } else {
      for (int64_t x = 0; x < kBlockK; ++x) s[x] *= scale;
    }
  }
}

// With refined_lse (pass 2), lse2 comes from pass 1's refinement, else from the forward.
template <typename T, typename Acc>
MPT_CPU_INLINE void load_query_rows(const BwdContext<Acc>& c, BwdScratch<Acc>& w, const HeadView& hv,
                                    int64_t i0, int64_t nr, int64_t mr, bool refined_lse) {
  const AttnBwdParams& p = c.p;
  const AttnFwdParams& f = p.fwd;
  load_rows(static_cast<const T*>(f.q) + hv.q_off + i0 * f.q_strides.row, f.q_strides.row, nr, mr,
            c.d, w.q.data(), c.dp);
  load_rows(static_cast<const T*>(p.dout) + hv.dout_off + i0 * p.dout_strides.row,
            p.dout_strides.row, nr, mr, c.d, w.dout.data(), c.dp);
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t idx = hv.lse_off + i0 + r;
    if (refined_lse) {
      w.lse2[r] = c.lse2[idx];
    } else {
      const float lse = f.lse[idx];
      w.lse2[r] = lse == kNegInf<float> ? kNegInf<Acc> : Acc(lse) * kLog2e<Acc>;
    }
    w.delta[r] = c.delta[idx];
    w.p_sum[r] = 0;
  }
}

template <typename T, typename Acc>
MPT_CPU_INLINE void load_key_tile(const BwdContext<Acc>& c, BwdScratch<Acc>& w, const HeadView& hv,
                                  int64_t j0, int64_t nc, bool row_major_k) {
  const AttnFwdParams& f = c.p.fwd;
  const T* k = static_cast<const T*>(f.k) + hv.k_off + j0 * f.k_strides.row;
  const T* v = static_cast<const T*>(f.v) + hv.v_off + j0 * f.v_strides.row;
  load_rows_transposed(k, f.k_strides.row, nc, c.d, w.kt.data(), kBlockK);
  load_rows_transposed(v, f.v_strides.row, nc, c.d, w.vt.data(), kBlockK);
  if (row_major_k) load_rows(k, f.k_strides.row, nc, kBlockK, c.d, w.k.data(), c.dp);
}

// Pass 1: D, dq and the block's d(slope) partial.
template <typename T, typename Acc>
MPT_CPU_INLINE void dq_block(const BwdContext<Acc>& c, int64_t task, BwdScratch<Acc>& w) {
  const AttnBwdParams& p = c.p;
  const AttnFwdParams& f = p.fwd;
  const int64_t bh = task / c.q_blocks;
  const int64_t b = bh / f.shape.num_heads, h = bh % f.shape.num_heads;
  const HeadView hv = head_view(p, b, h, h / c.heads_per_kv);
  const int64_t i0 = (task % c.q_blocks) * kBlockQ;
  if (i0 >= hv.sq) return;
  const int64_t nr = std::min(kBlockQ, hv.sq - i0), mr = round_up(nr, kTileRows);
  const int64_t d = c.d, dp = c.dp;

  // D_i = dout_i . out_i, saved for pass 2.
  const T* out = static_cast<const T*>(f.out) + hv.out_off + i0 * f.out_strides.row;
  const T* dout = static_cast<const T*>(p.dout) + hv.dout_off + i0 * p.dout_strides.row;
  for (int64_t r = 0; r < nr; ++r) {
    Acc sum = 0;
    for (int64_t x = 0; x < d; ++x)
      sum += to_acc<Acc>(dout[r * p.dout_strides.row + x]) * to_acc<Acc>(out[r * f.out_strides.row + x]);
    c.delta[hv.lse_off + i0 + r] = sum;
  }
  load_query_rows<T>(c, w, hv, i0, nr, mr, /*refined_lse=*/false);

  BlockKeys keys;
  keys.compute(i0, nr, hv.sq, hv.sk, f.mask);
  const ScoreMath<Acc> math(f.mask, alibi_slope<Acc>(f.mask, b, h));
  const bool want_dslope = c.dslope_partial != nullptr;
  Acc* dq = w.acc0.data();
  std::fill(dq, dq + mr * dp, Acc(0));
  std::fill(w.row_dslope.begin(), w.row_dslope.end(), RowDslope{});
  for (int64_t j0 = keys.lo; j0 < keys.hi; j0 += kBlockK) {
    const int64_t nc = std::min(kBlockK, keys.hi - j0);
    if (!keys.touches(j0, j0 + nc, nr)) continue;
    load_key_tile<T>(c, w, hv, j0, nc, /*row_major_k=*/true);
    tile_score_grads<T>(c, w, math, keys, i0, nr, mr, j0, nc, hv.sq, hv.sk, false,
                        want_dslope);
    w.matmul(mr, dp, kBlockK, w.s.data(), kBlockK, w.k.data(), dp, dq, dp, true);
  }
  // Divide each row's c out (rows that see no key keep c = 1: all their sums are 0).
  T* dq_out = static_cast<T*>(p.dq) + hv.dq_off + i0 * p.dq_strides.row;
  double dslope = 0;  // d score / d slope = -|distance|
  for (int64_t r = 0; r < nr; ++r) {
    const bool sees_keys = w.lse2[r] != kNegInf<Acc> && w.p_sum[r] > 0;
    const double row_c = sees_keys ? w.p_sum[r] : 1.0;
    c.lse2[hv.lse_off + i0 + r] = sees_keys ? w.lse2[r] + Acc(std::log2(row_c)) : w.lse2[r];
    store_row(dq + r * dp, d, Acc(1.0 / row_c), dq_out + r * p.dq_strides.row);
    if (want_dslope) dslope -= w.row_dslope[r].sum(row_c);
  }
  if (want_dslope) c.dslope_partial[task] = dslope;
}

// Pass 2: dk and dv of one key block of one kv head.
template <typename T, typename Acc>
MPT_CPU_INLINE void dkv_block(const BwdContext<Acc>& c, int64_t task, BwdScratch<Acc>& w) {
  const AttnBwdParams& p = c.p;
  const AttnFwdParams& f = p.fwd;
  const int64_t bhk = task / c.k_blocks;
  const int64_t b = bhk / f.shape.num_heads_k, hk = bhk % f.shape.num_heads_k;
  const HeadView kv = head_view(p, b, hk * c.heads_per_kv, hk);
  const int64_t j0 = (task % c.k_blocks) * kBlockK;
  if (j0 >= kv.sk) return;
  const int64_t nc = std::min(kBlockK, kv.sk - j0);
  const int64_t d = c.d, dp = c.dp;
  const int64_t sq = kv.sq, sk = kv.sk;

  load_key_tile<T>(c, w, kv, j0, nc, /*row_major_k=*/false);
  Acc* dk = w.acc0.data();
  Acc* dv = w.acc1.data();
  std::fill(dk, dk + kBlockK * dp, Acc(0));
  std::fill(dv, dv + kBlockK * dp, Acc(0));
  for (int64_t g = 0; g < c.heads_per_kv; ++g) {
    const int64_t h = hk * c.heads_per_kv + g;
    const HeadView hv = head_view(p, b, h, hk);
    const ScoreMath<Acc> math(f.mask, alibi_slope<Acc>(f.mask, b, h));
    for (int64_t i0 = 0; i0 < sq; i0 += kBlockQ) {
      const int64_t nr = std::min(kBlockQ, sq - i0), mr = round_up(nr, kTileRows);
      // Visible ranges grow with i: the first and last rows bound the block's keys.
      const KeyRange first = visible_keys(i0, sq, sk, f.mask.causal, f.mask.window_left,
                                          f.mask.window_right);
      const KeyRange last = visible_keys(i0 + nr - 1, sq, sk, f.mask.causal,
                                         f.mask.window_left, f.mask.window_right);
      if (last.hi <= j0) continue;
      if (first.lo >= j0 + nc) break;
      BlockKeys keys;
      keys.compute(i0, nr, sq, sk, f.mask);
      if (!keys.touches(j0, j0 + nc, nr)) continue;
      load_query_rows<T>(c, w, hv, i0, nr, mr, /*refined_lse=*/true);
      tile_score_grads<T>(c, w, math, keys, i0, nr, mr, j0, nc, sq, sk, true, false);
      // P^T and dS^T, so that dv += P^T dout and dk += dS^T q are plain tile products.
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t x = 0; x < kBlockK; ++x) {
          w.pt[x * kBlockQ + r] = w.dpv[r * kBlockK + x];
          w.dst[x * kBlockQ + r] = w.s[r * kBlockK + x];
        }
      w.matmul(kBlockK, dp, nr, w.pt.data(), kBlockQ, w.dout.data(), dp, dv, dp, true);
      w.matmul(kBlockK, dp, nr, w.dst.data(), kBlockQ, w.q.data(), dp, dk, dp, true);
    }
  }
  T* dk_out = static_cast<T*>(p.dk) + kv.dk_off + j0 * p.dk_strides.row;
  T* dv_out = static_cast<T*>(p.dv) + kv.dv_off + j0 * p.dv_strides.row;
  for (int64_t x = 0; x < nc; ++x) {
    store_row(dk + x * dp, d, Acc(1), dk_out + x * p.dk_strides.row);
    store_row(dv + x * dp, d, Acc(1), dv_out + x * p.dv_strides.row);
  }
}

template <typename T, typename Acc>
MPT_CPU_TARGET_AVX2 void dq_block_avx2(const BwdContext<Acc>& c, int64_t t, BwdScratch<Acc>& w) {
  dq_block<T, Acc>(c, t, w);
}
template <typename T, typename Acc>
void dq_block_baseline(const BwdContext<Acc>& c, int64_t t, BwdScratch<Acc>& w) {
  dq_block<T, Acc>(c, t, w);
}
template <typename T, typename Acc>
MPT_CPU_TARGET_AVX2 void dkv_block_avx2(const BwdContext<Acc>& c, int64_t t, BwdScratch<Acc>& w) {
  dkv_block<T, Acc>(c, t, w);
}
template <typename T, typename Acc>
void dkv_block_baseline(const BwdContext<Acc>& c, int64_t t, BwdScratch<Acc>& w) {
  dkv_block<T, Acc>(c, t, w);
}

// d(slope) partials -> p.dslopes (zero-initialised by the caller), summed in a fixed order:
// query blocks, then (for slopes of shape (heads,)) batches.
void reduce_dslopes(const AttnBwdParams& p, const std::vector<double>& partial,
                    int64_t q_blocks) {
  const AttnShape& sh = p.fwd.shape;
  const AttnMaskParams& m = p.fwd.mask;
  const bool per_batch = m.alibi_batch_stride != 0;
  for (int64_t h = 0; h < sh.num_heads; ++h) {
    double head_total = 0;
    for (int64_t b = 0; b < sh.batch; ++b) {
      double total = 0;
      const double* part = partial.data() + (b * sh.num_heads + h) * q_blocks;
      for (int64_t i = 0; i < q_blocks; ++i) total += part[i];
      if (per_batch) {
        const int64_t idx = b * m.alibi_batch_stride + h;
        if (m.alibi_slopes_fp64)
          reinterpret_cast<double*>(p.dslopes)[idx] = total;
        else
          p.dslopes[idx] = static_cast<float>(total);
      }
      head_total += total;
    }
    if (!per_batch) {
      if (m.alibi_slopes_fp64)
        reinterpret_cast<double*>(p.dslopes)[h] = head_total;
      else
        p.dslopes[h] = static_cast<float>(head_total);
    }
  }
}

template <typename T, typename Acc>
void run_backward(const AttnBwdParams& p) {
  const AttnShape& sh = p.fwd.shape;
  const bool want_dslopes = p.dslopes != nullptr && p.fwd.mask.alibi_slopes != nullptr;
  std::vector<Acc> delta(lse_extent(p.fwd)), lse2(lse_extent(p.fwd));
  const int64_t q_blocks = (sh.seqlen_q + kBlockQ - 1) / kBlockQ;
  const int64_t k_blocks = (sh.seqlen_k + kBlockK - 1) / kBlockK;
  const int64_t q_tasks = sh.batch * sh.num_heads * q_blocks;
  std::vector<double> dslope_partial(want_dslopes ? q_tasks : 0, 0.0);
  const BwdContext<Acc> c{p, sh.head_dim, round_up(sh.head_dim, kTileCols), q_blocks, k_blocks,
                          sh.num_heads / sh.num_heads_k, delta.data(), lse2.data(),
                          want_dslopes ? dslope_partial.data() : nullptr};
  const bool avx2 = cpu_has_avx2_fma();
  auto scratch = [&] { return BwdScratch<Acc>(c.dp); };
  run_tasks(q_tasks, scratch, [&](int64_t t, BwdScratch<Acc>& w) {
    avx2 ? dq_block_avx2<T, Acc>(c, t, w) : dq_block_baseline<T, Acc>(c, t, w);
  });
  run_tasks(sh.batch * sh.num_heads_k * k_blocks, scratch, [&](int64_t t, BwdScratch<Acc>& w) {
    avx2 ? dkv_block_avx2<T, Acc>(c, t, w) : dkv_block_baseline<T, Acc>(c, t, w);
  });
  if (want_dslopes) reduce_dslopes(p, dslope_partial, q_blocks);
}

}  // namespace

void attn_bwd_cpu(const AttnBwdParams& p) {
  const AttnShape& sh = p.fwd.shape;
  if (sh.batch <= 0 || sh.num_heads <= 0) return;
  dispatch_attention_dtype(p.fwd.dtype, "attention backward", [&](auto t, auto acc) {
    run_backward<decltype(t), decltype(acc)>(p);
  });
}

}  // namespace mpt_ext
