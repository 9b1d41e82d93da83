// Force-included (g++ -include) before every CUDA source the emulation build compiles as
// C++ (tests/cuda_emulation/CMakeLists.txt): the CUDA headers for types and host API
// declarations, then the device builtins and keywords mapped onto the emulated GPU
// (emu_runtime.h: threads, barriers, shared memory; emu_ptx.h: instructions). ptx.cuh and
// common/cuda_host.h switch to the emulator under MPT_EXT_CUDA_EMULATION; the kernel files
// themselves compile unchanged.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu_cuda_runtime.h"
#include "emu_ptx.h"
#include "emu_runtime.h"
#include "emu_sm90.h"

#define cudaGetLastError ::cuda_emu::runtime::cudaGetLastError
#define cudaPeekAtLastError ::cuda_emu::runtime::cudaPeekAtLastError
#define cudaGetErrorString ::cuda_emu::runtime::cudaGetErrorString
#define cudaGetDevice ::cuda_emu::runtime::cudaGetDevice
#define cudaDeviceGetAttribute ::cuda_emu::runtime::cudaDeviceGetAttribute
#define cudaFuncSetAttribute ::cuda_emu::runtime::cudaFuncSetAttribute
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor \
  ::cuda_emu::runtime::cudaOccupancyMaxActiveBlocksPerMultiprocessor
#define cudaMemsetAsync ::cuda_emu::runtime::cudaMemsetAsync
#define cudaStreamSynchronize ::cuda_emu::runtime::cudaStreamSynchronize
#define cudaHostAlloc ::cuda_emu::runtime::cudaHostAlloc
#define cudaHostGetDevicePointer ::cuda_emu::runtime::cudaHostGetDevicePointer
#define cudaThreadExchangeStreamCaptureMode ::cuda_emu::runtime::cudaThreadExchangeStreamCaptureMode

// ---- keywords and built-in variables --------------------------------------------------------
// Static __shared__ variables are shared by all fibers of a block (blocks run one at a time);
// one linker section holds them all so that every block start can poison them.
#undef __shared__
#define __shared__ static __attribute__((section("cuda_emu_shared")))
#undef __launch_bounds__
#define __launch_bounds__(...)
#define threadIdx (::cuda_emu::current().idx)
#define blockIdx ::cuda_emu::block_idx
#define blockDim ::cuda_emu::block_dim
#define gridDim ::cuda_emu::grid_dim

// ---- synchronisation and warp intrinsics -----------------------------------------------------
#define MPT_EMU_STR2(x) #x
#define MPT_EMU_STR(x) MPT_EMU_STR2(x)
#define __syncthreads() ::cuda_emu::barrier_sync(0, 0, __FILE__ ":" MPT_EMU_STR(__LINE__))
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cuda_emu::syncwarp(mask); }

namespace cuda_emu {
template <typename T>
T shfl_any(ShflMode mode, unsigned mask, T v, uint32_t b, uint32_t c) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = shfl_sync(mode, mask, u, b, c);
  std::memcpy(&v, &u, 4);
  return v;
}
// The c operand CUDA's headers pass for a shuffle of `width` lanes.
inline uint32_t shfl_c(int width) { return (uint32_t(32 - width) << 8) | 0x1f; }
}  // namespace cuda_emu

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::cuda_emu::shfl_any(::cuda_emu::ShflMode::kBfly, mask, v, lane_mask,
                              ::cuda_emu::shfl_c(width));
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::cuda_emu::shfl_any(::cuda_emu::ShflMode::kIdx, mask, v, src_lane,
                              ::cuda_emu::shfl_c(width));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::cuda_emu::shfl_any(::cuda_emu::ShflMode::kDown, mask, v, delta,
                              ::cuda_emu::shfl_c(width));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::cuda_emu::shfl_any(::cuda_emu::ShflMode::kUp, mask, v, delta,
                              uint32_t(32 - width) << 8);
}

// ---- memory and bit casts ----------------------------------------------------------------------
template <typename T>
T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }

// ---- math as nvcc --use_fast_math compiles it (-ftz=true: MXCSR FTZ | DAZ during launches) -----
// Division (div.approx, rcp.approx under -prec-div=false) stays IEEE here: within 2 ulp of it.
inline float rsqrtf(float x) { return ::cuda_emu::rsqrt_approx_ftz(x); }
#define exp2f(x) ::cuda_emu::ex2_approx_ftz(x)
#define log2f(x) ::cuda_emu::lg2_approx_ftz(x)
#define tanhf(x) ::cuda_emu::tanh_approx(x)

// ---- integer min / max (CUDA's device overloads) ---------------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
