// Host side of the sm_90a forward (attn_fwd_sm90_kernel.cuh): the tensor maps of q, k and v,
// and the launch. Instantiated per (type, head-dim bucket) in
// ../instantiations/attn_fwd_sm90_hdim*_*.cu; the dispatcher (../attn_cuda.cu) calls
// run_attn_fwd_sm90 for the calls fwd_sm90_fit.h finds it covers.
#pragma once

#include <cstdint>

#include "../launch.cuh"
#include "attn_fwd_sm90_kernel.cuh"
#include "tensor_map.h"

namespace mpt_ext::attn::cuda::sm90 {

// The tile per head-dim bucket: 128 query rows (two consumer warpgroups) x 128 keys; d 64
// fits a third K/V stage in shared memory, d 128 (160 KB with two) does not.
template <int kD>
using FwdSm90ConfigFor = FwdSm90Config<kD, 128, (kD <= 64 ? 3 : 2)>;

// The map of a (batch, seqlen, heads, head_dim) tensor as (head_dim, seqlen, heads, batch),
// boxes of 64 columns by `rows` rows of one head.
inline CUtensorMap qkv_map(const void* base, const TensorStrides& st, int64_t batch,
                           int64_t seqlen, int64_t heads, int64_t head_dim, DType dtype,
                           uint32_t rows) {
  const uint64_t dims[4] = {uint64_t(head_dim), uint64_t(seqlen), uint64_t(heads),
                            uint64_t(batch)};
  // A dimension of one entry is never stepped along: its stride (which may be 0, or anything)
  // is replaced by the packed one, which the driver accepts.
  const int64_t elem_strides[3] = {st.row, st.head, st.batch};
  uint64_t strides[3];
  for (int i = 0; i < 3; ++i) {
    const uint64_t packed = i == 0 ? dims[0] * 2 : strides[i - 1] * dims[i];
    strides[i] = dims[i + 1] == 1 ? (packed + 15) / 16 * 16 : uint64_t(elem_strides[i]) * 2;
  }
  const uint32_t box[4] = {64, rows, 1, 1};
  const CUtensorMapDataType type = dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                             : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return make_tensor_map(type, 4, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
}

template <typename T, typename Cfg, ScoreKind kKind>
void launch_attn_fwd_sm90(const AttnFwdParams& p) {
  const AttnShape& s = p.shape;
  check_grid_yz(s.num_heads, s.batch, "attention forward");
  FwdSm90Params params;
  params.fwd = p;
  params.out_pair_ok = pairs_4b_aligned(p.out, p.out_strides, false);
  params.q = qkv_map(p.q, p.q_strides, s.batch, s.seqlen_q, s.num_heads, s.head_dim, p.dtype,
                     Cfg::kBlockM);
  params.k = qkv_map(p.k, p.k_strides, s.batch, s.seqlen_k, s.num_heads_k, s.head_dim, p.dtype,
                     Cfg::kBlockN);
  params.v = qkv_map(p.v, p.v_strides, s.batch, s.seqlen_k, s.num_heads_k, s.head_dim, p.dtype,
                     Cfg::kBlockN);
  auto kernel = attn_fwd_sm90_kernel<T, Cfg, kKind>;
  set_smem(reinterpret_cast<const void*>(kernel), Cfg::kSmemBytes, "attn_fwd_sm90_kernel");
  const dim3 grid(static_cast<unsigned>(ceil_div(s.seqlen_q, Cfg::kBlockM)),
                  static_cast<unsigned>(s.num_heads), static_cast<unsigned>(s.batch));
  launch_kernel(kernel, grid, Cfg::kThreads, Cfg::kSmemBytes, static_cast<cudaStream_t>(p.stream),
                params);
  check_launch("attn_fwd_sm90_kernel", static_cast<cudaStream_t>(p.stream));
}

template <typename T, int kD>
void run_attn_fwd_sm90(const AttnFwdParams& p) {
  const AttnShape& s = p.shape;
  if (s.batch == 0 || s.num_heads == 0 || s.seqlen_q == 0) return;
  with_score_kind(p.mask, [&](auto kind) {
    launch_attn_fwd_sm90<T, FwdSm90ConfigFor<kD>, decltype(kind)::value>(p);
  });
}

}  // namespace mpt_ext::attn::cuda::sm90
