// Appends k_new / v_new into the caches at cache_seqlens[b] (flash_attn_with_kvcache's
// in-place update). Runs on the stream before the attention kernel, which then reads the
// new keys from the cache like any other.
#include "attn_kvcache_kernels.h"

#include <cuda_runtime.h>

#include "../../common/cuda_host.h"
#include "attn_kvcache_common.cuh"

namespace mpt_ext::attn_kvcache::cuda {
namespace {

// One item = one Chunk (16 bytes when every row is 16-byte aligned, else one element) of
// one (b, t, hk) row; a grid-stride loop covers both caches.
template <typename Chunk>
__global__ void append_kernel(const AppendArgs a) {
  const int64_t chunks_per_row = a.row_bytes / int64_t(sizeof(Chunk));
  const int64_t per_cache = int64_t(a.batch) * a.seqlen_new * a.heads_k * chunks_per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < 2 * per_cache;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const bool is_v = idx >= per_cache;
    int64_t rest = is_v ? idx - per_cache : idx;
    const int64_t c = rest % chunks_per_row;
    rest /= chunks_per_row;
    const int64_t hk = rest % a.heads_k;
    rest /= a.heads_k;
    const int64_t t = rest % a.seqlen_new;
    const int64_t b = rest / a.seqlen_new;
    const int64_t cached = a.cache_seqlens[b];
    if (!cache_len_fits(cached, a.seqlen_new, a.seqlen_cache)) {  // never write outside
      if (t == 0 && hk == 0 && c == 0 && !is_v) {
        note_bad_sequence(a.input_errors, SeqlensArg::kCacheSeqlens, b);
      }
      continue;
    }
    const int64_t pos = cached + t;
    const AppendSide& s = is_v ? a.v : a.k;
    const TensorStrides& from = s.src_strides;
    const TensorStrides& to = s.cache_strides;
    const char* src = static_cast<const char*>(s.src) +
                      (b * from.batch + t * from.row + hk * from.head) * a.elem_bytes;
    char* dst = static_cast<char*>(s.cache) +
                (b * to.batch + pos * to.row + hk * to.head) * a.elem_bytes;
    reinterpret_cast<Chunk*>(dst)[c] = reinterpret_cast<const Chunk*>(src)[c];
  }
}

}  // namespace

void launch_append(const AppendArgs& a, bool vectorised, cudaStream_t stream) {
  const int64_t chunk = vectorised ? 16 : a.elem_bytes;
  const int64_t items = 2 * int64_t(a.batch) * a.seqlen_new * a.heads_k * (a.row_bytes / chunk);
  if (items == 0) return;
  constexpr int kBlock = 256;
  const int64_t blocks = ceil_div(items, kBlock);
  const int grid = static_cast<int>(blocks < 65536 ? blocks : 65536);
  launch_kernel(vectorised ? append_kernel<uint4> : append_kernel<uint16_t>,
                static_cast<unsigned>(grid), kBlock, 0, stream, a);
  check_launch("attn_kvcache append_kernel (k/v -> cache)", stream);
}

}  // namespace mpt_ext::attn_kvcache::cuda
