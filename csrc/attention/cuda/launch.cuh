// Host-side helpers shared by the attention launchers: launch checks, alignment facts,
// shared-memory opt-in. Kernel failures surface as exceptions naming the kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "../attention_params.h"

namespace mpt_ext::attn_cuda {

// MPT_EXT_CUDA_SYNC=1 synchronises after every launch, so that an asynchronous fault is
// reported against the kernel that caused it (debugging only: it serialises the stream).
inline bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("MPT_EXT_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

inline void check_launch(const char* kernel, cudaStream_t stream) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && sync_after_launch()) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext attention: CUDA kernel ") + kernel +
                             " failed: " + cudaGetErrorString(e));
  }
}

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext attention: ") + what + ": " +
                             cudaGetErrorString(e));
  }
}

// True when every row start of a 16-bit tensor is 16-byte aligned (cp.async can be used).
inline bool rows_16b_aligned(const void* ptr, const TensorStrides& s, bool varlen) {
  const bool strides_ok = s.row % 8 == 0 && s.head % 8 == 0 && (varlen || s.batch % 8 == 0);
  return ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && strides_ok;
}

// True when element pairs (even column) are 4-byte aligned (32-bit stores).
inline bool pairs_4b_aligned(const void* ptr, const TensorStrides& s, bool varlen) {
  const bool strides_ok = s.row % 2 == 0 && s.head % 2 == 0 && (varlen || s.batch % 2 == 0);
  return ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 4 == 0 && strides_ok;
}

// Opts the kernel into `bytes` of dynamic shared memory (needed above 48 KB), after checking
// the device has that much.
inline void set_smem(const void* kernel, int bytes, const char* name) {
  int dev = 0, optin = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "cudaDeviceGetAttribute");
  if (bytes > optin) {
    throw std::runtime_error(std::string("mpt_ext attention: kernel ") + name + " needs " +
                             std::to_string(bytes) + " bytes of shared memory, the device allows " +
                             std::to_string(optin));
  }
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             name);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid y / z carry heads and batch: both must fit CUDA's 65535 limit.
inline void check_grid_yz(int64_t y, int64_t z, const char* name) {
  if (y > 65535 || z > 65535) {
    throw std::invalid_argument(std::string("mpt_ext attention (CUDA): ") + name +
                                " supports at most 65535 heads and 65535 sequences per call");
  }
}

}  // namespace mpt_ext::attn_cuda
