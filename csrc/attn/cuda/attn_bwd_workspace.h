// The backward's fp32 scratch, carved from the one workspace the binding allocates:
//   lse2    [H][rows]      the forward's lse in log2 units (+inf for rows that saw no key,
//                          so their probabilities recompute to exactly 0)
//   dsum    [H][rows]      D_i = dot(dO_i, O_i)
//   dslope  [H][rows]      each query row's d(slope) term (only when d(slopes) is wanted),
//                          summed per head or per (batch, head) in a fixed order
//   dq_accum[splits][H][rows][kD]
//                          dQ summed over key blocks by red.global.add (BwdDq::kAtomic: one
//                          slice; kSplit: one per split, summed in order by the conversion;
//                          kD the head-dim bucket, columns past head_dim stay 0)
// rows bounds every row index: batched b * sq + i (rows = batch * seqlen_q), varlen
// cu_seqlens_q[b] + i (rows = total_q: the kernels run a sequence past it as empty). Every
// part is sized by the tokens, never by max_seqlen times the batch.
#pragma once

#include <cstdint>

#include "../attn_params.h"
#include "bwd_dq_mode.h"
#include "launch.cuh"

namespace mpt_ext::attn::cuda {

struct BwdWorkspaceLayout {
  BwdDq dq = BwdDq::kSeparate;
  int64_t rows = 0;
  int64_t lse2_offset = 0;  // in floats
  int64_t dsum_offset = 0;
  int64_t dslope_offset = 0;
  int64_t dq_accum_offset = 0;
  int64_t dq_accum_cols = 0;  // kD, or 0 without dq_accum
  int64_t dq_splits = 0;      // slices of dq_accum (1 for kAtomic; kSplit: the 128-key tiles
                              // may use fewer), 0 without it
  int64_t dq_split_stride = 0;  // floats per slice (kSplit only, else 0)
  int64_t total_bytes = 0;
};

// The row count that bounds every workspace row index (above).
inline int64_t bwd_workspace_rows(const AttnShape& s) {
  return s.cu_seqlens_q != nullptr ? s.total_q : s.batch * s.seqlen_q;
}

// bucket: the head-dim bucket kD the launcher runs.
inline BwdWorkspaceLayout bwd_workspace_layout(const AttnBwdParams& p, int bucket) {
  const AttnShape& s = p.fwd.shape;
  BwdWorkspaceLayout w;
  w.rows = bwd_workspace_rows(s);
  const BwdDqChoice dq = choose_bwd_dq(p, bucket, w.rows, sm_count());
  w.dq = dq.dq;
  const int64_t per_head_rows = s.num_heads * w.rows;
  int64_t floats = 0;
  w.lse2_offset = floats;
  floats += per_head_rows;
  w.dsum_offset = floats;
  floats += per_head_rows;
  if (p.dslopes != nullptr) {
    w.dslope_offset = floats;
    floats += per_head_rows;
  }
  if (w.dq != BwdDq::kSeparate) {
    w.dq_accum_offset = floats;
    w.dq_accum_cols = bucket;
    w.dq_splits = w.dq == BwdDq::kSplit ? dq.splits : 1;
    w.dq_split_stride = w.dq == BwdDq::kSplit ? per_head_rows * bucket : 0;
    floats += w.dq_splits * per_head_rows * bucket;
  }
  w.total_bytes = floats * static_cast<int64_t>(sizeof(float));
  return w;
}

}  // namespace mpt_ext::attn::cuda
