// Where the forward's key tiles start when the keys are pages (flash_attn_varlen_func's
// block_table, ../../common/page_table.h). The page size is a multiple of every tile's kBlockN
// (kPagedPageMultiple, checked on the host), so a tile lies inside one page: one lookup per
// tile, and the tile loads stay the plain ones.
#pragma once

#include <cstdint>

#include "../../common/device_input_errors.h"
#include "../../common/page_table.h"
#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

constexpr int kPagedPageMultiple = 128;

// Notes (device_input_errors.h) a block-table entry outside the pages among those of key
// tiles [tile_lo, tile_hi) of sequence b. Out of line and before the main loop: a call inside
// the loop would cost the loop its registers.
// (The pages by value: a pointer to the kernel's params would copy them to local memory.)
__device__ inline MPT_NOINLINE void note_bad_pages(PageTable pages, int32_t* input_errors, int b,
                                                   int tile_lo, int tile_hi, int block_n) {
  for (int t = tile_lo + static_cast<int>(threadIdx.x); t < tile_hi;
       t += static_cast<int>(blockDim.x)) {
    if (page_place(pages, b, static_cast<int64_t>(t) * block_n).page < 0) {
      note_bad_sequence(input_errors, SeqlensArg::kBlockTable, b);
    }
  }
}

// Key tile [n0, n0 + kBlockN) of a sequence: element offsets of its first K and V rows from
// head hk of the keys' start, and how many of its rows are keys (0 when the block table
// points outside the pages: the tile loads as zeros; note_bad_pages noted the entry).
struct KeyTile {
  int64_t k_offset;
  int64_t v_offset;
  int rows;
};

__device__ __forceinline__ KeyTile paged_key_tile(const AttnFwdParams& p, int b, int n0,
                                                  int keys_left) {
  const PagePlace place = page_place(p.kv_pages, b, n0);
  if (place.page < 0) return {0, 0, 0};
  return {place.page * p.k_strides.batch + place.row * p.k_strides.row,
          place.page * p.v_strides.batch + place.row * p.v_strides.row, keys_left};
}

}  // namespace mpt_ext::attn::cuda
