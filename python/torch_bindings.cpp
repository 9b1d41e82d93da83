// The op schemas: the whole surface torch sees, on one page. Each op has one name from Python
// to the kernel: attn_fwd is registered per device in attn_ops.cpp, runs attn_fwd_cpu /
// attn_fwd_cuda (csrc/attn/attn.h) and launches attn_fwd_kernel. Fake (meta) kernels and
// autograd are registered from Python: mpt_ext/attention.py and mpt_ext/norm.py.
// docs/ARCHITECTURE.md traces one call through every layer.
#include "device_impl.h"

MPT_EXT_OPS_LIBRARY(m) {
  m.def(
      "attn_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, Tensor? alibi_slopes, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap, bool deterministic=False, "
      "Tensor? block_table=None) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
      "Tensor? alibi_slopes, float softmax_scale, bool causal, int window_left, "
      "int window_right, float softcap, bool deterministic, bool compute_dslopes, "
      "Tensor? block_table=None) "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dslopes)");
  m.def(
      "attn_kvcache(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k, Tensor? v, "
      "Tensor? rotary_cos, Tensor? rotary_sin, Tensor? cache_seqlens, Tensor? cache_batch_idx, "
      "Tensor? cache_leftpad, Tensor? block_table, Tensor? alibi_slopes, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap, bool rotary_interleaved, "
      "int num_splits) "
      "-> (Tensor out, Tensor lse)");
  // A bad cu_seqlens / cache_seqlens the CUDA kernels noted on `device` since the last check
  // (csrc/common/device_input_errors.h), raised as a ValueError; the caller synchronises first.
  m.def("raise_device_input_errors(int device) -> ()");
  m.def(
      "norm_fwd(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, float eps, "
      "bool is_rms) -> (Tensor y, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def(
      "norm_bwd(Tensor dy, Tensor? dresidual_out, Tensor x, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor rstd, bool is_rms) -> (Tensor dx, Tensor dweight, Tensor dbias)");
}
