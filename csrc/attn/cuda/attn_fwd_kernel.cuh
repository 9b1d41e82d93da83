// Flash attention forward (FA2 scheme) with ALiBi, softcap, causal / window masks, GQA and
// varlen, on mma.sync tensor cores.
//
// One CTA = 4 warps = kBlockM = 64 * kMT query rows of one (batch, head); warp w owns kMT
// m16 tiles, rows [16 kMT w, 16 kMT (w + 1)) (kMT = 2 halves the K/V fragment loads per mma
// at the price of registers). Q stays in shared memory (re-read by ldmatrix each k-step, which keeps
// registers for the fp32 output accumulator); K and V tiles of kBlockN keys stream through
// a kStages-deep cp.async ring. Per key tile: S = Q K^T (fp32), score mod + mask, online
// softmax in the exp2 domain, O += P V with P converted in registers to the A operand.
#pragma once

#include <cuda_runtime.h>

#include "seq_score.cuh"
#include "tile.cuh"

namespace mpt_ext::attn::cuda {

template <int kD_, int kBlockN_, int kStages_, int kMT_>
struct FwdConfig {
  static constexpr int kD = kD_;
  static constexpr int kMT = kMT_;  // m16 tiles per warp
  static constexpr int kBlockM = 64 * kMT;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kSmemElems = (kBlockM + 2 * kStages * kBlockN) * kD;
  static constexpr int kSmemBytes = kSmemElems * 2;
  static constexpr int kTilePerCta = kBlockM, kTilePerStep = kBlockN;  // tile_choice.h
  static_assert(kBlockM == 16 * kMT * kWarps, "kMT m16 tiles per warp");
  static_assert(kBlockN % 16 == 0 && kD % 64 == 0, "tile shapes");
};

// Host-computed facts the kernel needs besides the params.
struct FwdExtra {
  bool q_vec_ok;    // 16-byte aligned rows: cp.async
  bool kv_vec_ok;
  bool out_pair_ok; // 4-byte aligned element pairs: 32-bit stores
};

template <typename T, typename Cfg, ScoreKind kKind>
__global__ void __launch_bounds__(Cfg::kThreads)
    attn_fwd_kernel(const AttnFwdParams p, const FwdExtra x) {
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages, kThreads = Cfg::kThreads, kMT = Cfg::kMT;
  constexpr int kNT = kBlockN / 8;  // n8 tiles of S per warp
  constexpr int kDT = kD / 8;       // n8 tiles of O per warp
  using Ops = ElemOps<T>;

  unsigned char* smem_raw = dynamic_smem();
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* sK = sQ + kBlockM * kD;
  uint16_t* sV = sK + kStages * kBlockN * kD;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Heaviest (last, for causal) query blocks first: better tail balance.
  const int m_block = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const SeqInfo si = seq_info(p.shape, b);
  const int m0 = m_block * kBlockM;
  if (m0 >= si.sq) return;
  const int hk = h / static_cast<int>(p.shape.num_heads / p.shape.num_heads_k);
  const int d = static_cast<int>(p.shape.head_dim);
  const int diag_shift = si.sk - si.sq;

  const uint16_t* q_base = static_cast<const uint16_t*>(p.q);
  const uint16_t* k_base = static_cast<const uint16_t*>(p.k);
  const uint16_t* v_base = static_cast<const uint16_t*>(p.v);
  const uint16_t* gq = q_base + seq_offset(p.q_strides, b, si.q_row0, si.varlen) +
                       h * p.q_strides.head + m0 * p.q_strides.row;
  const uint16_t* gk = k_base + seq_offset(p.k_strides, b, si.k_row0, si.varlen) +
                       hk * p.k_strides.head;
  const uint16_t* gv = v_base + seq_offset(p.v_strides, b, si.k_row0, si.varlen) +
                       hk * p.v_strides.head;
  uint16_t* go = static_cast<uint16_t*>(p.out) +
                 seq_offset(p.out_strides, b, si.q_row0, si.varlen) + h * p.out_strides.head +
                 m0 * p.out_strides.row;
  float* glse = p.lse + lse_offset(p, si, b, h) + m0;

  const int m_last = min(m0 + kBlockM, si.sq) - 1;
  const TileKeys tk = tile_keys(m0, m_last, si, p.mask);
  // Key tiles any row of this block can see (lo and hi grow with the row).
  const int n_min = static_cast<int>(tk.first.lo / kBlockN);
  const int n_max = tk.last.hi > tk.first.lo
                        ? static_cast<int>((tk.last.hi + kBlockN - 1) / kBlockN)
                        : n_min;
  const int rows_here = m_last - m0 + 1;

  if (n_max <= n_min) {  // no row sees any key: output 0, lse -inf
    for (int e = tid; e < rows_here * d; e += kThreads) {
      go[(e / d) * p.out_strides.row + e % d] = 0;
    }
    for (int r = tid; r < rows_here; r += kThreads) glse[r] = -INFINITY;
    return;
  }

  // This thread's rows: fragment rows g and g + 8 of each of the warp's m16 tiles.
  const int warp_row0 = warp * 16 * kMT;
  int row_local[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) row_local[mt][r] = warp_row0 + mt * 16 + (lane >> 2) + 8 * r;
  }
  using Units = ScoreUnits<kKind>;
  const Units units = Units::make(p.mask, b, h);
  const DiagMask mask = DiagMask::make(p.mask, si);  // no per-row key ranges: registers

