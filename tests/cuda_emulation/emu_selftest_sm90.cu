// Self-test of the emulated sm_90 instructions (emu_sm90.cpp), run from emu_selftest.cu:
//  - TMA loads against the PTX ISA's swizzle tables (written out below as the ISA prints
//    them), with out-of-bounds zero fill;
//  - mbarrier phases, parities and arrival counts;
//  - wgmma over every canonical layout (the PTX ISA's table, in CuTe notation, evaluated here
//    as shape : stride) against a matrix product;
//  - the GEMM probe (sm90_gemm_probe.cuh: the project's wrappers, TMA -> wgmma -> TMA store)
//    against a matrix product, and with planted bugs the emulator must report.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "emu_selftest.h"
#include "sm90_gemm_probe.cuh"

namespace {

uint16_t bf16_bits(float f) { return cuda_emu::cvt_rn_bf16_f32(f); }
double bf16_value(uint16_t u) { return value(u, true); }

CUtensorMap encode_2d(CUtensorMapDataType type, void* base, uint64_t inner, uint64_t outer,
                      uint64_t row_bytes, uint32_t box_inner, uint32_t box_outer,
                      CUtensorMapSwizzle swizzle, CUresult* result = nullptr,
                      CUtensorMapFloatOOBfill fill = CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) {
  alignas(128) CUtensorMap encoded;  // not the return slot: g++ may misalign that one
  const cuuint64_t dims[2] = {inner, outer}, strides[1] = {row_bytes};
  const cuuint32_t box[2] = {box_inner, box_outer}, elem_strides[2] = {1, 1};
  const CUresult r = cuda_emu::tensor_map_encode_tiled(
      &encoded, type, 2, base, dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
      CU_TENSOR_MAP_L2_PROMOTION_NONE, fill);
  if (result != nullptr) *result = r;
  CUtensorMap map;
  std::memcpy(&map, &encoded, sizeof map);
  return map;
}

// ---- TMA: the box lands swizzled as the ISA's tables show, out-of-bounds elements zero -------
// The PTX ISA's "Swizzling Modes" tables: row r of a table is 128-byte line r (of a 256-, 512-
// or 1024-byte aligned pattern), entry c the 16-byte chunk stored at position c of that line.
const int kTable32[2][8] = {{0, 1, 2, 3, 4, 5, 6, 7}, {1, 0, 3, 2, 5, 4, 7, 6}};
const int kTable64[4][8] = {{0, 1, 2, 3, 4, 5, 6, 7}, {1, 0, 3, 2, 5, 4, 7, 6},
                            {2, 3, 0, 1, 6, 7, 4, 5}, {3, 2, 1, 0, 7, 6, 5, 4}};
const int kTable128[8][8] = {{0, 1, 2, 3, 4, 5, 6, 7}, {1, 0, 3, 2, 5, 4, 7, 6},
                             {2, 3, 0, 1, 6, 7, 4, 5}, {3, 2, 1, 0, 7, 6, 5, 4},
                             {4, 5, 6, 7, 0, 1, 2, 3}, {5, 4, 7, 6, 1, 0, 3, 2},
                             {6, 7, 4, 5, 2, 3, 0, 1}, {7, 6, 5, 4, 3, 2, 1, 0}};

int stored_chunk(int span, int line, int position) {
  if (span == 32) return kTable32[line % 2][position];
  if (span == 64) return kTable64[line % 4][position];
  if (span == 128) return kTable128[line % 8][position];
  return position;
}

void check_tma_load(CUtensorMapSwizzle swizzle, int span) {
  // a [20][W + 8] tensor of 16-bit values (each its own index + 1); the box of W x 16 at
  // (16, 8) has 8 columns and 4 rows outside it
  const int W = span == 0 ? 64 : span / 2, cols = W + 8, rows = 20;
  alignas(16) static uint16_t g[20 * 136];
  for (int i = 0; i < rows * cols; ++i) g[i] = uint16_t(i + 1);
  const CUtensorMap map = encode_2d(CU_TENSOR_MAP_DATA_TYPE_UINT16, g, cols, rows, cols * 2, W, 16,
                                    swizzle);
  std::vector<uint16_t> landed(W * 16);
  const std::string err = run(1, 32, 4096, [&] {
    unsigned char* smem = cuda_emu::dynamic_smem();
    auto* bar = reinterpret_cast<uint64_t*>(smem + 3072);
    if (threadIdx.x == 0) {
      cuda_emu::mbarrier_init(bar, 1);
      cuda_emu::mbarrier_arrive_expect_tx(bar, W * 16 * 2);
      const int32_t c[2] = {16, 8};
      cuda_emu::tma_load(smem, &map, c, 2, bar);
      cuda_emu::mbarrier_try_wait_parity(bar, 0);
      std::memcpy(landed.data(), smem, landed.size() * 2);
    }
  });
  bool ok = err.empty();
  for (int r = 0; r < 16 && ok; ++r) {
    for (int c = 0; c < W && ok; ++c) {
      const int row = 8 + r, col = 16 + c;
      const uint16_t want = row < rows && col < cols ? g[row * cols + col] : 0;
      const int offset = (r * W + c) * 2, line = offset / 128, chunk = offset % 128 / 16;
      int position = 0;  // where the ISA's table puts this chunk
      while (stored_chunk(span, line, position) != chunk) ++position;
      const int at = line * 128 + position * 16 + offset % 16;
      ok = landed[at / 2] == want;
    }
  }
  report("TMA load, swizzle " + (span ? std::to_string(span) + "B" : std::string("none")) +
             ": the ISA's swizzle table, out-of-bounds rows and columns zero",
         ok, err);
}

// ---- mbarrier ----------------------------------------------------------------------------------
void check_mbarrier() {
  std::vector<int> order;
  std::string err = run(1, 64, 1024, [&] {
    auto* bar = reinterpret_cast<uint64_t*>(cuda_emu::dynamic_smem());
    if (threadIdx.x == 0) cuda_emu::mbarrier_init(bar, 2);
    __syncthreads();
    cuda_emu::mbarrier_try_wait_parity(bar, 1);  // the phase before phase 0 counts as complete
    __syncthreads();  // else a late thread would wait for phase 1, which parity 1 then names
    if (threadIdx.x % 32 == 0) {
      order.push_back(int(threadIdx.x));  // both arrivals before anyone passes the wait below
      cuda_emu::mbarrier_arrive(bar);
    }
    cuda_emu::mbarrier_try_wait_parity(bar, 0);
    if (threadIdx.x == 5) order.push_back(-1);
    __syncthreads();
    if (threadIdx.x == 0) cuda_emu::mbarrier_arrive(bar);  // phase 1: one of two arrivals
    if (threadIdx.x == 32) cuda_emu::mbarrier_arrive(bar);
    cuda_emu::mbarrier_try_wait_parity(bar, 1);
  });
  report("mbarrier: parity waits, a phase completes with its last arrival",
         err.empty() && order.size() == 3 && order[2] == -1, err);

  err = run(1, 32, 1024, [&] {
    auto* bar = reinterpret_cast<uint64_t*>(cuda_emu::dynamic_smem());
    if (threadIdx.x == 0) cuda_emu::mbarrier_init(bar, 1);
    __syncthreads();
    cuda_emu::mbarrier_try_wait_parity(bar, 0);  // nobody arrives
  });
  expect_error("planted: mbarrier wait for a phase nobody completes (deadlock)", err,
               "waits for mbarrier");
  err = run(1, 32, 1024, [&] {
    auto* bar = reinterpret_cast<uint64_t*>(cuda_emu::dynamic_smem());
    if (threadIdx.x == 0) cuda_emu::mbarrier_init(bar, 1);
    __syncthreads();
    if (threadIdx.x < 2) cuda_emu::mbarrier_arrive(bar);
  });
  expect_error("planted: arrivals in the next phase before anyone waited for the last", err,
               "whose previous phase no try_wait has seen complete");
  err = run(1, 32, 1024, [&] {
    cuda_emu::mbarrier_arrive(reinterpret_cast<uint64_t*>(cuda_emu::dynamic_smem() + 8));
  });
  expect_error("planted: arrive on an uninitialised mbarrier", err, "never initialised");
}

// ---- wgmma over the canonical layouts --------------------------------------------------------
// The PTX ISA's canonical layouts ("Shared Memory Matrix Layout"), in units of 16-bit
// elements with T = 8: a layout ((s0, s1, s2), (t0, t1)) : ((...), (...)) maps (mn, k) by
// splitting mn over the first mode's shape (first fastest) and k over the second's.
struct Mode {
  int shape[3];
  long stride[3];  // elements; the LBO / SBO entries are filled in from the byte offsets
};

long eval(const Mode& m, int x) {
  long off = 0;
  for (int i = 0; i < 3 && m.shape[i] > 0; ++i) {
    off += (x % m.shape[i]) * m.stride[i];
    x /= m.shape[i];
  }
  return off;
}

// Byte address of element (mn, k) of an operand with `rows` mn, as the ISA's table lays it out.
uint32_t canonical_address(bool mn_major, int span, uint32_t start, uint32_t lbo, uint32_t sbo,
                           int mn, int k) {
  const long L = lbo / 2, S = sbo / 2;
  Mode a, b;
  if (!mn_major && span == 0) {  // ((8,m),(T,2k)):((1T,SBO),(1,LBO))
    a = {{8, 64, 0}, {8, S, 0}};
    b = {{8, 2, 0}, {1, L, 0}};
  } else if (!mn_major) {  // ((8,m),(T,2k)):((W/16 T,SBO),(1,T))
    a = {{8, 64, 0}, {span / 2, S, 0}};
    b = {{8, 2, 0}, {1, 8, 0}};
  } else if (span == 0) {  // ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
    a = {{8, 1, 64}, {1, 8, S}};
    b = {{8, 2, 0}, {8, L, 0}};
  } else {  // ((T,W/16,m),(8,k)):((1,T,LBO),(W/16 T,SBO))
    a = {{8, span / 16, 64}, {1, 8, L}};
    b = {{8, 2, 0}, {span / 2, S, 0}};
  }
  uint32_t addr = start + static_cast<uint32_t>(2 * (eval(a, mn) + eval(b, k)));
  if (span != 0) {  // Swizzle<B,4,3>: bits [4, 4+B) ^= bits [7, 7+B)
    const uint32_t mask = span / 16 - 1;
    addr ^= ((addr >> 7) & mask) << 4;
  }
  return addr;
}

void check_wgmma_layout(bool mn_major, int span) {
  constexpr int N = 128;  // 16 groups of 8 rows; two 64-wide groups of a 128-byte MN-major row
  std::mt19937 rng(span + mn_major);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> A(64 * 16), B(N * 16);  // A[m][k], B[n][k]
  for (auto& x : A) x = bf16_bits(nd(rng));
  for (auto& x : B) x = bf16_bits(nd(rng));
  // byte offsets between core-matrix groups: rows of W bytes, 8 rows (k or mn) per group
  uint32_t lbo, sbo;
  if (!mn_major) {
    lbo = span == 0 ? 128 : 16;  // swizzled K-major: unused
    sbo = span == 0 ? 256 : 8 * span;
  } else {
    lbo = span == 0 ? 2048 : 16 * span;
    sbo = span == 0 ? 128 : 8 * span;
  }
  const uint32_t start_a = 0, start_b = 16384;
  const uint64_t mode = span == 0 ? 0 : span == 128 ? 1 : span == 64 ? 2 : 3;
  auto desc = [&](uint32_t start) {
    return uint64_t(start >> 4) | uint64_t(lbo >> 4) << 16 | uint64_t(sbo >> 4) << 32 |
           mode << 62;
  };
  float D[64][N];
  const std::string err = run(1, 128, 40960, [&] {
    unsigned char* smem = cuda_emu::dynamic_smem();
    if (threadIdx.x == 0) {
      for (int m = 0; m < 64; ++m) {
        for (int k = 0; k < 16; ++k) {
          std::memcpy(smem + canonical_address(mn_major, span, start_a, lbo, sbo, m, k),
                      &A[m * 16 + k], 2);
        }
      }
      for (int n = 0; n < N; ++n) {
        for (int k = 0; k < 16; ++k) {
          std::memcpy(smem + canonical_address(mn_major, span, start_b, lbo, sbo, n, k),
                      &B[n * 16 + k], 2);
        }
      }
    }
    cuda_emu::fence_proxy_async();
    __syncthreads();
    float d[N / 2];
    cuda_emu::wgmma_fence();
    cuda_emu::wgmma_ss(cuda_emu::MmaInput::kBF16, N, d, desc(start_a), desc(start_b), false, 1, 1,
                       mn_major, mn_major);
    cuda_emu::wgmma_commit_group();
    cuda_emu::wgmma_wait_group(0);
    const int t = threadIdx.x, w = t / 32, lane = t % 32;
    for (int i = 0; i < N / 2; ++i) {
      D[16 * w + lane / 4 + 8 * ((i >> 1) & 1)][8 * (i >> 2) + 2 * (lane % 4) + (i & 1)] = d[i];
    }
  });
  double worst = 0;
  for (int m = 0; m < 64 && err.empty(); ++m) {
    for (int n = 0; n < N; ++n) {
      double exact = 0, mag = 0;
      for (int k = 0; k < 16; ++k) {
        const double p = bf16_value(A[m * 16 + k]) * bf16_value(B[n * 16 + k]);
        exact += p;
        mag = std::max(mag, std::fabs(p));
      }
      worst = std::max(worst, std::fabs(D[m][n] - exact) / (mag * std::ldexp(1.0, -20)));
    }
  }
  report(std::string("wgmma m64n128k16 bf16, ") + (mn_major ? "MN" : "K") + "-major, swizzle " +
             (span ? std::to_string(span) + "B" : std::string("none")) +
             ": the ISA's canonical layout = A B",
         err.empty() && worst <= 1.0, err.empty() ? "error / bound " + std::to_string(worst) : err);
}

// Thread 0 fills the first `bytes` of shared memory (0x3c3c: bf16 0.011), fenced for the async
// proxy, and the block waits for it.
void fill_shared(unsigned char value, size_t bytes) {
  if (threadIdx.x == 0) std::memset(cuda_emu::dynamic_smem(), value, bytes);
  cuda_emu::fence_proxy_async();
  __syncthreads();
}

void check_wgmma_misuse() {
  std::string err = run(1, 128, 4096, [&] {
    fill_shared(0x00, 4096);
    float d[4] = {};
    cuda_emu::wgmma_fence();
    const uint64_t desc_b = threadIdx.x < 64 ? 0 : 2048 >> 4;
    cuda_emu::wgmma_ss(cuda_emu::MmaInput::kBF16, 8, d, 0, desc_b, false, 1, 1, 0, 0);
    cuda_emu::wgmma_commit_group();
    cuda_emu::wgmma_wait_group(0);
  });
  expect_error("planted: wgmma with descriptors that differ across the warpgroup", err,
               "different warpgroup instructions");
  float seen_in_flight = 0, seen_after = 1;
  err = run(1, 128, 4096, [&] {
    fill_shared(0x00, 4096);
    float d[4] = {};
    cuda_emu::wgmma_fence();
    cuda_emu::wgmma_ss(cuda_emu::MmaInput::kBF16, 8, d, 0, 0, false, 1, 1, 0, 0);
    cuda_emu::wgmma_commit_group();
    if (threadIdx.x == 0) seen_in_flight = d[0];
    cuda_emu::wgmma_wait_group(0);
    if (threadIdx.x == 0) seen_after = d[0];
  });
  report("wgmma accumulators are NaN until wgmma.wait_group retires the operation",
         err.empty() && std::isnan(seen_in_flight) && seen_after == 0.f, err);
  err = run(1, 96, 4096, [&] {
    float d[4] = {};
    cuda_emu::wgmma_fence();
    cuda_emu::wgmma_ss(cuda_emu::MmaInput::kBF16, 8, d, 0, 0, false, 1, 1, 0, 0);
  });
  expect_error("planted: wgmma in a block of 96 threads", err, "incomplete");
  err = run(1, 128, 0, [&] { cuda_emu::setmaxnreg(true, 20); });
  expect_error("planted: setmaxnreg 20", err, "multiple of 8 in 24 .. 256");
}

// wgmma's fragments against mma.m16n8k16's (emu_ptx.cpp, the ISA's mma tables): warp w of the
// warpgroup holding the mma A fragment of rows 16 w .. 16 w + 15 must get, register by
// register, what mma gives for those rows.
void check_wgmma_against_mma() {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  uint16_t Bt[8][16];  // B[k][n] as Bt[n][k]
  for (auto& row : Bt) for (auto& x : row) x = bf16_bits(nd(rng));
  uint32_t regs[128][4];
  for (auto& t : regs) for (auto& r : t) r = bf16_bits(nd(rng)) | uint32_t(bf16_bits(nd(rng))) << 16;
  int differ = 0;
  const std::string err = run(1, 128, 8192, [&] {
    unsigned char* smem = cuda_emu::dynamic_smem();
    const int t = threadIdx.x;
    if (t == 0) {
      for (int n = 0; n < 8; ++n) {
        for (int k = 0; k < 16; ++k) {
          // K-major, no swizzle: core matrix (8 n x 16 bytes), the k halves 128 bytes apart
          std::memcpy(smem + n * 16 + (k / 8) * 128 + (k % 8) * 2, &Bt[n][k], 2);
          std::memcpy(smem + 4096 + n * 32 + k * 2, &Bt[n][k], 2);  // row-major, for ldmatrix
        }
      }
    }
    cuda_emu::fence_proxy_async();
    __syncthreads();
    float dw[4], dm[4];
    const float zero[4] = {0.f, 0.f, 0.f, 0.f};
    const uint32_t(&a)[4] = regs[t];
    cuda_emu::wgmma_fence();
    cuda_emu::wgmma_rs(cuda_emu::MmaInput::kBF16, 8, dw, a, uint64_t(128 >> 4) << 16, false, 1, 1,
                       0);
    cuda_emu::wgmma_commit_group();
    cuda_emu::wgmma_wait_group(0);
    const int lane = t % 32, j = lane / 8, r = lane % 8;
    uint32_t b[2];
    cuda_emu::ldmatrix_m8n8_b16(2, false, b, smem + 4096 + r * 32 + 16 * (j & 1));
    cuda_emu::mma_m16n8k16_f32(cuda_emu::MmaInput::kBF16, dm, a, b[0], b[1], zero);
    if (std::memcmp(dw, dm, sizeof dw) != 0) ++differ;
  });
  report("wgmma m64n8k16 (A from registers) = mma.m16n8k16 per warp, register by register",
         err.empty() && differ == 0, err.empty() ? std::to_string(differ) + " threads differ" : err);
}

// Two consumer warpgroups with a wgmma each in flight at once, in either order.
std::string two_warpgroups(bool overwrite) {
  return run(1, 256, 8192, [&] {
    unsigned char* smem = cuda_emu::dynamic_smem();
    const int t = threadIdx.x, group = t / 128;
    if (t == 0) std::memset(smem, 0x3c, 8192);  // bf16 0x3c3c, about 0.011
    cuda_emu::fence_proxy_async();
    __syncthreads();
    float d[4];
    const uint64_t desc = uint64_t((group * 4096) >> 4) | uint64_t(128 >> 4) << 16;
    cuda_emu::wgmma_fence();
    cuda_emu::wgmma_ss(cuda_emu::MmaInput::kBF16, 8, d, desc, desc, false, 1, 1, 0, 0);
    cuda_emu::wgmma_commit_group();
    if (overwrite && t == 0) smem[0] = 0;  // warpgroup 0's operand, before its wait
    cuda_emu::wgmma_wait_group(0);
  });
}

void check_wgmma_hazards() {
  for (auto s : {cuda_emu::Schedule::kLowFirst, cuda_emu::Schedule::kHighFirst}) {
    cuda_emu::set_schedule(s);
    const std::string name = s == cuda_emu::Schedule::kLowFirst ? " (low first)" : " (high first)";
    report("two warpgroups with wgmma in flight" + name, two_warpgroups(false).empty());
    expect_error("planted: one of two warpgroups overwrites its operand in flight" + name,
                 two_warpgroups(true), "changed before wgmma.wait_group");
  }
  cuda_emu::set_schedule(cuda_emu::Schedule::kSkewAlternating);
  for (int plant = 0; plant < 2; ++plant) {
    const std::string err = run(1, 128, 4096, [&] {
      fill_shared(0x3c, 4096);
      uint32_t a[4] = {0x3c003c00u, 0x3c003c00u, 0x3c003c00u, 0x3c003c00u};
      float d[4];
      cuda_emu::wgmma_fence();
      cuda_emu::wgmma_rs(cuda_emu::MmaInput::kBF16, 8, d, a, 0, false, 1, 1, 0);
      cuda_emu::wgmma_commit_group();
      if (threadIdx.x == 7) (plant == 0 ? a[2] : reinterpret_cast<uint32_t&>(d[1])) = 0;
      cuda_emu::wgmma_wait_group(0);
    });
    expect_error(plant == 0 ? "planted: A registers of an in-flight wgmma overwritten"
                            : "planted: accumulators of an in-flight wgmma written",
                 err, plant == 0 ? "A registers of an in-flight wgmma changed"
                                 : "of an in-flight wgmma was written");
  }
  std::string err = run(1, 128, 4096, [&] {
    fill_shared(0x3c, 4096);
    float d[4];
    const uint64_t swizzled_128 = uint64_t(1) << 62 | uint64_t(1024 >> 4) << 32;
    cuda_emu::wgmma_fence();
    cuda_emu::wgmma_ss(cuda_emu::MmaInput::kBF16, 8, d, (256 >> 4) | swizzled_128, swizzled_128,
                       false, 1, 1, 0, 0);
  });
  expect_error("planted: a 128-byte swizzled operand starting mid-pattern (needs a base offset)",
               err, "needs a base offset");
  err = run(1, 384, 0, [&] {
    if (threadIdx.x < 128) cuda_emu::setmaxnreg(false, 24);
    else cuda_emu::setmaxnreg(true, 256);
  });
  expect_error("planted: setmaxnreg beyond the register file (24 + 2 x 256 per thread)", err,
               "more than the SM's 65536");
}

void check_tma_edges() {
  // out-of-bounds NaN fill: a quiet NaN of the element's width, which wgmma may read
  alignas(16) static uint16_t g[8 * 64];
  for (auto& x : g) x = bf16_bits(1.f);
  const CUtensorMap nan_map = encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, g, 64, 8, 128, 64, 16,
                                        CU_TENSOR_MAP_SWIZZLE_NONE, nullptr,
                                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA);
  uint16_t filled = 0, inside = 0;
  std::string err = run(1, 32, 4096, [&] {
    unsigned char* smem = cuda_emu::dynamic_smem();
    auto* bar = reinterpret_cast<uint64_t*>(smem + 3072);
    if (threadIdx.x == 0) {
      cuda_emu::mbarrier_init(bar, 1);
      cuda_emu::mbarrier_arrive_expect_tx(bar, 64 * 16 * 2);
      const int32_t c[2] = {0, 0};
      cuda_emu::tma_load(smem, &nan_map, c, 2, bar);
      cuda_emu::mbarrier_try_wait_parity(bar, 0);
      std::memcpy(&inside, smem, 2);
      std::memcpy(&filled, smem + 8 * 128, 2);  // row 8: past the tensor's 8 rows
    }
  });
  report("TMA out-of-bounds NaN fill: 0x7fff (bf16), in-bounds data unchanged",
         err.empty() && filled == 0x7fff && inside == bf16_bits(1.f), err);

