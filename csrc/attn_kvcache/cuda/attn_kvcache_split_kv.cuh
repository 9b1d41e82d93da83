// The split-KV decode attention kernel (template; instantiated per dtype and head-dim bucket
// in instantiations/attn_kvcache_split_kv_hdim*_*.cu).
//
// One block = one (sequence b, KV head hk, tile of kM query rows, key split). The rows of a
// tile are (query position i, query head g of the GQA group) pairs, so every K/V byte a
// block reads serves all the query heads that share it. Inside the block, kLanes threads
// own one key (each a 16-byte slice of the head dim) and the block's kSlots lane groups
// walk the split's keys kUnroll at a time, so each thread has 2 * kUnroll 16-byte loads in
// flight. Every lane group keeps its own online softmax (running max, sum, output slice);
// at the end the groups are merged through shared memory, and the block writes either the
// final output (one split) or a partial (out, lse) for combine_splits.
#pragma once

#include <cmath>

#include "../../common/cuda_math.cuh"
#include "../../attn/attn_mask.h"
#include "attn_kvcache_common.cuh"
#include "attn_kvcache_kernels.h"

namespace mpt_ext::attn_kvcache::cuda {

// Per row bucket (kM query rows per block): keys each thread loads per step, and the
// blocks per SM the registers must allow. Measured with ptxas (sm_80, bf16, d=128): kM=1,
// 4 keys -> 70 registers; kM=4, 2 keys -> 128; kM=8 needed ~250 and is not offered (more
// rows run as several kM=4 tiles, whose shared K/V reads mostly hit L2).
template <int kM>
struct RowBucket {
  static_assert(kM == 1 || kM == 4, "row buckets are 1 and 4");
  static constexpr int kUnroll = kM == 1 ? 4 : 2;
  static constexpr int kMinBlocksPerSm = kM == 1 ? 6 : 4;
};

template <typename T, int kDPad, int kM>
__global__ void __launch_bounds__(kThreads, RowBucket<kM>::kMinBlocksPerSm) split_kv_kernel(const SplitKvArgs a) {
  constexpr int kLanes = kDPad / kVec;         // threads per key: 8, 16 or 32
  constexpr int kSlots = kThreads / kLanes;    // keys in flight per block per unroll step
  constexpr int kUnroll = RowBucket<kM>::kUnroll;
  constexpr int kKeysPerStep = kSlots * kUnroll;
  static_assert(kLanes <= 32 && 32 % kLanes == 0, "a key's lanes must sit in one warp");

  const int tile = static_cast<int>(blockIdx.x % a.row_tiles);
  const int64_t seq_head = blockIdx.x / a.row_tiles;
  const int hk = static_cast<int>(seq_head % a.heads_k);
  const int64_t b = seq_head / a.heads_k;
  const int split = blockIdx.y;
  const int lane = threadIdx.x % kLanes;
  const int slot = threadIdx.x / kLanes;
  const int d0 = lane * kVec;
  const bool lane_active = d0 < a.head_dim;  // padded head-dim bucket: spare lanes idle

  // Keys of sequence b: the cached ones plus the just-appended ones, or none when its
  // arguments do not fit the cache (checked_sequence), so that a bad value never makes us read
  // outside it.
  const kvcache::CacheSequence seq = checked_sequence(
      a.layout, b, a.seqlen_new, a.input_errors,
      threadIdx.x == 0 && tile == 0 && hk == 0 && split == 0);
  const int64_t seqlen_k = seq.num_keys;

  // Per-row state: q slice (scaled), visible key range, ALiBi slope (log2 domain).
  const int rows_in_seq = a.group * a.seqlen_q;
  float q[kM][kVec];
  int row_lo[kM], row_hi[kM], row_diag[kM];
  float row_slope[kM];
  int tile_lo = 0x7fffffff, tile_hi = 0;
  const T* q_ptr = static_cast<const T*>(a.q);
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    const int rg = tile * kM + r;
    const bool valid = rg < rows_in_seq;
    const int i = valid ? rg / a.group : 0;
    const int h = hk * a.group + (valid ? rg % a.group : 0);
    // Query i sits at key position i + seqlen_k - seqlen_q (bottom-right alignment).
    row_diag[r] = i + static_cast<int>(seqlen_k) - a.seqlen_q;
    row_lo[r] = 0;
    row_hi[r] = 0;
    if (valid) {
      const KeyRange kr = visible_keys(i, a.seqlen_q, seqlen_k, a.causal, a.window_left,
                                       a.window_right);
      if (kr.lo < kr.hi) {
        row_lo[r] = static_cast<int>(kr.lo);
        row_hi[r] = static_cast<int>(kr.hi);
        tile_lo = min(tile_lo, row_lo[r]);
        tile_hi = max(tile_hi, row_hi[r]);
      }
    }
    row_slope[r] = (valid && a.slopes) ? a.slopes[b * a.slopes_batch_stride + h] * kLog2e : 0.f;
    const int64_t q_off =
        b * a.q_strides.batch + int64_t(i) * a.q_strides.row + int64_t(h) * a.q_strides.head + d0;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      q[r][e] = (valid && lane_active && d0 + e < a.head_dim)
                    ? ElemOps<T>::to_float(q_ptr[q_off + e]) * a.scale
                    : 0.f;
    }
  }

  // This split's share of the keys any row of the tile sees.
  int start = 0, end = 0;
  if (tile_lo < tile_hi) {
    const int64_t chunk = ceil_div(tile_hi - tile_lo, a.num_splits);
    const int64_t s = tile_lo + int64_t(split) * chunk;
    const int64_t e = s + chunk < tile_hi ? s + chunk : tile_hi;
    if (s < e) {
      start = static_cast<int>(s);
      end = static_cast<int>(e);
    }
  }

  float m[kM], l[kM], acc[kM][kVec];
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[r][e] = 0.f;
  }

  // Key j is cache position first + j, in its cache row or page (kvcache::place_of).
  const char* k_base = static_cast<const char*>(a.k) +
                       (int64_t(hk) * a.k_strides.head + d0) * int64_t(sizeof(T));
  const char* v_base = static_cast<const char*>(a.v) +
                       (int64_t(hk) * a.v_strides.head + d0) * int64_t(sizeof(T));
  const int first = static_cast<int>(seq.first);
  const int64_t seq_row = seq.row;

  // start/end are block-uniform, so every thread runs the same iterations (the shuffles
  // below need the whole warp).
  for (int base = start; base < end; base += kKeysPerStep) {
    uint4 kv[kUnroll], vv[kUnroll];
    bool loaded[kUnroll];  // false: past the split, or on a block-table entry outside the pages
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kSlots + slot;
      PagePlace place{-1, 0};
      if (j < end) {
        place = kvcache::place_of(a.layout, b, seq_row, first + j);
        if (place.page < 0 && lane == 0) note_bad_sequence(a.input_errors, SeqlensArg::kBlockTable, b);
      }
      loaded[u] = place.page >= 0;
      if (loaded[u] && lane_active) {
        kv[u] = load16(k_base + kvcache::offset_of(place, a.k_strides) * int64_t(sizeof(T)));
        vv[u] = load16(v_base + kvcache::offset_of(place, a.v_strides) * int64_t(sizeof(T)));
      } else {
        kv[u] = make_uint4(0, 0, 0, 0);
        vv[u] = make_uint4(0, 0, 0, 0);
      }
    }

    // Scores: partial dot products over this lane's slice, summed across the key's lanes.
    float s[kUnroll][kM];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[kVec];
      unpack8<T>(kv[u], kf);
