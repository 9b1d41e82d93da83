// Which forward kernel a call runs: MPT_EXT_ATTN_FWD_KERNEL (read at every call, like the
// tile variables of tile_choice.h, so that one process can A/B them):
//   portable (the default, and when unset or empty): the mma.sync kernel, every GPU;
//   sm90: the wgmma / TMA kernel (sm90/), an error naming the reason where it cannot run;
//   auto: sm90 where it can run, portable elsewhere.
// The default becomes auto once the sm90 kernel has passed its tests on a GPU (issue 17).
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mpt_ext::attn::cuda {

enum class FwdKernel { kPortable, kSm90, kAuto };

constexpr const char* kFwdKernelVariable = "MPT_EXT_ATTN_FWD_KERNEL";

inline FwdKernel requested_fwd_kernel() {
  const char* value = std::getenv(kFwdKernelVariable);
  if (value == nullptr || value[0] == '\0') return FwdKernel::kPortable;
  const std::string v = value;
  if (v == "portable") return FwdKernel::kPortable;
  if (v == "sm90") return FwdKernel::kSm90;
  if (v == "auto") return FwdKernel::kAuto;
  throw std::invalid_argument(std::string(kFwdKernelVariable) +
                              ": expected portable, sm90 or auto, got '" + v + "'");
}

}  // namespace mpt_ext::attn::cuda
