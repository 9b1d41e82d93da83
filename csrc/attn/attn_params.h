// Plain parameter blocks for the attention kernels (attn_fwd, attn_bwd; attn_kvcache builds on
// AttnFwdParams): raw pointers, element strides and
// sizes. No torch types, so kernels build and test on their own.
//
// Layouts (strides in elements, last dim contiguous):
//   batched: q (batch, seqlen_q, heads, head_dim), k/v (batch, seqlen_k, heads_k, head_dim),
//            lse (batch, heads, seqlen_q)
//   varlen : cu_seqlens_q/k != nullptr; q (total_q, heads, head_dim); sequence b holds rows
//            [cu_seqlens_q[b], cu_seqlens_q[b+1]); lse (heads, total_q).
// Row r of sequence b lives at base + seq_offset(b) + r * row_stride + h * head_stride, with
// seq_offset(b) = b * batch_stride (batched) or cu_seqlens[b] * row_stride (varlen).
#pragma once

#include <cstdint>

#include "../common/dtype.h"
#include "../common/page_table.h"

namespace mpt_ext {

struct AttnShape {
  int64_t batch = 0;
  int64_t seqlen_q = 0;  // batched: the length; varlen: an upper bound (max_seqlen_q)
  int64_t seqlen_k = 0;  // batched: the length; varlen: an upper bound (max_seqlen_k)
  int64_t num_heads = 0;
  int64_t num_heads_k = 0;  // num_heads % num_heads_k == 0 (GQA / MQA)
  int64_t head_dim = 0;
  const int32_t* cu_seqlens_q = nullptr;  // (batch + 1), device of q; null when batched
  const int32_t* cu_seqlens_k = nullptr;
  int64_t total_q = 0;  // varlen: rows of q and k, the bound every cu_seqlens value must keep
  int64_t total_k = 0;
  // CUDA varlen: the host never reads cu_seqlens; the kernels check each sequence and note a
  // bad one here (../common/device_input_errors.h). Null on the CPU, which checks on the host.
  int32_t* input_errors = nullptr;
};

struct AttnMaskParams {
  // double so that the CPU's float64 path is float64-exact; the CUDA kernels round to float.
  double softmax_scale = 1.0;
  double softcap = 0.0;  // > 0: score = softcap * tanh(score / softcap), before ALiBi
  bool causal = false;
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded
  const float* alibi_slopes = nullptr;  // fp32, slope(b, h) = alibi_slopes[b * alibi_batch_stride + h]
  int64_t alibi_batch_stride = 0;       // 0 for slopes of shape (heads,)
  // CPU float64 only (gradcheck): alibi_slopes (and dslopes) actually hold doubles.
  bool alibi_slopes_fp64 = false;
};

struct TensorStrides {
  int64_t batch = 0;  // unused for varlen
  int64_t row = 0;
  int64_t head = 0;
};

struct AttnFwdParams {
  AttnShape shape;
  AttnMaskParams mask;
  DType dtype = DType::kFloat32;  // q, k, v, out share it

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // fp32, natural-log logsumexp of the scaled, capped, biased scores
  TensorStrides q_strides, k_strides, v_strides, out_strides;
  // Varlen only (flash_attn_varlen_func's block_table): k / v are pages (num_pages, page_size,
  // heads_k, head_dim), k_strides.batch the page stride, and key j of sequence b is position j
  // of its pages; cu_seqlens_k then only gives the sequences' lengths. Null: k / v rows.
  PageTable kv_pages;
  int64_t lse_batch_stride = 0;  // batched: heads * seqlen_q; varlen: unused (row = cu_seqlens_q[b] + i)
  int64_t lse_head_stride = 0;   // batched: seqlen_q; varlen: total_q

  void* stream = nullptr;  // cudaStream_t for CUDA kernels; ignored on CPU
};

struct AttnBwdParams {
  AttnFwdParams fwd;  // q, k, v, out, lse as the forward wrote them

  const void* dout = nullptr;
  TensorStrides dout_strides;
  void* dq = nullptr;  // same dtype as q; GQA-reduced dk, dv have k's shape
  void* dk = nullptr;
  void* dv = nullptr;
  TensorStrides dq_strides, dk_strides, dv_strides;
  float* dslopes = nullptr;  // null: not wanted; else same layout as mask.alibi_slopes
  bool deterministic = false;

  // Scratch the caller allocates (size from attn_bwd_workspace_bytes_<device>); may be null
  // when the device needs none.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

}  // namespace mpt_ext
