// Flash attention backward (FA2 recomputation scheme).
//
//   1. preprocess : D_i = dot(dO_i, O_i) and lse in log2 units, into the workspace.
//   2. dK/dV      : one CTA per (batch, kv head, key block: 16 keys per warp, 4 or 8
//                   warps); warp w owns keys [16w, 16w+16). It walks every q head of its
//                   GQA group and every query block that can see its keys (in steps of
//                   kBlockM queries), recomputing S^T = K Q^T and dP^T = V dO^T
//                   (keys as mma rows, so P^T and dS^T are already A operands), and
//                   accumulates dV += P^T dO and dK += dS^T Q in registers: the GQA sum is in
//                   registers too. With BwdDq::kAtomic / kSplit (bwd_dq_mode.h) it also
//                   stores dS^T to shared memory and adds dQ += dS K for its keys into an fp32
//                   workspace (red.global.add): five matmuls per tile, as FlashAttention-2.
//                   kSplit runs the key blocks in launches of `splits` blocks, CTA x of
//                   each adding into dQ slice x: every sum then has one fixed order.
//   3. dQ         : BwdDq::kAtomic / kSplit: a conversion of the fp32 sums, the slices in
//                   order (attn_bwd_prep.cu).
//                   BwdDq::kSeparate: one CTA per (batch, head, 64-query block), the
//                   forward's shape: recompute S = Q K^T and dP = dO V^T, dQ += dS K. It sees
//                   whole query rows, so it also sums each row's d(slope) term (see
//                   DslopeRowSums) into the workspace, one float per query row like lse and
//                   D. Two extra matmuls per tile; no float atomics, so bitwise reproducible.
//   4. d(slopes)  : the row terms reduced per (head) or (batch, head) in a fixed order.
#pragma once

#include <cuda_runtime.h>

#include "seq_score.cuh"
#include "tile.cuh"

namespace mpt_ext::attn::cuda {

// ---- shared bits -----------------------------------------------------------------------

struct BwdExtra {
  bool q_vec_ok, k_vec_ok, v_vec_ok, do_vec_ok;
  bool dq_pair_ok, dk_pair_ok, dv_pair_ok;
  float* lse2;    // [H][rows]
  float* dsum;    // [H][rows]
  float* dslope;    // [H][rows] per-row terms, or null
  float* dq_accum;  // [H][rows][kD] (BwdDq::kAtomic), a slice per split (kSplit), or null
  int64_t dq_split_stride;  // floats from one dq_accum slice to the next: 0 unless kSplit
  int key_block0;           // the dK/dV grid's first key block (kSplit: one launch's)
  int64_t rows;
};

// One query row's d(slope) sums, each thread over its own keys until sum() adds up the quad.
// With dS_ij = P_ij (dP_ij - D_i) and R_i = sum_j P_ij |distance_ij|,
//   sum_j dS_ij |distance_ij| - (sum_j dS_ij) R_i = sum_j P_ij (dP_ij - D'_i) |distance_ij|,
// D'_i = sum_j P_ij dP_ij: the row's gradient with D_i replaced by the value this kernel's own
// fp32 P and dP imply. D_i = dot(dO_i, O_i) reads the output rounded to 16 bits; its error,
// times a distance of up to seqlen_k, would land in every row's term, and measured past
// docs/DESIGN.md's 2x-PyTorch rule for d(slopes) about once in 40 runs. dQ and dK keep D_i,
// as in FlashAttention: there the error meets keys or queries of either sign.
struct DslopeRowSums {
  float ds_dist = 0.f;  // sum_j dS_ij |distance_ij|
  float ds = 0.f;       // sum_j dS_ij
  float p_dist = 0.f;   // sum_j P_ij |distance_ij|

