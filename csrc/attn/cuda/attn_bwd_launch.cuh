// Launches the backward for one (element type, head-dim bucket): preprocess, dK/dV (adding dQ
// atomically, or followed by a dQ kernel: bwd_dq_mode.h) and the d(slopes) reduction, all on
// p.fwd.stream. Instantiated in instantiations/attn_bwd_hdim*_*.cu.
#pragma once

#include "attn_bwd_kernels.cuh"
#include "attn_bwd_prep.h"
#include "attn_bwd_workspace.h"
#include "launch.cuh"
#include "tile_choice.h"

namespace mpt_ext::attn::cuda {

// The default dK/dV tile per head-dim bucket: 4 warps, so 64 keys per CTA. Query rows per
// step shrink with the head dim: the dK and dV accumulators (kD fp32 registers per thread
// together) leave less room for the S^T / dP^T tiles.
template <int kD, bool kDqAtomic>
using BwdKVConfigFor = BwdKVConfig<kD, (kD <= 64 ? 64 : (kD <= 128 ? 32 : 16)), 4, kDqAtomic>;

// The dK/dV tiles a run can pick (MPT_EXT_ATTN_BWD_TILE, tile_choice.h), default first; the
// launcher re-instantiates the one picked with its dQ variant. 8 warps own 128 keys with the
// same per-warp work and registers as the default, and each Q/dO tile, lse/D row and dQ
// atomic add then serves twice the keys (FlashAttention-2's hd128 backward has 128-key
// tiles on 8 warps too).
template <int kD>
struct BwdKVTiles {
  using type = TileList<BwdKVConfigFor<kD, false>>;
};
template <>
struct BwdKVTiles<64> {
  using type = TileList<BwdKVConfigFor<64, false>, BwdKVConfig<64, 64, 8, false>>;
};
template <>
struct BwdKVTiles<128> {
  using type = TileList<BwdKVConfigFor<128, false>, BwdKVConfig<128, 32, 8, false>>;
};

template <int kD>
using BwdQConfigFor = BwdQConfig<kD, (kD <= 64 ? 64 : 32)>;

// Every key block in one grid; BwdDq::kSplit (splits > 0): in launches of `splits` key blocks,
// one after another on the stream, CTA x of each adding into dQ slice x (x.dq_split_stride
// apart), so each slice receives its key blocks' sums in launch order. That order rests on
// the launches not overlapping: programmatic dependent launch here would need a barrier
// before the first dQ add. (A loop over key blocks inside the kernel, FlashAttention-2's
// form, cost ptxas 4-10 registers and up to 52 B of spills at hd128 in every dQ variant.)
template <typename T, typename KV, ScoreKind kKind>
void launch_bwd_dkdv(const AttnBwdParams& p, BwdExtra x, int64_t seqlen_k, int64_t splits) {
  const AttnShape& s = p.fwd.shape;
  auto kernel = attn_bwd_dkdv_kernel<T, KV, kKind>;
  set_smem(reinterpret_cast<const void*>(kernel), KV::kSmemBytes, "attn_bwd_dkdv_kernel");
  const int64_t key_blocks = ceil_div(seqlen_k, KV::kBlockN);
  const int64_t per_launch = splits > 0 ? splits : key_blocks;
  const auto stream = static_cast<cudaStream_t>(p.fwd.stream);
  for (int64_t first = 0; first < key_blocks; first += per_launch) {
    x.key_block0 = static_cast<int>(first);
    const int64_t blocks = per_launch < key_blocks - first ? per_launch : key_blocks - first;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(s.num_heads_k),
                    static_cast<unsigned>(s.batch));
    launch_kernel(kernel, grid, KV::kThreads, KV::kSmemBytes, stream, p, x);
    check_launch("attn_bwd_dkdv_kernel", stream);
  }
}

