#include "backend.h"

#include <c10/util/Exception.h>

#include <stdexcept>

#ifdef MPT_EXT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "../csrc/attention/attention_cuda.h"
#include "../csrc/norm/norm_cuda.h"
#endif

namespace mpt_ext::backend {
namespace {

#ifdef MPT_EXT_WITH_CUDA
constexpr const char* kNoCudaKernel =
    "this CUDA kernel is not enabled in this build (enable verified kernels with "
    "-DMPT_EXT_CUDA_OPS=norm;attention;decode)";
#else
constexpr const char* kNoCudaKernel = "mpt_ext was built without CUDA (no nvcc at build time)";
#endif

[[noreturn]] void not_implemented(const c10::Device& device, const char* op, const char* why) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "mpt_ext.", op, " has no kernel for device ", device, ": ",
                              why);
}

#ifdef MPT_EXT_WITH_CUDA
void* current_stream(const c10::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

// Kernels (no torch headers) reject bad input with std::invalid_argument; surface it as
// Python's ValueError like the bindings' own checks, not as a RuntimeError.
template <typename F>
auto value_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
    throw;  // not reached; keeps non-void instances well formed
  }
}
#endif

}  // namespace

void attention_fwd(const c10::Device& device, AttentionFwdParams& p) {
  if (device.is_cpu()) return attention_fwd_cpu(p);
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_ATTENTION)
  if (device.is_cuda()) {
    p.stream = current_stream(device);
    return value_errors([&] { attention_fwd_cuda(p); });
  }
#endif
  not_implemented(device, "attention forward", kNoCudaKernel);
}

void attention_bwd(const c10::Device& device, AttentionBwdParams& p) {
  if (device.is_cpu()) return attention_bwd_cpu(p);
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_ATTENTION)
  if (device.is_cuda()) {
    p.fwd.stream = current_stream(device);
    return value_errors([&] { attention_bwd_cuda(p); });
  }
#endif
  not_implemented(device, "attention backward", kNoCudaKernel);
}

void attention_kvcache(const c10::Device& device, AttentionKVCacheParams& p) {
  if (device.is_cpu()) return attention_kvcache_cpu(p);
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_DECODE)
  if (device.is_cuda()) {
    p.fwd.stream = current_stream(device);
    return value_errors([&] { attention_kvcache_cuda(p); });
  }
#endif
  not_implemented(device, "flash_attn_with_kvcache", kNoCudaKernel);
}

void norm_fwd(const c10::Device& device, NormFwdParams& p) {
  if (device.is_cpu()) return norm_fwd_cpu(p);
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_NORM)
  if (device.is_cuda()) {
    p.stream = current_stream(device);
    return norm_fwd_cuda(p);
  }
#endif
  not_implemented(device, "layer_norm / rms_norm", kNoCudaKernel);
}

void norm_bwd(const c10::Device& device, NormBwdParams& p) {
  if (device.is_cpu()) return norm_bwd_cpu(p);
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_NORM)
  if (device.is_cuda()) {
    p.stream = current_stream(device);
    return norm_bwd_cuda(p);
  }
#endif
  not_implemented(device, "layer_norm / rms_norm backward", kNoCudaKernel);
}

int64_t attention_bwd_workspace_bytes(const c10::Device& device, const AttentionBwdParams& p) {
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_ATTENTION)
  if (device.is_cuda()) {
    return value_errors([&] { return attention_bwd_workspace_bytes_cuda(p); });
  }
#endif
  (void)device;
  (void)p;
  return 0;
}

int64_t attention_kvcache_workspace_bytes(const c10::Device& device,
                                          const AttentionKVCacheParams& p) {
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_DECODE)
  if (device.is_cuda()) return value_errors([&] { return attention_kvcache_workspace_bytes_cuda(p); });
#endif
  (void)device;
  (void)p;
  return 0;
}

int64_t norm_bwd_workspace_bytes(const c10::Device& device, const NormBwdParams& p) {
#if defined(MPT_EXT_WITH_CUDA) && defined(MPT_EXT_HAS_CUDA_NORM)
  if (device.is_cuda()) return norm_bwd_workspace_bytes_cuda(p);
#endif
  (void)device;
  (void)p;
  return 0;
}

}  // namespace mpt_ext::backend