  __device__ __forceinline__ void add(float p, float ds_ij, float dist) {
    ds_dist += ds_ij * dist;
    ds += ds_ij;
    p_dist += p * dist;
  }
  // The row's sum_j dS'_ij |distance_ij| in every lane of the quad that holds the row.
  __device__ __forceinline__ float sum() const {
    return quad_sum(ds_dist) - quad_sum(ds) * quad_sum(p_dist);
  }
};

// Writes a warp's 16 x kD fp32 accumulator (rows row0 + g, row0 + g + 8) times `scale` as T,
// rows < rows_valid, cols < d.
template <typename T, int kD>
__device__ __forceinline__ void store_rows(uint16_t* g, int64_t row_stride, const float (&acc)[kD / 8][4],
                                           int row0, int rows_valid, int d, float scale,
                                           bool pair_ok, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + (lane >> 2) + 8 * r;
    if (row >= rows_valid) continue;
    uint16_t* grow = g + row * row_stride;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      const int col = dt * 8 + (lane & 3) * 2;
      store_pair<T>(grow, col, d, pair_ok, acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale);
    }
  }
}

// ---- 2. dK / dV ------------------------------------------------------------------------

template <int kD_, int kBlockM_, int kWarps_, bool kDqAtomic_>
struct BwdKVConfig {
  static constexpr int kD = kD_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kBlockN = 16 * kWarps;  // keys per CTA, 16 per warp
  static constexpr int kBlockM = kBlockM_;     // queries per step
  static constexpr bool kDqAtomic = kDqAtomic_;
  static constexpr int kStages = 2;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kTilePerCta = kBlockN, kTilePerStep = kBlockM;  // tile_choice.h
  // dS^T (kBlockN keys x kBlockM queries) in rows of 64: the narrowest swizzled tile.
  static constexpr int kDsCols = 64;
  static constexpr int kDsElems = kDqAtomic ? kBlockN * kDsCols : 0;
  static constexpr int kSmemBytes =
      (2 * kBlockN * kD + 2 * kStages * kBlockM * kD + kDsElems) * 2 + 2 * kStages * kBlockM * 4;
  // dQ += dS K over the warps (add_dq_block): kDqColWarps groups of head-dim columns, at
  // least 16 wide (one ldmatrix.x4 of K), times kDqRowWarps groups of m16 query-row tiles.
  static constexpr int kDqColWarps = kWarps < kD / 16 ? kWarps : kD / 16;
  static constexpr int kDqRowWarps = kWarps / kDqColWarps;
  static_assert(kBlockM % 16 == 0 && kD % 64 == 0, "tile shapes");
  static_assert(kBlockM <= kDsCols && kWarps % kDqColWarps == 0 &&
                    (kBlockM / 16) % kDqRowWarps == 0,
                "dQ split over the warps");
};

