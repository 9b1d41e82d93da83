// Declarations of the per-(type, head-dim bucket) launchers, each defined by explicit
// instantiation in its own file under instantiations/ (scripts/gen-instantiations); the
// dispatcher (attn_cuda.cu) sees only these.
#pragma once

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

template <typename T, int kD>
void run_attn_fwd(const AttnFwdParams& p);

template <typename T, int kD>
void run_attn_bwd(const AttnBwdParams& p);

}  // namespace mpt_ext::attn::cuda
