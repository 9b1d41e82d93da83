// Argument checks for the bindings. Every failure names the argument and says what was
// expected; TORCH_CHECK_VALUE / _TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "../csrc/common/dtype.h"

namespace mpt_ext {

inline DType to_dtype(const at::Tensor& t, const char* name, bool allow_fp64) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble:
      TORCH_CHECK_TYPE(allow_fp64, name, " must be float16, bfloat16 or float32 on ",
                       t.device().type(), ", got float64 (float64 is CPU-only)");
      return DType::kFloat64;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float16, bfloat16, float32 (or float64 on CPU), got ",
                       t.scalar_type());
  }
  return DType::kFloat32;
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
                    " (", ref.device(), "), got ", t.device());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions ", layout, ", got shape ",
                    t.sizes());
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.numel() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, name,
                    " must have a contiguous last dimension (stride 1), got strides ", t.strides());
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                             const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ",
                   ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

// t must have ref's dtype and device and a contiguous last dimension (the kernels' rows).
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  check_same_dtype(t, name, ref, ref_name);
  check_same_device(t, name, ref, ref_name);
  check_last_dim_contiguous(t, name);
}

}  // namespace mpt_ext