  // a TMA store of fp32 whose low half is 0xffff is data, not poison
  alignas(16) static float out[16];
  const CUtensorMap f32_map = encode_2d(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, out, 4, 4, 16, 4, 4,
                                        CU_TENSOR_MAP_SWIZZLE_NONE);
  const float odd = __uint_as_float(0x3f80ffffu);
  err = run(1, 32, 1024, [&] {
    auto* tile = reinterpret_cast<float*>(cuda_emu::dynamic_smem());
    if (threadIdx.x < 16) tile[threadIdx.x] = odd;
    cuda_emu::fence_proxy_async();
    __syncthreads();
    if (threadIdx.x == 0) {
      const int32_t c[2] = {0, 0};
      cuda_emu::tma_store(&f32_map, c, 2, tile);
      cuda_emu::bulk_commit_group();
      cuda_emu::bulk_wait_group(0);
    }
  });
  report("TMA store of fp32 values with 0xffff low halves", err.empty() && out[5] == odd, err);

  // a swizzled box lands only where its pattern starts (1024 bytes for 128B)
  alignas(16) static uint16_t h[64 * 16];
  const CUtensorMap sw_map = encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, h, 64, 16, 128, 64, 8,
                                       CU_TENSOR_MAP_SWIZZLE_128B);
  err = run(1, 32, 4096, [&] {
    unsigned char* smem = cuda_emu::dynamic_smem();
    auto* bar = reinterpret_cast<uint64_t*>(smem + 3072);
    if (threadIdx.x == 0) {
      cuda_emu::mbarrier_init(bar, 1);
      cuda_emu::mbarrier_arrive_expect_tx(bar, 64 * 8 * 2);
      const int32_t c[2] = {0, 0};
      cuda_emu::tma_load(smem + 384, &sw_map, c, 2, bar);
    }
  });
  expect_error("planted: a 128-byte swizzled TMA box at a 384-byte offset", err,
               "not aligned to its 128-byte swizzle pattern");
}

