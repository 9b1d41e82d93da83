// Host-side facts the attention launchers share: alignment of the tensors they vectorise and
// the grid limits. The generic CUDA host helpers (launch checks, smem opt-in) are in
// common/cuda_host.h.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../common/cuda_host.h"
#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

// True when every row start of a 16-bit tensor is 16-byte aligned (cp.async can be used).
inline bool rows_16b_aligned(const void* ptr, const TensorStrides& s, bool varlen) {
  const bool strides_ok = s.row % 8 == 0 && s.head % 8 == 0 && (varlen || s.batch % 8 == 0);
  return ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && strides_ok;
}

// True when element pairs (even column) are 4-byte aligned (32-bit stores).
inline bool pairs_4b_aligned(const void* ptr, const TensorStrides& s, bool varlen) {
  const bool strides_ok = s.row % 2 == 0 && s.head % 2 == 0 && (varlen || s.batch % 2 == 0);
  return ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 4 == 0 && strides_ok;
}

// Query (or key) rows per sequence the grid covers. Varlen: at least one block row even when
// max_seqlen is 0, so that the kernels still see, and note, a sequence longer than that
// (the host never reads cu_seqlens).
inline int64_t grid_seqlen(const AttnShape& s, int64_t seqlen) {
  return s.cu_seqlens_q != nullptr && seqlen == 0 ? 1 : seqlen;
}

// Grid y / z carry heads and batch: both must fit CUDA's 65535 limit.
inline void check_grid_yz(int64_t y, int64_t z, const char* name) {
  if (y > 65535 || z > 65535) {
    throw std::invalid_argument(std::string("mpt_ext attention (CUDA): ") + name +
                                " supports at most 65535 heads and 65535 sequences per call");
  }
}

}  // namespace mpt_ext::attn::cuda
