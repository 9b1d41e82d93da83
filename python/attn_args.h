// Checks and params filling that attn_fwd, attn_bwd (attn_ops.cpp) and attn_kvcache
// (attn_kvcache_ops.cpp) share: q/k/v, the mask arguments, the ALiBi slopes, out and lse.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "../csrc/attn/attn_params.h"
#include "checks.h"
#include "device_impl.h"

namespace mpt_ext {

constexpr int64_t kMaxHeadDim = 256;

inline TensorStrides strides_of(const at::Tensor& t) {
  // batched (B, S, H, D) or varlen (T, H, D)
  if (t.dim() == 4) return {t.stride(0), t.stride(1), t.stride(2)};
  return {0, t.stride(0), t.stride(1)};
}

inline void check_mask_args(double softmax_scale, int64_t window_left, int64_t window_right,
                            double softcap) {
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale), "softmax_scale must be finite, got ",
                    softmax_scale);
  TORCH_CHECK_VALUE(window_left >= -1 && window_right >= -1,
                    "window_size must be (left, right) with each >= -1 (-1: unbounded), got (",
                    window_left, ", ", window_right, ")");
  TORCH_CHECK_VALUE(softcap >= 0 && std::isfinite(softcap), "softcap must be >= 0, got ", softcap);
}

// What k and v are besides q's layout: kCache, flash_attn_with_kvcache's k_cache / v_cache
// (named so in errors), which may hold more sequences than q (batch_cache >= batch, checked by
// the caller); kPages, flash_attn_varlen_func's pages when it has a block_table.
enum class KVForm { kLikeQ, kCache, kPages };

inline void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool varlen,
                      KVForm form = KVForm::kLikeQ) {
  const bool kv_cache = form == KVForm::kCache;
  const int64_t dim = varlen ? 3 : 4;
  const char* layout = varlen     ? "(total_tokens, nheads, headdim)"
                       : kv_cache ? "(batch, seqlen_q, nheads, headdim)"
                                  : "(batch, seqlen, nheads, headdim)";
  const char* kv_layout =
      kv_cache                 ? "(batch_cache, seqlen_cache, nheads_k, headdim)"
      : form == KVForm::kPages ? "(num_blocks, page_block_size, nheads_k, headdim)"
                               : layout;
  const char* k_name = kv_cache ? "k_cache" : "k";
  const char* v_name = kv_cache ? "v_cache" : "v";
  const int64_t kv_dim = form == KVForm::kLikeQ ? dim : 4;
  check_dim(q, "q", dim, layout);
  check_dim(k, k_name, kv_dim, kv_layout);
  check_dim(v, v_name, kv_dim, kv_layout);
  to_dtype(q, "q", q.is_cpu());
  // flash-attn's contract: half precision on GPUs (fp32/fp64 exist for the CPU path).
  TORCH_CHECK_TYPE(q.is_cpu() || q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
                   "q must be float16 or bfloat16 on ", q.device(), ", got ", q.scalar_type());
  check_last_dim_contiguous(q, "q");
  check_like(k, k_name, q, "q");
  check_like(v, v_name, q, "q");
  const int64_t d = q.size(-1);
  TORCH_CHECK_VALUE(d >= 1 && d <= kMaxHeadDim, "q's head dim must be in [1, ", kMaxHeadDim,
                    "], got ", d);
  TORCH_CHECK_VALUE(k.size(-1) == d && v.size(-1) == d, "k and v must have q's head dim ", d,
                    ", got k ", k.size(-1), " and v ", v.size(-1));
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "k and v must have the same shape, got k ", k.sizes(),
                    " and v ", v.sizes());
  const int64_t h = q.size(-2), hk = k.size(-2);
  TORCH_CHECK_VALUE(hk >= 1 && h % hk == 0,
                    "the number of heads in k/v must divide the number in q (GQA ratio): q has ",
                    h, " heads, k/v have ", hk);
  if (!varlen && form == KVForm::kLikeQ) {
    TORCH_CHECK_VALUE(k.size(0) == q.size(0), "k and v must have q's batch size ", q.size(0),
                      ", got ", k.size(0));
  }
}

// Slopes of shape (nheads,) or (batch, nheads), fp32, on q's device.
inline void fill_alibi(AttnMaskParams& mask, const std::optional<at::Tensor>& slopes,
                       const at::Tensor& q, int64_t batch, int64_t heads) {
  if (!slopes.has_value()) return;
  const at::Tensor& s = *slopes;
  TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || (q.is_cpu() && s.scalar_type() == at::kDouble &&
                                                     q.scalar_type() == at::kDouble),
                   "alibi_slopes must be float32, got ", s.scalar_type());
  check_same_device(s, "alibi_slopes", q, "q");
  const bool per_head = s.dim() == 1 && s.size(0) == heads;
  const bool per_batch = s.dim() == 2 && s.size(0) == batch && s.size(1) == heads;
  TORCH_CHECK_VALUE(per_head || per_batch, "alibi_slopes must have shape (nheads,) = (", heads,
                    ",) or (batch, nheads) = (", batch, ", ", heads, "), got ", s.sizes());
  TORCH_CHECK_VALUE(s.numel() == 0 || s.stride(-1) == 1,
                    "alibi_slopes must have a contiguous last dimension, got strides ", s.strides());
  mask.alibi_slopes = static_cast<const float*>(s.data_ptr());
  mask.alibi_batch_stride = per_batch ? s.stride(0) : 0;
  mask.alibi_slopes_fp64 = s.scalar_type() == at::kDouble;
}


// The fields every attention op fills the same way: mask arguments, q/k/v pointers and the
// stream.
inline void fill_common(AttnFwdParams& p, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, double softmax_scale, bool causal,
                        int64_t window_left, int64_t window_right, double softcap) {
  p.dtype = to_dtype(q, "q", q.is_cpu());
  p.mask.softmax_scale = softmax_scale;
  p.mask.softcap = softcap;
  p.mask.causal = causal;
  // Any window past 2^40 keys is unbounded in practice; clamping keeps the kernels'
  // position arithmetic (i + sk - sq +- window) far from int64 overflow.
  constexpr int64_t kMaxWindow = int64_t(1) << 40;
  p.mask.window_left = std::min(window_left, kMaxWindow);
  p.mask.window_right = std::min(window_right, kMaxWindow);
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_strides = strides_of(q);
  p.k_strides = strides_of(k);
  p.v_strides = strides_of(v);
  p.stream = stream_for(q);
}

// lse: (batch, heads, seqlen_q), or (heads, total_q) when varlen.
inline std::vector<int64_t> lse_shape(const at::Tensor& q, const AttnShape& s, bool varlen) {
  if (varlen) return {s.num_heads, q.size(0)};
  return {s.batch, s.num_heads, s.seqlen_q};
}

inline void set_lse(AttnFwdParams& p, const at::Tensor& lse, bool varlen) {
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  if (varlen) {
    p.lse_batch_stride = 0;
    p.lse_head_stride = lse.stride(0);
  } else {
    p.lse_batch_stride = lse.stride(0);
    p.lse_head_stride = lse.stride(1);
  }
}

inline void set_out(AttnFwdParams& p, at::Tensor& out, at::Tensor& lse, bool varlen) {
  p.out = out.data_ptr();
  p.out_strides = strides_of(out);
  set_lse(p, lse, varlen);
}

}  // namespace mpt_ext
