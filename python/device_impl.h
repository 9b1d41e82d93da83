// What turns a kernel entry point (csrc/<family>/<family>.h) into one device's implementation
// of a torch op: the stream it launches on, how its errors reach Python, and what stands in
// for the kernels of a CUDA family that this build does not dispatch to.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

// The kernels of a CUDA family this build does not dispatch to (python/<family>_ops.cpp
// registers them in its place): the op's checks still run, so bad input keeps its ValueError /
// TypeError and empty input its empty result; a real call raises NotImplementedError naming the
// public functions, never a silent slow path.
[[noreturn]] inline void cuda_family_not_enabled(const char* family, const char* used_by) {
#ifdef MPT_EXT_WITH_CUDA
  TORCH_CHECK_NOT_IMPLEMENTED(false, "mpt_ext ", used_by,
                              " has no kernel for CUDA tensors: this build does not enable the "
                              "CUDA kernel family '", family, "' (enable it with CMake's "
                              "-DMPT_EXT_CUDA_OPS=", family, " once its tests pass on a GPU)");
#else
  TORCH_CHECK_NOT_IMPLEMENTED(false, "mpt_ext ", used_by, " has no kernel for CUDA tensors: "
                              "mpt_ext was built without CUDA (no nvcc at build time)");
#endif
}

}  // namespace mpt_ext
