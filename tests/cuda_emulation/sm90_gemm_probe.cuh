// A 64 x 64 x K GEMM tile through every sm_90 wrapper the Hopper kernels build on
// (csrc/attn/cuda/sm90), with the FlashAttention-3 / CUTLASS pipeline shape: a producer
// warpgroup gives its registers away (setmaxnreg) and loads A and B k-tile by k-tile with TMA
// (128-byte swizzle) into two stages, each with a "full" mbarrier (the loads landed) and an
// "empty" one (the consumer is done with it); a consumer warpgroup waits for each tile, runs
// four k16 wgmma steps (A from shared memory, or from registers via ldmatrix; B K-major or
// N-major), keeps one tile's group in flight while the next is issued (wgmma.wait_group 1),
// releases the stage of the tile that retired, then stages D in shared memory and stores it
// with TMA. Rows past the tensor's end are zero-filled on the way in, not written on the way out.
//
// emu_selftest_sm90.cu runs it on the emulated GPU against a matrix product, and with planted
// bugs; tests/test_sm90_wrappers.py compiles it for sm_90a, so that ptxas checks every
// wrapper's inline assembly.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "csrc/attn/cuda/ptx.cuh"
#include "csrc/attn/cuda/sm90/ptx_sm90.cuh"
#include "csrc/attn/cuda/sm90/tensor_map.h"
#include "csrc/attn/cuda/sm90/wgmma.cuh"

namespace sm90_probe {

using namespace mpt_ext::attn::cuda;
using namespace mpt_ext::attn::cuda::sm90;

struct Params {
  CUtensorMap a;  // A [rows][K] bf16 (K-major), box {64, 64}, 128-byte swizzle
  CUtensorMap b;  // Bt [64 n][K] (K-major) or B [K][64 n] (N-major), the same box
  CUtensorMap d;  // D [rows][64] fp32, box {64, 64}, no swizzle
};

// The tensor maps of A [rows][k] bf16, B (Bt [64][k], or [k][64] if N-major) bf16 and
// D [rows][64] fp32 (rows <= 64, k a multiple of 64), row-major and contiguous.
inline Params make_params(const void* a, const void* b, void* d, int rows, int k, bool b_n_major) {
  const uint64_t a_dims[2] = {uint64_t(k), uint64_t(rows)}, d_dims[2] = {64, uint64_t(rows)};
  const uint64_t bt_dims[2] = {uint64_t(k), 64}, bn_dims[2] = {64, uint64_t(k)};
  const uint64_t k_rows[1] = {uint64_t(k) * 2}, n_rows[1] = {128}, d_rows[1] = {256};
  const uint32_t box[2] = {64, 64};
  Params p;
  p.a = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a, a_dims, k_rows, box,
                        CU_TENSOR_MAP_SWIZZLE_128B);
  p.b = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, b, b_n_major ? bn_dims : bt_dims,
                        b_n_major ? n_rows : k_rows, box, CU_TENSOR_MAP_SWIZZLE_128B);
  p.d = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, d, d_dims, d_rows, box,
                        CU_TENSOR_MAP_SWIZZLE_NONE);
  return p;
}

// What a planted bug does wrong (emu_selftest_sm90.cu); the GPU build ignores it.
enum class Plant : int {
  kNone = 0,
  kNoBarrierWait,      // the consumer reads the tiles without waiting for them to land
  kNoWgmmaFence,       // no wgmma.fence before the first wgmma
  kOverwriteB,         // B changes while the wgmma are in flight
  kHalfTransaction,    // expect_tx announces only A's bytes
  kNoStoreReadWait,    // the thread exits while the TMA store may still read D
  kEarlyRelease,       // a stage goes back to the producer before its wgmma retire
  kNoEmptyWait,        // the producer refills a stage without waiting for its release
  kOneABuffer,         // A registers reloaded while the previous tile's wgmma still read them
  kNoProxyFence,       // D staged by the threads, stored by TMA without fence.proxy.async
};

constexpr int kStages = 2;
constexpr int kTileBytes = 64 * 64 * 2;
constexpr int kStageBytes = 2 * kTileBytes;  // A, then B
constexpr int kOffsetD = kStages * kStageBytes;
constexpr int kOffsetBarriers = kOffsetD + 64 * 64 * 4;  // full[kStages], empty[kStages]
constexpr int kSmemBytes = kOffsetBarriers + 1024;       // > 48 KB: needs the opt-in