// dQ += dS K for one key block and one query block, added into the fp32 rows `dq` ([row][kD],
// rows < rows_valid, columns < d). sdS holds dS^T (keys as rows) and comes back as the A
// operand through ldmatrix.trans; each warp takes one group of head-dim columns and one group
// of row tiles (BwdKVConfig::kDqColWarps, kDqRowWarps), so each sum lands once per key block.
template <typename T, typename Cfg>
__device__ __forceinline__ void add_dq_block(float* dq, const uint16_t* sdS, const uint16_t* sK,
                                             int rows_valid, int d, int warp, int lane) {
  constexpr int kD = Cfg::kD;
  constexpr int kCols = kD / Cfg::kDqColWarps;       // this warp's head-dim columns
  constexpr int kChunk = kCols < 32 ? kCols : 32;    // summed at a time
  constexpr int kNT = kChunk / 8;
  // (with one row group, as written: ptxas does not know warp < kWarps, and spilled more at
  // hd256 for warp / kDqColWarps)
  const int col_lo = (Cfg::kDqRowWarps == 1 ? warp : warp % Cfg::kDqColWarps) * kCols;
  const int mt_lo = Cfg::kDqRowWarps == 1 ? 0 : warp / Cfg::kDqColWarps;
  // One m16 row tile and at most 32 columns at a time: 16 fp32 sums next to dK and dV leave
  // ptxas room (all row tiles at once spilled 76 bytes at hd128); the operands are re-read
  // per piece.
#pragma unroll 1
  for (int mt = mt_lo; mt < Cfg::kBlockM / 16; mt += Cfg::kDqRowWarps) {
#pragma unroll 1
    for (int c0 = col_lo; c0 < col_lo + kCols; c0 += kChunk) {
      if (c0 >= d) break;  // columns past head_dim (zero-padded K): nothing to add
      float acc[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
      }
#pragma unroll
      for (int ks = 0; ks < Cfg::kBlockN / 16; ++ks) {
        uint32_t a[4];
        load_a_kn<Cfg::kDsCols>(a, sdS, ks * 16, mt * 16, lane);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          load_b_kn<kD>(b, sK, ks * 16, c0 + np * 16, lane);
          ElemOps<T>::mma(acc[2 * np], a, b[0], b[1]);
          ElemOps<T>::mma(acc[2 * np + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = mt * 16 + (lane >> 2) + 8 * (e >> 1);
        if (row >= rows_valid) continue;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const int col = c0 + nt * 8 + (lane & 3) * 2 + (e & 1);
          if (col < d) red_add_f32(dq + row * kD + col, acc[nt][e]);
        }
      }
    }
  }
}

// (q head of the GQA group, query block) of a dK/dV step, stepped block-major.
struct QBlockCursor {
  int head = 0;   // index in the group
  int block = 0;  // query block, from m_lo

  __device__ __forceinline__ void next(int blocks) {
    if (++block == blocks) {
      block = 0;
      ++head;
    }
  }
};

template <typename T, typename Cfg, ScoreKind kKind>
__global__ void __launch_bounds__(Cfg::kThreads)
    attn_bwd_dkdv_kernel(const AttnBwdParams p, const BwdExtra x) {
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages, kThreads = Cfg::kThreads;
  constexpr int kQT = kBlockM / 8;  // n8 tiles (queries) of S^T per warp
  constexpr int kDT = kD / 8;
  using Ops = ElemOps<T>;
  const AttnFwdParams& f = p.fwd;

  unsigned char* smem_raw = dynamic_smem();
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sV = sK + kBlockN * kD;
  uint16_t* sQ = sV + kBlockN * kD;
  uint16_t* sdO = sQ + kStages * kBlockM * kD;
  uint16_t* sdS = sdO + kStages * kBlockM * kD;  // Cfg::kDsElems: none unless kDqAtomic
  float* sL = reinterpret_cast<float*>(sdS + Cfg::kDsElems);
  float* sDs = sL + kStages * kBlockM;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n_block = x.key_block0 + blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const SeqInfo si = seq_info(f.shape, b);
  const int n0 = n_block * kBlockN;
  if (n0 >= si.sk) return;
  const int group = static_cast<int>(f.shape.num_heads / f.shape.num_heads_k);
  const int d = static_cast<int>(f.shape.head_dim);
  const int shift = si.sk - si.sq;
  const int keys_here = min(kBlockN, si.sk - n0);

  const uint16_t* q_base = static_cast<const uint16_t*>(f.q);
  const uint16_t* k_base = static_cast<const uint16_t*>(f.k);
  const uint16_t* v_base = static_cast<const uint16_t*>(f.v);
  const uint16_t* do_base = static_cast<const uint16_t*>(p.dout);
  const uint16_t* gk = k_base + seq_offset(f.k_strides, b, si.k_row0, si.varlen) +
                       hk * f.k_strides.head + n0 * f.k_strides.row;
  const uint16_t* gv = v_base + seq_offset(f.v_strides, b, si.k_row0, si.varlen) +
                       hk * f.v_strides.head + n0 * f.v_strides.row;
  const int64_t q_seq = seq_offset(f.q_strides, b, si.q_row0, si.varlen);
  const int64_t do_seq = seq_offset(p.dout_strides, b, si.q_row0, si.varlen);

  // Query rows that can see any key of [n0, n1): i >= n0 - shift - right (if bounded) and
  // i < n1 - shift + left (if bounded). A superset is fine: masking is exact per element.
  const int n1 = n0 + keys_here;
  const int64_t right = f.mask.causal ? 0 : f.mask.window_right;
  int64_t i_lo = right >= 0 ? static_cast<int64_t>(n0) - shift - right : 0;
  int64_t i_hi = f.mask.window_left >= 0 ? static_cast<int64_t>(n1) - shift + f.mask.window_left
                                         : static_cast<int64_t>(si.sq);
  i_lo = i_lo < 0 ? 0 : i_lo;
  i_hi = i_hi > si.sq ? si.sq : i_hi;
  const int m_lo = static_cast<int>(i_lo / kBlockM);
  const int m_count = i_hi > i_lo ? static_cast<int>((i_hi + kBlockM - 1) / kBlockM) - m_lo : 0;
  const int n_iters = group * m_count;

  // Step `it` visits q head hk * group + it / m_count and query block m_lo + it % m_count;
  // the compute step and the prefetch (kStages - 1 steps ahead) each step a cursor instead of
  // dividing.
  QBlockCursor load_at, at;
  auto load_q_do = [&](int stage) {  // Q, dO, lse and D of load_at's query block
    const int h = hk * group + load_at.head;
    const int m0 = (m_lo + load_at.block) * kBlockM;
    const int rows_valid = si.sq - m0;
    load_tile<kBlockM, kD, kThreads>(sQ + stage * kBlockM * kD,
                                     q_base + q_seq + h * f.q_strides.head + m0 * f.q_strides.row,
                                     f.q_strides.row, rows_valid, d, x.q_vec_ok, q_base, tid);
    load_tile<kBlockM, kD, kThreads>(
        sdO + stage * kBlockM * kD,
        do_base + do_seq + h * p.dout_strides.head + m0 * p.dout_strides.row,
        p.dout_strides.row, rows_valid, d, x.do_vec_ok, do_base, tid);
    for (int r = tid; r < kBlockM; r += kThreads) {
      float* l = sL + stage * kBlockM + r;
      float* dsum = sDs + stage * kBlockM + r;
      if (r < rows_valid) {  // in the same group as Q and dO: no load stalls this thread
        const int64_t w = h * x.rows + ws_row(si, b, m0 + r);
        cp_async_4(l, x.lse2 + w);
        cp_async_4(dsum, x.dsum + w);
      } else {
        *l = INFINITY;  // padding rows: P = 0
        *dsum = 0.f;
      }
    }
    load_at.next(m_count);
  };

  load_tile<kBlockN, kD, kThreads>(sK, gk, f.k_strides.row, keys_here, d, x.k_vec_ok, k_base, tid);
  load_tile<kBlockN, kD, kThreads>(sV, gv, f.v_strides.row, keys_here, d, x.v_vec_ok, v_base, tid);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_iters) load_q_do(s);
    cp_async_commit();  // K and V ride in the first group
  }

  float dk[kDT][4], dv[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  }
  const int key_local[2] = {warp * 16 + (lane >> 2), warp * 16 + (lane >> 2) + 8};

  for (int it = 0; it < n_iters; ++it) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (it + kStages - 1 < n_iters) load_q_do((it + kStages - 1) % kStages);
    cp_async_commit();

    const int stage = it % kStages;
    const uint16_t* tQ = sQ + stage * kBlockM * kD;
    const uint16_t* tdO = sdO + stage * kBlockM * kD;
    const float* tL = sL + stage * kBlockM;
    const float* tDs = sDs + stage * kBlockM;
    const int h = hk * group + at.head;
    const int m0 = (m_lo + at.block) * kBlockM;
    at.next(m_count);
    const int m_last = min(m0 + kBlockM, si.sq) - 1;
    const bool masked = !tile_keys(m0, m_last, si, f.mask).fully_visible(n0, kBlockN);
    using Units = ScoreUnits<kKind>;
    const Units units = Units::make(f.mask, b, h);
    const DiagMask mask = DiagMask::make(f.mask, si);

    // S^T = K Q^T and dP^T = V dO^T (this warp's 16 keys x kBlockM queries)
    float st[kQT][4], dpt[kQT][4];
