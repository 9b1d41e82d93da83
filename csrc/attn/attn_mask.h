// The attention semantics shared by every backend (flash-attn 2.x conventions):
// which keys a query row sees, and the ALiBi bias. CPU and CUDA kernels both use
// these so that masking can never disagree between paths.
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace mpt_ext {

// Key j is visible to query i iff lo <= j < hi. Bottom-right alignment: query i sits at
// key position i + (seqlen_k - seqlen_q). window_left / window_right < 0 mean unbounded;
// causal is window_right = 0.
struct KeyRange {
  int64_t lo;
  int64_t hi;  // exclusive; hi <= lo means the row sees no key (output 0, lse -inf)
};

MPT_HOST_DEVICE KeyRange visible_keys(int64_t i, int64_t seqlen_q, int64_t seqlen_k, bool causal,
                                      int64_t window_left, int64_t window_right) {
  const int64_t diag = i + seqlen_k - seqlen_q;
  int64_t lo = 0;
  int64_t hi = seqlen_k;
  if (window_left >= 0) lo = diag - window_left > 0 ? diag - window_left : 0;
  const int64_t right = causal ? 0 : window_right;  // flash-attn: causal forces right = 0
  if (right >= 0) hi = diag + right + 1 < seqlen_k ? diag + right + 1 : seqlen_k;
  return {lo, hi};
}

// ALiBi as flash-attn applies it: - slope * |i + seqlen_k - seqlen_q - j|.
MPT_HOST_DEVICE float alibi_distance(int64_t i, int64_t j, int64_t seqlen_q, int64_t seqlen_k) {
  int64_t d = i + seqlen_k - seqlen_q - j;
  return static_cast<float>(d < 0 ? -d : d);
}

}  // namespace mpt_ext
