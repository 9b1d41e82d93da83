// Declarations of the per-(type, head-dim bucket) launchers, each defined by explicit
// instantiation in its own .cu file; the dispatcher (attention_cuda.cu) sees only these.
#pragma once

#include "../attention_params.h"

namespace mpt_ext::attn_cuda {

template <typename T, int kD>
void run_attention_fwd(const AttentionFwdParams& p);

template <typename T, int kD>
void run_attention_bwd(const AttentionBwdParams& p);

}  // namespace mpt_ext::attn_cuda
