// PTX instruction semantics for the emulated GPU (emu_ptx.h). Each function follows the PTX
// ISA section named above it (docs.nvidia.com/cuda/parallel-thread-execution); fragment
// layouts are written out from the ISA's tables, in terms of the ISA's groupID = lane >> 2
// and threadID_in_group = lane % 4.
#include "emu_ptx.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "emu_runtime.h"
#include "emu_sm90.h"

namespace cuda_emu {
namespace {

uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// A 16-bit float (1 sign bit, 16 - 1 - man_bits exponent bits, man_bits mantissa bits)
// decoded from its fields into a double: exact, and no float on the way (DAZ would flush
// subnormals). binary16: man_bits 10; bfloat16: man_bits 7.
double half_bits_value(uint16_t h, int man_bits) {
  const int exp_bits = 15 - man_bits, bias = (1 << (exp_bits - 1)) - 1;
  const int sign = h >> 15, exp = (h >> man_bits) & ((1 << exp_bits) - 1);
  const int man = h & ((1 << man_bits) - 1);
  double v;
  if (exp == 0) v = std::ldexp(man, 1 - bias - man_bits);  // subnormal
  else if (exp == (1 << exp_bits) - 1) v = man ? std::numeric_limits<double>::quiet_NaN() : INFINITY;
  else v = std::ldexp((1 << man_bits) + man, exp - bias - man_bits);
  return sign ? -v : v;
}

}  // namespace

double tensor_core_input(MmaInput type, uint32_t reg, int high) {
  const uint16_t h = static_cast<uint16_t>(high ? reg >> 16 : reg & 0xffff);
  return half_bits_value(h, type == MmaInput::kF16 ? 10 : 7);
}

// Rounds toward zero to binary32; a sum past the fp32 range is +-inf (not FLT_MAX), so that an
// overflow in a kernel cannot hide behind the rounding mode.
float round_toward_zero(double v) {
  if (std::fabs(v) > FLT_MAX) return static_cast<float>(std::copysign(INFINITY, v));
  float f = static_cast<float>(v);  // round to nearest
  if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
  return f;
}

// One output of m16n8k16: the ISA leaves the accumulation's order and rounding unspecified
// (9.7.14.5.14). Modelled as measured on Hopper tensor cores: exact products, every term
// (and c) truncated to 25 fractional bits below the largest term's leading bit, an exact sum,
// then rounding toward zero to fp32.
float tensor_core_dot16(const double (&x)[16], const double (&y)[16], float c) {
  double terms[17];
  double max_abs = std::fabs(static_cast<double>(c));
  bool special = !std::isfinite(c);
  for (int k = 0; k < 16; ++k) {
    terms[k] = x[k] * y[k];  // exact: 11-bit x 11-bit significands
    special |= !std::isfinite(terms[k]);
    max_abs = std::fmax(max_abs, std::fabs(terms[k]));
  }
  terms[16] = c;
  if (special) {  // inf / NaN follow IEEE arithmetic
    double s = 0;
    for (double t : terms) s += t;
    return static_cast<float>(s);
  }
  if (max_abs == 0) return 0.f;
  const double quantum = std::ldexp(1.0, std::ilogb(max_abs) - 25);
  double sum = 0;
  for (double t : terms) sum += std::trunc(t / quantum) * quantum;  // exact in double
  return round_toward_zero(sum);
}

namespace {

// ---- 9.7.14.5.8: matrix fragments for mma.m16n8k16 with floating point type ---------------
// A (16 x 16, row-major): a_i, i = 0..7, two per register (a_{2r} in bits 15:0 of register r);
//   row = groupID for i in {0,1,4,5}, groupID + 8 otherwise;
//   col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
// B (16 x 8, k x n): b_i, i = 0..3; row (k) = threadID_in_group * 2 + (i & 1), plus 8 for
//   i >= 2; col (n) = groupID.
// C, D (16 x 8 fp32): c_i, i = 0..3; row = groupID for i < 2, groupID + 8 otherwise;
//   col = threadID_in_group * 2 + (i & 1).
void mma_compute(WarpSlot (&s)[32], uint32_t /*epoch*/) {
  const auto type = static_cast<MmaInput>(s[0].variant);
  double A[16][16], B[8][16];  // B stored transposed: B[n][k]
  float C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = tensor_core_input(type, s[lane].in[i / 2], i & 1);
    }
    for (int i = 0; i < 4; ++i) {
      const int k = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[g][k] = tensor_core_input(type, s[lane].in[4 + i / 2], i & 1);
    }
    for (int i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][t * 2 + (i & 1)] = s[lane].fin[i];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
      s[lane].fout[i] = tensor_core_dot16(A[row], B[col], C[row][col]);
    }
  }
}

