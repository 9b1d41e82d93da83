// Op schemas and their registration: the whole surface torch sees. Fake kernels and
// autograd are registered from Python (mpt_ext/_ops.py).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(mpt_ext, m) {
  m.def(
      "attn_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, Tensor? alibi_slopes, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap, bool deterministic=False) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
      "Tensor? alibi_slopes, float softmax_scale, bool causal, int window_left, "
      "int window_right, float softcap, bool deterministic, bool compute_dslopes) "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dslopes)");
  m.def(
      "attn_kvcache(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k, Tensor? v, "
      "Tensor? cache_seqlens, Tensor? alibi_slopes, float softmax_scale, bool causal, "
      "int window_left, int window_right, float softcap, int num_splits) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, float eps, "
      "bool is_rms) -> (Tensor y, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def(
      "norm_bwd(Tensor dy, Tensor? dresidual_out, Tensor x, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor rstd, bool is_rms) -> (Tensor dx, Tensor dweight, Tensor dbias)");
}

// One implementation per op serves both devices; backend.cpp picks the kernel.
#define MPT_EXT_REGISTER_IMPLS(m)         \
  m.impl("attn_fwd", &mpt_ext::attn_fwd);  \
  m.impl("attn_bwd", &mpt_ext::attn_bwd);  \
  m.impl("attn_kvcache", &mpt_ext::attn_kvcache); \
  m.impl("norm_fwd", &mpt_ext::norm_fwd);  \
  m.impl("norm_bwd", &mpt_ext::norm_bwd);

TORCH_LIBRARY_IMPL(mpt_ext, CPU, m) { MPT_EXT_REGISTER_IMPLS(m) }
TORCH_LIBRARY_IMPL(mpt_ext, CUDA, m) { MPT_EXT_REGISTER_IMPLS(m) }
