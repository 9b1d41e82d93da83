// How the backward computes dQ (attn_bwd_kernels.cuh):
//   atomic   : the dK/dV kernel also does dQ += dS K for its key block and adds it into an fp32
//              [H][rows][kD] workspace with red.global.add; a small kernel converts it. Five
//              matmuls per tile, as FlashAttention-2; the order of the adds, so the last bits of
//              dQ, change from run to run.
//   split    : the same five matmuls, bitwise reproducible (FlashAttention-2's deterministic
//              mode, in launches): the dK/dV kernel runs `splits` key blocks per (sequence,
//              kv head) at a time, one launch after another, CTA x of each adding into dQ
//              slice x, and the conversion sums the slices in order (plan_dq_splits).
//   separate : a dQ kernel of its own recomputes S and dP (seven matmuls), bitwise
//              reproducible, sums each query row's d(slope) term on the way, and needs no
//              fp32 dQ workspace.
// d(slopes) always run `separate`. deterministic=True runs `split` where its launches keep
// the GPU busy enough to beat the seventh matmul's cost (kMinSplitFill) within the workspace
// budget, else `separate`. MPT_EXT_ATTN_BWD_DQ (read at every call, like
// MPT_EXT_ATTN_FWD_TILE) forces one for A/B runs (deterministic=True never runs `atomic`);
// unset or empty means `atomic` without deterministic=True.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

constexpr const char* kBwdDqVariable = "MPT_EXT_ATTN_BWD_DQ";

enum class BwdDq { kAtomic, kSplit, kSeparate };

inline const char* bwd_dq_name(BwdDq dq) {
  return dq == BwdDq::kAtomic ? "atomic" : (dq == BwdDq::kSplit ? "split" : "separate");
}

// What MPT_EXT_ATTN_BWD_DQ asks for: kAtomic when unset or empty; throws on another value.
inline BwdDq bwd_dq_asked() {
  const char* value = std::getenv(kBwdDqVariable);
  if (value == nullptr || value[0] == '\0' || std::strcmp(value, "atomic") == 0) {
    return BwdDq::kAtomic;
  }
  if (std::strcmp(value, "split") == 0) return BwdDq::kSplit;
  if (std::strcmp(value, "separate") == 0) return BwdDq::kSeparate;
  throw std::invalid_argument(std::string(kBwdDqVariable) +
                              ": expected 'atomic', 'split' or 'separate', got '" + value + "'");
}

// Most dQ slices BwdDq::kSplit takes (the fp32 workspace is splits times dQ's size) ...
constexpr int64_t kMaxDqSplits = 16;
// ... and most bytes: past either, fewer splits leave SMs idle rather than take more memory.
constexpr int64_t kMaxDqSplitBytes = int64_t{4} << 30;
// The fewest keys a dK/dV CTA owns (attn_bwd_launch.cuh's tiles): bounds the useful splits.
constexpr int64_t kMinBwdKeyBlock = 64;
// 64-key dK/dV CTAs resident per SM (4 warps at <= 255 registers: 2 per SM). The 8-warp
// 128-key tiles run 1 per SM: the same keys in flight.
constexpr int64_t kBwdSlotsPerSm = 2;
// deterministic=True takes split only when its launches fill at least this share of the
// slots: below, five matmuls on part of the GPU cost more than separate's seven on all of
// it (7 / 5 = 1.4, less the conversion's extra pass). A first guess, for the GPU A/B.
constexpr double kMinSplitFill = 0.75;

struct DqSplitPlan {
  int64_t splits = 1;
  double fill = 0.;  // share of the slots a launch keeps busy over its waves
};

// ctas: (sequence, kv head) pairs one launch runs per key block; key_blocks: 64-key blocks of
// the longest sequence; slice_bytes: one fp32 dQ slice. The fewest splits whose launches fill
// at least 95% of the share the best allowed count reaches.
inline DqSplitPlan plan_dq_splits(int64_t ctas, int64_t key_blocks, int64_t slice_bytes,
                                  int sms) {
  const int64_t slots = kBwdSlotsPerSm * (sms > 0 ? sms : 1);
  int64_t most = key_blocks < kMaxDqSplits ? key_blocks : kMaxDqSplits;
  if (slice_bytes > 0 && most > kMaxDqSplitBytes / slice_bytes) {
    most = kMaxDqSplitBytes / slice_bytes;
  }
  if (most < 1) most = 1;
  const int64_t c = ctas > 0 ? ctas : 1;
  auto fill = [&](int64_t splits) {
    const int64_t n = c * splits, waves = (n + slots - 1) / slots;
    return static_cast<double>(n) / static_cast<double>(slots * waves);
  };
  double best = 0.;
  for (int64_t s = 1; s <= most; ++s) best = fill(s) > best ? fill(s) : best;
  DqSplitPlan plan;
  for (int64_t s = 1; s <= most; ++s) {
    if (fill(s) >= 0.95 * best) {
      plan.splits = s;
      plan.fill = fill(s);
      break;
    }
  }
  return plan;
}

struct BwdDqChoice {
  BwdDq dq = BwdDq::kAtomic;
  int64_t splits = 0;  // kSplit: dQ slices (64-key blocks per launch); else 0
};

// bucket: the head-dim bucket kD (a dQ slice is [H][rows][kD] fp32); rows: the workspace's
// rows (attn_bwd_workspace.h); sms: the device's SM count.
inline BwdDqChoice choose_bwd_dq(const AttnBwdParams& p, int64_t bucket, int64_t rows,
                                 int sms) {
  const BwdDq asked = bwd_dq_asked();  // read first: a bad value fails on every call alike
  if (p.dslopes != nullptr) return {BwdDq::kSeparate, 0};
  if (asked == BwdDq::kSeparate || (asked == BwdDq::kAtomic && !p.deterministic)) {
    return {asked, 0};
  }
  const AttnShape& s = p.fwd.shape;
  const bool varlen = s.cu_seqlens_q != nullptr;
  const int64_t seqlen_k = s.seqlen_k > 0 ? s.seqlen_k : 1;
  // varlen: later launches hold only the sequences that long; count the keys in
  // longest-sequence units, not the sequences
  const int64_t sequences = varlen ? (s.total_k + seqlen_k - 1) / seqlen_k : s.batch;
  const DqSplitPlan plan = plan_dq_splits(
      sequences * s.num_heads_k, (seqlen_k + kMinBwdKeyBlock - 1) / kMinBwdKeyBlock,
      s.num_heads * rows * bucket * static_cast<int64_t>(sizeof(float)), sms);
  if (asked == BwdDq::kAtomic && plan.fill < kMinSplitFill) return {BwdDq::kSeparate, 0};
  return {BwdDq::kSplit, plan.splits};
}

}  // namespace mpt_ext::attn::cuda
