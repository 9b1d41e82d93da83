// Tensor -> params glue for the attention ops, with every input check. One function per
// op serves CPU and CUDA; the backend is picked from q's device.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "../csrc/attention/attention_params.h"
#include "backend.h"
#include "checks.h"
#include "ops.h"

namespace mpt_ext {
namespace {

constexpr int64_t kMaxHeadDim = 256;

TensorStrides strides_of(const at::Tensor& t) {
  // batched (B, S, H, D) or varlen (T, H, D)
  if (t.dim() == 4) return {t.stride(0), t.stride(1), t.stride(2)};
  return {0, t.stride(0), t.stride(1)};
}

void check_mask_args(double softmax_scale, int64_t window_left, int64_t window_right,
                     double softcap) {
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale), "softmax_scale must be finite, got ",
                    softmax_scale);
  TORCH_CHECK_VALUE(window_left >= -1 && window_right >= -1,
                    "window_size must be (left, right) with each >= -1 (-1: unbounded), got (",
                    window_left, ", ", window_right, ")");
  TORCH_CHECK_VALUE(softcap >= 0 && std::isfinite(softcap), "softcap must be >= 0, got ", softcap);
}

// kv_cache: k and v are flash_attn_with_kvcache's k_cache / v_cache (named so in errors),
// which may hold more sequences than q (batch_cache >= batch, checked by the caller).
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool varlen,
               bool kv_cache = false) {
  const int64_t dim = varlen ? 3 : 4;
  const char* layout = varlen ? "(total_tokens, nheads, headdim)" : "(batch, seqlen, nheads, headdim)";
  const char* k_name = kv_cache ? "k_cache" : "k";
  const char* v_name = kv_cache ? "v_cache" : "v";
  check_dim(q, "q", dim, layout);
  check_dim(k, k_name, dim, layout);
  check_dim(v, v_name, dim, layout);
  to_dtype(q, "q", q.is_cpu());
  // flash-attn's contract: half precision on GPUs (fp32/fp64 exist for the CPU path).
  TORCH_CHECK_TYPE(q.is_cpu() || q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
                   "q must be float16 or bfloat16 on ", q.device(), ", got ", q.scalar_type());
  check_same_dtype(k, k_name, q, "q");
  check_same_dtype(v, v_name, q, "q");
  check_same_device(k, k_name, q, "q");
  check_same_device(v, v_name, q, "q");
  check_last_dim_contiguous(q, "q");
  check_last_dim_contiguous(k, k_name);
  check_last_dim_contiguous(v, v_name);
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
  if (!varlen && !kv_cache) {
    TORCH_CHECK_VALUE(k.size(0) == q.size(0), "k and v must have q's batch size ", q.size(0),
                      ", got ", k.size(0));
  }
}

// Slopes of shape (nheads,) or (batch, nheads), fp32, on q's device.
void fill_alibi(AttentionMaskParams& mask, const std::optional<at::Tensor>& slopes,
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

// cu_seqlens: int32 (batch + 1) on q's device, starting at 0, non-decreasing, each length
// <= max_seqlen, last <= total. Checked on the host: a bad one would index out of bounds.
struct CuSeqlensInfo {
  int64_t last = 0;     // cu[-1]: the number of rows the sequences cover
  int64_t max_len = 0;  // the longest sequence: the kernels' real max_seqlen
};

CuSeqlensInfo check_cu_seqlens(const at::Tensor& cu, const char* name, const at::Tensor& q,
                               int64_t total, int64_t max_seqlen, const char* max_name) {
  TORCH_CHECK_TYPE(cu.scalar_type() == at::kInt, name, " must be int32, got ", cu.scalar_type());
  check_same_device(cu, name, q, "q");
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 1, name,
                    " must be 1-D of size batch + 1, got shape ", cu.sizes());
  const at::Tensor host = cu.is_cpu() ? cu.contiguous() : cu.to(at::kCPU).contiguous();
  const int32_t* c = host.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(c[0] == 0, name, "[0] must be 0, got ", c[0]);
  CuSeqlensInfo info;
  for (int64_t b = 0; b + 1 < host.size(0); ++b) {
    const int64_t len = int64_t(c[b + 1]) - c[b];
    TORCH_CHECK_VALUE(len >= 0, name, " must be non-decreasing, but ", name, "[", b + 1, "] = ",
                      c[b + 1], " < ", name, "[", b, "] = ", c[b]);
    // flash-attn sizes its grid by max_seqlen and silently skips rows past it; refuse instead
    TORCH_CHECK_VALUE(len <= max_seqlen, max_name, " = ", max_seqlen,
                      " is smaller than the longest sequence: sequence ", b, " has length ", len,
                      " in ", name, " (", max_name, " must be >= every sequence length)");
    info.max_len = std::max(info.max_len, len);
  }
  info.last = c[host.size(0) - 1];
  TORCH_CHECK_VALUE(info.last <= total, name, "[-1] = ", info.last,
                    " exceeds the number of tokens (", total, ")");
  return info;
}

