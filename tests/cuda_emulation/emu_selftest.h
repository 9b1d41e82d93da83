// What the emulator's self-test files share: one line per check, the failure count, and a
// launch that returns the emulator's error instead of throwing it.
#pragma once

#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

inline int failures = 0;

inline void report(const std::string& name, bool ok, const std::string& detail = "") {
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name.c_str(), detail.empty() ? "" : ": ",
              detail.c_str());
  failures += ok ? 0 : 1;
}

inline int kernel_tag;  // the launches' kernel identity (messages name it "<kernel>")

// Runs body on every thread of the grid; returns the emulator's error ("" when none).
inline std::string run(dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
  try {
    cuda_emu::launch(&kernel_tag, grid, block, smem, std::move(body));
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

inline void expect_error(const std::string& name, const std::string& error,
                         const std::string& needle) {
  report(name, error.find(needle) != std::string::npos,
         error.empty() ? "not detected" : "reported: " + error);
}

// 16-bit floats as bits, and back (bf16: true for bfloat16, false for binary16).
inline uint16_t bits_of(__nv_bfloat16 x) { uint16_t u; std::memcpy(&u, &x, 2); return u; }
inline uint16_t bits_of(__half x) { uint16_t u; std::memcpy(&u, &x, 2); return u; }
inline float value(uint16_t u, bool bf16) {
  if (bf16) return __uint_as_float(uint32_t(u) << 16);
  __half h;
  std::memcpy(&h, &u, 2);
  return __half2float(h);
}

void check_sm90();  // emu_selftest_sm90.cu
