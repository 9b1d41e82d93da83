// Placeholder until the CPU bwd kernel lands (next commit).
#include <stdexcept>

#include "attention_params.h"

namespace mpt_ext {
void attention_bwd_cpu(const AttentionBwdParams&) {
  throw std::runtime_error("attention bwd on CPU: not implemented yet");
}
}  // namespace mpt_ext
