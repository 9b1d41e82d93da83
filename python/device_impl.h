// What turns a kernel entry point (csrc/<family>/<family>.h) into one device's implementation
// of a torch op: the stream it launches on, how its errors reach Python, and what stands in
// for the kernels of a CUDA family that this build does not dispatch to.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <stdexcept>

#ifdef MPT_EXT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

// Where the ops live and who implements them. The normal build: the schemas in the mpt_ext
// namespace, each family's op bodies registered with its CPU kernels under the CPU key and
// its CUDA kernels under CUDA. The emulation build (tests/cuda_emulation defines
// MPT_EXT_CUDA_EMULATION) compiles the CUDA kernels for the CPU and registers the bodies with
// them alone, under the CPU key of its own namespace, mpt_ext_emu (loadable beside mpt_ext):
// CPU tensors in, the CUDA kernels' code run. register_ops<Kernels>(m) m.impl()s a family's ops.
// MPT_EXT_OPS_ANY_DEVICE(m) registers ops that take no tensor (CompositeExplicitAutograd).
#ifdef MPT_EXT_CUDA_EMULATION
#define MPT_EXT_OPS_LIBRARY(m) TORCH_LIBRARY(mpt_ext_emu, m)
#define MPT_EXT_OPS_ANY_DEVICE(m) TORCH_LIBRARY_IMPL(mpt_ext_emu, CompositeExplicitAutograd, m)
#define MPT_EXT_REGISTER_DEVICES(register_ops, CpuKernels, CudaKernels) \
  TORCH_LIBRARY_IMPL(mpt_ext_emu, CPU, m) { register_ops<CudaKernels>(m); }
#else
#define MPT_EXT_OPS_LIBRARY(m) TORCH_LIBRARY(mpt_ext, m)
#define MPT_EXT_OPS_ANY_DEVICE(m) TORCH_LIBRARY_IMPL(mpt_ext, CompositeExplicitAutograd, m)
#define MPT_EXT_REGISTER_DEVICES(register_ops, CpuKernels, CudaKernels) \
  TORCH_LIBRARY_IMPL(mpt_ext, CPU, m) { register_ops<CpuKernels>(m); }  \
  TORCH_LIBRARY_IMPL(mpt_ext, CUDA, m) { register_ops<CudaKernels>(m); }
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