  auto load_kv = [&](int tile) {
    const int n0 = (n_min + tile) * kBlockN;
    const int stage = tile % kStages;
    load_tile<kBlockN, kD, kThreads>(sK + stage * kBlockN * kD, gk + n0 * p.k_strides.row,
                                     p.k_strides.row, si.sk - n0, d, x.kv_vec_ok, k_base, tid);
    load_tile<kBlockN, kD, kThreads>(sV + stage * kBlockN * kD, gv + n0 * p.v_strides.row,
                                     p.v_strides.row, si.sk - n0, d, x.kv_vec_ok, v_base, tid);
  };

  const int n_tiles = n_max - n_min;
  load_tile<kBlockM, kD, kThreads>(sQ, gq, p.q_strides.row, rows_here, d, x.q_vec_ok, q_base, tid);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) load_kv(s);
    cp_async_commit();  // Q rides in the first group
  }

  float o[kMT][kDT][4];
  float row_max[kMT][2];  // in u (ScoreUnits)
  float row_sum[kMT][2];  // this thread's columns only (quad-summed at the end)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < kDT; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  for (int t = 0; t < n_tiles; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile t visible to all; stage (t - 1) % kStages free for reuse
    if (t + kStages - 1 < n_tiles) load_kv(t + kStages - 1);
    cp_async_commit();

    const uint16_t* tK = sK + (t % kStages) * kBlockN * kD;
    const uint16_t* tV = sV + (t % kStages) * kBlockN * kD;
    const int n0 = (n_min + t) * kBlockN;

    // S = Q K^T
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int i = 0; i < kNT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
    }