// ---- 9.7.14.5.15: ldmatrix -------------------------------------------------------------------
// Threads 8j .. 8j+7 give the row addresses of matrix j (x1: j = 0; x2: j < 2; x4: j < 4);
// each row is 8 16-bit elements (16 bytes, naturally aligned). Destination register j holds
// matrix j: lane L receives row L / 4, elements 2 (L % 4) and 2 (L % 4) + 1 (low half first);
// with .trans, elements (2 (L % 4), L / 4) and (2 (L % 4) + 1, L / 4) of the matrix whose
// rows the addresses name (column-major loading).
void check_smem_read(const unsigned char* p, int bytes, uint32_t epoch, unsigned warp) {
  for (int i = 0; i < bytes; ++i) {
    ShadowByte& sb = *shadow(p + i);
    if (sb.state == ByteState::kBarrier) {
      fail("ldmatrix (warp " + std::to_string(warp) + ") reads an mbarrier");
    }
    if (sb.state == ByteState::kPending && sb.mbarrier != 0) {
      fail("ldmatrix (warp " + std::to_string(warp) + ") reads shared memory whose TMA load by "
           "thread " + std::to_string(sb.writer) + " has not landed (its mbarrier phase has not "
           "completed)");
    }
    if (sb.state == ByteState::kLanded && sb.mbarrier != 0) {
      for (unsigned lane = 0; lane < 32; ++lane) {
        if (!tma_landing_seen(sb, warp * 32 + lane)) {
          fail("ldmatrix (warp " + std::to_string(warp) + ") reads a TMA load whose mbarrier "
               "phase lane " + std::to_string(lane) + " has not waited for (mbarrier.try_wait "
               "missing)");
        }
      }
    } else if (sb.state == ByteState::kPending) {
      fail("ldmatrix (warp " + std::to_string(warp) + ") reads shared memory whose cp.async by "
           "thread " + std::to_string(sb.writer) + " has not been waited for "
           "(cp.async.wait_group missing or waits for too few groups)");
    }
    if (sb.state == ByteState::kLanded && sb.mbarrier == 0 && sb.writer / 32 != warp &&
        sb.landed_epoch >= epoch) {
      fail("ldmatrix (warp " + std::to_string(warp) + ") reads a cp.async that thread " +
           std::to_string(sb.writer) + " of another warp waited for in the same barrier "
           "interval (a __syncthreads after cp.async.wait_group is missing)");
    }
    if (i % 2 == 0 && p[i] == 0xff && p[i + 1] == 0xff) {
      fail("ldmatrix (warp " + std::to_string(warp) + ") reads shared memory nothing has written "
           "in this block (poison 0xffff): a missing barrier or a tile loaded too late");
    }
    if (sb.read_epoch != epoch) {
      sb.read_epoch = epoch;
      sb.read_warps = 0;
    }
    sb.read_warps |= 1u << warp;
  }
}

