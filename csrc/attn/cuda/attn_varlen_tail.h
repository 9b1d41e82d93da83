// Varlen rows past cu_seqlens[-1] belong to no sequence, so no attention kernel touches them
// (flash-attn leaves them as torch.empty gave them). mpt_ext defines them, as its CPU path
// and the reference do: out 0, lse -inf, gradients 0. The host never reads cu_seqlens
// (../../common/device_input_errors.h), so where the tail starts is read on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

// One tensor whose rows [*start, rows) are filled: rows x heads x cols elements, element
// (r, h, c) at r * row_stride + h * head_stride + c.
struct VarlenTail {
  void* data = nullptr;
  bool lse = false;                // fp32, filled with -inf; else 16-bit, filled with zeros
  const int32_t* start = nullptr;  // &cu_seqlens[batch]; null (no sequence): every row
  int64_t rows = 0;
  int64_t heads = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t head_stride = 0;
};

constexpr int kMaxVarlenTails = 3;  // dq, dk, dv in the backward

// A 16-bit (rows, heads, head_dim) tensor; cu_seqlens of `batch` sequences.
VarlenTail varlen_tail_rows(void* data, const TensorStrides& st, const int32_t* cu_seqlens,
                            int64_t batch, int64_t rows, int64_t heads, int64_t head_dim);
// The varlen lse, (heads, total_q) fp32.
VarlenTail varlen_tail_lse(float* lse, const int32_t* cu_seqlens_q, int64_t batch,
                           int64_t total_q, int64_t heads, int64_t head_stride);

// One launch fills the tails of up to kMaxVarlenTails tensors (empty ones are skipped).
void launch_varlen_tails(const VarlenTail* tails, int count, cudaStream_t stream);

}  // namespace mpt_ext::attn::cuda