// The fields every attention op fills the same way: mask arguments and q/k/v pointers.
void fill_common(AttentionFwdParams& p, const at::Tensor& q, const at::Tensor& k,
                 const at::Tensor& v, double softmax_scale, bool causal, int64_t window_left,
                 int64_t window_right, double softcap) {
  p.dtype = to_dtype(q, "q", q.is_cpu());
  p.mask.softmax_scale = static_cast<float>(softmax_scale);
  p.mask.softcap = static_cast<float>(softcap);
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
}

struct Prepared {
  AttentionFwdParams p;
  bool varlen = false;
  // Contiguous copies (no-ops when already contiguous) that p points into: the kernels index
  // cu_seqlens densely, and the backward writes d(slopes) with the slopes' own layout into a
  // dense buffer, so a strided input would be misread or written out of bounds.
  at::Tensor cu_q, cu_k;
  // Varlen rows past cu_seqlens[-1] belong to no sequence: the kernels never touch them, so
  // their outputs and gradients are filled here (out 0, lse -inf, grads 0), not left as garbage.
  bool uncovered_q = false, uncovered_k = false;
  std::optional<at::Tensor> slopes;
};

Prepared prepare_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& cu_seqlens_q,
                     const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                     int64_t max_seqlen_k, const std::optional<at::Tensor>& alibi_slopes,
                     double softmax_scale, bool causal, int64_t window_left,
                     int64_t window_right, double softcap) {
  TORCH_CHECK_VALUE(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(),
                    "cu_seqlens_q and cu_seqlens_k must be given together");
  Prepared r;
  r.varlen = cu_seqlens_q.has_value();
  check_qkv(q, k, v, r.varlen);
  check_mask_args(softmax_scale, window_left, window_right, softcap);
  AttentionFwdParams& p = r.p;
  AttentionShape& s = p.shape;
  s.num_heads = q.size(-2);
  s.num_heads_k = k.size(-2);
  s.head_dim = q.size(-1);
  if (r.varlen) {
    TORCH_CHECK_VALUE(max_seqlen_q >= 0 && max_seqlen_k >= 0,
                      "max_seqlen_q and max_seqlen_k must be >= 0, got ", max_seqlen_q, " and ",
                      max_seqlen_k);
    const CuSeqlensInfo info_q = check_cu_seqlens(*cu_seqlens_q, "cu_seqlens_q", q, q.size(0),
                                                  max_seqlen_q, "max_seqlen_q");
    const CuSeqlensInfo info_k = check_cu_seqlens(*cu_seqlens_k, "cu_seqlens_k", q, k.size(0),
                                                  max_seqlen_k, "max_seqlen_k");
    r.uncovered_q = info_q.last < q.size(0);
    r.uncovered_k = info_k.last < k.size(0);
    TORCH_CHECK_VALUE(cu_seqlens_q->size(0) == cu_seqlens_k->size(0),
                      "cu_seqlens_q and cu_seqlens_k must have the same size (batch + 1), got ",
                      cu_seqlens_q->size(0), " and ", cu_seqlens_k->size(0));
    s.batch = cu_seqlens_q->size(0) - 1;
    // max_seqlen is only an upper bound (callers pass the padded length, or anything larger):
    // the kernels get the real longest sequence, so their work (a task per block of
    // max_seqlen_q rows, per batch and head) is bounded by the tokens, not by the hint.
    s.seqlen_q = info_q.max_len;
    s.seqlen_k = info_k.max_len;
    r.cu_q = cu_seqlens_q->contiguous();
    r.cu_k = cu_seqlens_k->contiguous();
    s.cu_seqlens_q = r.cu_q.data_ptr<int32_t>();
    s.cu_seqlens_k = r.cu_k.data_ptr<int32_t>();
  } else {
    s.batch = q.size(0);
    s.seqlen_q = q.size(1);
    s.seqlen_k = k.size(1);
  }
  fill_common(p, q, k, v, softmax_scale, causal, window_left, window_right, softcap);
  if (alibi_slopes.has_value()) r.slopes = alibi_slopes->contiguous();
  fill_alibi(p.mask, r.slopes, q, s.batch, s.num_heads);
  return r;
}