void ldmatrix_compute(WarpSlot (&s)[32], uint32_t epoch) {
  const int count = static_cast<int>(s[0].variant & 7);
  const bool trans = (s[0].variant & 8) != 0;
  const unsigned warp = current().warp;
  for (int a = 0; a < 8 * count; ++a) {
    const void* p = s[a].addr;
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
      fail("ldmatrix row address of lane " + std::to_string(a) + " is not 16-byte aligned");
    }
    if (!in_dynamic_smem(p, 16)) {
      fail("ldmatrix row address of lane " + std::to_string(a) +
           " is outside the block's dynamic shared memory");
    }
    check_smem_read(static_cast<const unsigned char*>(p), 16, epoch, warp);
  }
  auto elem = [&](int matrix, int row, int col) {
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(s[8 * matrix + row].addr) + 2 * col, 2);
    return uint32_t(v);
  };
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int j = 0; j < count; ++j) {
      const uint32_t lo = trans ? elem(j, 2 * t, g) : elem(j, g, 2 * t);
      const uint32_t hi = trans ? elem(j, 2 * t + 1, g) : elem(j, g, 2 * t + 1);
      s[lane].out[j] = lo | (hi << 16);
    }
  }
}

// ---- 9.7.9.6: shfl.sync ----------------------------------------------------------------------
// bval = b[4:0], cval = c[4:0], segmask = c[12:8]; maxLane = (lane & segmask) |
// (cval & ~segmask); minLane = lane & segmask. bfly: j = lane ^ bval, valid if j <= maxLane;
// idx: j = minLane | (bval & ~segmask), valid if j <= maxLane; up: j = lane - bval, valid if
// j >= maxLane; down: j = lane + bval, valid if j <= maxLane. Invalid: the lane's own value.
void shfl_compute(WarpSlot (&s)[32], uint32_t /*epoch*/) {
  const auto mode = static_cast<ShflMode>(s[0].variant);
  for (int lane = 0; lane < 32; ++lane) {
    const int bval = s[lane].in[1] & 31, cval = s[lane].in[2] & 31;
    const int segmask = (s[lane].in[2] >> 8) & 31;
    const int max_lane = (lane & segmask) | (cval & ~segmask);
    const int min_lane = lane & segmask;
    int j = lane;
    bool valid = false;
    switch (mode) {
      case ShflMode::kBfly: j = lane ^ bval; valid = j <= max_lane; break;
      case ShflMode::kIdx: j = min_lane | (bval & ~segmask); valid = j <= max_lane; break;
      case ShflMode::kUp: j = lane - bval; valid = j >= max_lane; break;
      case ShflMode::kDown: j = lane + bval; valid = j <= max_lane; break;
    }
    s[lane].out[0] = valid ? s[j].in[0] : s[lane].in[0];
  }
}

void nothing_to_compute(WarpSlot (&)[32], uint32_t) {}

// A deterministic error of up to max_steps units, from the input's bits.
int error_steps(float x, int max_steps) {
  uint32_t h = float_to_bits(x) * 0x9e3779b1u;
  h ^= h >> 15;
  return static_cast<int>(h % (2 * max_steps + 1)) - max_steps;
}

float move_ulps(float v, int steps) {
  for (; steps > 0; --steps) v = std::nextafter(v, INFINITY);
  for (; steps < 0; ++steps) v = std::nextafter(v, -INFINITY);
  return v;
}

float ftz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }

}  // namespace

void mma_m16n8k16_f32(MmaInput type, float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                      uint32_t b1, const float (&c)[4]) {
  WarpSlot mine;
  mine.op = WarpOp::kMma;
  mine.mask = 0xffffffffu;
  mine.variant = static_cast<uint32_t>(type);
  for (int i = 0; i < 4; ++i) mine.in[i] = a[i];
  mine.in[4] = b0;
  mine.in[5] = b1;
  for (int i = 0; i < 4; ++i) mine.fin[i] = c[i];
  const WarpSlot& r = warp_collective(mine, &mma_compute);
  for (int i = 0; i < 4; ++i) d[i] = r.fout[i];
}

