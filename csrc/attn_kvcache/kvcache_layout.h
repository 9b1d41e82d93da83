// Where a sequence's keys live in the caches (KVCacheLayout): one definition for the CPU and
// CUDA kernels, so both read and append at the same places and refuse the same sequences.
#pragma once

#include <cstdint>

#include "../common/device_input_errors.h"
#include "../common/host_device.h"
#include "attn_kvcache_params.h"

namespace mpt_ext::kvcache {

// Sequence b as the caches hold it. ok == false: a length, row or pad that does not fit
// (the CPU op raises before any kernel runs; the CUDA kernels note it and run the sequence as
// empty, with no append).
struct CacheSequence {
  bool ok = false;
  int64_t row = 0;        // the cache row (not paged)
  int64_t first = 0;      // position of key 0 (cache_leftpad)
  int64_t cached = 0;     // cache_seqlens[b]: positions in use before the append
  int64_t num_keys = 0;   // cached - first + seqlen_new
};

MPT_HOST_DEVICE CacheSequence cache_sequence(const KVCacheLayout& l, int64_t b,
                                             int64_t seqlen_new) {
  CacheSequence s;
  s.row = l.cache_batch_idx != nullptr ? l.cache_batch_idx[b] : b;
  s.first = l.cache_leftpad != nullptr ? l.cache_leftpad[b] : 0;
  s.cached = l.cache_seqlens != nullptr ? l.cache_seqlens[b] : l.seqlen_cache;
  s.ok = (l.pages.block_table != nullptr || (s.row >= 0 && s.row < l.cache_rows)) &&
         s.first >= 0 &&
         s.first <= s.cached && s.cached + seqlen_new <= l.seqlen_cache;
  s.num_keys = s.ok ? s.cached - s.first + seqlen_new : 0;
  return s;
}

// Which argument makes a sequence not fit (cache_sequence(...).ok == false): what the CUDA
// kernels note (device_input_errors.h).
MPT_HOST_DEVICE SeqlensArg misfit_argument(const KVCacheLayout& l, const CacheSequence& s,
                                           int64_t seqlen_new) {
  if (l.pages.block_table == nullptr && (s.row < 0 || s.row >= l.cache_rows)) {
    return SeqlensArg::kCacheBatchIdx;
  }
  if (s.cached < 0 || s.cached + seqlen_new > l.seqlen_cache) return SeqlensArg::kCacheSeqlens;
  return SeqlensArg::kCacheLeftpad;
}

// Where position c of sequence b (cache row `row`, CacheSequence::row) is: row `row` of page
// `page`, where an unpaged cache's page is its cache row; page -1 when the block table points
// outside the pages.
MPT_HOST_DEVICE PagePlace place_of(const KVCacheLayout& l, int64_t b, int64_t row, int64_t c) {
  if (l.pages.block_table == nullptr) return {row, c};
  return page_place(l.pages, b, c);
}

// The element offset (heads excluded) of a place in a cache with strides st.
MPT_HOST_DEVICE int64_t offset_of(const PagePlace& p, const TensorStrides& st) {
  return p.page * st.batch + p.row * st.row;
}

// Rotary embedding of element e of a row (RotaryParams): the element it pairs with, the
// angle's index in the cos / sin rows, and whether it takes -sin (the pair's first element).
struct RotaryPair {
  int64_t partner;
  int64_t angle;
  bool first;
};

MPT_HOST_DEVICE RotaryPair rotary_pair(int64_t e, int64_t rotary_dim, bool interleaved) {
  const int64_t half = rotary_dim / 2;
  if (interleaved) return {e ^ 1, e / 2, (e & 1) == 0};
  return {e < half ? e + half : e - half, e < half ? e : e - half, e < half};
}

// x rotated with its partner y by the angle (cos c, sin s), in fp32 or wider.
template <typename Acc>
MPT_HOST_DEVICE Acc rotate(Acc x, Acc y, Acc c, Acc s, bool first) {
  return first ? x * c - y * s : x * c + y * s;
}

}  // namespace mpt_ext::kvcache
