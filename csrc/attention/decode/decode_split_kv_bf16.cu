// split_kv_kernel instances for bf16: head-dim buckets 64/128/256 x rows per block 1/4.
// One file per dtype so the two compile in parallel.
#include "decode_split_kv.cuh"

namespace mpt_ext::decode {

template <>
const void* split_kv_kernel_ptr<__nv_bfloat16>(int dpad, int rows_per_block) {
#define MPT_DECODE_CASE(D, M) \
  if (dpad == D && rows_per_block == M) return reinterpret_cast<const void*>(&split_kv_kernel<__nv_bfloat16, D, M>);
  MPT_DECODE_CASE(64, 1) MPT_DECODE_CASE(64, 4)
  MPT_DECODE_CASE(128, 1) MPT_DECODE_CASE(128, 4)
  MPT_DECODE_CASE(256, 1) MPT_DECODE_CASE(256, 4)
#undef MPT_DECODE_CASE
  return nullptr;
}

}  // namespace mpt_ext::decode
