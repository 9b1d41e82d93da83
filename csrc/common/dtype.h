// Element types the kernels accept, without pulling in torch headers.
#pragma once

namespace mpt_ext {

// kFloat64 exists for the CPU kernels only: float64 gradcheck runs through the real ops.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

}  // namespace mpt_ext
