// The backward's fp32 scratch, carved from the one workspace the binding allocates:
//   lse2  [H][rows]  the forward's lse in log2 units (+inf for rows that saw no key,
//                    so their probabilities recompute to exactly 0)
//   dsum  [H][rows]  D_i = dot(dO_i, O_i)
//   dslope[H][rows]  each query row's d(slope) term (only when d(slopes) is wanted), summed
//                    per head or per (batch, head) in a fixed order
// rows bounds every row index: batched b * sq + i (rows = batch * seqlen_q), varlen
// cu_seqlens_q[b] + i (rows = total_q: the kernels run a sequence past it as empty). Every
// part is sized by the tokens, never by max_seqlen times the batch.
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

struct BwdWorkspaceLayout {
  int64_t rows = 0;
  int64_t lse2_offset = 0;  // in floats
  int64_t dsum_offset = 0;
  int64_t dslope_offset = 0;
  int64_t total_bytes = 0;
};

inline BwdWorkspaceLayout bwd_workspace_layout(const AttnBwdParams& p) {
  const AttnShape& s = p.fwd.shape;
  BwdWorkspaceLayout w;
  w.rows = s.cu_seqlens_q != nullptr ? s.total_q : s.batch * s.seqlen_q;
  const int64_t per_head_rows = s.num_heads * w.rows;
  w.lse2_offset = 0;
  w.dsum_offset = per_head_rows;
  w.dslope_offset = 2 * per_head_rows;
  const int64_t parts = p.dslopes != nullptr ? 3 : 2;
  w.total_bytes = parts * per_head_rows * static_cast<int64_t>(sizeof(float));
  return w;
}

}  // namespace mpt_ext::attn::cuda