void ldmatrix_m8n8_b16(int count, bool trans, uint32_t* r, const void* row_addr) {
  if (count != 1 && count != 2 && count != 4) fail("ldmatrix .num must be x1, x2 or x4");
  WarpSlot mine;
  mine.op = WarpOp::kLdmatrix;
  mine.mask = 0xffffffffu;
  mine.variant = static_cast<uint32_t>(count) | (trans ? 8u : 0u);
  mine.addr = row_addr;
  const WarpSlot& out = warp_collective(mine, &ldmatrix_compute);
  for (int j = 0; j < count; ++j) r[j] = out.out[j];
}

// ---- 9.7.9.25.3: cp.async, cp.async.commit_group, cp.async.wait_group / wait_all -------------
// cp-size is 4, 8 or 16 for .ca and 16 for .cg; src-size <= cp-size, the remaining bytes of
// dst are zero-filled; addresses are naturally aligned to cp-size. The copy is visible to the
// issuing thread only after a wait_group that covers its group (other threads: after a
// barrier that follows that wait).
void cp_async(void* smem_dst, const void* gmem_src, int cp_size, int src_size, bool cg) {
  if (!(cp_size == 4 || cp_size == 8 || cp_size == 16) || (cg && cp_size != 16)) {
    fail("cp.async cp-size " + std::to_string(cp_size) + " is not allowed" +
         (cg ? " with .cg (16 only)" : " (4, 8 or 16)"));
  }
  if (src_size < 0 || src_size > cp_size) {
    fail("cp.async src-size " + std::to_string(src_size) + " outside [0, cp-size " +
         std::to_string(cp_size) + "]");
  }
  if (reinterpret_cast<uintptr_t>(smem_dst) % cp_size != 0 ||
      reinterpret_cast<uintptr_t>(gmem_src) % cp_size != 0) {
    fail("cp.async addresses are not aligned to cp-size " + std::to_string(cp_size));
  }
  if (!in_dynamic_smem(smem_dst, cp_size)) {
    fail("cp.async destination is outside the block's dynamic shared memory");
  }
  async_copy(smem_dst, gmem_src, cp_size, src_size);
}

void cp_async_commit_group() { async_commit(); }
void cp_async_wait_group(int n) { async_wait(n); }
void cp_async_wait_all() {
  async_commit();
  async_wait(0);
}

// ---- 9.7.13.6: red (reduction operations on global and shared memory) ----------------------
// red.global.add.f32: "rounds to nearest even and flushes subnormal inputs and results to
// sign-preserving zero"; the address must be naturally aligned (4 bytes) and, with .global,
// outside shared memory. Atomic here by construction: a fiber switches only at barriers and
// warp collectives, so no other thread's update can fall between this read and write.
void red_global_add_f32(float* addr, float value) {
  if (reinterpret_cast<uintptr_t>(addr) % 4 != 0) {
    fail("red.global.add.f32 address is not 4-byte aligned");
  }
  if (in_dynamic_smem(addr, 4)) fail("red.global.add.f32 on a shared-memory address");
  *addr = ftz(ftz(*addr) + ftz(value));
}

uint32_t shfl_sync(ShflMode mode, unsigned membermask, uint32_t a, uint32_t b, uint32_t c) {
  WarpSlot mine;
  mine.op = WarpOp::kShflBfly;  // one op for every mode: the variant says which
  mine.mask = membermask;
  mine.variant = static_cast<uint32_t>(mode);
  mine.in[0] = a;
  mine.in[1] = b;
  mine.in[2] = c;
  return warp_collective(mine, &shfl_compute).out[0];
}

void syncwarp(unsigned membermask) {
  WarpSlot mine;
  mine.op = WarpOp::kSyncwarp;
  mine.mask = membermask;
  warp_collective(mine, &nothing_to_compute);
}

