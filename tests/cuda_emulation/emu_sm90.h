// The sm_90 (Hopper) instructions, emulated from the PTX ISA (the section is named at each
// definition in emu_sm90.cpp) and, for the tensor map, from the CUDA driver API's
// cuTensorMapEncodeTiled reference (cuda.h): mbarrier, the tensor copies (TMA) in both
// directions, wgmma and the fences around them, setmaxnreg. Never written from the kernels'
// wrappers, or the harness would share their mistakes.
//
// The model of the asynchronous units (README.md, "Hopper"):
// - a TMA load reads global memory at issue, poisons its destination, and lands when the
//   phase of its mbarrier completes; a thread may read the data only after it has itself
//   observed that phase (mbarrier.try_wait);
// - wgmma reads its shared-memory operands at issue and again when the last of its warpgroup
//   waits for it: any change in between is reported. Its accumulator registers hold a marked
//   NaN until the wait_group that retires it, which also checks that neither they nor the A
//   registers were written meanwhile;
// - fence.proxy.async keeps an image of shared memory: what threads wrote after it, an
//   asynchronous reader (wgmma, TMA store) reports as an unfenced write;
// - a TMA store reads shared memory at issue and again at cp.async.bulk.wait_group.read, and
//   writes global memory when its group is waited for (or at the thread's exit).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "emu_ptx.h"
#include "emu_runtime.h"

namespace cuda_emu {

// The address of a dynamic shared memory byte in the shared window (what cvta.to.shared
// gives): its offset from the block's dynamic shared memory, which starts 1024-byte aligned.
uint32_t smem_window_address(const void* p);

// ---- mbarrier (9.7.13.15) -------------------------------------------------------------------
void mbarrier_init(uint64_t* bar, uint32_t count);
void mbarrier_arrive(uint64_t* bar, uint32_t count = 1);
void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes);
void mbarrier_expect_tx(uint64_t* bar, uint32_t tx_bytes);
// mbarrier.try_wait.parity: true once the phase with parity `parity` has completed. The
// emulated wait suspends the thread until then (the ISA lets try_wait block for a
// system-dependent time) and so always returns true.
bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity);
void fence_mbarrier_init();  // fence.mbarrier_init.release.cluster
void fence_proxy_async();    // fence.proxy.async.shared::cta

// ---- tensor maps and TMA (9.7.9.25.5: cp.async.bulk.tensor) ---------------------------------
// cuTensorMapEncodeTiled with the driver's signature and argument checks; the 128 bytes hold
// the emulator's own record of the parameters.
CUresult tensor_map_encode_tiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank,
                                 void* global_address, const cuuint64_t* global_dim,
                                 const cuuint64_t* global_strides, const cuuint32_t* box_dim,
                                 const cuuint32_t* element_strides,
                                 CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                 CUtensorMapL2promotion l2_promotion,
                                 CUtensorMapFloatOOBfill oob_fill);
// cp.async.bulk.tensor.{rank}d.shared::cluster.global.mbarrier::complete_tx::bytes
//   [smem_dst], [map, {coords[0], ...}], [bar]
void tma_load(void* smem_dst, const CUtensorMap* map, const int32_t* coords, int rank,
              uint64_t* bar);
// cp.async.bulk.tensor.{rank}d.global.shared::cta.bulk_group [map, {coords}], [smem_src]
void tma_store(const CUtensorMap* map, const int32_t* coords, int rank, const void* smem_src);
void bulk_commit_group();               // cp.async.bulk.commit_group
void bulk_wait_group(int n);            // cp.async.bulk.wait_group n
void bulk_wait_group_read(int n);       // cp.async.bulk.wait_group.read n

// ---- wgmma (9.7.15) -------------------------------------------------------------------------
void wgmma_fence();                     // wgmma.fence.sync.aligned
void wgmma_commit_group();              // wgmma.commit_group.sync.aligned
void wgmma_wait_group(int n);           // wgmma.wait_group.sync.aligned n
// wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{type}.{type} d, a-desc, b-desc, scale-d,
//   imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b. d: this thread's n / 2 accumulators.
void wgmma_ss(MmaInput type, int n, float* d, uint64_t desc_a, uint64_t desc_b, bool scale_d,
              int scale_a, int scale_b, int trans_a, int trans_b);
// The same with A from registers (4 x .b32 per thread; no imm-trans-a).
void wgmma_rs(MmaInput type, int n, float* d, const uint32_t (&a)[4], uint64_t desc_b,
              bool scale_d, int scale_a, int scale_b, int trans_b);

// For the other readers of shared memory (ldmatrix): whether thread `tid` has waited for the
// mbarrier phase that landed this TMA-loaded byte.
bool tma_landing_seen(const ShadowByte& byte, unsigned tid);

// ---- setmaxnreg (9.7.17.x) ------------------------------------------------------------------
void setmaxnreg(bool increase, uint32_t count);

}  // namespace cuda_emu
