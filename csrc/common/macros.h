// Host/device qualifiers usable from both g++ and nvcc translation units.
#pragma once

#if defined(__CUDACC__)
#define MPT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MPT_HOST_DEVICE inline
#endif