// ---- 9.7.3: approximate transcendentals (the .ftz forms --use_fast_math selects) ------------
// ex2.approx: at most 2 ulp from the correctly rounded result; -inf -> +0, +-0 -> 1.
float ex2_approx_ftz(float x) {
  x = ftz(x);
  if (std::isnan(x)) return x;
  if (x == 0) return 1.f;
  const float exact = static_cast<float>(std::exp2(static_cast<double>(x)));
  if (exact == 0 || std::isinf(exact)) return exact;
  return ftz(move_ulps(exact, error_steps(x, 2)));
}

// lg2.approx: absolute error <= 2^-22 for x in (0.5, 2), relative error <= 2^-22 elsewhere;
// +-0 -> -inf, negative -> NaN, +inf -> +inf.
float lg2_approx_ftz(float x) {
  x = ftz(x);
  if (std::isnan(x) || x < 0) return std::numeric_limits<float>::quiet_NaN();
  if (x == 0) return -INFINITY;
  if (std::isinf(x)) return x;
  const double exact = std::log2(static_cast<double>(x));
  const int k = error_steps(x, 3);  // 3 / 4 of 2^-22, plus the final rounding
  const double err = (x > 0.5f && x < 2.f) ? std::ldexp(k, -24) : exact * std::ldexp(k, -24);
  return static_cast<float>(exact + err);
}

// rcp.approx: at most 1 ulp; +-0 -> +-inf, +-inf -> +-0.
float rcp_approx_ftz(float x) {
  x = ftz(x);
  if (x == 0) return std::copysign(INFINITY, x);
  if (std::isnan(x) || std::isinf(x)) return 1.f / x;
  return ftz(move_ulps(1.f / x, error_steps(x, 1)));
}

// rsqrt.approx: modelled with a relative error of up to 2^-22.
float rsqrt_approx_ftz(float x) {
  x = ftz(x);
  if (x == 0) return std::copysign(INFINITY, x);
  if (std::isnan(x) || x < 0) return std::numeric_limits<float>::quiet_NaN();
  if (std::isinf(x)) return 0.f;
  const double exact = 1.0 / std::sqrt(static_cast<double>(x));
  return static_cast<float>(exact * (1 + std::ldexp(error_steps(x, 2), -23)));
}

// tanh.approx.f32: relative error <= 2^-11; +-inf -> +-1, subnormals pass through.
float tanh_approx(float x) {
  if (std::isnan(x) || std::isinf(x) || x == 0) return std::tanh(x);
  const double exact = std::tanh(static_cast<double>(x));
  return static_cast<float>(exact * (1 + std::ldexp(error_steps(x, 3), -13)));  // + rounding
}

// ---- 9.7.9.21: cvt.rn to f16 / bf16 (round to nearest, ties to even) -------------------------
uint16_t cvt_rn_bf16_f32(float x) {
  const uint32_t u = float_to_bits(x);
  if (std::isnan(x)) return 0x7fff;  // canonical NaN
  const uint32_t lsb = (u >> 16) & 1;
  return static_cast<uint16_t>((u + 0x7fff + lsb) >> 16);  // carries into the exponent: inf
}

uint16_t cvt_rn_f16_f32(float x) {
  if (std::isnan(x)) return 0x7fff;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 65520.0) return sign | 0x7c00;  // rounds past the largest finite (65504): inf
  // quantum of the binade a falls in (subnormals: 2^-24)
  const int e = a < std::ldexp(1.0, -14) ? -14 : std::ilogb(a);
  const double q = std::ldexp(1.0, e - 10);
  const double m = std::nearbyint(a / q) * q;  // ties to even in the default rounding mode
  if (m == 0) return sign;
  const int me = std::ilogb(m);
  if (me < -14) return sign | static_cast<uint16_t>(m / std::ldexp(1.0, -24));
  const uint16_t exp = static_cast<uint16_t>(me + 15);
  const uint16_t man = static_cast<uint16_t>(m / std::ldexp(1.0, me - 10) - 1024);
  return sign | static_cast<uint16_t>(exp << 10) | man;
}

}  // namespace cuda_emu
