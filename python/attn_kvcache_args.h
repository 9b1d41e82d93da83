// attn_kvcache's cache-layout and rotary arguments (flash_attn_with_kvcache's cache_seqlens,
// cache_batch_idx, cache_leftpad, block_table, rotary_cos / rotary_sin): checks and params.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>

#include "../csrc/attn_kvcache/attn_kvcache_params.h"
#include "../csrc/attn_kvcache/kvcache_layout.h"
#include "checks.h"
#include "page_table_args.h"

namespace mpt_ext {

// An int32 (batch,) tensor on q's device (cache_seqlens, cache_batch_idx, cache_leftpad).
inline const int32_t* per_sequence_ints(const std::optional<at::Tensor>& t, const char* name,
                                        const at::Tensor& q) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, name, " must be int32, got ", t->scalar_type());
  check_same_device(*t, name, q, "q");
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == q.size(0), name,
                    " must have shape (batch,) = (", q.size(0), ",), got ", t->sizes());
  TORCH_CHECK_VALUE(t->is_contiguous(), name, " must be contiguous");
  return t->data_ptr<int32_t>();
}

inline void fill_layout(KVCacheLayout& l, const at::Tensor& q, const at::Tensor& k_cache,
                        const std::optional<at::Tensor>& cache_seqlens,
                        const std::optional<at::Tensor>& cache_batch_idx,
                        const std::optional<at::Tensor>& cache_leftpad,
                        const std::optional<at::Tensor>& block_table) {
  l.cache_rows = k_cache.size(0);
  l.cache_seqlens = per_sequence_ints(cache_seqlens, "cache_seqlens", q);
  l.cache_batch_idx = per_sequence_ints(cache_batch_idx, "cache_batch_idx", q);
  l.cache_leftpad = per_sequence_ints(cache_leftpad, "cache_leftpad", q);
  if (!block_table.has_value()) {
    l.seqlen_cache = k_cache.size(1);
    TORCH_CHECK_VALUE(l.cache_batch_idx != nullptr || k_cache.size(0) >= q.size(0),
                      "k_cache must hold at least batch = ", q.size(0), " sequences, got ",
                      k_cache.size(0), " (or pass cache_batch_idx)");
    return;
  }
  l.pages = page_table_of(*block_table, q, q.size(0), k_cache, "k_cache");
  TORCH_CHECK_VALUE(l.cache_batch_idx == nullptr,
                    "cache_batch_idx cannot be combined with block_table: the block table "
                    "already says where each sequence's keys are (as in flash-attn)");
  l.seqlen_cache = block_table->size(1) * l.pages.page_size;
}

// On the CPU every sequence is checked here, naming the argument that is wrong; the CUDA
// kernels check the same conditions (kvcache_layout.h) without a host sync.
inline void check_sequences_on_host(const KVCacheLayout& l, int64_t batch, int64_t seqlen_new) {
  for (int64_t b = 0; b < batch; ++b) {
    const kvcache::CacheSequence s = kvcache::cache_sequence(l, b, seqlen_new);
    if (l.pages.block_table == nullptr) {
      TORCH_CHECK_VALUE(s.row >= 0 && s.row < l.cache_rows, "cache_batch_idx[", b, "] = ", s.row,
                        " is not a row of k_cache (it has ", l.cache_rows, ")");
    }
    TORCH_CHECK_VALUE(s.cached >= 0 && s.cached + seqlen_new <= l.seqlen_cache,
                      "cache_seqlens[", b, "] = ", s.cached, " plus ", seqlen_new,
                      " new keys does not fit in the cache of ", l.seqlen_cache, " positions");
    TORCH_CHECK_VALUE(s.first >= 0 && s.first <= s.cached, "cache_leftpad[", b, "] = ", s.first,
                      " must be in [0, cache_seqlens[", b, "] = ", s.cached, "]");
    if (l.pages.block_table != nullptr) {
      check_pages_on_host(l.pages, b, s.first, s.cached + seqlen_new, "k_cache");
    }
  }
}

// rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2), q's dtype, as flash-attn takes them.
inline void fill_rotary(RotaryParams& r, const std::optional<at::Tensor>& cos,
                        const std::optional<at::Tensor>& sin, bool interleaved, bool per_query,
                        const at::Tensor& q, const KVCacheLayout& l, int64_t seqlen_new,
                        bool appending) {
  TORCH_CHECK_VALUE(cos.has_value() == sin.has_value(),
                    "rotary_cos and rotary_sin must be given together");
  if (!cos.has_value()) return;
  TORCH_CHECK_VALUE(appending,
                    "rotary_cos / rotary_sin rotate the new keys: they need k and v (as in "
                    "flash-attn)");
  for (const auto& [t, name] : {std::pair{&*cos, "rotary_cos"}, std::pair{&*sin, "rotary_sin"}}) {
    check_like(*t, name, q, "q");
    TORCH_CHECK_VALUE(t->dim() == 2, name, " must have 2 dimensions (seqlen_ro, rotary_dim / 2), "
                      "got shape ", t->sizes());
  }
  TORCH_CHECK_VALUE(cos->sizes() == sin->sizes(), "rotary_cos and rotary_sin must have the same "
                    "shape, got ", cos->sizes(), " and ", sin->sizes());
  const int64_t rotary_dim = 2 * cos->size(1);
  TORCH_CHECK_VALUE(rotary_dim >= 16 && rotary_dim % 16 == 0 && rotary_dim <= q.size(3),
                    "rotary_cos must have rotary_dim / 2 columns with rotary_dim a multiple of 16 "
                    "in [16, headdim = ", q.size(3), "] (as in flash-attn), got rotary_dim ",
                    rotary_dim);
  // The positions rows can reach: keys below seqlen_cache; queries up to cache_seqlens[b]
  // (+ seqlen_q - 1 when per_query), and cache_seqlens[b] <= seqlen_cache - seqlen_new.
  const int64_t needed = std::max(
      l.seqlen_cache, l.seqlen_cache - seqlen_new + (per_query ? q.size(1) : int64_t(1)));
  TORCH_CHECK_VALUE(cos->size(0) >= needed, "rotary_cos and rotary_sin must have at least ",
                    needed, " rows (the positions of the KV cache and of the queries), got ",
                    cos->size(0));
  r.cos = cos->data_ptr();
  r.sin = sin->data_ptr();
  r.cos_row_stride = cos->stride(0);
  r.sin_row_stride = sin->stride(0);
  r.seqlen_ro = cos->size(0);
  r.rotary_dim = rotary_dim;
  r.interleaved = interleaved;
  r.per_query_position = per_query;
}

}  // namespace mpt_ext