#pragma unroll 4  // full unrolling makes ptxas prefetch every fragment: spills
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) load_a<kD>(a[mt], sQ, warp_row0 + mt * 16, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bb[4];
        load_b_nk<kD>(bb, tK, np * 16, ks * 16, lane);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Ops::mma(s[mt][2 * np], a[mt], bb[0], bb[1]);
          Ops::mma(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }

    // Score mod and mask into units u (ScoreUnits): log2 score = exp_scale * (u + row_shift).
    // Fast tiles (no mask; for ALiBi, keys on one side of every row's diagonal: all unmasked
    // causal tiles) take one FMA per score at most; the others the full form and the mask.
    // This lane's element (nt, e) is key n0 + col0 + col, col = 8 nt + (e & 1).
    const bool masked = !tk.fully_visible(n0, kBlockN);
    bool one_sided = false;
    const float tile_slope =
        units.tile_slope(m0 + diag_shift, m0 + kBlockM - 1 + diag_shift, n0, kBlockN, &one_sided);
    const bool fast = Units::kFolded && !masked && one_sided;
    const int col0 = (lane & 3) * 2;
    // row_offset: the row's diagonal minus this thread's column 0 of the tile (alibi_dist)
    auto row_offset = [&](int mt, int r) { return m0 + row_local[mt][r] + diag_shift - n0 - col0; };
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (fast) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mt][nt][e] = units.column(s[mt][nt][e], tile_slope, nt * 8 + (e & 1));
          }
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1, col = nt * 8 + (e & 1);
            float unused;
            float v = units.full(s[mt][nt][e], alibi_dist(row_offset(mt, r), col), &unused);
            if (masked && mask.hidden(row_offset(mt, r) - col, n0 + col0 + col)) v = -INFINITY;
            s[mt][nt][e] = v;
          }
        }
      }
    }

    // Online softmax in u, exponentiated by one FMA and ex2 each (ScoreUnits::fma_exp_ok).
    // A row that has seen only masked keys keeps max -inf; it exponentiates against 0
    // instead so that no (-inf) - (-inf) NaN appears.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        }
        // the ALiBi row part of a fast tile (0 on the others, whose u holds all of it)
        const float row_shift = fast ? units.row_shift(tile_slope, row_offset(mt, r)) : 0.f;
        mx = quad_max(fmaxf(row_max[mt][r], mx + row_shift));
        const float ref = mx == -INFINITY ? 0.f : mx;
        // 0 when the old max was -inf
        const float rescale = exp2f((row_max[mt][r] - ref) * units.exp_scale);
        row_max[mt][r] = mx;
        float sum = 0.f;
        if (units.fma_exp_ok(ref, row_shift)) {
          const float bias = (row_shift - ref) * units.exp_scale;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
              s[mt][nt][e] = exp2f(fmaf(s[mt][nt][e], units.exp_scale, bias));
              sum += s[mt][nt][e];
            }
          }
        } else {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
              s[mt][nt][e] = exp2f((s[mt][nt][e] + row_shift - ref) * units.exp_scale);
              sum += s[mt][nt][e];
            }
          }
        }
        row_sum[mt][r] = row_sum[mt][r] * rescale + sum;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          o[mt][dt][2 * r] *= rescale;
          o[mt][dt][2 * r + 1] *= rescale;
        }
      }
    }

    // O += P V
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) c_to_a<T>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t bb[4];
        load_b_kn<kD>(bb, tV, kk * 16, dp * 16, lane);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Ops::mma(o[mt][2 * dp], a[mt], bb[0], bb[1]);
          Ops::mma(o[mt][2 * dp + 1], a[mt], bb[2], bb[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // nothing may be in flight when the CTA exits

  // Epilogue: normalise, write O (rows < sq, cols < d) and the natural-log lse.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(row_sum[mt][r]);  // all lanes: before the row check
      const bool empty = (l == 0.f);  // NaN scores give NaN out and lse, not a masked row
      const float inv = empty ? 0.f : 1.f / l;
      const int rl = row_local[mt][r];
      if (rl >= rows_here) continue;
      uint16_t* orow = go + rl * p.out_strides.row;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const int col = dt * 8 + (lane & 3) * 2;
        const float v0 = o[mt][dt][2 * r] * inv, v1 = o[mt][dt][2 * r + 1] * inv;
        if (x.out_pair_ok && col + 1 < d) {
          *reinterpret_cast<uint32_t*>(orow + col) = Ops::pack(v0, v1);
        } else {
          if (col < d) orow[col] = Ops::from_float(v0);
          if (col + 1 < d) orow[col + 1] = Ops::from_float(v1);
        }
      }
      if ((lane & 3) == 0) {
        glse[rl] = empty ? -INFINITY : fmaf(row_max[mt][r], units.exp_scale, log2f(l)) * kLn2;
      }
    }
  }
}

}  // namespace mpt_ext::attn::cuda