void check_tensor_map_encode() {
  alignas(16) static uint16_t g[64 * 64];
  CUresult good, misaligned, big_box, stride, wide;
  encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, g, 64, 64, 128, 64, 64, CU_TENSOR_MAP_SWIZZLE_128B, &good);
  encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, g + 4, 64, 64, 128, 64, 64, CU_TENSOR_MAP_SWIZZLE_NONE,
            &misaligned);
  encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, g, 64, 64, 128, 64, 300, CU_TENSOR_MAP_SWIZZLE_NONE,
            &big_box);
  encode_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, g, 12, 64, 24, 8, 64, CU_TENSOR_MAP_SWIZZLE_NONE,
            &stride);
  encode_2d(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, g, 64, 16, 256, 64, 16, CU_TENSOR_MAP_SWIZZLE_128B,
            &wide);
  report("cuTensorMapEncodeTiled: the driver's requirements (16-byte address, box <= 256, "
         "16-byte strides, inner box <= swizzle span)",
         good == CUDA_SUCCESS && misaligned == CUDA_ERROR_INVALID_VALUE &&
             big_box == CUDA_ERROR_INVALID_VALUE && stride == CUDA_ERROR_INVALID_VALUE &&
             wide == CUDA_ERROR_INVALID_VALUE);
}

