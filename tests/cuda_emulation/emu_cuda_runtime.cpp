// The emulated CUDA runtime (emu_cuda_runtime.h): device attributes from
// cuda_emu::device_props(), launch errors from the emulated launches, memory operations on
// host memory (every "device" pointer in the emulation build is a CPU tensor's).
#include "emu_cuda_runtime.h"

#include <cstdlib>
#include <cstring>

#include "emu_runtime.h"

namespace cuda_emu::runtime {

cudaError_t cudaGetLastError() { return cuda_emu::take_last_error(); }
cudaError_t cudaPeekAtLastError() { return cuda_emu::peek_last_error(); }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error (emulated)";
  }
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const cuda_emu::DeviceProps& p = cuda_emu::device_props();
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = p.sm_count; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = p.cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = p.cc_minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = p.smem_per_block_optin; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = p.smem_per_block; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *value = p.max_threads_per_block; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > cuda_emu::device_props().smem_per_block_optin) return cudaErrorInvalidValue;
  cuda_emu::set_max_dynamic_smem(func, value);
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void*, int, size_t) {
  *num_blocks = cuda_emu::device_props().blocks_per_sm;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// Pinned host memory is host memory; mapped, the device sees it at the same address (UVA).
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  *ptr = std::calloc(size == 0 ? 1 : size, 1);
  return *ptr != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

// Nothing is ever captured here: the mode is accepted and handed back unchanged.
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  return mode != nullptr ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaHostGetDevicePointer(void** device_ptr, void* host_ptr, unsigned int flags) {
  if (flags != 0 || host_ptr == nullptr) return cudaErrorInvalidValue;
  *device_ptr = host_ptr;
  return cudaSuccess;
}

}  // namespace cuda_emu::runtime