#pragma unroll
      for (int r = 0; r < kM; ++r) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot = fmaf(q[r][e], kf[e], dot);
        s[u][r] = dot;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kM; ++r) {
#pragma unroll
        for (int off = kLanes / 2; off > 0; off /= 2) {
          s[u][r] += __shfl_xor_sync(0xffffffffu, s[u][r], off);
        }
      }
    }

    // Cap, bias, mask; scores move to the log2 domain for exp2.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kSlots + slot;
#pragma unroll
      for (int r = 0; r < kM; ++r) {
        float x = s[u][r];
        if (a.softcap > 0.f) x = a.softcap * softcap_tanh(x / a.softcap);
        x *= kLog2e;
        // alibi_distance (attn_mask.h) in 32-bit: key positions < 2^31 are checked on
        // the host, and the int64 version costs ~40 registers here.
        if (a.slopes) x -= row_slope[r] * fabsf(static_cast<float>(row_diag[r] - j));
        const bool visible = loaded[u] && j >= row_lo[r] && j < row_hi[r];
        s[u][r] = visible ? x : -INFINITY;
      }
    }

    // Online softmax over the kUnroll new keys.
#pragma unroll
    for (int r = 0; r < kM; ++r) {
      float m_new = m[r];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) m_new = fmaxf(m_new, s[u][r]);
      // A row with nothing visible yet keeps max -inf; shift by 0 so that exp2 gives 0, not NaN.
      const float shift = m_new == -INFINITY ? 0.f : m_new;
      const float rescale = exp2f(m[r] - shift);
      l[r] *= rescale;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[r][e] *= rescale;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        s[u][r] = exp2f(s[u][r] - shift);  // now the probability weight
        l[r] += s[u][r];
      }
      m[r] = m_new;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float vf[kVec];
      unpack8<T>(vv[u], vf);
