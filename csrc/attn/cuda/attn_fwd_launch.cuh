// Launches the forward kernel for one (element type, head-dim bucket); each instantiation
// lives in its own file (instantiations/attn_fwd_hdim*_*.cu) so they compile in parallel.
#pragma once

#include <string>

#include "attn_fwd_kernel.cuh"
#include "fwd_tile.h"
#include "launch.cuh"

namespace mpt_ext::attn::cuda {

// The default tile per head-dim bucket (keys per tile, cp.async stages, m16 tiles per warp):
// d 64: 128-row CTAs (two m16 tiles per warp: the 16 x 64 fp32 O fits twice), 3 stages;
// d 128: 64-row CTAs (16 x 128 O per warp already takes ~half the registers), 2 stages;
// d 256: 32 keys per tile to bound registers and shared memory.
template <int kD>
using FwdConfigFor = FwdConfig<kD, (kD <= 128 ? 64 : 32), (kD <= 64 ? 3 : 2), (kD <= 64 ? 2 : 1)>;

// Other tiles a run can pick (MPT_EXT_ATTN_FWD_TILE, fwd_tile.h) so that one GPU run can A/B
// them. d 128: 128-row CTAs, where each K/V fragment feeds two mma (half the ldmatrix per
// mma of the default), at the price of registers: with 32 keys per tile nearly spill-free,
// with 64 (FlashAttention-2's tile) spilling (docs/perf-log.md has ptxas's numbers).
template <typename... Cfgs>
struct FwdConfigList {};
template <int kD>
struct FwdTileVariants {
  using type = FwdConfigList<>;
};
template <>
struct FwdTileVariants<128> {
  using type = FwdConfigList<FwdConfig<128, 32, 2, 2>, FwdConfig<128, 64, 2, 2>>;
};

template <typename Cfg>
constexpr FwdTile fwd_tile_of() {
  return {Cfg::kBlockM, Cfg::kBlockN};
}

template <typename T, typename Cfg>
void launch_attn_fwd(const AttnFwdParams& p) {
  const AttnShape& s = p.shape;
  check_grid_yz(s.num_heads, s.batch, "attention forward");
  const bool varlen = s.cu_seqlens_q != nullptr;
  FwdExtra x;
  x.q_vec_ok = rows_16b_aligned(p.q, p.q_strides, varlen);
  x.kv_vec_ok = rows_16b_aligned(p.k, p.k_strides, varlen) &&
                rows_16b_aligned(p.v, p.v_strides, varlen);
  x.out_pair_ok = pairs_4b_aligned(p.out, p.out_strides, varlen);
  auto kernel = attn_fwd_kernel<T, Cfg>;
  set_smem(reinterpret_cast<const void*>(kernel), Cfg::kSmemBytes, "attn_fwd_kernel");
  const dim3 grid(static_cast<unsigned>(ceil_div(grid_seqlen(s, s.seqlen_q), Cfg::kBlockM)),
                  static_cast<unsigned>(s.num_heads), static_cast<unsigned>(s.batch));
  launch_kernel(kernel, grid, Cfg::kThreads, Cfg::kSmemBytes, static_cast<cudaStream_t>(p.stream), p, x);
  check_launch("attn_fwd_kernel", static_cast<cudaStream_t>(p.stream));
}

// The bucket's tiles, default first, joined by sep: "64x64, 128x32, ...".
template <int kD, typename... Cfgs>
std::string fwd_tile_names(const char* sep, FwdConfigList<Cfgs...>) {
  std::string names = fwd_tile_of<FwdConfigFor<kD>>().name();
  ((names += sep + fwd_tile_of<Cfgs>().name()), ...);
  return names;
}
template <int kD>
std::string fwd_tile_names(const char* sep = ", ") {
  return fwd_tile_names<kD>(sep, typename FwdTileVariants<kD>::type{});
}

template <typename T, typename... Cfgs>
bool launch_attn_fwd_variant(const AttnFwdParams& p, FwdTile want, FwdConfigList<Cfgs...>) {
  return ((want == fwd_tile_of<Cfgs>() && (launch_attn_fwd<T, Cfgs>(p), true)) || ...);
}

template <typename T, int kD>
void run_attn_fwd(const AttnFwdParams& p) {
  const FwdTile want = requested_fwd_tile();  // before the empty-input return: a bad value
                                              // fails on every call alike
  const AttnShape& s = p.shape;
  if (s.batch == 0 || s.num_heads == 0 || grid_seqlen(s, s.seqlen_q) == 0) return;
  if (want.rows == 0 || want == fwd_tile_of<FwdConfigFor<kD>>()) {
    launch_attn_fwd<T, FwdConfigFor<kD>>(p);
  } else if (!launch_attn_fwd_variant<T>(p, want, typename FwdTileVariants<kD>::type{})) {
    throw std::invalid_argument(std::string(kFwdTileVariable) + "=" + want.name() +
                                ": head-dim bucket " + std::to_string(kD) +
                                " has the forward tiles " + fwd_tile_names<kD>());
  }
}

}  // namespace mpt_ext::attn::cuda