#pragma unroll
    for (int i = 0; i < kQT; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.f;
    }
#pragma unroll 4  // full unrolling makes ptxas prefetch every fragment: spills
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t ak[4], av[4];
      load_a<kD>(ak, sK, warp * 16, ks * 16, lane);
      load_a<kD>(av, sV, warp * 16, ks * 16, lane);
#pragma unroll
      for (int qp = 0; qp < kQT / 2; ++qp) {
        uint32_t bq[4], bo[4];
        load_b_nk<kD>(bq, tQ, qp * 16, ks * 16, lane);
        Ops::mma(st[2 * qp], ak, bq[0], bq[1]);
        Ops::mma(st[2 * qp + 1], ak, bq[2], bq[3]);
        load_b_nk<kD>(bo, tdO, qp * 16, ks * 16, lane);
        Ops::mma(dpt[2 * qp], av, bo[0], bo[1]);
        Ops::mma(dpt[2 * qp + 1], av, bo[2], bo[3]);
      }
    }

    // P^T = exp2(log2 score - lse2), dS^T = P^T (dP^T - D) (times the softcap derivative), the
    // score in the forward's units (ScoreUnits). This lane's element (qt, e) is query
    // m0 + col0 + col, col = 8 qt + (e & 1), against key j; key_offset: the key's signed
    // distance past the diagonal of query m0 + col0 (alibi_dist). Keys are the rows here, so
    // a one-sided tile's ALiBi column part runs along the queries with the opposite sign.
    const int col0 = (lane & 3) * 2;
    const int key_offset[2] = {n0 + key_local[0] - (m0 + col0 + shift),
                               n0 + key_local[1] - (m0 + col0 + shift)};
    bool one_sided = false;
    const float tile_slope = units.tile_slope(m0 + shift, m0 + kBlockM - 1 + shift, n0, kBlockN,
                                              &one_sided);
    if (Units::kFolded && !masked && one_sided) {
      // exp2 argument = exp_scale * (acc + column part + row part) - lse2, with the column
      // part and lse2 per query (col_bias) and the row part per key (row_bias)
      float row_bias[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        row_bias[r] = units.row_shift(-tile_slope, key_offset[r]) * units.exp_scale;
      }
      const float col_slope = -tile_slope * units.exp_scale;  // log2 units per query
#pragma unroll
      for (int qt = 0; qt < kQT; ++qt) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = qt * 8 + c, il = col0 + col;
          const float col_bias = Units::kHasSlopes
                                     ? fmaf(col_slope, static_cast<float>(col), -tL[il])
                                     : -tL[il];
          const float dsum = tDs[il];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int e = 2 * r + c;
            const float bias = Units::kHasSlopes ? col_bias + row_bias[r] : col_bias;
            const float pr = exp2f(fmaf(st[qt][e], units.exp_scale, bias));
            st[qt][e] = pr;
            dpt[qt][e] = pr * (dpt[qt][e] - dsum);
          }
        }
      }
    } else {
#pragma unroll
      for (int qt = 0; qt < kQT; ++qt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1, col = qt * 8 + (e & 1);
          const int il = col0 + col;
          float th = 0.f;
          float u = units.full(st[qt][e], alibi_dist(key_offset[r], col), &th);
          if (masked && mask.hidden(col - key_offset[r], n0 + key_local[r])) u = -INFINITY;
          const float pr = exp2f(fmaf(u, units.exp_scale, -tL[il]));
          float ds = pr * (dpt[qt][e] - tDs[il]);
          if (units.softcap()) ds *= 1.f - th * th;
          st[qt][e] = pr;
          dpt[qt][e] = ds;
        }
      }
    }
    if constexpr (Cfg::kDqAtomic) {  // dS^T as the mma will round it, keys as rows
#pragma unroll
      for (int qt = 0; qt < kQT; ++qt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          *reinterpret_cast<uint32_t*>(sdS + swz<Cfg::kDsCols>(key_local[r], qt * 8 + col0)) =
              Ops::pack(dpt[qt][2 * r], dpt[qt][2 * r + 1]);
        }
      }
    }

    // dV += P^T dO, dK += dS^T Q
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      uint32_t ap[4], ads[4];
      c_to_a<T>(ap, st[2 * kk], st[2 * kk + 1]);
      c_to_a<T>(ads, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t bo[4], bq[4];
        load_b_kn<kD>(bo, tdO, kk * 16, dp * 16, lane);
        Ops::mma(dv[2 * dp], ap, bo[0], bo[1]);
        Ops::mma(dv[2 * dp + 1], ap, bo[2], bo[3]);
        load_b_kn<kD>(bq, tQ, kk * 16, dp * 16, lane);
        Ops::mma(dk[2 * dp], ads, bq[0], bq[1]);
        Ops::mma(dk[2 * dp + 1], ads, bq[2], bq[3]);
      }
    }

    if constexpr (Cfg::kDqAtomic) {
      __syncthreads();  // every warp's dS^T rows written; the loop-top barrier frees sdS again
      float* dq_slice = x.dq_accum + blockIdx.x * x.dq_split_stride;
      add_dq_block<T, Cfg>(dq_slice + (h * x.rows + ws_row(si, b, m0)) * kD, sdS, sK,
                           si.sq - m0, d, warp, lane);
    }
  }
  cp_async_wait<0>();

  uint16_t* gdk = static_cast<uint16_t*>(p.dk) + seq_offset(p.dk_strides, b, si.k_row0, si.varlen) +
                  hk * p.dk_strides.head + n0 * p.dk_strides.row;
  uint16_t* gdv = static_cast<uint16_t*>(p.dv) + seq_offset(p.dv_strides, b, si.k_row0, si.varlen) +
                  hk * p.dv_strides.head + n0 * p.dv_strides.row;
  store_rows<T, kD>(gdk, p.dk_strides.row, dk, warp * 16, keys_here, d,
                    static_cast<float>(f.mask.softmax_scale), x.dk_pair_ok, lane);
  store_rows<T, kD>(gdv, p.dv_strides.row, dv, warp * 16, keys_here, d, 1.f, x.dv_pair_ok, lane);
}

