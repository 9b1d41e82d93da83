// Backward attention, head-dim bucket 256, bf16 (one instantiation per file: parallel builds).
#include "hdims.cuh"
#if MPT_ATTN_HDIM_256
#include "bwd_launch.cuh"

namespace mpt_ext::attn_cuda {
template void run_attention_bwd<__nv_bfloat16, 256>(const AttentionBwdParams& p);
}  // namespace mpt_ext::attn_cuda
#endif
