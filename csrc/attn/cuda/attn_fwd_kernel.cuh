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

#include "fwd_block.cuh"
#include "fwd_softmax.cuh"
#include "paged_tile.cuh"

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

// kPaged: the keys are pages (AttnFwdParams::kv_pages), an instantiation of its own so that
// the page lookups cost the other instantiations no registers.
template <typename T, typename Cfg, ScoreKind kKind, bool kPaged>
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
  FwdBlock blk;
  if (!fwd_block(p, kBlockM, kBlockN, blk)) return;
  const SeqInfo& si = blk.si;
  const int h = blk.h, b = blk.b, m0 = blk.m0, diag_shift = blk.diag_shift;
  const int n_min = blk.n_min, n_max = blk.n_max, rows_here = blk.rows_here;
  const int d = static_cast<int>(p.shape.head_dim);
  const TileKeys& tk = blk.tk;
  uint16_t* go = blk.go;
  float* glse = blk.glse;

  const uint16_t* q_base = static_cast<const uint16_t*>(p.q);
  const uint16_t* k_base = static_cast<const uint16_t*>(p.k);
  const uint16_t* v_base = static_cast<const uint16_t*>(p.v);
  const uint16_t* gq = q_base + seq_offset(p.q_strides, b, si.q_row0, si.varlen) +
                       h * p.q_strides.head + m0 * p.q_strides.row;
  // Paged keys start at page 0: paged_key_tile finds each tile.
  const int64_t k_seq = kPaged ? 0 : seq_offset(p.k_strides, b, si.k_row0, si.varlen);
  const int64_t v_seq = kPaged ? 0 : seq_offset(p.v_strides, b, si.k_row0, si.varlen);
  const uint16_t* gk = k_base + k_seq + blk.hk * p.k_strides.head;
  const uint16_t* gv = v_base + v_seq + blk.hk * p.v_strides.head;

  if (n_max <= n_min) {  // no row sees any key: output 0, lse -inf
    write_empty_rows(go, p.out_strides.row, glse, rows_here, d, tid, kThreads);
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
    static_assert(!kPaged || kPagedPageMultiple % kBlockN == 0,
                  "a key tile must lie inside one page");
    const KeyTile kt = kPaged ? paged_key_tile(p, b, n0, si.sk - n0)
                              : KeyTile{n0 * p.k_strides.row, n0 * p.v_strides.row, si.sk - n0};
    load_tile<kBlockN, kD, kThreads>(sK + stage * kBlockN * kD, gk + kt.k_offset,
                                     p.k_strides.row, kt.rows, d, x.kv_vec_ok, k_base, tid);
    load_tile<kBlockN, kD, kThreads>(sV + stage * kBlockN * kD, gv + kt.v_offset,
                                     p.v_strides.row, kt.rows, d, x.kv_vec_ok, v_base, tid);
  };

  const int n_tiles = n_max - n_min;
  if (kPaged) note_bad_pages(p.kv_pages, p.shape.input_errors, b, n_min, n_max, kBlockN);
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

    // Score mod, mask and online softmax per m16 tile (fwd_softmax.cuh).
    const KeyTileForm form = key_tile_form(units, tk, m0 + diag_shift,
                                           m0 + kBlockM - 1 + diag_shift, n0, kBlockN);
    const int col0 = (lane & 3) * 2;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      // the row's diagonal minus this thread's column 0 of the tile (alibi_dist)
      const int row_offset[2] = {m0 + row_local[mt][0] + diag_shift - n0 - col0,
                                 m0 + row_local[mt][1] + diag_shift - n0 - col0};
      score_mod_rows(s[mt], units, mask, form, row_offset, n0 + col0);
      online_softmax_rows(s[mt], o[mt], row_max[mt], row_sum[mt], units, form, row_offset);
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
    store_out_rows<T>(o[mt], row_max[mt], row_sum[mt], units, row_local[mt], rows_here, d, go,
                      p.out_strides.row, glse, x.out_pair_ok, lane);
  }
}

}  // namespace mpt_ext::attn::cuda