// ---- 3. dQ -----------------------------------------------------------------------------

template <int kD_, int kBlockN_>
struct BwdQConfig {
  static constexpr int kD = kD_;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = 2;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kSmemBytes = (2 * kBlockM * kD + 2 * kStages * kBlockN * kD) * 2;
  static_assert(kBlockM == 16 * kWarps && kBlockN % 16 == 0 && kD % 64 == 0, "tile shapes");
};

template <typename T, typename Cfg, ScoreKind kKind>
__global__ void __launch_bounds__(Cfg::kThreads)
    attn_bwd_dq_kernel(const AttnBwdParams p, const BwdExtra x) {
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages, kThreads = Cfg::kThreads;
  constexpr int kNT = kBlockN / 8;
  constexpr int kDT = kD / 8;
  using Ops = ElemOps<T>;
  const AttnFwdParams& f = p.fwd;

  unsigned char* smem_raw = dynamic_smem();
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sdO = sQ + kBlockM * kD;
  uint16_t* sK = sdO + kBlockM * kD;
  uint16_t* sV = sK + kStages * kBlockN * kD;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const SeqInfo si = seq_info(f.shape, b);
  const int m0 = m_block * kBlockM;
  if (m0 >= si.sq) return;
  const int hk = h / static_cast<int>(f.shape.num_heads / f.shape.num_heads_k);
  const int d = static_cast<int>(f.shape.head_dim);
  const int shift = si.sk - si.sq;
  const int m_last = min(m0 + kBlockM, si.sq) - 1;
  const int rows_here = m_last - m0 + 1;

  const uint16_t* q_base = static_cast<const uint16_t*>(f.q);
  const uint16_t* k_base = static_cast<const uint16_t*>(f.k);
  const uint16_t* v_base = static_cast<const uint16_t*>(f.v);
  const uint16_t* do_base = static_cast<const uint16_t*>(p.dout);
  const uint16_t* gq = q_base + seq_offset(f.q_strides, b, si.q_row0, si.varlen) +
                       h * f.q_strides.head + m0 * f.q_strides.row;
  const uint16_t* gdo = do_base + seq_offset(p.dout_strides, b, si.q_row0, si.varlen) +
                        h * p.dout_strides.head + m0 * p.dout_strides.row;
  const uint16_t* gk = k_base + seq_offset(f.k_strides, b, si.k_row0, si.varlen) +
                       hk * f.k_strides.head;
  const uint16_t* gv = v_base + seq_offset(f.v_strides, b, si.k_row0, si.varlen) +
                       hk * f.v_strides.head;
  uint16_t* gdq = static_cast<uint16_t*>(p.dq) + seq_offset(p.dq_strides, b, si.q_row0, si.varlen) +
                  h * p.dq_strides.head + m0 * p.dq_strides.row;

  const TileKeys tk = tile_keys(m0, m_last, si, f.mask);
  const int n_min = static_cast<int>(tk.first.lo / kBlockN);
  const int n_max = tk.last.hi > tk.first.lo
                        ? static_cast<int>((tk.last.hi + kBlockN - 1) / kBlockN)
                        : n_min;
  const int n_tiles = n_max - n_min;

  const int row_local[2] = {warp * 16 + (lane >> 2), warp * 16 + (lane >> 2) + 8};
  float row_lse2[2], row_dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = m0 + row_local[r];
    const bool ok = row_local[r] < rows_here;
    const int64_t w = h * x.rows + ws_row(si, b, i);
    row_lse2[r] = ok ? x.lse2[w] : INFINITY;
    row_dsum[r] = ok ? x.dsum[w] : 0.f;
  }
  using Units = ScoreUnits<kKind>;
  const Units units = Units::make(f.mask, b, h);
  const DiagMask mask = DiagMask::make(f.mask, si);
  DslopeRowSums row_dslope[2];

  auto load_kv = [&](int tile) {
    const int n0 = (n_min + tile) * kBlockN;
    const int stage = tile % kStages;
    load_tile<kBlockN, kD, kThreads>(sK + stage * kBlockN * kD, gk + n0 * f.k_strides.row,
                                     f.k_strides.row, si.sk - n0, d, x.k_vec_ok, k_base, tid);
    load_tile<kBlockN, kD, kThreads>(sV + stage * kBlockN * kD, gv + n0 * f.v_strides.row,
                                     f.v_strides.row, si.sk - n0, d, x.v_vec_ok, v_base, tid);
  };

  float dq[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  if (n_tiles > 0) {
    load_tile<kBlockM, kD, kThreads>(sQ, gq, f.q_strides.row, rows_here, d, x.q_vec_ok, q_base, tid);
    load_tile<kBlockM, kD, kThreads>(sdO, gdo, p.dout_strides.row, rows_here, d, x.do_vec_ok,
                                     do_base, tid);
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < n_tiles) load_kv(s);
      cp_async_commit();
    }
  }

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (t + kStages - 1 < n_tiles) load_kv(t + kStages - 1);
    cp_async_commit();

    const uint16_t* tK = sK + (t % kStages) * kBlockN * kD;
    const uint16_t* tV = sV + (t % kStages) * kBlockN * kD;
    const int n0 = (n_min + t) * kBlockN;

    // S = Q K^T, dP = dO V^T
    float s[kNT][4], dp[kNT][4];
