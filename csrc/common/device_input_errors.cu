// The words kernels note bad cu_seqlens / cache_seqlens in (device_input_errors.h): one block
// of mapped, pinned host memory per device, so that kernels write it directly and the host
// reads it without a copy or a sync.
#include "device_input_errors.h"

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda_host.h"

namespace mpt_ext {
namespace {

struct Words {
  volatile int32_t* host = nullptr;
  int32_t* device = nullptr;
};

std::mutex words_mutex;
std::map<int, Words> words_by_device;  // never freed: kernels may still write them at exit

// The words of `device`, or null ones if none were allocated (allocate: make them).
Words words_of(int device, bool allocate) {
  std::lock_guard<std::mutex> lock(words_mutex);
  const auto it = words_by_device.find(device);
  if (it != words_by_device.end() || !allocate) {
    return it != words_by_device.end() ? it->second : Words{};
  }
  // Not a stream operation: allowed even if this first call happens inside a CUDA graph
  // capture (which would otherwise refuse a pinned allocation in its global mode).
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  check_cuda(cudaThreadExchangeStreamCaptureMode(&mode), "cudaThreadExchangeStreamCaptureMode");
  void* host = nullptr;
  const cudaError_t alloc = cudaHostAlloc(&host, kSeqlensArgs * sizeof(int32_t),
                                          cudaHostAllocMapped | cudaHostAllocPortable);
  void* device_ptr = nullptr;
  const cudaError_t map =
      alloc == cudaSuccess ? cudaHostGetDevicePointer(&device_ptr, host, 0) : cudaSuccess;
  check_cuda(cudaThreadExchangeStreamCaptureMode(&mode), "cudaThreadExchangeStreamCaptureMode");
  check_cuda(alloc, "cudaHostAlloc(input error words)");
  check_cuda(map, "cudaHostGetDevicePointer(input error words)");
  Words w{static_cast<volatile int32_t*>(host), static_cast<int32_t*>(device_ptr)};
  for (int i = 0; i < kSeqlensArgs; ++i) w.host[i] = 0;
  return words_by_device.emplace(device, w).first->second;
}

std::string what_was_wrong(SeqlensArg arg, int device, int64_t b) {
  const std::string seq = "sequence " + std::to_string(b);
  const std::string where =
      " (checked on the device, without a host sync, so it is reported by the next mpt_ext "
      "attention call on cuda:" + std::to_string(device) +
      " or by mpt_ext.check_device_input_errors())";
  switch (arg) {
    case SeqlensArg::kCuSeqlensQ:
    case SeqlensArg::kCuSeqlensK: {
      const char* name = arg == SeqlensArg::kCuSeqlensQ ? "cu_seqlens_q" : "cu_seqlens_k";
      const char* max = arg == SeqlensArg::kCuSeqlensQ ? "max_seqlen_q" : "max_seqlen_k";
      return std::string("mpt_ext: an earlier varlen attention call was given an invalid ") +
             name + ": " + seq + " needs 0 <= " + name + "[b] <= " + name + "[b + 1] <= the "
             "number of tokens, a length <= " + max + " (and, for cu_seqlens_k with a "
             "block_table, <= the positions of its row of the table), and " + name +
             "[0] == 0. That sequence ran as empty: its rows of the outputs and gradients "
             "were not written" + where;
    }
    case SeqlensArg::kCacheSeqlens:
      return "mpt_ext: an earlier flash_attn_with_kvcache call was given an invalid "
             "cache_seqlens: " + seq + " needs 0 <= cache_seqlens[b] and cache_seqlens[b] + "
             "seqlen_new <= seqlen_cache. That sequence attended to no key (out 0, lse -inf) "
             "and its new keys were not appended" + where;
    case SeqlensArg::kCacheBatchIdx:
      return "mpt_ext: an earlier flash_attn_with_kvcache call was given an invalid "
             "cache_batch_idx: " + seq + " needs 0 <= cache_batch_idx[b] < k_cache.size(0). "
             "That sequence attended to no key (out 0, lse -inf) and its new keys were not "
             "appended" + where;
    case SeqlensArg::kCacheLeftpad:
      return "mpt_ext: an earlier flash_attn_with_kvcache call was given an invalid "
             "cache_leftpad: " + seq + " needs 0 <= cache_leftpad[b] <= cache_seqlens[b]. "
             "That sequence attended to no key (out 0, lse -inf) and its new keys were not "
             "appended" + where;
    case SeqlensArg::kBlockTable:
      return "mpt_ext: an earlier flash_attn_with_kvcache or flash_attn_varlen_func call was "
             "given an invalid block_table: " + seq + " uses an entry outside [0, num_blocks) "
             "(k_cache.size(0), or k's with flash_attn_varlen_func). Its keys on that page "
             "were not read (its output is not valid) and new keys bound for it were not "
             "appended" + where;
  }
  return "mpt_ext: invalid sequence lengths" + where;
}

}  // namespace

void raise_input_errors(int device) {
  const Words w = words_of(device, /*allocate=*/false);
  if (w.host == nullptr) return;
  std::string message;  // every argument one call got wrong, in one error
  for (int i = 0; i < kSeqlensArgs; ++i) {
    // Exchanged, not read then cleared: a kernel's note landing in between is not lost.
    const int32_t noted = __atomic_exchange_n(const_cast<int32_t*>(&w.host[i]), 0,
                                              __ATOMIC_SEQ_CST);
    if (noted == 0) continue;
    message += (message.empty() ? "" : "\n") +
               what_was_wrong(static_cast<SeqlensArg>(i), device, noted - 1);
  }
  if (!message.empty()) throw std::invalid_argument(message);
}

int32_t* checked_input_error_words() {
  const int device = current_device();
  raise_input_errors(device);
  return words_of(device, /*allocate=*/true).device;
}

}  // namespace mpt_ext
