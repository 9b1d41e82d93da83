// Host/device qualifiers and integer helpers usable from both g++ and nvcc translation units.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MPT_HOST_DEVICE __host__ __device__ __forceinline__
#define MPT_NOINLINE __noinline__
#else
#define MPT_HOST_DEVICE inline
#define MPT_NOINLINE __attribute__((noinline))  // g++ (the emulation build) has no __noinline__
#endif

namespace mpt_ext {

MPT_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mpt_ext
