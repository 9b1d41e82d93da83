// Thin wrappers over the sm_90a PTX the Hopper attention kernels use: mbarrier, TMA (tensor
// copies in both directions and their bulk groups), the async-proxy fences, wgmma's fences
// and groups, shared-memory matrix descriptors and setmaxnreg. The wgmma instructions
// themselves are in wgmma.cuh. Each instruction's operands are written once, here.
// Under MPT_EXT_CUDA_EMULATION (tests/cuda_emulation) each wrapper calls the emulated
// instruction (emu_sm90.h), written from the PTX ISA independently of these wrappers.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <type_traits>

#include "../ptx.cuh"  // smem_addr

namespace mpt_ext::attn::cuda::sm90 {

// The block's dynamic shared memory, 1024-byte aligned (the 128-byte swizzle patterns of TMA
// and wgmma repeat every 1024 bytes of the shared window). The kernels declare no static
// shared memory, so the dynamic part starts at the window's base.
__device__ __forceinline__ unsigned char* dynamic_smem_1024() {
#ifdef MPT_EXT_CUDA_EMULATION
  return cuda_emu::dynamic_smem();
#else
  extern __shared__ __align__(1024) unsigned char smem_1024[];
  return smem_1024;
#endif
}

// bar.sync on barrier `id` (1..15; 0 is __syncthreads) among `threads` threads (a multiple of
// 32): a warpgroup, or the consumer warpgroups of a warp-specialised kernel.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::barrier_sync(id, threads);
#else
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}

// ---- mbarrier ------------------------------------------------------------------------------
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::mbarrier_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count)
               : "memory");
#endif
}

// Makes the initialisations visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void fence_barrier_init() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::fence_mbarrier_init();
#else
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::mbarrier_arrive(bar, 1);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#endif
}

// Arrives and announces the bytes the TMA loads of this phase will bring.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::mbarrier_arrive_expect_tx(bar, bytes);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
#endif
}

// Waits until the phase of parity `phase` has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t phase) {
#ifdef MPT_EXT_CUDA_EMULATION
  while (!cuda_emu::mbarrier_try_wait_parity(bar, phase)) {
  }
#else
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(phase)
      : "memory");
#endif
}

// Orders this thread's generic-proxy shared-memory writes before async-proxy reads (wgmma
// operands, TMA stores) that follow a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::fence_proxy_async();
#else
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// ---- TMA -------------------------------------------------------------------------------------
// Loads the box at (c0, c1, ...) (elements, innermost first) of the tensor map into shared
// memory; completes `bar`'s transaction count by the box's bytes.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1) {
#ifdef MPT_EXT_CUDA_EMULATION
  const int32_t c[2] = {c0, c1};
  cuda_emu::tma_load(dst, map, c, 2, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4}], [%2];\n" ::"r"(smem_addr(dst)),
      "l"(map), "r"(smem_addr(bar)), "r"(c0), "r"(c1)
      : "memory");
#endif
}

__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2) {
#ifdef MPT_EXT_CUDA_EMULATION
  const int32_t c[3] = {c0, c1, c2};
  cuda_emu::tma_load(dst, map, c, 3, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4, %5}], [%2];\n" ::"r"(smem_addr(dst)),
      "l"(map), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
#endif
}

__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2, int32_t c3) {
#ifdef MPT_EXT_CUDA_EMULATION
  const int32_t c[4] = {c0, c1, c2, c3};
  cuda_emu::tma_load(dst, map, c, 4, bar);
#else
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4, %5, %6}], [%2];\n" ::"r"(smem_addr(dst)),
      "l"(map), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}

// Stores a box from shared memory to the tensor (elements outside it are not written); in
// the thread's current bulk group.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int32_t c0,
                                             int32_t c1) {
#ifdef MPT_EXT_CUDA_EMULATION
  const int32_t c[2] = {c0, c1};
  cuda_emu::tma_store(map, c, 2, src);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(map),
      "r"(smem_addr(src)), "r"(c0), "r"(c1)
      : "memory");
#endif
}

__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, const void* src, int32_t c0,
                                             int32_t c1, int32_t c2, int32_t c3) {
#ifdef MPT_EXT_CUDA_EMULATION
  const int32_t c[4] = {c0, c1, c2, c3};
  cuda_emu::tma_store(map, c, 4, src);
#else
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          map),
      "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}

__device__ __forceinline__ void bulk_commit_group() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::bulk_commit_group();
#else
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N bulk groups are pending: their global writes are done.
template <int N>
__device__ __forceinline__ void bulk_wait_group() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::bulk_wait_group(N);
#else
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Waits until at most N bulk groups may still read their shared memory (it may be reused).
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::bulk_wait_group_read(N);
#else
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}

// ---- wgmma ordering --------------------------------------------------------------------------
// Before the first wgmma of a batch: orders the warpgroup's earlier accesses to the
// accumulator and A registers before the wgmma that use them.
__device__ __forceinline__ void wgmma_fence() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::wgmma_fence();
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit_group() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::wgmma_commit_group();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Pins registers in place around a wgmma boundary: an empty asm that reads and writes each,
// so that the compiler neither moves their accesses across it nor reuses them meanwhile.
template <typename T, int kRegs>
__device__ __forceinline__ void fence_registers(T (&regs)[kRegs]) {
#ifndef MPT_EXT_CUDA_EMULATION
#pragma unroll
  for (int i = 0; i < kRegs; ++i) {
    if constexpr (sizeof(T) == 4 && std::is_floating_point_v<T>) {
      asm volatile("" : "+f"(regs[i])::"memory");
    } else {
      asm volatile("" : "+r"(regs[i])::"memory");
    }
  }
#else
  (void)regs;
#endif
}

// Waits until at most N wgmma groups are in flight; `registers`: every accumulator (and A
// register array) of the retired operations, fenced so that their reads stay after the wait.
template <int N, typename... Registers>
__device__ __forceinline__ void wgmma_wait_group(Registers&... registers) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::wgmma_wait_group(N);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
  (fence_registers(registers), ...);
}

// ---- shared-memory matrix descriptors (wgmma operands) ----------------------------------------
enum class Swizzle : uint64_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

// start address, leading and stride byte offsets (>> 4 each, 14 bits), base offset 0, and
// the swizzle mode in bits 63:62.
__device__ __forceinline__ uint64_t smem_desc(const void* start, Swizzle swizzle,
                                              uint32_t leading_bytes, uint32_t stride_bytes) {
  return (uint64_t(smem_addr(start) & 0x3ffff) >> 4) |
         (uint64_t((leading_bytes & 0x3ffff) >> 4) << 16) |
         (uint64_t((stride_bytes & 0x3ffff) >> 4) << 32) | (uint64_t(swizzle) << 62);
}

// ---- register reallocation between warpgroups (warp specialisation) ---------------------------
template <int kCount>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kCount >= 24 && kCount <= 256 && kCount % 8 == 0, "setmaxnreg count");
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::setmaxnreg(true, kCount);
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kCount));
#endif
}

template <int kCount>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kCount >= 24 && kCount <= 256 && kCount % 8 == 0, "setmaxnreg count");
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::setmaxnreg(false, kCount);
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kCount));
#endif
}

}  // namespace mpt_ext::attn::cuda::sm90
