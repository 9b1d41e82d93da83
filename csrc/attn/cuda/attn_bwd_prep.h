// Launchers for the head-dim independent backward steps (attn_bwd_prep.cu).
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

// lse2 / dsum: [H][rows] fp32 (see attn_bwd_workspace.h).
void launch_bwd_preprocess(const AttnBwdParams& p, float* lse2, float* dsum, int64_t rows);

// dq_accum: `splits` slices of [H][rows][cols] fp32 sums of dS K, split_stride floats apart,
// summed in slice order -> p.dq (times the softmax scale, as p.dq's type).
void launch_bwd_dq_convert(const AttnBwdParams& p, const float* dq_accum, int64_t rows, int cols,
                           int64_t splits, int64_t split_stride);

// terms: [H][rows] per-row d(slope) terms -> p.dslopes (the slopes' shape, contiguous).
void launch_bwd_dslope_reduce(const AttnBwdParams& p, const float* terms, int64_t rows);

}  // namespace mpt_ext::attn::cuda
