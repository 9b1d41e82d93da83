// How many key splits the decode kernel uses when the caller passes num_splits = 0.
// Plain C++ so that it can be read, tested and tuned apart from the kernels; the reasoning
// and the numbers to measure are in README.md.
#pragma once

#include <algorithm>
#include <cstdint>

namespace mpt_ext::attn_kvcache::cuda {

struct SplitHeuristicInput {
  int64_t blocks_per_split;  // batch * heads_k * row tiles: blocks with one split
  int64_t max_keys;          // upper bound on keys per sequence (the cache length)
  int num_sms;               // 132 on an H100 SXM
  int blocks_per_sm;         // resident blocks of the chosen kernel (occupancy API)
};

// Bytes in flight needed to cover HBM latency are reached with a few resident blocks per
// SM (each keeps 128 threads x 2 x unroll x 16 B of loads in flight): aim for this many.
constexpr int kTargetBlocksPerSm = 4;
// Below this many keys per split the fixed costs of a block (q load, the merge through
// shared memory, the partial write and the combine pass) stop being small.
constexpr int64_t kMinKeysPerSplit = 128;

inline int choose_num_splits(const SplitHeuristicInput& in, int max_splits) {
  if (in.blocks_per_split <= 0 || in.max_keys <= 0 || in.num_sms <= 0) return 1;
  const int64_t resident = int64_t(in.num_sms) * std::max(in.blocks_per_sm, 1);
  const int64_t target = int64_t(in.num_sms) * std::min(std::max(in.blocks_per_sm, 1), kTargetBlocksPerSm);
  if (in.blocks_per_split >= target) return 1;  // batch x heads fill the GPU already
  int64_t splits = (target + in.blocks_per_split - 1) / in.blocks_per_split;
  // Never spill into a second, mostly empty wave: all blocks do equal work, so a wave that
  // is 5% full costs as much time as a full one.
  splits = std::min(splits, std::max<int64_t>(resident / in.blocks_per_split, 1));
  splits = std::min(splits, std::max<int64_t>(in.max_keys / kMinKeysPerSplit, 1));
  splits = std::min<int64_t>(splits, max_splits);
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

}  // namespace mpt_ext::attn_kvcache::cuda