at::Tensor empty_lse(const at::Tensor& q, const AttentionShape& s, bool varlen) {
  const auto opts = q.options().dtype(at::kFloat);
  return varlen ? at::empty({s.num_heads, q.size(0)}, opts)
                : at::empty({s.batch, s.num_heads, s.seqlen_q}, opts);
}

void set_out(AttentionFwdParams& p, at::Tensor& out, at::Tensor& lse, bool varlen) {
  p.out = out.data_ptr();
  p.out_strides = strides_of(out);
  p.lse = lse.data_ptr<float>();
  if (varlen) {
    p.lse_batch_stride = 0;
    p.lse_head_stride = lse.stride(0);
  } else {
    p.lse_batch_stride = lse.stride(0);
    p.lse_head_stride = lse.stride(1);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attn_fwd(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v,
                                            const std::optional<at::Tensor>& cu_seqlens_q,
                                            const std::optional<at::Tensor>& cu_seqlens_k,
                                            int64_t max_seqlen_q, int64_t max_seqlen_k,
                                            const std::optional<at::Tensor>& alibi_slopes,
                                            double softmax_scale, bool causal, int64_t window_left,
                                            int64_t window_right, double softcap,
                                            bool deterministic) {
  c10::DeviceGuard guard(q.device());
  Prepared r = prepare_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           alibi_slopes, softmax_scale, causal, window_left, window_right, softcap);
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor lse = empty_lse(q, r.p.shape, r.varlen);
  set_out(r.p, out, lse, r.varlen);
  if (r.uncovered_q) {
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
  }
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse};
  backend::attention_fwd(q.device(), r.p);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool deterministic,
    bool compute_dslopes) {
  c10::DeviceGuard guard(q.device());
  // The kernels write d(slopes) with the slopes' strides into a contiguous zeros tensor, so
  // give them contiguous slopes (a strided (batch, nheads) view would index out of bounds).
  const std::optional<at::Tensor> slopes =
      alibi_slopes.has_value() ? std::optional<at::Tensor>(alibi_slopes->contiguous())
                               : std::nullopt;
  Prepared r = prepare_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           slopes, softmax_scale, causal, window_left, window_right, softcap);
  TORCH_CHECK_VALUE(dout.sizes() == q.sizes(), "dout must have q's shape ", q.sizes(), ", got ",
                    dout.sizes());
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have q's shape ", q.sizes(), ", got ",
                    out.sizes());
  check_same_dtype(dout, "dout", q, "q");
  check_same_dtype(out, "out", q, "q");
  check_same_device(dout, "dout", q, "q");
  check_same_device(out, "out", q, "q");
  check_last_dim_contiguous(dout, "dout");
  check_last_dim_contiguous(out, "out");
  at::Tensor expected_lse = empty_lse(q, r.p.shape, r.varlen);
  TORCH_CHECK_VALUE(lse.sizes() == expected_lse.sizes() && lse.scalar_type() == at::kFloat,
                    "softmax_lse must be float32 of shape ", expected_lse.sizes(), ", got ",
                    lse.scalar_type(), " ", lse.sizes());
  check_same_device(lse, "softmax_lse", q, "q");
  TORCH_CHECK_VALUE(!compute_dslopes || alibi_slopes.has_value(),
                    "compute_dslopes needs alibi_slopes");
  const at::Tensor lse_c = lse.contiguous();

  AttentionBwdParams b;
  b.fwd = r.p;
  b.fwd.out = const_cast<void*>(out.data_ptr());
  b.fwd.out_strides = strides_of(out);
  b.fwd.lse = const_cast<float*>(lse_c.data_ptr<float>());
  b.fwd.lse_batch_stride = r.varlen ? 0 : lse_c.stride(0);
  b.fwd.lse_head_stride = r.varlen ? lse_c.stride(0) : lse_c.stride(1);
  b.dout = dout.data_ptr();
  b.dout_strides = strides_of(dout);
  at::Tensor dq = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor dk = at::empty_like(k, at::MemoryFormat::Contiguous);
  at::Tensor dv = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (r.uncovered_q) dq.zero_();
  if (r.uncovered_k) {
    dk.zero_();
    dv.zero_();
  }
  at::Tensor dslopes = compute_dslopes
                           ? at::zeros(slopes->sizes(), slopes->options())
                           : at::empty({0}, q.options().dtype(at::kFloat));
  b.dq = dq.data_ptr();
  b.dk = dk.data_ptr();
  b.dv = dv.data_ptr();
  b.dq_strides = strides_of(dq);
  b.dk_strides = strides_of(dk);
  b.dv_strides = strides_of(dv);
  b.dslopes = compute_dslopes ? static_cast<float*>(dslopes.data_ptr()) : nullptr;
  b.deterministic = deterministic;
  at::Tensor workspace;
  const int64_t ws_bytes = backend::attention_bwd_workspace_bytes(q.device(), b);
  if (ws_bytes > 0) {
    workspace = at::empty({ws_bytes}, q.options().dtype(at::kByte));
    b.workspace = workspace.data_ptr();
    b.workspace_bytes = ws_bytes;
  }
  if (q.numel() == 0) {  // no query: nothing flows back to the keys (0 heads included)
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv, dslopes};
  }
  backend::attention_bwd(q.device(), b);
  return {dq, dk, dv, dslopes};
}

