// The ops as registered with torch (schemas in torch_bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace mpt_ext {

std::tuple<at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v,
                                            const std::optional<at::Tensor>& cu_seqlens_q,
                                            const std::optional<at::Tensor>& cu_seqlens_k,
                                            int64_t max_seqlen_q, int64_t max_seqlen_k,
                                            const std::optional<at::Tensor>& alibi_slopes,
                                            double softmax_scale, bool causal, int64_t window_left,
                                            int64_t window_right, double softcap,
                                            bool deterministic);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool deterministic,
    bool compute_dslopes);

std::tuple<at::Tensor, at::Tensor> attn_kvcache(
    const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
    const std::optional<at::Tensor>& k_new, const std::optional<at::Tensor>& v_new,
    const std::optional<at::Tensor>& cache_seqlens, const std::optional<at::Tensor>& alibi_slopes,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    int64_t num_splits);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_fwd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, double eps,
    bool is_rms);

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd(
    const at::Tensor& dy, const std::optional<at::Tensor>& dresidual_out, const at::Tensor& x,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mean, const at::Tensor& rstd, bool is_rms);

}  // namespace mpt_ext