// ---- the GEMM probe: the project's wrappers end to end ---------------------------------------
struct ProbeRun {
  std::string error;
  double worst = 0;      // error / bound over the rows that exist
  bool tail_untouched = true;
};

// K = 320: five k-tiles through the two stages, so that each stage's mbarriers go through
// both parities and the last tile's stage is never released.
template <bool kBNMajor, bool kARegisters>
ProbeRun run_probe(sm90_probe::Plant plant, int K = 320) {
  constexpr int kRows = 50;  // rows 50..63 of the tile lie outside the tensors
  std::mt19937 rng(kBNMajor * 2 + kARegisters);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> A(kRows * K), B(64 * K);  // B[k][n] if N-major, else Bt[n][k]
  alignas(16) static float D[64 * 64];
  for (auto& x : A) x = bf16_bits(nd(rng));
  for (auto& x : B) x = bf16_bits(nd(rng));
  for (auto& x : D) x = 12345.f;
  alignas(64) const sm90_probe::Params p =
      sm90_probe::make_params(A.data(), B.data(), D, kRows, K, kBNMajor);
  cudaFuncSetAttribute(&kernel_tag, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       sm90_probe::kSmemBytes);
  ProbeRun r;
  r.error = run(1, 256, sm90_probe::kSmemBytes, [&] {
    sm90_probe::gemm_probe_kernel<kBNMajor, kARegisters>(p, K / 64, static_cast<int>(plant));
  });
  for (int m = 0; m < 64 && r.error.empty(); ++m) {
    for (int n = 0; n < 64; ++n) {
      if (m >= kRows) {
        r.tail_untouched &= D[m * 64 + n] == 12345.f;
        continue;
      }
      double exact = 0, mag = 0;
      for (int k = 0; k < K; ++k) {
        const double b = bf16_value(kBNMajor ? B[k * 64 + n] : B[n * K + k]);
        const double prod = bf16_value(A[m * K + k]) * b;
        exact += prod;
        mag += std::fabs(prod);
      }
      // K / 16 k16 steps, each within 2^-20 of its largest term, rounded toward zero
      r.worst = std::max(r.worst, std::fabs(D[m * 64 + n] - exact) /
                                      (mag * (K / 16) * std::ldexp(1.0, -20)));
    }
  }
  return r;
}

