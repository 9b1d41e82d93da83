// The backward's fp32 scratch, carved from the one workspace the binding allocates:
//   lse2  [H][rows]   the forward's lse in log2 units (+inf for rows that saw no key, so
//                     their probabilities recompute to exactly 0)
//   dsum  [H][rows]   D_i = dot(dO_i, O_i)
//   dslope[B][H][nb]  per key-block partial d(slope) sums, reduced in a fixed order
// rows = batch * seqlen_q bounds every row index: batched b * sq + i, varlen cu_seqlens_q[b] + i.
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

constexpr int kBwdBlockN = 64;  // keys per dK/dV CTA, for every head-dim bucket

struct BwdWorkspaceLayout {
  int64_t rows = 0;
  int64_t n_key_blocks = 0;
  int64_t lse2_offset = 0;    // in floats
  int64_t dsum_offset = 0;
  int64_t dslope_offset = 0;
  int64_t total_bytes = 0;
};

inline BwdWorkspaceLayout bwd_workspace_layout(const AttnBwdParams& p) {
  const AttnShape& s = p.fwd.shape;
  BwdWorkspaceLayout w;
  w.rows = s.batch * s.seqlen_q;
  w.n_key_blocks = (s.seqlen_k + kBwdBlockN - 1) / kBwdBlockN;
  const int64_t per_row = s.num_heads * w.rows;
  w.lse2_offset = 0;
  w.dsum_offset = per_row;
  w.dslope_offset = 2 * per_row;
  const int64_t dslope = p.dslopes != nullptr ? s.batch * s.num_heads * w.n_key_blocks : 0;
  w.total_bytes = (2 * per_row + dslope) * static_cast<int64_t>(sizeof(float));
  return w;
}

}  // namespace mpt_ext::attn::cuda
