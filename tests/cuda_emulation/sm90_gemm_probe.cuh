// A 64 x 64 x 64 GEMM tile through every sm_90 wrapper the Hopper kernels build on
// (csrc/attn/cuda/sm90): a producer warpgroup loads A and B with TMA (128-byte swizzle) under
// an mbarrier and gives its registers away (setmaxnreg); a consumer warpgroup waits for the
// phase, runs four k16 wgmma steps (A from shared memory, or from registers via ldmatrix; B
// K-major or N-major), stages D in shared memory and stores it with TMA. Rows past the
// tensor's end are zero-filled on the way in and not written on the way out.
//
// emu_selftest.cu runs it on the emulated GPU against a matrix product, and with planted bugs;
// tests/test_sm90_wrappers.py compiles it for sm_90a, so that ptxas checks every
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
  CUtensorMap a;  // A [rows][64] bf16 (K-major), box {64, 64}, 128-byte swizzle
  CUtensorMap b;  // Bt [64 n][64 k] (K-major) or B [64 k][64 n] (N-major), the same box
  CUtensorMap d;  // D [rows][64] fp32, box {64, 64}, no swizzle
};

// The tensor maps of A [rows][64] bf16, B [64][64] bf16 and D [rows][64] fp32 (rows <= 64),
// row-major and contiguous.
inline Params make_params(const void* a, const void* b, void* d, int rows) {
  const uint64_t a_dims[2] = {64, uint64_t(rows)}, b_dims[2] = {64, 64};
  const uint64_t half_rows[1] = {128}, float_rows[1] = {256};
  const uint32_t box[2] = {64, 64};
  Params p;
  p.a = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, a, a_dims, half_rows, box,
                        CU_TENSOR_MAP_SWIZZLE_128B);
  p.b = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, b, b_dims, half_rows, box,
                        CU_TENSOR_MAP_SWIZZLE_128B);
  p.d = make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, d, a_dims, float_rows, box,
                        CU_TENSOR_MAP_SWIZZLE_NONE);
  return p;
}

// What a planted bug leaves out (emu_selftest.cu); kNone on the GPU.
enum class Plant : int {
  kNone = 0,
  kNoBarrierWait,      // the consumer reads the tiles without waiting for the phase
  kNoWgmmaFence,       // no wgmma.fence before the first wgmma
  kOverwriteB,         // B changes while the wgmma are in flight
  kHalfTransaction,    // expect_tx announces only A's bytes
  kNoStoreReadWait,    // the thread exits while the TMA store may still read D
};

constexpr int kTileBytes = 64 * 64 * 2;
constexpr int kOffsetA = 0, kOffsetB = kTileBytes, kOffsetD = 2 * kTileBytes;
constexpr int kOffsetBarrier = kOffsetD + 64 * 64 * 4;
constexpr int kSmemBytes = kOffsetBarrier + 1024;

template <bool kBNMajor, bool kARegisters>
__global__ void __launch_bounds__(256, 1) gemm_probe_kernel(const __grid_constant__ Params p,
                                                         int plant_code) {
  const auto plant = static_cast<Plant>(plant_code);
  unsigned char* smem = dynamic_smem_1024();
  auto* sa = reinterpret_cast<__nv_bfloat16*>(smem + kOffsetA);
  auto* sb = reinterpret_cast<__nv_bfloat16*>(smem + kOffsetB);
  auto* sd = reinterpret_cast<float*>(smem + kOffsetD);
  auto* full = reinterpret_cast<uint64_t*>(smem + kOffsetBarrier);
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbarrier_init(full, 1);
    fence_barrier_init();
  }
  __syncthreads();
  if (tid < 128) {  // producer
    setmaxnreg_dec<40>();
    if (tid == 0) {
      mbarrier_arrive_expect_tx(full, plant == Plant::kHalfTransaction ? kTileBytes : 2 * kTileBytes);
      tma_load_2d(sa, &p.a, full, 0, 0);
      tma_load_2d(sb, &p.b, full, 0, 0);
    }
    return;
  }
  setmaxnreg_inc<232>();
  const int t = tid - 128, warp = t / 32, lane = t % 32;
  if (plant != Plant::kNoBarrierWait) mbarrier_wait(full, 0);
  uint32_t a[4][4];  // A from registers: k16 step k, the ISA's A fragment
  if constexpr (kARegisters) {
    // lane l gives row l % 8 of matrix l / 8: rows +8 for matrices 1 and 3, k +8 for 2 and 3;
    // the 16-byte chunk c of row r sits at chunk c ^ (r % 8) (128-byte swizzle)
    const int row = 16 * warp + lane % 8 + 8 * ((lane / 8) & 1);
    for (int k = 0; k < 4; ++k) {
      const int chunk = 2 * k + lane / 16;
      ldmatrix_x4(a[k], reinterpret_cast<unsigned char*>(sa) + row * 128 + ((chunk ^ (row % 8)) * 16));
    }
  }
  float acc[32];
  if (plant != Plant::kNoWgmmaFence) wgmma_fence();
  for (int k = 0; k < 4; ++k) {
    // K-major B (Bt): row n at n * 128 bytes, a k16 step is 32 bytes; N-major B: k row at
    // k * 128 bytes, 8 rows per 1024-byte atom (the stride byte offset), a k16 step is 2048
    const uint64_t desc_b = kBNMajor ? smem_desc(sb + k * 16 * 64, Swizzle::k128B, 8192, 1024)
                                     : smem_desc(sb + k * 16, Swizzle::k128B, 16, 1024);
    if constexpr (kARegisters) {
      Wgmma<64, __nv_bfloat16>::rs<kBNMajor ? 1 : 0>(acc, a[k], desc_b, k > 0);
    } else {
      const uint64_t desc_a = smem_desc(sa + k * 16, Swizzle::k128B, 16, 1024);
      Wgmma<64, __nv_bfloat16>::ss<kBNMajor ? 1 : 0>(acc, desc_a, desc_b, k > 0);
    }
  }
  wgmma_commit_group();
  if (plant == Plant::kOverwriteB && t == 0) sb[0] = __float2bfloat16(1.f);
  wgmma_wait_group<0>(acc);
  // the ISA's m64nNk16 D fragment
  for (int i = 0; i < 32; ++i) {
    const int row = 16 * warp + lane / 4 + 8 * ((i >> 1) & 1);
    const int col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    sd[row * 64 + col] = acc[i];
  }
  fence_proxy_async();
  named_barrier_sync(1, 128);
  if (t == 0) {
    tma_store_2d(&p.d, sd, 0, 0);
    bulk_commit_group();
    if (plant != Plant::kNoStoreReadWait) bulk_wait_group<0>();
  }
}

}  // namespace sm90_probe
