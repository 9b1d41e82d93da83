// Forward attention, head-dim bucket 64, bf16 (one instantiation per file: parallel builds).
#include "hdims.cuh"
#if MPT_ATTN_HDIM_64
#include "fwd_launch.cuh"

namespace mpt_ext::attn_cuda {
template void run_attention_fwd<__nv_bfloat16, 64>(const AttentionFwdParams& p);
}  // namespace mpt_ext::attn_cuda
#endif
