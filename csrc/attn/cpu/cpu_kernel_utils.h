// Small building blocks shared by the CPU attention kernels: element conversion, dtype
// dispatch, ISA selection and a dynamic task loop over at::parallel_for.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../common/dtype.h"

// Everything a hot task calls is force-inlined so that it is compiled (and vectorised) for
// the instruction set of the task's entry point (see MPT_CPU_TARGET_AVX2).
#define MPT_CPU_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define MPT_CPU_HAVE_AVX2_CLONE 1
#define MPT_CPU_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define MPT_CPU_HAVE_AVX2_CLONE 0
#define MPT_CPU_TARGET_AVX2
#endif

namespace mpt_ext::attn::cpu {

// The build targets baseline x86-64 (SSE2); the kernels' task functions also exist in an
// AVX2+FMA version, picked at run time (8-wide float FMAs are most of the speed).
inline bool cpu_has_avx2_fma() {
#if MPT_CPU_HAVE_AVX2_CLONE
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// Sets flush-to-zero and denormals-are-zero on this thread while alive. Softmax weights far
// below the row max (ALiBi over long rows) times V can produce denormal products, and each
// costs a microcode assist on x86. Values below 1e-38 do not change an attention output.
class FlushDenormalsScope {
 public:
#if MPT_CPU_HAVE_AVX2_CLONE
  FlushDenormalsScope() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormalsScope() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

template <typename Acc, typename T>
MPT_CPU_INLINE Acc to_acc(T x) {
  return static_cast<Acc>(static_cast<float>(x));
}
template <>
MPT_CPU_INLINE double to_acc<double, double>(double x) {
  return x;
}

template <typename T, typename Acc>
MPT_CPU_INLINE T from_acc(Acc x) {
  return static_cast<T>(static_cast<float>(x));
}
template <>
MPT_CPU_INLINE double from_acc<double, double>(double x) {
  return x;
}

// Calls f(T{}, Acc{}) with the element type of `dtype` and its accumulator type: fp32 for
// every input type except fp64, which accumulates in fp64 (for gradcheck).
template <typename F>
void dispatch_attention_dtype(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{}, float{});
    case DType::kFloat16: return f(c10::Half{}, float{});
    case DType::kBFloat16: return f(c10::BFloat16{}, float{});
    case DType::kFloat64: return f(double{}, double{});
  }
  throw std::invalid_argument(std::string(op) + ": unsupported dtype " + dtype_name(dtype));
}

// Runs task(t, worker_scratch) for t in [0, n_tasks) on at::parallel_for's threads, handing
// out tasks dynamically (causal blocks differ a lot in cost). Every task writes only its
// own outputs, so results do not depend on which thread ran what.
template <typename MakeScratch, typename Task>
void run_tasks(int64_t n_tasks, MakeScratch&& make_scratch, Task&& task) {
  if (n_tasks <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    FlushDenormalsScope flush_denormals;
    auto scratch = make_scratch();
    for (int64_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) task(t, scratch);
  });
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace mpt_ext::attn::cpu