#pragma unroll
    for (int i = 0; i < kNT; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
    }
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t aq[4], ao[4];
      load_a<kD>(aq, sQ, warp * 16, ks * 16, lane);
      load_a<kD>(ao, sdO, warp * 16, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bk[4], bv[4];
        load_b_nk<kD>(bk, tK, np * 16, ks * 16, lane);
        Ops::mma(s[2 * np], aq, bk[0], bk[1]);
        Ops::mma(s[2 * np + 1], aq, bk[2], bk[3]);
        load_b_nk<kD>(bv, tV, np * 16, ks * 16, lane);
        Ops::mma(dp[2 * np], ao, bv[0], bv[1]);
        Ops::mma(dp[2 * np + 1], ao, bv[2], bv[3]);
      }
    }

    // P = exp2(log2 score - lse2), dS = P (dP - D), the score in the forward's units
    // (ScoreUnits). This lane's element (nt, e) is key n0 + col0 + col, col = 8 nt + (e & 1)
    // (alibi_dist).
    const bool masked = !tk.fully_visible(n0, kBlockN);
    const int col0 = (lane & 3) * 2;
    const int row_offset[2] = {m0 + row_local[0] + shift - n0 - col0,
                               m0 + row_local[1] + shift - n0 - col0};
    bool one_sided = false;
    const float tile_slope = units.tile_slope(m0 + shift, m0 + kBlockM - 1 + shift, n0, kBlockN,
                                              &one_sided);
    const bool fast = Units::kFolded && !masked && one_sided;
    float row_bias[2];  // exp2 argument = exp_scale * u + row_bias
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_bias[r] = fast ? units.row_shift(tile_slope, row_offset[r]) * units.exp_scale -
                               row_lse2[r]
                         : -row_lse2[r];
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, col = nt * 8 + (e & 1);
        float th = 0.f, u;
        if (fast) {
          u = units.column(s[nt][e], tile_slope, col);
        } else {
          u = units.full(s[nt][e], alibi_dist(row_offset[r], col), &th);
          if (masked && mask.hidden(row_offset[r] - col, n0 + col0 + col)) u = -INFINITY;
        }
        const float pr = exp2f(fmaf(u, units.exp_scale, row_bias[r]));
        float ds = pr * (dp[nt][e] - row_dsum[r]);  // d loss / d score, before the softcap
        if (x.dslope != nullptr) row_dslope[r].add(pr, ds, alibi_dist(row_offset[r], col));
        if (units.softcap()) ds *= 1.f - th * th;
        s[nt][e] = ds;
      }
    }

    // dQ += dS K
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[4];
      c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < kD / 16; ++dt) {
        uint32_t bk[4];
        load_b_kn<kD>(bk, tK, kk * 16, dt * 16, lane);
        Ops::mma(dq[2 * dt], a, bk[0], bk[1]);
        Ops::mma(dq[2 * dt + 1], a, bk[2], bk[3]);
      }
    }
  }
  cp_async_wait<0>();

  store_rows<T, kD>(gdq, p.dq_strides.row, dq, warp * 16, rows_here, d,
                    static_cast<float>(f.mask.softmax_scale), x.dq_pair_ok, lane);

  // Each row's d(slope) term, written once (by the quad's first lane) at the row's workspace
  // index; d score / d slope = -|distance|. Rows no sequence covers stay 0 (memset).
  if (x.dslope != nullptr) {
    const float term[2] = {row_dslope[0].sum(), row_dslope[1].sum()};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if ((lane & 3) == 0 && row_local[r] < rows_here) {
        x.dslope[h * x.rows + ws_row(si, b, m0 + row_local[r])] = -term[r];
      }
    }
  }
}

}  // namespace mpt_ext::attn::cuda
