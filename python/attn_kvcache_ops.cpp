// attn_kvcache (flash_attn_with_kvcache): every input check, Tensor -> params, and the
// per-device registration. The checks and fills it shares with attn_fwd are in attn_args.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../csrc/attn_kvcache/attn_kvcache.h"
#include "attn_args.h"
#include "attn_kvcache_args.h"

namespace mpt_ext {
namespace {

// One body serves every device; Kernels (KVCacheCpu, KVCacheCuda below) picks the kernels.
template <typename Kernels>
std::tuple<at::Tensor, at::Tensor> attn_kvcache(
    const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
    const std::optional<at::Tensor>& k_new, const std::optional<at::Tensor>& v_new,
    const std::optional<at::Tensor>& rotary_cos, const std::optional<at::Tensor>& rotary_sin,
    const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& cache_batch_idx,
    const std::optional<at::Tensor>& cache_leftpad, const std::optional<at::Tensor>& block_table,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool rotary_interleaved,
    int64_t num_splits) {
  c10::DeviceGuard guard(q.device());
  check_qkv(q, k_cache, v_cache, /*varlen=*/false, KVForm::kCache);
  check_mask_args(softmax_scale, window_left, window_right, softcap);
  TORCH_CHECK_VALUE(num_splits >= 0, "num_splits must be >= 0 (0: automatic), got ", num_splits);
  TORCH_CHECK_VALUE(k_new.has_value() == v_new.has_value(), "k and v must be given together");

  AttnKVCacheParams kp;
  fill_layout(kp.layout, q, k_cache, cache_seqlens, cache_batch_idx, cache_leftpad, block_table);
  AttnFwdParams& p = kp.fwd;
  p.shape.batch = q.size(0);
  p.shape.seqlen_q = q.size(1);
  p.shape.seqlen_k = kp.layout.seqlen_cache;
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
    check_like(kn, "k", q, "q");
    check_like(vn, "v", q, "q");
    TORCH_CHECK_VALUE(kn.sizes() == vn.sizes() && kn.size(0) == q.size(0) &&
                          kn.size(2) == k_cache.size(2) && kn.size(3) == q.size(3),
                      "k and v must have shape (batch, seqlen_new, nheads_k, headdim) = (",
                      q.size(0), ", *, ", k_cache.size(2), ", ", q.size(3), "), got k ",
                      kn.sizes(), " and v ", vn.sizes());
    TORCH_CHECK_VALUE(cache_seqlens.has_value(),
                      "appending k and v needs cache_seqlens (where each sequence's new keys go)");
    kp.k_new = kn.data_ptr();
    kp.v_new = vn.data_ptr();
    kp.seqlen_new = kn.size(1);
    kp.k_new_strides = strides_of(kn);
    kp.v_new_strides = strides_of(vn);
  }
  // Bad lengths, rows, pads or pages would read or write out of bounds. The CUDA kernels check
  // each sequence themselves (reading them here would sync every decode step).
  if (!Kernels::kSeqlensOnDevice) check_sequences_on_host(kp.layout, q.size(0), kp.seqlen_new);
  // Query rows rotate at their own positions when causal or local, as in flash-attn, which
  // first reads a window side as wide as the cache as unbounded.
  const int64_t cache = kp.layout.seqlen_cache;
  const bool local = (window_left >= 0 && window_left < cache) ||
                     (window_right >= 0 && window_right < cache);
  fill_rotary(kp.rotary, rotary_cos, rotary_sin, rotary_interleaved, causal || local, q,
              kp.layout, kp.seqlen_new, k_new.has_value());
  kp.num_splits = static_cast<int>(num_splits);

  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor lse = at::empty(lse_shape(q, p.shape, /*varlen=*/false),
                             q.options().dtype(at::kFloat));
  set_out(p, out, lse, /*varlen=*/false);
  if (q.numel() == 0) return {out, lse};
  at::Tensor q_rotated;  // rotary: the op's rotated copy of q
  if (kp.rotary.cos != nullptr) {
    q_rotated = at::empty_like(q, at::MemoryFormat::Contiguous);
    kp.rotary.q_rotated = q_rotated.data_ptr();
  }
  at::Tensor workspace;  // split-KV partials; kept alive until the kernels are enqueued
  const int64_t ws_bytes = value_errors([&] { return Kernels::workspace_bytes(kp); });
  if (ws_bytes > 0) {
    workspace = at::empty({ws_bytes}, q.options().dtype(at::kByte));
    kp.workspace = workspace.data_ptr();
    kp.workspace_bytes = ws_bytes;
  }
  value_errors([&] { Kernels::run(kp); });
  return {out, lse};
}

// The kernels each device runs. kSeqlensOnDevice: the kernels check cache_seqlens' values
// themselves (csrc/common/device_input_errors.h).
struct KVCacheCpu {
  static constexpr bool kSeqlensOnDevice = false;
  static void run(const AttnKVCacheParams& p) { attn_kvcache_cpu(p); }
  static int64_t workspace_bytes(const AttnKVCacheParams&) { return 0; }
};

#ifdef MPT_EXT_CUDA_ATTN_KVCACHE
struct KVCacheCuda {
  static constexpr bool kSeqlensOnDevice = true;
  static void run(const AttnKVCacheParams& p) { attn_kvcache_cuda(p); }
  static int64_t workspace_bytes(const AttnKVCacheParams& p) {
    return attn_kvcache_workspace_bytes_cuda(p);
  }
};
#else
struct KVCacheCuda {  // the family is not enabled in this build
  static constexpr bool kSeqlensOnDevice = true;
  static void run(const AttnKVCacheParams&) {
    cuda_family_not_enabled("attn_kvcache", "flash_attn_with_kvcache");
  }
  static int64_t workspace_bytes(const AttnKVCacheParams&) { return 0; }
};
#endif

template <typename Kernels>
void register_attn_kvcache(torch::Library& m) {
  m.impl("attn_kvcache", &attn_kvcache<Kernels>);
}

}  // namespace

MPT_EXT_REGISTER_DEVICES(register_attn_kvcache, KVCacheCpu, KVCacheCuda)

}  // namespace mpt_ext
