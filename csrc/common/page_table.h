// A paged KV cache's block table (flash-attn's block_table), one definition for
// flash_attn_with_kvcache and flash_attn_varlen_func on both devices: the keys of sequence b
// live in pages, the rows of k / v (num_pages, page_size, heads_k, d), and position c is row
// c % page_size of page block_table[b * stride + c / page_size].
#pragma once

#include <cstdint>

#include "host_device.h"

namespace mpt_ext {

struct PageTable {
  const int32_t* block_table = nullptr;  // (batch, stride); null: not paged
  int64_t stride = 0;                    // entries per sequence
  int64_t page_size = 0;
  int64_t num_pages = 0;
};

// Where a position is; page -1 when the block table points outside the pages.
struct PagePlace {
  int64_t page;
  int64_t row;
};

// Positions are below 2^31 (the bindings check stride * page_size): a 32-bit division costs a
// fraction of a 64-bit one, a subroutine whose registers made the CUDA decode kernel spill.
MPT_HOST_DEVICE PagePlace page_place(const PageTable& t, int64_t b, int64_t c) {
  const uint32_t page_size = static_cast<uint32_t>(t.page_size);
  const uint32_t index = static_cast<uint32_t>(c) / page_size;
  const int64_t page = t.block_table[b * t.stride + index];
  if (page < 0 || page >= t.num_pages) return {-1, 0};
  return {page, static_cast<uint32_t>(c) - index * page_size};
}

}  // namespace mpt_ext
