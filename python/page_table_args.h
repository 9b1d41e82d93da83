// block_table, as flash_attn_with_kvcache and flash_attn_varlen_func take it: checks and the
// PageTable (csrc/common/page_table.h). Its type, device and shape are checked here; the
// entries a sequence uses on the host for the CPU kernels (check_pages_on_host) and by the
// CUDA kernels themselves, which note a bad entry without a host sync.
#pragma once

#include <ATen/core/Tensor.h>

#include "../csrc/common/page_table.h"
#include "checks.h"

namespace mpt_ext {

// k: the paged keys (num_blocks, page_block_size, nheads_k, headdim), named k_name in errors.
inline PageTable page_table_of(const at::Tensor& bt, const at::Tensor& q, int64_t batch,
                               const at::Tensor& k, const char* k_name) {
  TORCH_CHECK_TYPE(bt.scalar_type() == at::kInt, "block_table must be int32, got ",
                   bt.scalar_type());
  check_same_device(bt, "block_table", q, "q");
  TORCH_CHECK_VALUE(bt.dim() == 2 && bt.size(0) == batch,
                    "block_table must have shape (batch, max_num_blocks_per_seq) = (", batch,
                    ", *), got ", bt.sizes());
  TORCH_CHECK_VALUE(bt.size(1) <= 1 || bt.stride(1) == 1,
                    "block_table must have a contiguous last dimension, got strides ",
                    bt.strides());
  TORCH_CHECK_VALUE(k.dim() == 4 && k.size(1) >= 1, "with block_table, ", k_name,
                    " is (num_blocks, page_block_size, nheads_k, headdim) with "
                    "page_block_size >= 1, got ", k.sizes());
  PageTable t;
  t.block_table = bt.data_ptr<int32_t>();
  t.stride = bt.stride(0);
  t.page_size = k.size(1);
  t.num_pages = k.size(0);
  TORCH_CHECK_VALUE(bt.size(1) * t.page_size < (int64_t(1) << 31),
                    "block_table: max_num_blocks_per_seq * page_block_size = ", bt.size(1), " * ",
                    t.page_size, " positions per sequence must be below 2^31");
  return t;
}

// The pages that hold positions [first, end) of sequence b exist (block_table on the CPU).
inline void check_pages_on_host(const PageTable& t, int64_t b, int64_t first, int64_t end,
                                const char* k_name) {
  if (end <= first) return;
  for (int64_t index = first / t.page_size; index * t.page_size < end; ++index) {
    const int32_t page = t.block_table[b * t.stride + index];
    TORCH_CHECK_VALUE(page >= 0 && page < t.num_pages, "block_table[", b, ", ", index, "] = ",
                      page, " is not a block of ", k_name, " (it has ", t.num_pages, ")");
  }
}

}  // namespace mpt_ext