template <typename T, int kD>
void run_attn_bwd(const AttnBwdParams& p) {
  using Q = BwdQConfigFor<kD>;
  using Tiles = typename BwdKVTiles<kD>::type;
  // read before the empty-input return: a bad value fails on every call alike
  const Tile tile = requested_tile(Tiles{}, kD, kBwdTileVariable);
  const AttnFwdParams& f = p.fwd;
  const AttnShape& s = f.shape;
  if (s.batch == 0 || s.num_heads == 0) return;
  check_grid_yz(s.num_heads, s.batch, "attention backward");
  const bool varlen = s.cu_seqlens_q != nullptr;
  const auto stream = static_cast<cudaStream_t>(f.stream);

  // The one layout this run uses, checked here: MPT_EXT_ATTN_BWD_DQ could have changed
  // since the binding sized the workspace (attn_bwd_workspace_bytes_cuda).
  const BwdWorkspaceLayout w = bwd_workspace_layout(p, kD);
  const bool dq_atomic = w.dq != BwdDq::kSeparate;  // the dK/dV kernel adds dQ (atomic, split)
  float* ws = static_cast<float*>(p.workspace);
  if (p.workspace_bytes < w.total_bytes || (w.total_bytes > 0 && ws == nullptr)) {
    throw std::invalid_argument(
        "mpt_ext attention (CUDA): backward workspace of " + std::to_string(p.workspace_bytes) +
        " bytes, this run needs " + std::to_string(w.total_bytes) + " (dQ " +
        bwd_dq_name(w.dq) + "; did " + kBwdDqVariable +
        " change between the sizing and the run?)");
  }
  BwdExtra x;
  x.q_vec_ok = rows_16b_aligned(f.q, f.q_strides, varlen);
  x.k_vec_ok = rows_16b_aligned(f.k, f.k_strides, varlen);
  x.v_vec_ok = rows_16b_aligned(f.v, f.v_strides, varlen);
  x.do_vec_ok = rows_16b_aligned(p.dout, p.dout_strides, varlen);
  x.dq_pair_ok = pairs_4b_aligned(p.dq, p.dq_strides, varlen);
  x.dk_pair_ok = pairs_4b_aligned(p.dk, p.dk_strides, varlen);
  x.dv_pair_ok = pairs_4b_aligned(p.dv, p.dv_strides, varlen);
  x.lse2 = ws + w.lse2_offset;
  x.dsum = ws + w.dsum_offset;
  x.dslope = p.dslopes != nullptr ? ws + w.dslope_offset : nullptr;
  x.dq_accum = dq_atomic ? ws + w.dq_accum_offset : nullptr;
  x.dq_split_stride = w.dq_split_stride;
  x.key_block0 = 0;
  x.rows = w.rows;

  if (x.dslope != nullptr) {
    // Varlen rows no sequence covers get no term: start from zeros.
    check_cuda(cudaMemsetAsync(x.dslope, 0, s.num_heads * w.rows * sizeof(float), stream),
               "cudaMemsetAsync(dslope row terms)");
  }
  const int64_t seqlen_q = grid_seqlen(s, s.seqlen_q), seqlen_k = grid_seqlen(s, s.seqlen_k);
  // split: the slices this tile fills (a 128-key tile has half the 64-key blocks the layout
  // counted); the rest of the workspace stays untouched
  int64_t splits = 0;
  if (w.dq == BwdDq::kSplit) {
    const int64_t key_blocks = ceil_div(seqlen_k, tile.per_cta);
    splits = w.dq_splits < key_blocks ? w.dq_splits : key_blocks;
    splits = splits < 1 ? 1 : splits;
  }
  if (dq_atomic) {
    const int64_t slices = splits > 0 ? splits : 1;
    check_cuda(cudaMemsetAsync(x.dq_accum, 0, slices * s.num_heads * w.rows * kD * sizeof(float),
                               stream),
               "cudaMemsetAsync(dq_accum)");
  }
  launch_bwd_preprocess(p, x.lse2, x.dsum, w.rows);

  with_score_kind(f.mask, [&](auto kind) {  // the forward's kind (seq_score.cuh)
    constexpr ScoreKind kKind = decltype(kind)::value;
    if (seqlen_k > 0) {
      launch_tile(Tiles{}, tile, [&](auto cfg) {  // the picked tile with this run's dQ variant
        using C = decltype(cfg);
        if (dq_atomic) {
          launch_bwd_dkdv<T, BwdKVConfig<kD, C::kBlockM, C::kWarps, true>, kKind>(p, x, seqlen_k,
                                                                               splits);
        } else {
          launch_bwd_dkdv<T, BwdKVConfig<kD, C::kBlockM, C::kWarps, false>, kKind>(p, x,
                                                                                seqlen_k, 0);
        }
      });
    }
    if (!dq_atomic && seqlen_q > 0) {
      auto kernel = attn_bwd_dq_kernel<T, Q, kKind>;
      set_smem(reinterpret_cast<const void*>(kernel), Q::kSmemBytes, "attn_bwd_dq_kernel");
      const dim3 grid(static_cast<unsigned>(ceil_div(seqlen_q, Q::kBlockM)),
                      static_cast<unsigned>(s.num_heads), static_cast<unsigned>(s.batch));
      launch_kernel(kernel, grid, Q::kThreads, Q::kSmemBytes, stream, p, x);
      check_launch("attn_bwd_dq_kernel", stream);
    }
  });
  if (dq_atomic) launch_bwd_dq_convert(p, x.dq_accum, w.rows, kD, splits > 0 ? splits : 1,
                                       w.dq_split_stride);
  if (p.dslopes != nullptr) launch_bwd_dslope_reduce(p, x.dslope, w.rows);
}

}  // namespace mpt_ext::attn::cuda
