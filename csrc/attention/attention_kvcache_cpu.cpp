// Placeholder until the CPU kvcache kernel lands (next commit).
#include <stdexcept>

#include "attention_params.h"

namespace mpt_ext {
void attention_kvcache_cpu(const AttentionKVCacheParams&) {
  throw std::runtime_error("attention kvcache on CPU: not implemented yet");
}
}  // namespace mpt_ext
