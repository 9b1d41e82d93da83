// Launches the forward kernel for one (element type, head-dim bucket); each instantiation
// lives in its own file (instantiations/attn_fwd_hdim*_*.cu) so they compile in parallel.
#pragma once

#include "attn_fwd_kernel.cuh"
#include "tile_choice.h"
#include "launch.cuh"

namespace mpt_ext::attn::cuda {

// The default tile per head-dim bucket (keys per tile, cp.async stages, m16 tiles per warp):
// d 64: 128-row CTAs (two m16 tiles per warp: the 16 x 64 fp32 O fits twice), 3 stages;
// d 128: 64-row CTAs (16 x 128 O per warp already takes ~half the registers), 2 stages;
// d 256: 32 keys per tile to bound registers and shared memory.
template <int kD>
using FwdConfigFor = FwdConfig<kD, (kD <= 128 ? 64 : 32), (kD <= 64 ? 3 : 2), (kD <= 64 ? 2 : 1)>;

// The tiles a run can pick (MPT_EXT_ATTN_FWD_TILE, tile_choice.h), default first, so that
// one GPU run can A/B them. d 128: 128-row CTAs, where each K/V fragment feeds two mma (half
// the ldmatrix per mma of the default), at the price of registers: with 32 keys per tile
// nearly spill-free, with 64 (FlashAttention-2's tile) spilling (docs/perf-log.md has
// ptxas's numbers).
template <int kD>
struct FwdTiles {
  using type = TileList<FwdConfigFor<kD>>;
};
template <>
struct FwdTiles<128> {
  using type = TileList<FwdConfigFor<128>, FwdConfig<128, 32, 2, 2>, FwdConfig<128, 64, 2, 2>>;
};

template <typename T, typename Cfg, ScoreKind kKind, bool kPaged>
void launch_attn_fwd(const AttnFwdParams& p) {
  const AttnShape& s = p.shape;
  check_grid_yz(s.num_heads, s.batch, "attention forward");
  const bool varlen = s.cu_seqlens_q != nullptr;
  FwdExtra x;
  x.q_vec_ok = rows_16b_aligned(p.q, p.q_strides, varlen);
  // paged keys step pages by the batch stride: it must keep rows aligned too
  const bool keys_varlen = varlen && p.kv_pages.block_table == nullptr;
  x.kv_vec_ok = rows_16b_aligned(p.k, p.k_strides, keys_varlen) &&
                rows_16b_aligned(p.v, p.v_strides, keys_varlen);
  x.out_pair_ok = pairs_4b_aligned(p.out, p.out_strides, varlen);
  auto kernel = attn_fwd_kernel<T, Cfg, kKind, kPaged>;
  set_smem(reinterpret_cast<const void*>(kernel), Cfg::kSmemBytes, "attn_fwd_kernel");
  const dim3 grid(static_cast<unsigned>(ceil_div(grid_seqlen(s, s.seqlen_q), Cfg::kBlockM)),
                  static_cast<unsigned>(s.num_heads), static_cast<unsigned>(s.batch));
  launch_kernel(kernel, grid, Cfg::kThreads, Cfg::kSmemBytes, static_cast<cudaStream_t>(p.stream), p, x);
  check_launch("attn_fwd_kernel", static_cast<cudaStream_t>(p.stream));
}

template <typename T, int kD>
void run_attn_fwd(const AttnFwdParams& p) {
  using Tiles = typename FwdTiles<kD>::type;
  // read before the empty-input return: a bad value fails on every call alike
  const Tile tile = requested_tile(Tiles{}, kD, kFwdTileVariable);
  const AttnShape& s = p.shape;
  if (s.batch == 0 || s.num_heads == 0 || grid_seqlen(s, s.seqlen_q) == 0) return;
  if (p.kv_pages.block_table != nullptr) {  // paged keys: the default tile only (kPaged)
    with_score_kind(p.mask, [&](auto kind) {
      launch_attn_fwd<T, FwdConfigFor<kD>, decltype(kind)::value, true>(p);
    });
    return;
  }
  launch_tile(Tiles{}, tile, [&](auto cfg) {  // the picked tile with the params' score kind
    with_score_kind(p.mask, [&](auto kind) {
      launch_attn_fwd<T, decltype(cfg), decltype(kind)::value, false>(p);
    });
  });
}

}  // namespace mpt_ext::attn::cuda
