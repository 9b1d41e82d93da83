// Plain parameter block for LayerNorm / RMSNorm over the last dimension of a
// (rows, hidden) view. No torch types.
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace mpt_ext {

struct NormFwdParams {
  int64_t rows = 0;
  int64_t hidden = 0;
  bool is_rms = false;  // RMSNorm: no mean subtraction, no bias
  float eps = 1e-5f;

  DType x_dtype = DType::kFloat32;  // x, residual, y, residual_out
  DType w_dtype = DType::kFloat32;  // weight, bias (may be fp32 while x is bf16)

  const void* x = nullptr;         // (rows, hidden), row stride x_row_stride, contiguous rows
  const void* residual = nullptr;  // optional, same shape and dtype as x
  const void* weight = nullptr;    // optional (hidden)
  const void* bias = nullptr;      // optional (hidden); LayerNorm only
  void* y = nullptr;
  void* residual_out = nullptr;  // x + residual, written when residual != nullptr
  float* mean = nullptr;         // (rows) fp32; LayerNorm only
  float* rstd = nullptr;         // (rows) fp32
  int64_t x_row_stride = 0, residual_row_stride = 0, y_row_stride = 0, residual_out_row_stride = 0;

  void* stream = nullptr;
};

struct NormBwdParams {
  int64_t rows = 0;
  int64_t hidden = 0;
  bool is_rms = false;
  DType x_dtype = DType::kFloat32;
  DType w_dtype = DType::kFloat32;

  const void* dy = nullptr;
  const void* x = nullptr;  // the normalised input: x, or x + residual when fused
  const void* weight = nullptr;
  const float* mean = nullptr;
  const float* rstd = nullptr;
  const void* dresidual_out = nullptr;  // optional: gradient flowing into residual_out
  void* dx = nullptr;                   // also the residual's gradient when fused
  float* dweight = nullptr;  // (hidden) fp32, null when no weight
  float* dbias = nullptr;    // (hidden) fp32, null when no bias
  int64_t dy_row_stride = 0, x_row_stride = 0, dresidual_out_row_stride = 0, dx_row_stride = 0;

  void* workspace = nullptr;  // partial dweight/dbias sums (size from norm_bwd_workspace_bytes_<device>)
  int64_t workspace_bytes = 0;
  void* stream = nullptr;
};

}  // namespace mpt_ext
