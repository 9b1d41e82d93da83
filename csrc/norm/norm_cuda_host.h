// Host side of the CUDA norm kernels that needs the CUDA runtime: launch checks and device
// queries.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mpt_ext::norm_cuda {

// ---- host helpers ----------------------------------------------------------------------------
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext ") + what + ": CUDA launch failed: " +
                             cudaGetErrorString(err));
  }
}

inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    throw std::runtime_error("mpt_ext norm: cannot query the CUDA device");
  }
  return sms;
}

}  // namespace mpt_ext::norm_cuda
