// attn_fwd_tiles_cuda (../attn.h): the forward tiles each compiled head-dim bucket offers, for
// mpt_ext._library.ATTN_FWD_TILES. In its own file because it needs the launcher's tile lists
// (attn_fwd_launch.cuh), and the dispatcher including that header would compile every forward
// kernel a second time.
#include <string>

#include "../attn.h"
#include "attn_fwd_launch.cuh"
#include "hdims.cuh"

namespace mpt_ext {

std::string attn_fwd_tiles_cuda() {
  std::string tiles;
  const auto add = [&](int bucket, const std::string& names) {
    tiles += (tiles.empty() ? "" : ";") + std::to_string(bucket) + ":" + names;
  };
#if MPT_ATTN_HDIM_64
  add(64, attn::cuda::fwd_tile_names<64>(","));
#endif
#if MPT_ATTN_HDIM_128
  add(128, attn::cuda::fwd_tile_names<128>(","));
#endif
#if MPT_ATTN_HDIM_256
  add(256, attn::cuda::fwd_tile_names<256>(","));
#endif
  return tiles;
}

}  // namespace mpt_ext
