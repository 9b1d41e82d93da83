// Flash attention forward for sm_90a (FlashAttention-3's structure) with ALiBi, softcap,
// causal / window masks and GQA, on wgmma: the same scores, masks and online softmax as the
// mma.sync kernel (../fwd_softmax.cuh), fed by TMA and computed by warpgroup MMAs.
//
// One CTA = kBlockM = 128 query rows of one (batch, head), three warpgroups:
//  - the producer (warpgroup 0) gives its registers away (setmaxnreg) and one thread issues
//    the TMA loads: Q once, then K and V tile by tile into a kStages ring. Each stage has a
//    "full" mbarrier for K and one for V (the loads landed: S can start before V has) and an
//    "empty" one (both consumers are done with the stage);
//  - two consumer warpgroups, 64 rows each, take the registers: per key tile S = Q K^T by
//    SS-wgmma (m64 x kBlockN, k16 steps over the head dim), score mod, mask and online softmax
//    on the accumulator, then O += P V by RS-wgmma with P converted in registers and V read
//    N-major. The epilogue writes O and lse from registers.
// Shared tiles are [rows][64] column chunks of the head dim, each row 128 bytes in TMA's and
// wgmma's 128-byte swizzle (the chunks of one tile kRows * 128 bytes apart).
// Rows past the sequence and columns past head_dim load as zeros (TMA's out-of-bounds fill).
#pragma once

#include <cuda.h>

#include "../fwd_block.cuh"
#include "../fwd_softmax.cuh"
#include "ptx_sm90.cuh"
#include "wgmma.cuh"

namespace mpt_ext::attn::cuda::sm90 {

template <int kD_, int kBlockN_, int kStages_>
struct FwdSm90Config {
  static constexpr int kD = kD_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumers = 2;  // warpgroups of 64 rows
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  static constexpr int kChunks = kD / 64;     // 128-byte column chunks per row
  static constexpr int kQBytes = kBlockM * kD * 2;
  static constexpr int kKVBytes = kBlockN * kD * 2;  // one K or V tile
  static constexpr int kOffsetK = kQBytes;
  static constexpr int kOffsetV = kOffsetK + kStages * kKVBytes;
  static constexpr int kOffsetBarriers = kOffsetV + kStages * kKVBytes;
  static constexpr int kBarriers = 1 + 3 * kStages;  // full Q, full K / V and empty per stage
  // + 1024: the tiles start at the first 1024-byte boundary of the window (the swizzle's period)
  static constexpr int kSmemBytes = kOffsetBarriers + kBarriers * 8 + 1024;
  // 24 + 2 x 240 per thread slot: 128 x 504 registers <= the SM's 65536
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static constexpr int kTilePerCta = kBlockM, kTilePerStep = kBlockN;  // ../tile_choice.h
  static_assert(kD % 64 == 0 && kBlockN % 16 == 0 && kBlockN <= 256, "tile shapes");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// What the kernel reads: the tensor maps of q, k, v ((head_dim, seqlen, heads, batch), boxes
// of 64 columns by kBlockM or kBlockN rows) and the params they were made from.
struct FwdSm90Params {
  CUtensorMap q;
  CUtensorMap k;
  CUtensorMap v;
  AttnFwdParams fwd;
  bool out_pair_ok;  // 4-byte aligned element pairs: 32-bit stores
};

template <typename T, typename Cfg, ScoreKind kKind>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attn_fwd_sm90_kernel(const __grid_constant__ FwdSm90Params params) {
  // Other architectures compile a kernel that traps: the host launches it only on sm_90
  // (fwd_sm90_unfit), but a build with plain sm_90 code beside sm_90a must not return garbage.
#if defined(MPT_EXT_CUDA_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kD = Cfg::kD, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages, kChunks = Cfg::kChunks;
  constexpr int kNT = kBlockN / 8;  // n8 column groups of S per thread
  constexpr int kDT = kD / 8;       // n8 column groups of O per thread
  const AttnFwdParams& p = params.fwd;

  const int tid = threadIdx.x;
  FwdBlock blk;
  if (!fwd_block(p, kBlockM, kBlockN, blk)) return;
  const SeqInfo& si = blk.si;
  const int h = blk.h, b = blk.b, hk = blk.hk, m0 = blk.m0, diag_shift = blk.diag_shift;
  const int n_min = blk.n_min, n_max = blk.n_max, rows_here = blk.rows_here;
  const int m_last = m0 + rows_here - 1;
  const int d = static_cast<int>(p.shape.head_dim);
  uint16_t* go = blk.go;
  float* glse = blk.glse;

  if (n_max <= n_min) {  // no row sees any key: output 0, lse -inf
    write_empty_rows(go, p.out_strides.row, glse, rows_here, d, tid, Cfg::kThreads);
    return;
  }
  const int n_tiles = n_max - n_min;

  unsigned char* smem = dynamic_smem_1024();
  smem += (1024 - (smem_addr(smem) & 1023)) & 1023;
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem);
  auto sK = [&](int stage) {
    return reinterpret_cast<uint16_t*>(smem + Cfg::kOffsetK + stage * Cfg::kKVBytes);
  };
  auto sV = [&](int stage) {
    return reinterpret_cast<uint16_t*>(smem + Cfg::kOffsetV + stage * Cfg::kKVBytes);
  };
  uint64_t* full_q = reinterpret_cast<uint64_t*>(smem + Cfg::kOffsetBarriers);
  uint64_t* full_k = full_q + 1;
  uint64_t* full_v = full_k + kStages;
  uint64_t* empty = full_v + kStages;
  if (tid == 0) {
    mbarrier_init(full_q, 1);  // the producer's arrive.expect_tx, then the bytes
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full_k[s], 1);
      mbarrier_init(&full_v[s], 1);
      mbarrier_init(&empty[s], 128 * Cfg::kConsumers);  // every consumer thread
    }
    fence_barrier_init();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {  // producer
    setmaxnreg_dec<Cfg::kProducerRegs>();
    if (tid == 0) {
      mbarrier_arrive_expect_tx(full_q, Cfg::kQBytes);
      for (int c = 0; c < kChunks; ++c) {
        tma_load_4d(sQ + c * kBlockM * 64, &params.q, full_q, c * 64, m0, h, b);
      }
      for (int t = 0; t < n_tiles; ++t) {
        const int s = t % kStages;
        const uint32_t round = t / kStages;
        // a fresh mbarrier counts its "previous" phase (parity 1) as complete
        mbarrier_wait(&empty[s], (round & 1) ^ 1);
        const int n0 = (n_min + t) * kBlockN;
        mbarrier_arrive_expect_tx(&full_k[s], Cfg::kKVBytes);
        for (int c = 0; c < kChunks; ++c) {
          tma_load_4d(sK(s) + c * kBlockN * 64, &params.k, &full_k[s], c * 64, n0, hk, b);
        }
        mbarrier_arrive_expect_tx(&full_v[s], Cfg::kKVBytes);
        for (int c = 0; c < kChunks; ++c) {
          tma_load_4d(sV(s) + c * kBlockN * 64, &params.v, &full_v[s], c * 64, n0, hk, b);
        }
      }
    }
    return;
  }

