// Host-side CUDA helpers every kernel family's launchers use: launch checks, runtime-call
// checks, device queries and the dynamic shared-memory opt-in. Failures are exceptions that
// name the kernel or the call; the bindings turn them into Python errors. Device facts do not
// change while the process runs: the queries are made once per device (per kernel) and
// remembered, so a launch costs one cudaGetDevice rather than driver queries.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "device_input_errors.h"
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

inline int current_device();

// After every kernel launch: surfaces a bad launch configuration (and, under
// MPT_EXT_CUDA_SYNC, any fault the kernel hit and any bad sequence length it noted) as an
// exception naming the kernel.
inline void check_launch(const char* kernel, cudaStream_t stream) {
  cudaError_t e = cudaGetLastError();
  const bool synced = e == cudaSuccess && sync_after_launch();
  if (synced) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext: CUDA kernel ") + kernel + " failed: " +
                             cudaGetErrorString(e));
  }
  if (synced) raise_input_errors(current_device());
}

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("mpt_ext: ") + what + " failed: " +
                             cudaGetErrorString(e));
  }
}

inline int current_device() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

// An int computed once per key, thread-safe. compute() runs outside the lock, so it may use
// other caches; two threads racing on a new key both compute it and agree.
template <typename Key>
class HostCache {
 public:
  template <typename Compute>
  int get(const Key& key, Compute compute) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = values_.find(key);
      if (it != values_.end()) return it->second;
    }
    const int value = compute();
    std::lock_guard<std::mutex> lock(mutex_);
    return values_.emplace(key, value).first->second;
  }

 private:
  std::mutex mutex_;
  std::map<Key, int> values_;
};

inline int device_attribute(cudaDeviceAttr attr, const char* what) {
  const int dev = current_device();
  auto ask = [&] {
    int value = 0;
    check_cuda(cudaDeviceGetAttribute(&value, attr, dev), what);
    return value;
  };
#ifdef MPT_EXT_CUDA_EMULATION
  return ask();  // the tests change the emulated device (its SM count): never cached
#else
  static HostCache<std::tuple<int, int>> cache;
  return cache.get({dev, static_cast<int>(attr)}, ask);
#endif
}

inline int sm_count() {
  return device_attribute(cudaDevAttrMultiProcessorCount,
                          "cudaDeviceGetAttribute(multiProcessorCount)");
}

// Resident blocks of `kernel` per SM at this block size and dynamic shared memory.
inline int max_active_blocks_per_sm(const void* kernel, int threads, size_t smem_bytes) {
  static HostCache<std::tuple<const void*, int, int, size_t>> cache;
  return cache.get({kernel, current_device(), threads, smem_bytes}, [&] {
    int blocks = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem_bytes),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return blocks;
  });
}

// Opts the kernel into `bytes` of dynamic shared memory (needed above 48 KB), after checking
// the current device has that much. Done once per (kernel, device): the opt-in is a limit,
// so a later call asking for no more is already satisfied.
inline void set_smem(const void* kernel, int bytes, const char* name) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int>, int> opted;  // -> the limit set
  const std::tuple<const void*, int> key{kernel, current_device()};
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = opted.find(key);
    if (it != opted.end() && it->second >= bytes) return;
  }
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                     "cudaDeviceGetAttribute(maxSharedMemoryPerBlockOptin)");
  if (bytes > optin) {
    throw std::runtime_error(std::string("mpt_ext: kernel ") + name + " needs " +
                             std::to_string(bytes) + " bytes of shared memory, the device allows " +
                             std::to_string(optin));
  }
  std::lock_guard<std::mutex> lock(mutex);  // held across the call: no smaller limit after ours
  int& limit = opted[key];
  if (limit >= bytes) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             name);
  limit = bytes;
}

}  // namespace mpt_ext
