// What turns a kernel entry point (csrc/<family>/<family>.h) into one device's implementation
// of a torch op: the stream it launches on, how its errors reach Python, and what a CUDA
// family that this build does not dispatch to answers instead.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <memory>
#include <stdexcept>

#ifdef MPT_EXT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace mpt_ext {

// The current CUDA stream of t's device (null on the CPU): kernels launch on the caller's
// stream, under the device guard the op holds.
inline void* stream_for(const at::Tensor& t) {
#ifdef MPT_EXT_WITH_CUDA
  if (t.is_cuda()) return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
  return nullptr;
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

#ifdef MPT_EXT_WITH_CUDA
#define MPT_EXT_NO_CUDA_KERNEL_WHY                                                            \
  "its CUDA kernel family is not enabled in this build (CMake -DMPT_EXT_CUDA_OPS lists the " \
  "enabled ones: norm;attn;attn_kvcache)"
#else
#define MPT_EXT_NO_CUDA_KERNEL_WHY "mpt_ext was built without CUDA (no nvcc at build time)"
#endif

// The CUDA implementation of an op whose family is not enabled: NotImplementedError naming
// the op and its public functions, never a silent slow path.
class CudaKernelNotEnabled final : public c10::OperatorKernel {
 public:
  explicit CudaKernelNotEnabled(const char* used_by) : used_by_(used_by) {}
  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack*) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, op.schema().name(), " (", used_by_,
                                ") has no kernel for CUDA tensors: ", MPT_EXT_NO_CUDA_KERNEL_WHY);
  }

 private:
  const char* used_by_;
};

inline void register_cuda_not_enabled(torch::Library& m, const char* op, const char* used_by) {
  m.impl(op, torch::CppFunction::makeFromBoxedFunctor(
                 std::make_unique<CudaKernelNotEnabled>(used_by)));
}

}  // namespace mpt_ext
