// Thin wrappers over the sm80+ PTX the attention kernels use: cp.async (global -> shared,
// zero-filling), ldmatrix (shared -> mma fragments), mma.sync m16n8k16 with fp32
// accumulation and red.global.add.f32. Kept in one place so each instruction's operand
// layout is written once.
// Under MPT_EXT_CUDA_EMULATION (tests/cuda_emulation) each wrapper calls the emulated
// instruction instead of its inline assembly; nothing else in the kernels changes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace mpt_ext::attn::cuda {

// Per element type: packing two floats into the 32-bit register an mma operand wants, and
// the matching mma instruction.
template <typename T>
struct ElemOps;

template <>
struct ElemOps<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static float to_float(uint16_t bits) {
    return __half2float(__ushort_as_half(bits));
  }
  __device__ __forceinline__ static uint16_t from_float(float x) {
    return __half_as_ushort(__float2half_rn(x));
  }
  // c += a * b (A 16x16 row-major, B 16x8 column-major, C 16x8 fp32).
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#ifdef MPT_EXT_CUDA_EMULATION
    cuda_emu::mma_m16n8k16_f32(cuda_emu::MmaInput::kF16, c, a, b0, b1, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
};

template <>
struct ElemOps<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static float to_float(uint16_t bits) {
    return __bfloat162float(__ushort_as_bfloat16(bits));
  }
  __device__ __forceinline__ static uint16_t from_float(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#ifdef MPT_EXT_CUDA_EMULATION
    cuda_emu::mma_m16n8k16_f32(cuda_emu::MmaInput::kBF16, c, a, b0, b1, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
};

// The shared-window address of a shared-memory pointer (cvta.to.shared): what PTX operands
// and wgmma descriptors name. The emulator gives the offset in its dynamic shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
#ifdef MPT_EXT_CUDA_EMULATION
  return cuda_emu::smem_window_address(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// The block's dynamic shared memory (the launch's smem bytes), 128-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
#ifdef MPT_EXT_CUDA_EMULATION
  return cuda_emu::dynamic_smem();
#else
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
#endif
}

// 16-byte async copy; bytes beyond src_bytes (0..16) are zero-filled in shared memory, and
// with src_bytes == 0 nothing is read from global memory.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::cp_async(smem, gmem, 16, src_bytes, /*cg=*/true);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(src_bytes)
               : "memory");
#endif
}

// 4-byte async copy (.ca: 4 bytes is below .cg's 16); both addresses 4-byte aligned.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::cp_async(smem, gmem, 4, 4, /*cg=*/false);
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(smem)), "l"(gmem)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::cp_async_commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N committed groups are still in flight (this thread's copies only:
// a __syncthreads must follow before other threads read the data).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::cp_async_wait_group(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Four 8x8 16-bit matrices; lane l gives the address of row (l % 8) of matrix l / 8 and
// register i receives matrix i in the mma fragment layout (row lane/4, cols 2*(lane%4)+{0,1}).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::ldmatrix_m8n8_b16(4, /*trans=*/false, r, smem);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem))
               : "memory");
#endif
}

// Same, each 8x8 matrix transposed on the way.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::ldmatrix_m8n8_b16(4, /*trans=*/true, r, smem);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem))
               : "memory");
#endif
}

// *addr += value in global memory, atomically (no result: the fire-and-forget RED form).
// Round to nearest even, subnormals flushed; the order of concurrent updates is unspecified.
__device__ __forceinline__ void red_add_f32(float* addr, float value) {
#ifdef MPT_EXT_CUDA_EMULATION
  cuda_emu::red_global_add_f32(addr, value);
#else
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(addr), "f"(value) : "memory");
#endif
}

}  // namespace mpt_ext::attn::cuda
