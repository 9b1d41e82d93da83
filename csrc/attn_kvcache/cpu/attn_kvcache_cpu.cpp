// CPU flash_attn_with_kvcache: rotate q and the new keys (rotary_cos / rotary_sin), append the
// new keys/values into the caches in place, then run the forward kernel on each sequence's
// keys (cached + appended) wherever the layout puts them (kvcache_layout.h).
// num_splits is ignored on CPU: tasks already split the work over (batch, head, query
// block), and splitting the keys would only add a combine step.
// The binding has checked every sequence (cache_sequence(...).ok and its pages) on the host.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../../attn/cpu/cpu_kernel_utils.h"
#include "../../attn/cpu/flash_forward.h"
#include "../attn_kvcache.h"
#include "../kvcache_layout.h"

namespace mpt_ext {
namespace {

using attn::cpu::from_acc;
using attn::cpu::to_acc;

// Row `pos`'s cos and sin, rotating dims [0, rotary_dim) of src into dst; the rest is copied.
template <typename T, typename Acc>
void rotate_row(const RotaryParams& r, int64_t pos, const T* src, T* dst, int64_t d) {
  const T* cos = static_cast<const T*>(r.cos) + pos * r.cos_row_stride;
  const T* sin = static_cast<const T*>(r.sin) + pos * r.sin_row_stride;
  for (int64_t e = 0; e < r.rotary_dim; ++e) {
    const kvcache::RotaryPair pair = kvcache::rotary_pair(e, r.rotary_dim, r.interleaved);
    dst[e] = from_acc<T>(kvcache::rotate(to_acc<Acc>(src[e]), to_acc<Acc>(src[pair.partner]),
                                         to_acc<Acc>(cos[pair.angle]),
                                         to_acc<Acc>(sin[pair.angle]), pair.first));
  }
  std::memcpy(dst + r.rotary_dim, src + r.rotary_dim, (d - r.rotary_dim) * sizeof(T));
}

// Copies the new rows into the cache at positions cached + t; keys rotate on the way when
// rotary is on.
template <typename T, typename Acc>
void append_rows(const AttnKVCacheParams& p, const std::vector<kvcache::CacheSequence>& seqs,
                 const void* src, const TensorStrides& src_strides, const void* cache,
                 const TensorStrides& cache_strides, bool rotate) {
  const AttnShape& sh = p.fwd.shape;
  // The op schema marks the caches mutable; p.fwd.k / p.fwd.v are const only because the
  // forward reads them.
  T* dst = static_cast<T*>(const_cast<void*>(cache));
  const T* s = static_cast<const T*>(src);
  at::parallel_for(0, sh.batch * p.seqlen_new, 64, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / p.seqlen_new, t = item % p.seqlen_new;
      const int64_t pos = seqs[b].cached + t;
      const int64_t at = kvcache::offset_of(kvcache::place_of(p.layout, b, seqs[b].row, pos),
                                            cache_strides);
      for (int64_t h = 0; h < sh.num_heads_k; ++h) {
        const T* from = s + b * src_strides.batch + t * src_strides.row + h * src_strides.head;
        T* to = dst + at + h * cache_strides.head;
        if (rotate) {
          rotate_row<T, Acc>(p.rotary, pos, from, to, sh.head_dim);
        } else {
          std::memcpy(to, from, sh.head_dim * sizeof(T));
        }
      }
    }
  });
}

// q rotated into p.rotary.q_rotated (contiguous), each row at its sequence's position.
template <typename T, typename Acc>
void rotate_queries(const AttnKVCacheParams& p, const std::vector<kvcache::CacheSequence>& seqs) {
  const AttnShape& sh = p.fwd.shape;
  const T* q = static_cast<const T*>(p.fwd.q);
  T* dst = static_cast<T*>(p.rotary.q_rotated);
  const TensorStrides& qs = p.fwd.q_strides;
  at::parallel_for(0, sh.batch * sh.seqlen_q, 64, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / sh.seqlen_q, i = item % sh.seqlen_q;
      const int64_t pos = seqs[b].cached + (p.rotary.per_query_position ? i : 0);
      for (int64_t h = 0; h < sh.num_heads; ++h) {
        rotate_row<T, Acc>(p.rotary, pos, q + b * qs.batch + i * qs.row + h * qs.head,
                           dst + (item * sh.num_heads + h) * sh.head_dim, sh.head_dim);
      }
    }
  });
}

struct CacheKeys {
  const KVCacheLayout& layout;
  const std::vector<kvcache::CacheSequence>& seqs;
};

// attn::cpu::KeySource::locate for the cache: key j is position first + j.
void locate_key(const void* ctx, int64_t b, int64_t j, int64_t* block, int64_t* row,
                int64_t* run) {
  const CacheKeys& c = *static_cast<const CacheKeys*>(ctx);
  const kvcache::CacheSequence& s = c.seqs[b];
  const PagePlace place = kvcache::place_of(c.layout, b, s.row, s.first + j);
  *block = place.page;
  *row = place.row;
  // the rest of the sequence is contiguous in a cache row; in a page, the rest of the page
  *run = c.layout.pages.block_table == nullptr ? s.num_keys - j
                                                : c.layout.pages.page_size - place.row;
}

}  // namespace

void attn_kvcache_cpu(const AttnKVCacheParams& p) {
  const AttnShape& sh = p.fwd.shape;
  if (sh.batch <= 0) return;
  std::vector<kvcache::CacheSequence> seqs(sh.batch);
  std::vector<int64_t> num_keys(sh.batch);
  for (int64_t b = 0; b < sh.batch; ++b) {
    seqs[b] = kvcache::cache_sequence(p.layout, b, p.k_new ? p.seqlen_new : 0);
    if (!seqs[b].ok) throw std::logic_error("attn_kvcache_cpu: sequence not checked");
    num_keys[b] = seqs[b].num_keys;
  }
  AttnFwdParams fwd = p.fwd;
  attn::cpu::dispatch_attention_dtype(p.fwd.dtype, "flash_attn_with_kvcache", [&](auto t, auto acc) {
    using T = decltype(t);
    using Acc = decltype(acc);
    if (p.k_new && p.seqlen_new > 0) {
      const bool rotate = p.rotary.cos != nullptr;
      append_rows<T, Acc>(p, seqs, p.k_new, p.k_new_strides, p.fwd.k, p.fwd.k_strides, rotate);
      append_rows<T, Acc>(p, seqs, p.v_new, p.v_new_strides, p.fwd.v, p.fwd.v_strides, false);
    }
    if (p.rotary.cos != nullptr) {
      rotate_queries<T, Acc>(p, seqs);
      fwd.q = p.rotary.q_rotated;
      fwd.q_strides = {sh.seqlen_q * sh.num_heads * sh.head_dim, sh.num_heads * sh.head_dim,
                       sh.head_dim};
    }
  });
  const CacheKeys keys{p.layout, seqs};
  attn::cpu::KeySource source;
  source.num_keys = num_keys.data();
  source.ctx = &keys;
  source.locate = &locate_key;
  attn::cpu::flash_forward(fwd, &source);
}

}  // namespace mpt_ext
