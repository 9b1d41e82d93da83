// Bad lengths only the device sees. The CUDA ops never copy cu_seqlens or cache_seqlens to the
// host: that would cost a stream sync per call (per layer per token when decoding) and is an
// error inside CUDA graph capture. Instead the kernels check each sequence where they read its
// lengths, run a bad one as empty (nothing is read or written out of bounds), and note which
// sequence it was in a word of mapped host memory. The next attention op on that device reads
// the words (a host memory read, no sync) and raises a ValueError naming the argument;
// mpt_ext.check_device_input_errors() synchronises first and raises at once.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace mpt_ext {

enum class SeqlensArg : int {
  kCuSeqlensQ = 0,
  kCuSeqlensK = 1,
  kCacheSeqlens = 2,
  kCacheBatchIdx = 3,  // flash_attn_with_kvcache's other per-sequence arguments
  kCacheLeftpad = 4,
  kBlockTable = 5,
};
constexpr int kSeqlensArgs = 6;

// Device side: sequence b of `arg` was bad. The word holds b + 1 (0: none); racing writers
// each leave one bad sequence's number, which is all the report needs.
MPT_HOST_DEVICE void note_bad_sequence(int32_t* words, SeqlensArg arg, int64_t b) {
  if (words != nullptr) {
    *reinterpret_cast<volatile int32_t*>(words + static_cast<int>(arg)) =
        static_cast<int32_t>(b + 1);
  }
}

// Host side (device_input_errors.cu).
// Throws std::invalid_argument naming each argument and sequence a kernel on `device` noted
// since the last call, and clears the notes. Reads host memory only: it reports
// what the kernels that have finished wrote.
void raise_input_errors(int device);
// What an op that hands its kernels the words does first: raises what earlier kernels on the
// current device noted, then returns that device's words as the kernels address them. They
// are allocated on the first call per device (so make one call before a CUDA graph capture,
// as any warm-up does).
int32_t* checked_input_error_words();

}  // namespace mpt_ext