  setmaxnreg_inc<Cfg::kConsumerRegs>();
  const int t128 = tid % 128, warp = t128 / 32, lane = t128 % 32;
  const int wg_row0 = 64 * (warpgroup - 1);  // this consumer's rows of the block
  // This thread's rows: fragment rows lane / 4 and + 8 of its warp's 16.
  const int row_local[2] = {wg_row0 + 16 * warp + lane / 4, wg_row0 + 16 * warp + lane / 4 + 8};
  using Units = ScoreUnits<kKind>;
  const Units units = Units::make(p.mask, b, h);
  const DiagMask mask = DiagMask::make(p.mask, si);
  // The tile forms from this warpgroup's rows (those past the sequence are never stored).
  const int wg_first = min(m0 + wg_row0, m_last);
  const TileKeys wg_keys = tile_keys(wg_first, min(m0 + wg_row0 + 63, m_last), si, p.mask);

  float s[kNT][4];
  float o[kDT][4];
  float row_max[2] = {-INFINITY, -INFINITY};  // in u (ScoreUnits)
  float row_sum[2] = {0.f, 0.f};              // this thread's columns only
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  auto& s_acc = reinterpret_cast<float(&)[kBlockN / 2]>(s);
  auto& o_acc = reinterpret_cast<float(&)[kD / 2]>(o);
  uint32_t pa[kBlockN / 16][4];  // P as the A operand, k16 step by k16 step
  auto& pa_regs = reinterpret_cast<uint32_t(&)[kBlockN / 4]>(pa);

  mbarrier_wait(full_q, 0);
  for (int t = 0; t < n_tiles; ++t) {
    const int stage = t % kStages;
    const uint32_t parity = (t / kStages) & 1;
    const int n0 = (n_min + t) * kBlockN;

    // S = Q K^T: K-major A and B; a k16 step is 32 bytes into a chunk's 128-byte rows, and
    // the 8-row groups of the swizzle atom are 1024 bytes apart
    mbarrier_wait(&full_k[stage], parity);
    fence_registers(s_acc);  // the previous tile's reads of S stay before the wgmma
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const int chunk = ks / 4, k_elem = (ks % 4) * 16;
      const uint64_t desc_q =
          smem_desc(sQ + chunk * kBlockM * 64 + wg_row0 * 64 + k_elem, Swizzle::k128B, 16, 1024);
      const uint64_t desc_k =
          smem_desc(sK(stage) + chunk * kBlockN * 64 + k_elem, Swizzle::k128B, 16, 1024);
      Wgmma<kBlockN, T>::template ss<0>(s_acc, desc_q, desc_k, ks > 0);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>(s_acc);

    const KeyTileForm form = key_tile_form(units, wg_keys, m0 + wg_row0 + diag_shift,
                                           m0 + wg_row0 + 63 + diag_shift, n0, kBlockN);
    const int col0 = (lane % 4) * 2;
    const int row_offset[2] = {m0 + row_local[0] + diag_shift - n0 - col0,
                               m0 + row_local[1] + diag_shift - n0 - col0};
    score_mod_rows(s, units, mask, form, row_offset, n0 + col0);
    online_softmax_rows(s, o, row_max, row_sum, units, form, row_offset);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);

    // O += P V: V N-major (the head dim contiguous); a k16 step is 16 rows of 128 bytes, the
    // 8-key groups 1024 bytes apart (stride) and the 64-column chunks a tile apart (leading)
    mbarrier_wait(&full_v[stage], parity);
    fence_registers(o_acc);  // the rescale and P's packing stay before the wgmma
    fence_registers(pa_regs);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint64_t desc_v =
          smem_desc(sV(stage) + kk * 16 * 64, Swizzle::k128B, kBlockN * 128, 1024);
      Wgmma<kD, T>::template rs<1>(o_acc, pa[kk], desc_v, 1);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>(o_acc, pa_regs);
    mbarrier_arrive(&empty[stage]);  // both of the stage's tiles are read
  }

  store_out_rows<T>(o, row_max, row_sum, units, row_local, rows_here, d, go, p.out_strides.row,
                    glse, params.out_pair_ok, lane);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

}  // namespace mpt_ext::attn::cuda::sm90