std::tuple<at::Tensor, at::Tensor> attn_kvcache(
    const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
    const std::optional<at::Tensor>& k_new, const std::optional<at::Tensor>& v_new,
    const std::optional<at::Tensor>& cache_seqlens, const std::optional<at::Tensor>& alibi_slopes,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    int64_t num_splits) {
  c10::DeviceGuard guard(q.device());
  check_dim(q, "q", 4, "(batch, seqlen_q, nheads, headdim)");
  check_dim(k_cache, "k_cache", 4, "(batch_cache, seqlen_cache, nheads_k, headdim)");
  check_dim(v_cache, "v_cache", 4, "(batch_cache, seqlen_cache, nheads_k, headdim)");
  check_qkv(q, k_cache, v_cache, /*varlen=*/false, /*kv_cache=*/true);
  check_mask_args(softmax_scale, window_left, window_right, softcap);
  TORCH_CHECK_VALUE(num_splits >= 0, "num_splits must be >= 0 (0: automatic), got ", num_splits);
  TORCH_CHECK_VALUE(k_new.has_value() == v_new.has_value(), "k and v must be given together");

  AttentionKVCacheParams kp;
  AttentionFwdParams& p = kp.fwd;
  p.shape.batch = q.size(0);
  p.shape.seqlen_q = q.size(1);
  p.shape.seqlen_k = k_cache.size(1);
  p.shape.num_heads = q.size(2);
  p.shape.num_heads_k = k_cache.size(2);
  p.shape.head_dim = q.size(3);
  fill_common(p, q, k_cache, v_cache, softmax_scale, causal, window_left, window_right, softcap);
  fill_alibi(p.mask, alibi_slopes, q, p.shape.batch, p.shape.num_heads);

  if (k_new.has_value()) {
    const at::Tensor& kn = *k_new;
    const at::Tensor& vn = *v_new;
    check_dim(kn, "k", 4, "(batch, seqlen_new, nheads_k, headdim)");
    check_dim(vn, "v", 4, "(batch, seqlen_new, nheads_k, headdim)");
    check_same_dtype(kn, "k", q, "q");
    check_same_dtype(vn, "v", q, "q");
    check_same_device(kn, "k", q, "q");
    check_same_device(vn, "v", q, "q");
    check_last_dim_contiguous(kn, "k");
    check_last_dim_contiguous(vn, "v");
    TORCH_CHECK_VALUE(kn.sizes() == vn.sizes() && kn.size(0) == q.size(0) &&
                          kn.size(2) == k_cache.size(2) && kn.size(3) == q.size(3),
                      "k and v must have shape (batch, seqlen_new, nheads_k, headdim) = (",
                      q.size(0), ", *, ", k_cache.size(2), ", ", q.size(3), "), got k ",
                      kn.sizes(), " and v ", vn.sizes());
    kp.k_new = kn.data_ptr();
    kp.v_new = vn.data_ptr();
    kp.seqlen_new = kn.size(1);
    kp.k_new_strides = strides_of(kn);
    kp.v_new_strides = strides_of(vn);
  }
  TORCH_CHECK_VALUE(k_cache.size(0) >= q.size(0), "k_cache must hold at least batch = ", q.size(0),
                    " sequences, got ", k_cache.size(0));
  at::Tensor seqlens_host;
  if (cache_seqlens.has_value()) {
    const at::Tensor& cs = *cache_seqlens;
    TORCH_CHECK_TYPE(cs.scalar_type() == at::kInt, "cache_seqlens must be int32, got ",
                     cs.scalar_type());
    check_same_device(cs, "cache_seqlens", q, "q");
    TORCH_CHECK_VALUE(cs.dim() == 1 && cs.size(0) == q.size(0),
                      "cache_seqlens must have shape (batch,) = (", q.size(0), ",), got ",
                      cs.sizes());
    TORCH_CHECK_VALUE(cs.is_contiguous(), "cache_seqlens must be contiguous");
    // Host check: an append past the end of the cache would write out of bounds.
    seqlens_host = cs.to(at::kCPU).contiguous();
    const int32_t* c = seqlens_host.data_ptr<int32_t>();
    for (int64_t b = 0; b < cs.size(0); ++b) {
      TORCH_CHECK_VALUE(c[b] >= 0 && int64_t(c[b]) + kp.seqlen_new <= k_cache.size(1),
                        "cache_seqlens[", b, "] = ", c[b], " plus ", kp.seqlen_new,
                        " new keys does not fit in the cache of ", k_cache.size(1), " positions");
    }
    kp.cache_seqlens = cs.data_ptr<int32_t>();
  } else {
    TORCH_CHECK_VALUE(kp.seqlen_new == 0,
                      "appending k and v needs cache_seqlens (where each sequence's new keys go)");
  }
  kp.num_splits = static_cast<int>(num_splits);

  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor lse = at::empty({p.shape.batch, p.shape.num_heads, p.shape.seqlen_q},
                             q.options().dtype(at::kFloat));
  set_out(p, out, lse, /*varlen=*/false);
  if (q.numel() == 0) return {out, lse};
  at::Tensor workspace;  // split-KV partials; kept alive until the kernels are enqueued
  const int64_t ws_bytes = backend::attention_kvcache_workspace_bytes(q.device(), kp);
  if (ws_bytes > 0) {
    workspace = at::empty({ws_bytes}, q.options().dtype(at::kByte));
    kp.workspace = workspace.data_ptr();
    kp.workspace_bytes = ws_bytes;
  }
  backend::attention_kvcache(q.device(), kp);
  return {out, lse};
}

}  // namespace mpt_ext
