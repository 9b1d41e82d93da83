// Launchers for the head-dim independent backward steps (bwd_prep.cu).
#pragma once

#include <cstdint>

#include "../attention_params.h"

namespace mpt_ext::attn_cuda {

// lse2 / dsum: [H][rows] fp32 (see bwd_workspace.h).
void launch_bwd_preprocess(const AttentionBwdParams& p, float* lse2, float* dsum, int64_t rows);

// part: [B][H][n_key_blocks] partial sums -> p.dslopes (the slopes' shape, contiguous).
void launch_bwd_dslope_reduce(const AttentionBwdParams& p, const float* part,
                              int64_t n_key_blocks);

}  // namespace mpt_ext::attn_cuda
