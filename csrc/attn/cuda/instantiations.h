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

namespace sm90 {
// kD 64 and 128 only (sm90/attn_fwd_sm90_launch.cuh); call where fwd_sm90_fit.h allows.
template <typename T, int kD>
void run_attn_fwd_sm90(const AttnFwdParams& p);
}  // namespace sm90

}  // namespace mpt_ext::attn::cuda
