// Appends k_new / v_new into the caches at cache_seqlens[b] (flash_attn_with_kvcache's
// in-place update), rotating the keys on the way in and writing the rotated q when rotary is
// on. Runs on the stream before the attention kernel, which then reads the new keys from the
// cache like any other (and q from rotary.q_rotated).
#include "attn_kvcache_kernels.h"

#include <cuda_runtime.h>

#include "../../common/cuda_host.h"
#include "attn_kvcache_common.cuh"

namespace mpt_ext::attn_kvcache::cuda {
namespace {

// Element e of a row at position pos, rotated with its partner (kvcache::rotary_pair) in fp32.
template <typename T>
__device__ __forceinline__ T rotated(const RotaryParams& r, const T* row, int64_t e,
                                     int64_t pos) {
  const kvcache::RotaryPair pair = kvcache::rotary_pair(e, r.rotary_dim, r.interleaved);
  const T* cos = static_cast<const T*>(r.cos) + pos * r.cos_row_stride;
  const T* sin = static_cast<const T*>(r.sin) + pos * r.sin_row_stride;
  return ElemOps<T>::from_float(kvcache::rotate(
      ElemOps<T>::to_float(row[e]), ElemOps<T>::to_float(row[pair.partner]),
      ElemOps<T>::to_float(cos[pair.angle]), ElemOps<T>::to_float(sin[pair.angle]), pair.first));
}

// One item = one Chunk (16 bytes when every row is 16-byte aligned, else one element) of
// one (b, t, hk) row of k or v, or (rotary) one element of q; a grid-stride loop covers all.
template <typename T, typename Chunk>
__global__ void append_kernel(const AppendArgs a) {
  constexpr int64_t kElems = sizeof(Chunk) / sizeof(T);
  const int64_t chunks_per_row = a.row_bytes / int64_t(sizeof(Chunk));
  const int64_t per_cache = int64_t(a.batch) * a.seqlen_new * a.heads_k * chunks_per_row;
  const bool rotary = a.rotary.cos != nullptr;
  const int64_t q_items = rotary ? int64_t(a.batch) * a.seqlen_q * a.heads * a.head_dim : 0;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < 2 * per_cache + q_items;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (idx >= 2 * per_cache) {  // q: element e of (b, i, h), rotated at its position
      int64_t rest = idx - 2 * per_cache;
      const int64_t e = rest % a.head_dim;
      rest /= a.head_dim;
      const int64_t h = rest % a.heads;
      rest /= a.heads;
      const int64_t i = rest % a.seqlen_q;
      const int64_t b = rest / a.seqlen_q;
      const kvcache::CacheSequence s = kvcache::cache_sequence(a.layout, b, a.seqlen_new);
      const T* row = static_cast<const T*>(a.q) + b * a.q_strides.batch + i * a.q_strides.row +
                     h * a.q_strides.head;
      const int64_t pos = s.cached + (a.rotary.per_query_position ? i : 0);
      T* dst = static_cast<T*>(a.rotary.q_rotated) +
               ((b * a.seqlen_q + i) * a.heads + h) * a.head_dim + e;
      // a sequence that does not fit attends to nothing: its q is never used
      *dst = !s.ok ? ElemOps<T>::from_float(0.f)
             : e < a.rotary.rotary_dim ? rotated(a.rotary, row, e, pos)
                                       : row[e];
      continue;
    }
    const bool is_v = idx >= per_cache;
    int64_t rest = is_v ? idx - per_cache : idx;
    const int64_t c = rest % chunks_per_row;
    rest /= chunks_per_row;
    const int64_t hk = rest % a.heads_k;
    rest /= a.heads_k;
    const int64_t t = rest % a.seqlen_new;
    const int64_t b = rest / a.seqlen_new;
    const bool first_item = t == 0 && hk == 0 && c == 0 && !is_v;
    const kvcache::CacheSequence s = checked_sequence(a.layout, b, a.seqlen_new, a.input_errors,
                                                      first_item);
    if (!s.ok) continue;  // never write outside
    const int64_t pos = s.cached + t;
    const AppendSide& side = is_v ? a.v : a.k;
    const TensorStrides& from = side.src_strides;
    const PagePlace place = kvcache::place_of(a.layout, b, s.row, pos);
    if (place.page < 0) {  // a block-table entry outside the pages
      if (c == 0 && hk == 0) note_bad_sequence(a.input_errors, SeqlensArg::kBlockTable, b);
      continue;
    }
    const T* src = static_cast<const T*>(side.src) + b * from.batch + t * from.row + hk * from.head;
    T* dst = static_cast<T*>(side.cache) + kvcache::offset_of(place, side.cache_strides) +
             hk * side.cache_strides.head;
    if (!is_v && rotary && c * kElems < a.rotary.rotary_dim) {
      // rotary_dim is a multiple of 16, so a chunk is all rotated or all not
      for (int64_t e = c * kElems; e < (c + 1) * kElems; ++e) dst[e] = rotated(a.rotary, src, e, pos);
    } else {
      reinterpret_cast<Chunk*>(dst)[c] = reinterpret_cast<const Chunk*>(src)[c];
    }
  }
}

template <typename T>
void launch_typed(const AppendArgs& a, bool vectorised, cudaStream_t stream) {
  const int64_t chunk = vectorised ? 16 : a.elem_bytes;
  const int64_t q_items =
      a.rotary.cos != nullptr ? int64_t(a.batch) * a.seqlen_q * a.heads * a.head_dim : 0;
  const int64_t items =
      2 * int64_t(a.batch) * a.seqlen_new * a.heads_k * (a.row_bytes / chunk) + q_items;
  if (items == 0) return;
  constexpr int kBlock = 256;
  const int64_t blocks = ceil_div(items, kBlock);
  const int grid = static_cast<int>(blocks < 65536 ? blocks : 65536);
  launch_kernel(vectorised ? append_kernel<T, uint4> : append_kernel<T, T>,
                static_cast<unsigned>(grid), kBlock, 0, stream, a);
  check_launch("attn_kvcache append_kernel (k/v -> cache)", stream);
}

}  // namespace

void launch_append(const AppendArgs& a, bool bf16, bool vectorised, cudaStream_t stream) {
  if (bf16) {
    launch_typed<__nv_bfloat16>(a, vectorised, stream);
  } else {
    launch_typed<__half>(a, vectorised, stream);
  }
}

}  // namespace mpt_ext::attn_kvcache::cuda
