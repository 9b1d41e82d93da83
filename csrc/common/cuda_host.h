// Host-side CUDA helpers every kernel family's launchers use: launch checks, runtime-call
// checks, device queries and the dynamic shared-memory opt-in. Failures are exceptions that
// name the kernel or the call; the bindings turn them into Python errors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "host_device.h"

namespace mpt_ext {

// Every launch goes through here: kernel<<<grid, block, smem_bytes, stream>>>(args...). The
// emulation build (tests/cuda_emulation, MPT_EXT_CUDA_EMULATION) runs the same launchers with
// the kernel executed on the CPU, block by block.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                   cudaStream_t stream, const Args&... args) {
#ifdef MPT_EXT_CUDA_EMULATION
  (void)stream;
  cuda_emu::launch(reinterpret_cast<const void*>(kernel), grid, block, smem_bytes,
                   [=] { kernel(args...); });
#else
  kernel<<<grid, block, smem_bytes, stream>>>(args...);
#endif
}

// MPT_EXT_CUDA_SYNC=1 synchronises after every launch, so that an asynchronous fault is
// reported against the kernel that caused it (debugging only: it serialises the stream).
inline bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("MPT_EXT_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

// After every kernel launch: surfaces a bad launch configuration (and, under
// MPT_EXT_CUDA_SYNC, any fault the kernel hit) as an exception naming the kernel.
inline void check_launch(const char* kernel, cudaStream_t stream) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && sync_after_launch()) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext: CUDA kernel ") + kernel + " failed: " +
                             cudaGetErrorString(e));
  }
}

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext: ") + what + " failed: " +
                             cudaGetErrorString(e));
  }
}

inline int device_attribute(cudaDeviceAttr attr, const char* what) {
  int dev = 0, value = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&value, attr, dev), what);
  return value;
}

inline int sm_count() {
  return device_attribute(cudaDevAttrMultiProcessorCount,
                          "cudaDeviceGetAttribute(multiProcessorCount)");
}

// Opts the kernel into `bytes` of dynamic shared memory (needed above 48 KB), after checking
// the current device has that much.
inline void set_smem(const void* kernel, int bytes, const char* name) {
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                     "cudaDeviceGetAttribute(maxSharedMemoryPerBlockOptin)");
  if (bytes > optin) {
    throw std::runtime_error(std::string("mpt_ext: kernel ") + name + " needs " +
                             std::to_string(bytes) + " bytes of shared memory, the device allows " +
                             std::to_string(optin));
  }
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             name);
}

}  // namespace mpt_ext
