// CUDA attention entry points: validate what the kernels assume, pick the head-dim bucket
// and element type, and call the instantiated launcher. Backward workspace sizing lives
// here too so that query and use can never disagree.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "../attention_cuda.h"
#include "bwd_workspace.h"
#include "hdims.cuh"
#include "instantiations.h"

namespace mpt_ext {
namespace {

// Smallest compiled bucket holding head_dim (smaller head dims run zero-padded).
int head_dim_bucket(int64_t d) {
  if (d < 1 || d > 256) {
    throw std::invalid_argument("mpt_ext attention (CUDA): head_dim must be in [1, 256], got " +
                                std::to_string(d));
  }
  if (MPT_ATTN_HDIM_64 && d <= 64) return 64;
  if (MPT_ATTN_HDIM_128 && d <= 128) return 128;
  if (MPT_ATTN_HDIM_256) return 256;
  throw std::invalid_argument("mpt_ext attention (CUDA): head_dim " + std::to_string(d) +
                              " needs a head-dim bucket this build left out (MPT_EXT_HEAD_DIMS)");
}

void check_dtype(DType t) {
  if (t != DType::kFloat16 && t != DType::kBFloat16) {
    throw std::invalid_argument(std::string("mpt_ext attention: q dtype ") + dtype_name(t) +
                                " is not supported on CUDA, use bf16/fp16");
  }
}

void check_heads(const AttentionShape& s) {
  if (s.num_heads_k <= 0 || s.num_heads % s.num_heads_k != 0) {
    throw std::invalid_argument("mpt_ext attention (CUDA): num_heads must be a multiple of "
                                "num_heads_k");
  }
  if (s.seqlen_q > INT32_MAX / 2 || s.seqlen_k > INT32_MAX / 2) {
    throw std::invalid_argument("mpt_ext attention (CUDA): sequence lengths must be < 2^30");
  }
}

template <typename T>
void fwd_for_type(const AttentionFwdParams& p, int bucket) {
  switch (bucket) {
#if MPT_ATTN_HDIM_64
    case 64: return attn_cuda::run_attention_fwd<T, 64>(p);
#endif
#if MPT_ATTN_HDIM_128
    case 128: return attn_cuda::run_attention_fwd<T, 128>(p);
#endif
#if MPT_ATTN_HDIM_256
    case 256: return attn_cuda::run_attention_fwd<T, 256>(p);
#endif
    default: break;
  }
  throw std::logic_error("mpt_ext attention (CUDA): no forward kernel for this bucket");
}

template <typename T>
void bwd_for_type(const AttentionBwdParams& p, int bucket) {
  switch (bucket) {
#if MPT_ATTN_HDIM_64
    case 64: return attn_cuda::run_attention_bwd<T, 64>(p);
#endif
#if MPT_ATTN_HDIM_128
    case 128: return attn_cuda::run_attention_bwd<T, 128>(p);
#endif
#if MPT_ATTN_HDIM_256
    case 256: return attn_cuda::run_attention_bwd<T, 256>(p);
#endif
    default: break;
  }
  throw std::logic_error("mpt_ext attention (CUDA): no backward kernel for this bucket");
}

}  // namespace

void attention_fwd_cuda(const AttentionFwdParams& p) {
  check_dtype(p.dtype);
  check_heads(p.shape);
  const int bucket = head_dim_bucket(p.shape.head_dim);
  if (p.dtype == DType::kBFloat16) return fwd_for_type<__nv_bfloat16>(p, bucket);
  return fwd_for_type<__half>(p, bucket);
}

int64_t attention_bwd_workspace_bytes_cuda(const AttentionBwdParams& p) {
  return attn_cuda::bwd_workspace_layout(p).total_bytes;
}

void attention_bwd_cuda(const AttentionBwdParams& p) {
  check_dtype(p.fwd.dtype);
  check_heads(p.fwd.shape);
  const int bucket = head_dim_bucket(p.fwd.shape.head_dim);
  if (p.workspace_bytes < attn_cuda::bwd_workspace_layout(p).total_bytes) {
    throw std::invalid_argument("mpt_ext attention (CUDA): backward workspace too small");
  }
  if (p.fwd.dtype == DType::kBFloat16) return bwd_for_type<__nv_bfloat16>(p, bucket);
  return bwd_for_type<__half>(p, bucket);
}

}  // namespace mpt_ext
