// CPU flash_attn_with_kvcache: append the new keys/values into the caches in place, then
// run the forward kernel with each sequence's key count = cached + appended.
// num_splits is ignored on CPU: tasks already split the work over (batch, head, query
// block), and splitting the keys would only add a combine step.
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../attn/cpu/cpu_kernel_utils.h"
#include "../../attn/cpu/flash_forward.h"
#include "../attn_kvcache.h"

namespace mpt_ext {
namespace {

int64_t element_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
  }
  return 0;
}

// Copies rows [0, seqlen_new) of src into the cache at rows cache_seqlens[b] + ...
void append_rows(const void* src, const TensorStrides& src_strides, const void* cache,
                 const TensorStrides& cache_strides, const AttnKVCacheParams& p) {
  const AttnShape& sh = p.fwd.shape;
  const int64_t esize = element_size(p.fwd.dtype);
  const int64_t row_bytes = sh.head_dim * esize;
  // The op schema marks the caches mutable; p.fwd.k / p.fwd.v are const only because the
  // forward reads them.
  char* dst = static_cast<char*>(const_cast<void*>(cache));
  const char* s = static_cast<const char*>(src);
  at::parallel_for(0, sh.batch * p.seqlen_new, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / p.seqlen_new, r = t % p.seqlen_new;
      const int64_t row = static_cast<int64_t>(p.cache_seqlens[b]) + r;
      for (int64_t h = 0; h < sh.num_heads_k; ++h) {
        const int64_t from = b * src_strides.batch + r * src_strides.row + h * src_strides.head;
        const int64_t to = b * cache_strides.batch + row * cache_strides.row + h * cache_strides.head;
        std::memcpy(dst + to * esize, s + from * esize, row_bytes);
      }
    }
  });
}

}  // namespace

void attn_kvcache_cpu(const AttnKVCacheParams& p) {
  const AttnShape& sh = p.fwd.shape;
  if (sh.batch <= 0) return;
  if (p.k_new && p.seqlen_new > 0) {
    append_rows(p.k_new, p.k_new_strides, p.fwd.k, p.fwd.k_strides, p);
    append_rows(p.v_new, p.v_new_strides, p.fwd.v, p.fwd.v_strides, p);
  }
  std::vector<int64_t> seqlen_k(sh.batch);
  for (int64_t b = 0; b < sh.batch; ++b)
    seqlen_k[b] = (p.cache_seqlens ? static_cast<int64_t>(p.cache_seqlens[b]) : sh.seqlen_k) +
                  (p.k_new ? p.seqlen_new : 0);
  attn::cpu::flash_forward(p.fwd, seqlen_k.data());
}

}  // namespace mpt_ext
