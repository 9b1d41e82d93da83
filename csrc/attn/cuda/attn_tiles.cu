// attn_fwd_tiles_cuda and attn_bwd_tiles_cuda (../attn.h): the tiles each compiled head-dim
// bucket offers, for mpt_ext._library.ATTN_FWD_TILES / ATTN_BWD_TILES. In a file of their own
// because they need the launchers' tile lists, and the dispatcher including those headers
// would compile every kernel a second time (here only the lists' constants are used).
#include <string>

#include "../attn.h"
#include "attn_bwd_launch.cuh"
#include "attn_fwd_launch.cuh"
#include "hdims.cuh"

namespace mpt_ext {
namespace {

// "64:a,b;128:c": each compiled bucket and its tiles, default first.
template <template <int> class Tiles>
std::string tiles_per_bucket() {
  std::string tiles;
  const auto add = [&](int bucket, const std::string& names) {
    tiles += (tiles.empty() ? "" : ";") + std::to_string(bucket) + ":" + names;
  };
#if MPT_ATTN_HDIM_64
  add(64, attn::cuda::tile_names(typename Tiles<64>::type{}, ","));
#endif
#if MPT_ATTN_HDIM_128
  add(128, attn::cuda::tile_names(typename Tiles<128>::type{}, ","));
#endif
#if MPT_ATTN_HDIM_256
  add(256, attn::cuda::tile_names(typename Tiles<256>::type{}, ","));
#endif
  return tiles;
}

}  // namespace

std::string attn_fwd_tiles_cuda() { return tiles_per_bucket<attn::cuda::FwdTiles>(); }
std::string attn_bwd_tiles_cuda() { return tiles_per_bucket<attn::cuda::BwdKVTiles>(); }

}  // namespace mpt_ext
