// The CPU flash forward, with an optional per-sequence key count so that the KV-cache
// kernel (keys = cached + appended) reuses it unchanged.
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cpu {

// seqlen_k_per_batch: null, or batch entries overriding each sequence's key count (the keys
// are still read through p.k / p.v with p's strides).
void flash_forward(const AttnFwdParams& p, const int64_t* seqlen_k_per_batch);

}  // namespace mpt_ext::attn::cpu
