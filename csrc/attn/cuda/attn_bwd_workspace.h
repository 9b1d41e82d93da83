// The backward's fp32 scratch, carved from the one workspace the binding allocates:
//   lse2  [H][rows]        the forward's lse in log2 units (+inf for rows that saw no key,
//                          so their probabilities recompute to exactly 0)
//   dsum  [H][rows]        D_i = dot(dO_i, O_i)
//   dslope[B][H][parts]    per dQ warp partial d(slope) sums (parts = query blocks x warps),
//                          reduced in a fixed order
// rows bounds every row index: batched b * sq + i (rows = batch * seqlen_q), varlen
// cu_seqlens_q[b] + i (rows = total_q: the kernels run a sequence past it as empty).
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

constexpr int kBwdDqBlockM = 64;  // query rows per dQ CTA, for every head-dim bucket
constexpr int kBwdDqWarps = 4;    // each dQ warp writes one d(slope) partial

struct BwdWorkspaceLayout {
  int64_t rows = 0;
  int64_t dslope_parts = 0;   // per (batch, head)
  int64_t lse2_offset = 0;    // in floats
  int64_t dsum_offset = 0;
  int64_t dslope_offset = 0;
  int64_t total_bytes = 0;
};

inline BwdWorkspaceLayout bwd_workspace_layout(const AttnBwdParams& p) {
  const AttnShape& s = p.fwd.shape;
  BwdWorkspaceLayout w;
  w.rows = s.cu_seqlens_q != nullptr ? s.total_q : s.batch * s.seqlen_q;
  w.dslope_parts = (s.seqlen_q + kBwdDqBlockM - 1) / kBwdDqBlockM * kBwdDqWarps;
  const int64_t per_row = s.num_heads * w.rows;
  w.lse2_offset = 0;
  w.dsum_offset = per_row;
  w.dslope_offset = 2 * per_row;
  const int64_t dslope = p.dslopes != nullptr ? s.batch * s.num_heads * w.dslope_parts : 0;
  w.total_bytes = (2 * per_row + dslope) * static_cast<int64_t>(sizeof(float));
  return w;
}

}  // namespace mpt_ext::attn::cuda
