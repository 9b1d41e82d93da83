// Forward attention, head-dim bucket 64, fp16 (one instantiation per file: parallel builds).
#include "hdims.cuh"
#if MPT_ATTN_HDIM_64
#include "fwd_launch.cuh"

namespace mpt_ext::attn_cuda {
template void run_attention_fwd<__half, 64>(const AttentionFwdParams& p);
}  // namespace mpt_ext::attn_cuda
#endif