template <bool kBNMajor, bool kARegisters>
__global__ void __launch_bounds__(256, 1) gemm_probe_kernel(const __grid_constant__ Params p,
                                                         int k_tiles, int plant_code) {
#ifdef MPT_EXT_CUDA_EMULATION
  const auto plant = static_cast<Plant>(plant_code);
#else
  constexpr Plant plant = Plant::kNone;  // the GPU build runs the kernel as written
  (void)plant_code;
#endif
  unsigned char* smem = dynamic_smem_1024();
  auto* sd = reinterpret_cast<float*>(smem + kOffsetD);
  auto* full = reinterpret_cast<uint64_t*>(smem + kOffsetBarriers);
  uint64_t* empty = full + kStages;
  auto stage_a = [&](int s) { return reinterpret_cast<__nv_bfloat16*>(smem + s * kStageBytes); };
  auto stage_b = [&](int s) {
    return reinterpret_cast<__nv_bfloat16*>(smem + s * kStageBytes + kTileBytes);
  };
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], 1);      // the producer's arrive.expect_tx
      mbarrier_init(&empty[s], 128);   // every consumer thread, once its wgmma retired
    }
    fence_barrier_init();
  }
  __syncthreads();
  if (tid < 128) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % kStages;
        const uint32_t round = kt / kStages;
        // a fresh mbarrier counts its "previous" phase (parity 1) as complete: the first
        // round goes straight through
        if (plant != Plant::kNoEmptyWait) mbarrier_wait(&empty[s], (round & 1) ^ 1);
        mbarrier_arrive_expect_tx(&full[s], plant == Plant::kHalfTransaction ? kTileBytes
                                                                             : kStageBytes);
        tma_load_2d(stage_a(s), &p.a, &full[s], kt * 64, 0);
        if constexpr (kBNMajor) tma_load_2d(stage_b(s), &p.b, &full[s], 0, kt * 64);
        else tma_load_2d(stage_b(s), &p.b, &full[s], kt * 64, 0);
      }
    }
    return;
  }
  setmaxnreg_inc<232>();
  const int t = tid - 128, warp = t / 32, lane = t % 32;
  float acc[32];
  uint32_t a[2][4][4];  // A from registers, per tile parity (a tile's stay until it retires)
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % kStages;
    if (plant != Plant::kNoBarrierWait) mbarrier_wait(&full[s], (kt / kStages) & 1);
    __nv_bfloat16* sa = stage_a(s);
    __nv_bfloat16* sb = stage_b(s);
    uint32_t(&ak)[4][4] = a[plant == Plant::kOneABuffer ? 0 : kt % 2];
    if constexpr (kARegisters) {
      // lane l gives row l % 8 of matrix l / 8: rows +8 for matrices 1 and 3, k +8 for 2 and
      // 3; the 16-byte chunk c of row r sits at chunk c ^ (r % 8) (128-byte swizzle)
      const int row = 16 * warp + lane % 8 + 8 * ((lane / 8) & 1);
      for (int k = 0; k < 4; ++k) {
        const int chunk = 2 * k + lane / 16;
        ldmatrix_x4(ak[k], reinterpret_cast<unsigned char*>(sa) + row * 128 +
                               ((chunk ^ (row % 8)) * 16));
      }
    }
    if (plant != Plant::kNoWgmmaFence) wgmma_fence();
    for (int k = 0; k < 4; ++k) {
      // K-major B (Bt): row n at n * 128 bytes, a k16 step is 32 bytes; N-major B: k row at
      // k * 128 bytes, 8 rows per 1024-byte atom (the stride byte offset), a k16 step is 2048
      const uint64_t desc_b = kBNMajor ? smem_desc(sb + k * 16 * 64, Swizzle::k128B, 8192, 1024)
                                       : smem_desc(sb + k * 16, Swizzle::k128B, 16, 1024);
      const int accumulate = kt > 0 || k > 0;
      if constexpr (kARegisters) {
        Wgmma<64, __nv_bfloat16>::rs<kBNMajor ? 1 : 0>(acc, ak[k], desc_b, accumulate);
      } else {
        const uint64_t desc_a = smem_desc(sa + k * 16, Swizzle::k128B, 16, 1024);
        Wgmma<64, __nv_bfloat16>::ss<kBNMajor ? 1 : 0>(acc, desc_a, desc_b, accumulate);
      }
    }
    wgmma_commit_group();
    if (plant == Plant::kOverwriteB && t == 0 && kt == 0) sb[0] = __float2bfloat16(1.f);
    if (plant == Plant::kEarlyRelease) mbarrier_arrive(&empty[s]);
    // one group stays in flight; the previous tile's retires and its stage goes back
    if constexpr (kARegisters) {
      wgmma_wait_group<1>(acc, a[0][0], a[0][1], a[0][2], a[0][3], a[1][0], a[1][1], a[1][2],
                          a[1][3]);
    } else {
      wgmma_wait_group<1>(acc);
    }
    if (kt > 0 && plant != Plant::kEarlyRelease) mbarrier_arrive(&empty[(kt - 1) % kStages]);
  }
  wgmma_wait_group<0>(acc);
  // the ISA's m64nNk16 D fragment
  for (int i = 0; i < 32; ++i) {
    const int row = 16 * warp + lane / 4 + 8 * ((i >> 1) & 1);
    const int col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    sd[row * 64 + col] = acc[i];
  }
  if (plant != Plant::kNoProxyFence) fence_proxy_async();
  named_barrier_sync(1, 128);
  if (t == 0) {
    tma_store_2d(&p.d, sd, 0, 0);
    bulk_commit_group();
    if (plant != Plant::kNoStoreReadWait) bulk_wait_group<0>();
  }
}

}  // namespace sm90_probe
