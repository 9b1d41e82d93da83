// Which forward calls the sm_90a kernel (attn_fwd_sm90_kernel.cuh) covers, on the host and
// without any kernel: the dispatcher (../attn_cuda.cu) asks before it picks the kernel.
#pragma once

#include <string>

#include "../../../common/cuda_host.h"
#include "../../attn_params.h"
#include "../launch.cuh"

namespace mpt_ext::attn::cuda::sm90 {

// True when this build holds sm_90a code for the kernel (CMake's MPT_EXT_HAS_SM90A, set when
// the architectures include 9.0a; the emulation build runs it on the CPU).
constexpr bool kBuiltForSm90a =
#if defined(MPT_EXT_CUDA_EMULATION) || defined(MPT_EXT_HAS_SM90A)
    true;
#else
    false;
#endif

// A tensor map's base and strides: 16-byte aligned, and no stride 0 (a broadcast) where the
// dimension has more than one entry.
inline bool tma_strides_ok(const void* base, const TensorStrides& st, int64_t heads,
                           int64_t batch) {
  return rows_16b_aligned(base, st, /*varlen=*/false) && st.row > 0 && (st.head > 0 || heads == 1) &&
         (st.batch > 0 || batch == 1);
}

// Why the sm_90a forward cannot run this call ("" when it can): the device, the build, the
// inputs' layout (TMA needs 16-byte aligned bases and strides) and what it does not cover yet.
inline std::string fwd_sm90_unfit(const AttnFwdParams& p) {
  if (!kBuiltForSm90a) return "this build has no sm_90a code (TORCH_CUDA_ARCH_LIST lacks 9.0a)";
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor,
                                     "cudaDeviceGetAttribute(computeCapabilityMajor)");
  const int minor = device_attribute(cudaDevAttrComputeCapabilityMinor,
                                     "cudaDeviceGetAttribute(computeCapabilityMinor)");
  if (major != 9 || minor != 0) {
    return "the device is sm_" + std::to_string(major * 10 + minor) + ", not sm_90";
  }
  if (p.shape.cu_seqlens_q != nullptr) return "varlen inputs (cu_seqlens) are not covered yet";
  if (p.kv_pages.block_table != nullptr) return "paged keys (block_table) are not covered yet";
  const AttnShape& s = p.shape;
  const bool q_ok = tma_strides_ok(p.q, p.q_strides, s.num_heads, s.batch);
  const bool kv_ok = tma_strides_ok(p.k, p.k_strides, s.num_heads_k, s.batch) &&
                     tma_strides_ok(p.v, p.v_strides, s.num_heads_k, s.batch);
  if (!q_ok || !kv_ok) {
    return "q, k and v need 16-byte aligned data and nonzero strides that are multiples of 8 "
           "elements (TMA)";
  }
  return "";
}

}  // namespace mpt_ext::attn::cuda::sm90
