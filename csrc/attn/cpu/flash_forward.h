// The CPU flash forward, with an optional key source so that the KV-cache kernel (keys in a
// cache row or in pages, after a left pad) and paged varlen keys reuse it unchanged.
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cpu {

// Where sequence b's keys are when they are not p.k's rows 0 .. seqlen_k - 1 (attn_kvcache,
// attn_fwd with a block table):
// key j is row `row` of block `block`, at p.k + block * k_strides.batch + row * k_strides.row
// (likewise v), and keys j .. j + run - 1 are the rows after it in the same block.
struct KeySource {
  const int64_t* num_keys = nullptr;  // (batch)
  const void* ctx = nullptr;
  void (*locate)(const void* ctx, int64_t b, int64_t j, int64_t* block, int64_t* row,
                 int64_t* run) = nullptr;
};

// keys: null (p's keys, batched or varlen) or the KV cache's or pages'.
void flash_forward(const AttnFwdParams& p, const KeySource* keys);

}  // namespace mpt_ext::attn::cpu