#pragma unroll
      for (int r = 0; r < kM; ++r) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[r][e] = fmaf(s[u][r], vf[e], acc[r][e]);
      }
    }
  }

  // Merge the lane groups' softmax states: row max over groups, then rescaled sums.
  __shared__ float s_m[kSlots][kM];
  __shared__ float s_l[kSlots][kM];
  __shared__ float s_row_max[kM];
  __shared__ float s_row_sum[kM];
  __shared__ __align__(16) float s_acc[kSlots][kM][kDPad];
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kM; ++r) {
      s_m[slot][r] = m[r];
      s_l[slot][r] = l[r];
    }
  }
  __syncthreads();
  if (threadIdx.x < kM) {
    const int r = threadIdx.x;
    float mx = -INFINITY;
    for (int g = 0; g < kSlots; ++g) mx = fmaxf(mx, s_m[g][r]);
    const float shift = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f;
    for (int g = 0; g < kSlots; ++g) sum += s_l[g][r] * exp2f(s_m[g][r] - shift);
    s_row_max[r] = mx;
    s_row_sum[r] = sum;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kM; ++r) {
    const float shift = s_row_max[r] == -INFINITY ? 0.f : s_row_max[r];
    const float w = exp2f(m[r] - shift);
#pragma unroll
    for (int e = 0; e < kVec; ++e) s_acc[slot][r][d0 + e] = acc[r][e] * w;
  }
  __syncthreads();

  T* out_ptr = static_cast<T*>(a.out);
  for (int idx = threadIdx.x; idx < kM * kDPad; idx += kThreads) {
    const int r = idx / kDPad;
    const int d = idx % kDPad;
    const int rg = tile * kM + r;
    if (rg >= rows_in_seq || d >= a.head_dim) continue;
    float sum = 0.f;
    for (int g = 0; g < kSlots; ++g) sum += s_acc[g][r][d];
    const float total = s_row_sum[r];
    // != rather than >: a NaN score makes total NaN and must reach out (not read as "no key")
    const float o = total != 0.f ? sum / total : 0.f;
    const int i = rg / a.group;
    const int h = hk * a.group + rg % a.group;
    if (a.num_splits == 1) {
      const TensorStrides& os = a.out_strides;
      out_ptr[b * os.batch + int64_t(i) * os.row + int64_t(h) * os.head + d] =
          ElemOps<T>::from_float(o);
    } else {
      const int64_t row = (b * a.heads + h) * a.seqlen_q + i;
      a.partial_out[(int64_t(split) * a.rows + row) * a.head_dim + d] = o;
    }
  }
  if (threadIdx.x < kM) {
    const int r = threadIdx.x;
    const int rg = tile * kM + r;
    if (rg < rows_in_seq) {
      const int i = rg / a.group;
      const int h = hk * a.group + rg % a.group;
      const float total = s_row_sum[r];
      const float lse2 = total != 0.f ? s_row_max[r] + log2f(total) : -INFINITY;
      if (a.num_splits == 1) {
        a.lse[b * a.lse_batch + int64_t(h) * a.lse_head + i] = lse2 * kLn2;
      } else {
        const int64_t row = (b * a.heads + h) * a.seqlen_q + i;
        a.partial_lse[int64_t(split) * a.rows + row] = lse2;
      }
    }
  }
}

// The kernel for the dispatcher (attn_kvcache_cuda.cu, declared in attn_kvcache_kernels.h):
// rows per block 1 (one query row per KV head) or 4; null otherwise. Instantiated per
// (dtype, head-dim bucket) in instantiations/ (scripts/gen-instantiations).
template <typename T, int kDPad>
SplitKvKernel split_kv_kernel_ptr(int rows_per_block) {
  if (rows_per_block == 1) return &split_kv_kernel<T, kDPad, 1>;
  if (rows_per_block == 4) return &split_kv_kernel<T, kDPad, 4>;
  return nullptr;
}

}  // namespace mpt_ext::attn_kvcache::cuda
