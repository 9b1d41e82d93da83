// How the backward computes dQ (attn_bwd_kernels.cuh):
//   atomic   : the dK/dV kernel also does dQ += dS K for its key block and adds it into an fp32
//              [H][rows][kD] workspace with red.global.add; a small kernel converts it. Five
//              matmuls per tile, as FlashAttention-2; the order of the adds, so the last bits of
//              dQ, change from run to run.
//   separate : a dQ kernel of its own recomputes S and dP (seven matmuls), bitwise
//              reproducible, and sums each query row's d(slope) term on the way.
// deterministic=True and d(slopes) always run `separate`; otherwise MPT_EXT_ATTN_BWD_DQ picks
// one for A/B runs (read at every call, like MPT_EXT_ATTN_FWD_TILE), and unset or empty means
// `atomic`.
#pragma once

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../attn_params.h"

namespace mpt_ext::attn::cuda {

constexpr const char* kBwdDqVariable = "MPT_EXT_ATTN_BWD_DQ";

enum class BwdDq { kAtomic, kSeparate };

inline BwdDq bwd_dq_for(const AttnBwdParams& p) {
  const char* value = std::getenv(kBwdDqVariable);
  BwdDq asked = BwdDq::kAtomic;
  if (value != nullptr && value[0] != '\0') {
    if (std::strcmp(value, "separate") == 0) {
      asked = BwdDq::kSeparate;
    } else if (std::strcmp(value, "atomic") != 0) {
      throw std::invalid_argument(std::string(kBwdDqVariable) +
                                  ": expected 'atomic' or 'separate', got '" + value + "'");
    }
  }
  if (p.deterministic || p.dslopes != nullptr) return BwdDq::kSeparate;
  return asked;
}

}  // namespace mpt_ext::attn::cuda