template <bool kBNMajor, bool kARegisters>
void check_probe() {
  const ProbeRun r = run_probe<kBNMajor, kARegisters>(sm90_probe::Plant::kNone);
  report(std::string("GEMM probe (TMA pipeline, 2 stages, 5 k-tiles -> wgmma -> TMA store), A from ") +
             (kARegisters ? "registers (ldmatrix)" : "shared memory") + ", B " +
             (kBNMajor ? "N-major" : "K-major") + ": D = A B, rows past the tensor untouched",
         r.error.empty() && r.worst <= 1.0 && r.tail_untouched,
         r.error.empty() ? "error / bound " + std::to_string(r.worst) : r.error);
}

void check_probe_plants() {
  using sm90_probe::Plant;
  cuda_emu::set_schedule(cuda_emu::Schedule::kLowFirst);  // the producer's loads land first
  expect_error("planted: the consumer reads TMA tiles without waiting on the mbarrier",
               run_probe<false, false>(Plant::kNoBarrierWait).error, "mbarrier.try_wait missing");
  expect_error("planted: ldmatrix of TMA tiles without waiting on the mbarrier",
               run_probe<false, true>(Plant::kNoBarrierWait).error, "mbarrier.try_wait missing");
  cuda_emu::set_schedule(cuda_emu::Schedule::kSkewAlternating);
  expect_error("planted: A registers reloaded while the previous tile's wgmma reads them",
               run_probe<false, true>(Plant::kOneABuffer).error,
               "A registers of an in-flight wgmma changed");
  expect_error("planted: no wgmma.fence before the first wgmma",
               run_probe<false, false>(Plant::kNoWgmmaFence).error, "without a wgmma.fence");
  expect_error("planted: B overwritten while the wgmma are in flight",
               run_probe<true, false>(Plant::kOverwriteB).error,
               "changed before wgmma.wait_group");
  expect_error("planted: expect_tx announces half the bytes",
               run_probe<false, false>(Plant::kHalfTransaction).error, "has not landed");
  expect_error("planted: D staged for the TMA store without fence.proxy.async",
               run_probe<true, true>(Plant::kNoProxyFence).error, "fence.proxy.async missing");
  expect_error("planted: exit while the TMA store may still read shared memory",
               run_probe<false, false>(Plant::kNoStoreReadWait).error,
               "cp.async.bulk.wait_group.read missing");
  cuda_emu::set_schedule(cuda_emu::Schedule::kLowFirst);  // the producer refills at once
  expect_error("planted: a stage released before its wgmma retire",
               run_probe<false, false>(Plant::kEarlyRelease).error,
               "changed before wgmma.wait_group");
  expect_error("planted: the producer refills a stage without waiting for its release",
               run_probe<false, false>(Plant::kNoEmptyWait).error,
               "whose previous phase no try_wait has seen complete");
  cuda_emu::set_schedule(cuda_emu::Schedule::kSkewAlternating);
}

}  // namespace

void check_sm90() {
  check_tma_load(CU_TENSOR_MAP_SWIZZLE_NONE, 0);
  check_tma_load(CU_TENSOR_MAP_SWIZZLE_32B, 32);
  check_tma_load(CU_TENSOR_MAP_SWIZZLE_64B, 64);
  check_tma_load(CU_TENSOR_MAP_SWIZZLE_128B, 128);
  check_tensor_map_encode();
  check_mbarrier();
  for (bool mn_major : {false, true}) {
    for (int span : {0, 32, 64, 128}) check_wgmma_layout(mn_major, span);
  }
  check_wgmma_misuse();
  check_wgmma_against_mma();
  check_wgmma_hazards();
  check_tma_edges();
  check_probe<false, false>();
  check_probe<true, false>();
  check_probe<false, true>();
  check_probe<true, true>();
  check_probe_plants();
}
