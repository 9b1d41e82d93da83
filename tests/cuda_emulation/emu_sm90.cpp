// sm_90 instruction semantics for the emulated GPU (emu_sm90.h). Each function follows the
// PTX ISA section named above it (docs.nvidia.com/cuda/parallel-thread-execution), the tensor
// map follows cuTensorMapEncodeTiled's reference in cuda.h. Fragment layouts are written in
// the ISA's terms: a warpgroup is warps 4g .. 4g+3, and within warp w of it groupID = lane >> 2,
// threadID_in_group = lane % 4.
#include "emu_sm90.h"

#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "emu_runtime.h"

namespace cuda_emu {
namespace {


// ---- per-block state ------------------------------------------------------------------------

struct TmaLoad {
  unsigned char* dst;
  std::vector<unsigned char> image;  // the bytes [dst, dst + size) as they land (swizzled)
  unsigned issuer;
  uint32_t issuer_epoch;
};

struct Mbarrier {
  uint32_t expected = 0;  // arrivals per phase (the init count)
  uint32_t pending = 0;   // arrivals still missing in the current phase
  int64_t tx = 0;         // tx-count of the current phase
  uint32_t phase = 0;     // phases completed
  uint32_t waited = 0;    // phases completed that some thread's try_wait has seen
  std::vector<TmaLoad> loads;  // landing when the current phase completes
};

// The shared memory an asynchronous reader saw at issue: checked again when it must be done.
// Compared when the last of its `readers` threads waits for it: a wgmma is the whole
// warpgroup's, so a write by any of its threads before that thread's own wait_group is a race.
struct Snapshot {
  std::vector<std::pair<const unsigned char*, unsigned char>> bytes;
  int readers = 1;
};

struct WgmmaOp {
  float* d;
  int count;                  // accumulators of this thread (n / 2)
  std::vector<float> result;  // what the registers hold once the op retires
  std::shared_ptr<Snapshot> snapshot;
  const uint32_t* a_regs;     // A from registers: they must not change until it retires
  uint32_t a_values[4];
};

// What in-flight accumulator registers hold: a NaN (any read shows), with a payload that
// lets the retiring wait_group see whether the kernel wrote to them in the meantime.
constexpr uint32_t kInFlight = 0x7fa5a5a5u;

void mark_in_flight(float* d, int count) {
  for (int i = 0; i < count; ++i) std::memcpy(d + i, &kInFlight, 4);
}

struct TmaStore {
  std::vector<std::pair<unsigned char*, std::vector<unsigned char>>> writes;  // global
  std::shared_ptr<Snapshot> snapshot;
};

struct StoreGroup {
  std::vector<TmaStore> stores;
  bool read_done = false;  // wait_group.read passed it
};

struct ThreadState {
  std::map<uint32_t, uint32_t> observed;  // mbarrier key -> phases this thread saw complete
  bool wgmma_fenced = false;
  std::vector<WgmmaOp> wgmma_open;             // issued, not committed
  std::deque<std::vector<WgmmaOp>> wgmma_groups;  // committed, oldest first
  std::vector<TmaStore> stores_open;
  std::deque<StoreGroup> store_groups;
};

struct BlockState {
  std::map<uint32_t, Mbarrier> barriers;  // by key: 1 + offset in dynamic shared memory
  std::vector<ThreadState> threads;
  std::vector<int> max_registers;  // per warpgroup, from setmaxnreg (0: not set)
  // dynamic shared memory as of the last fence.proxy.async (by any thread): what the async
  // proxy may read of the bytes threads wrote (generic proxy); empty before the first fence,
  // when every byte is as the block started (poison)
  std::vector<unsigned char> fenced;
  unsigned exited = 0;
};
BlockState g_block;

void on_block_start(unsigned threads) {
  g_block = BlockState{};
  g_block.threads.resize(threads);
  g_block.max_registers.assign((threads + 127) / 128, 0);
}

ThreadState& me() { return g_block.threads[current().tid]; }

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// ---- mbarrier (9.7.13.15) -------------------------------------------------------------------
// An 8-byte object in shared memory (8-byte aligned) holding the current phase, its pending
// arrival count and its tx-count. init sets the expected count (1 .. 2^20 - 1) and phase 0.
// A phase completes when the pending arrivals reach zero and the tx-count is zero; then the
// next phase starts with the pending count reset to the expected count. expect-tx adds to the
// tx-count, complete-tx (by a TMA copy's bytes) subtracts; its range is -(2^20 - 1) .. 2^20 - 1.
// try_wait.parity p returns true once the phase with parity p has completed, i.e. while the
// current (incomplete) phase has the other parity.

uint32_t barrier_key(const uint64_t* bar, const char* op) {
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) {
    fail(std::string(op) + ": mbarrier address is not 8-byte aligned");
  }
  if (!in_dynamic_smem(bar, 8)) {
    fail(std::string(op) + ": mbarrier outside the block's dynamic shared memory (the emulator "
         "keeps mbarriers there)");
  }
  return 1 + static_cast<uint32_t>(reinterpret_cast<const unsigned char*>(bar) - dynamic_smem());
}

Mbarrier& barrier(uint64_t* bar, const char* op) {
  const uint32_t key = barrier_key(bar, op);
  auto it = g_block.barriers.find(key);
  if (it == g_block.barriers.end()) {
    fail(std::string(op) + " on an mbarrier that was never initialised (mbarrier.init missing)");
  }
  return it->second;
}

void land(uint32_t key, Mbarrier& b) {
  for (const TmaLoad& load : b.loads) {
    std::memcpy(load.dst, load.image.data(), load.image.size());
    for (size_t i = 0; i < load.image.size(); ++i) {
      ShadowByte& s = *shadow(load.dst + i);
      s.state = ByteState::kLanded;
      s.writer = static_cast<uint16_t>(load.issuer);
      s.landed_epoch = load.issuer_epoch;
      s.mbarrier = key;
      s.mbar_phase = b.phase;
    }
  }
  b.loads.clear();
}

void complete_phase_if_done(uint32_t key, Mbarrier& b) {
  if (b.pending != 0 || b.tx != 0) return;
  land(key, b);
  ++b.phase;
  b.pending = b.expected;
}

void add_tx(Mbarrier& b, int64_t bytes, const char* op) {
  b.tx += bytes;
  if (b.tx > (1 << 20) - 1 || b.tx < -((1 << 20) - 1)) {
    fail(std::string(op) + ": the mbarrier's tx-count leaves its range +-(2^20 - 1) (" +
         std::to_string(b.tx) + ")");
  }
}

void arrive(uint64_t* bar, uint32_t count, const char* op) {
  Mbarrier& b = barrier(bar, op);
  if (b.waited < b.phase) {
    fail(std::string(op) + " in phase " + std::to_string(b.phase) + " of the mbarrier at " +
         hex(barrier_key(bar, op) - 1) + ", whose previous phase no try_wait has seen complete "
         "(the ISA requires one per phase before the next phase's arrivals)");
  }
  if (count == 0 || count > b.pending) {
    fail(std::string(op) + ": " + std::to_string(count) + " arrivals on an mbarrier expecting " +
         std::to_string(b.pending) + " more in this phase");
  }
  b.pending -= count;
  complete_phase_if_done(barrier_key(bar, op), b);
  // a thread the arrival releases may act before this one goes on: a buffer handed back while
  // an asynchronous reader (wgmma, TMA store) still has it in flight can then be refilled
  // before that reader retires, and the reader's check sees the change
  yield_to_others();
}

// ---- tensor maps (cuTensorMapEncodeTiled) ---------------------------------------------------

constexpr uint32_t kMapMagic = 0x544d4150;  // "TMAP"

struct MapRecord {
  uint32_t magic;
  uint8_t rank, elem_bytes, swizzle_span, oob_nan;  // swizzle_span: 0, 32, 64 or 128 bytes
  unsigned char* base;
  uint64_t dim[5];
  uint64_t stride[4];  // bytes, of dimensions 1 .. rank - 1 (dimension 0: elem_bytes)
  uint16_t box[5];
};
static_assert(sizeof(MapRecord) <= sizeof(CUtensorMap), "the record must fit a CUtensorMap");

int elem_bytes_of(CUtensorMapDataType t) {
  switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ: return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: return 8;
    default: return 0;  // the packed 4- and 6-bit types are not emulated
  }
}

bool is_float_type(CUtensorMapDataType t) {
  return t == CU_TENSOR_MAP_DATA_TYPE_FLOAT16 || t == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ||
         t == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 || t == CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ ||
         t == CU_TENSOR_MAP_DATA_TYPE_FLOAT64 || t == CU_TENSOR_MAP_DATA_TYPE_TFLOAT32 ||
         t == CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ;
}

const MapRecord& map_record(const CUtensorMap* map, int rank, const char* op) {
  if (reinterpret_cast<uintptr_t>(map) % 64 != 0) {
    fail(std::string(op) + ": the tensor map is not 64-byte aligned");
  }
  const auto* r = reinterpret_cast<const MapRecord*>(map);
  if (r->magic != kMapMagic) {
    fail(std::string(op) + ": the tensor map was not made by cuTensorMapEncodeTiled");
  }
  if (r->rank != rank) {
    fail(std::string(op) + " with " + std::to_string(rank) + " coordinates on a tensor map of "
         "rank " + std::to_string(r->rank));
  }
  return *r;
}

// The swizzle modes permute 16-byte chunks inside each span-byte row by the row's index in a
// group of 8 rows: address bits [4, 4 + log2(span / 16)) ^= bits [7, 7 + log2(span / 16)) of
// the shared-memory address (CU_TENSOR_MAP_SWIZZLE_* and the wgmma layouts of the same width).
uint32_t swizzle_address(uint32_t addr, int span) {
  if (span == 0) return addr;
  const uint32_t mask = static_cast<uint32_t>(span / 16 - 1);
  return addr ^ (((addr >> 7) & mask) << 4);
}

// One element of a box: its shared-memory byte offset from the box start (before the swizzle,
// which works on the absolute address) and its global address (null when out of bounds).
template <typename F>
void for_each_box_element(const MapRecord& m, const int32_t* coords, F&& visit) {
  uint64_t count = 1;
  for (int d = 0; d < m.rank; ++d) count *= m.box[d];
  for (uint64_t linear = 0; linear < count; ++linear) {
    uint64_t rest = linear;
    bool inside = true;
    unsigned char* g = m.base;
    for (int d = 0; d < m.rank; ++d) {
      const int64_t x = int64_t(coords[d]) + int64_t(rest % m.box[d]);
      rest /= m.box[d];
      inside &= x >= 0 && uint64_t(x) < m.dim[d];
      if (inside) g += x * (d == 0 ? m.elem_bytes : m.stride[d - 1]);
    }
    visit(linear * m.elem_bytes, inside ? g : nullptr);
  }
}

uint64_t box_bytes(const MapRecord& m) {
  uint64_t n = m.elem_bytes;
  for (int d = 0; d < m.rank; ++d) n *= m.box[d];
  return n;
}

// Shared-memory reads by an asynchronous unit (TMA store, wgmma) of one element: it must hold
// data (not all poison bytes), and data a TMA load brought in must have been seen landing by
// `threads` (an mbarrier wait). `seen` caches the (mbarrier, phase) pairs already verified for
// this reader, as one collective reads thousands of bytes of the same few landings.
struct SeenLandings {
  uint32_t mbarrier = 0, phase = 0;
};

void check_async_read(const unsigned char* p, int bytes, const char* op, unsigned first_thread,
                      unsigned threads, SeenLandings& seen) {
  for (int i = 0; i < bytes; ++i) {
    const ShadowByte& s = *shadow(p + i);
    const std::string where = std::string(op) + " reads shared memory at window address " +
                              hex(p + i - dynamic_smem());
    if (s.state == ByteState::kBarrier) fail(where + ", which holds an mbarrier");
    if (s.state == ByteState::kPending) {
      fail(where + " whose copy (thread " + std::to_string(s.writer) + ") has not landed (" +
           (s.mbarrier != 0 ? "its mbarrier phase has not completed)"
                            : "cp.async.wait_group missing)"));
    }
    const unsigned char fenced =
        g_block.fenced.empty() ? kSmemPoison : g_block.fenced[p + i - dynamic_smem()];
    if (s.mbarrier == 0 && p[i] != fenced) {
      fail(where + ", written by a thread (generic proxy) after the last fence.proxy.async: "
           "the async proxy may not see it (fence.proxy.async missing before the barrier)");
    }
    if (s.state == ByteState::kLanded && s.mbarrier != 0 &&
        !(seen.mbarrier == s.mbarrier && seen.phase == s.mbar_phase)) {
      seen = {s.mbarrier, s.mbar_phase};
      for (unsigned t = first_thread; t < first_thread + threads; ++t) {
        if (!tma_landing_seen(s, t)) {
          fail(where + " that a TMA load landed in phase " + std::to_string(s.mbar_phase) +
               " of the mbarrier at " + hex(s.mbarrier - 1) + ", which thread " +
               std::to_string(t) + " has not waited for (mbarrier.try_wait missing)");
        }
      }
    }
  }
  bool poison = true;
  for (int i = 0; i < bytes; ++i) poison &= p[i] == kSmemPoison;
  if (poison) {
    fail(std::string(op) + " reads shared memory nothing has written in this block (poison "
         "0xff bytes) at window address " + hex(p - dynamic_smem()));
  }
}

void record(Snapshot& snap, const unsigned char* p, int bytes) {
  for (int i = 0; i < bytes; ++i) snap.bytes.emplace_back(p + i, p[i]);
}

void check_unchanged(Snapshot& snap, const char* reader, const char* wait) {
  if (--snap.readers != 0) return;
  for (const auto& [p, v] : snap.bytes) {
    if (*p != v) {
      fail(std::string("shared memory that an in-flight ") + reader + " reads (window address " +
           hex(p - dynamic_smem()) + ") changed before " + wait);
    }
  }
}

// ---- wgmma (9.7.15) -------------------------------------------------------------------------
// 9.7.15.5.1, the shared-memory matrix descriptor (64 bits): start address bits 13:0
// (address >> 4), leading dimension byte offset bits 29:16 (>> 4), stride dimension byte
// offset bits 45:32 (>> 4), matrix base offset bits 51:49, swizzle mode bits 63:62
// (0: none (interleaved core matrices), 1: 128-byte, 2: 64-byte, 3: 32-byte).
//
// 9.7.15.5.1, the canonical layouts, for 16-bit elements (T = 8 elements = 16 bytes), a core
// matrix being 8 rows of 16 bytes; written as element (mn, k) -> byte offset from the start,
// before the swizzle of the absolute address:
//   K-major, none:     (mn % 8) * 16 + (mn / 8) * SBO + (k % 8) * 2 + (k / 8) * LBO
//   K-major, W-byte:   (mn % 8) * W  + (mn / 8) * SBO + k * 2            (W = 32, 64, 128)
//   MN-major, none:    (mn % 8) * 2 + (mn / 8) * SBO + (k % 8) * 16 + (k / 8) * LBO
//   MN-major, W-byte:  (mn % (W / 2)) * 2 + (mn / (W / 2)) * LBO + (k % 8) * W + (k / 8) * SBO
struct Descriptor {
  uint32_t start, lbo, sbo, base_offset;
  int span;  // swizzle width in bytes; 0: none
};

Descriptor decode(uint64_t desc) {
  Descriptor d;
  d.start = static_cast<uint32_t>(desc & 0x3fff) << 4;
  d.lbo = static_cast<uint32_t>((desc >> 16) & 0x3fff) << 4;
  d.sbo = static_cast<uint32_t>((desc >> 32) & 0x3fff) << 4;
  d.base_offset = static_cast<uint32_t>((desc >> 49) & 7);
  static constexpr int kSpan[4] = {0, 128, 64, 32};
  d.span = kSpan[desc >> 62];
  return d;
}

uint32_t operand_offset(const Descriptor& d, bool mn_major, int mn, int k) {
  uint32_t off;
  if (!mn_major && d.span == 0) {
    off = (mn % 8) * 16 + (mn / 8) * d.sbo + (k % 8) * 2 + (k / 8) * d.lbo;
  } else if (!mn_major) {
    off = (mn % 8) * d.span + (mn / 8) * d.sbo + k * 2;
  } else if (d.span == 0) {
    off = (mn % 8) * 2 + (mn / 8) * d.sbo + (k % 8) * 16 + (k / 8) * d.lbo;
  } else {
    const int per_row = d.span / 2;
    off = (mn % per_row) * 2 + (mn / per_row) * d.lbo + (k % 8) * d.span + (k / 8) * d.sbo;
  }
  return swizzle_address(d.start + off, d.span);
}

// Reads an operand of rows x 16 (mn x k) elements through its descriptor.
void read_operand(MmaInput type, uint64_t desc, bool mn_major, int rows, double (*out)[16],
                  Snapshot& snap, const char* which, unsigned first_thread) {
  const Descriptor d = decode(desc);
  SeenLandings seen;
  if (d.base_offset != 0) {
    fail(std::string("wgmma ") + which + " descriptor has base offset " +
         std::to_string(d.base_offset) + " (the emulator models operands whose swizzle pattern "
         "starts at the address bits, base offset 0)");
  }
  if (d.span != 0 && d.start % (8 * d.span) >= uint32_t(d.span)) {
    fail(std::string("wgmma ") + which + " descriptor starts at window address " + hex(d.start) +
         ", past the first row of its " + std::to_string(d.span) + "-byte swizzle pattern (which "
         "repeats every " + std::to_string(8 * d.span) + " bytes): that needs a base offset");
  }
  for (int mn = 0; mn < rows; ++mn) {
    for (int k = 0; k < 16; ++k) {
      const uint32_t addr = operand_offset(d, mn_major, mn, k);
      if (addr + 2 > dynamic_smem_size()) {
        fail(std::string("wgmma ") + which + " element (" + std::to_string(mn) + ", " +
             std::to_string(k) + ") at window address " + hex(addr) + " is outside the block's "
             "dynamic shared memory (" + std::to_string(dynamic_smem_size()) + " bytes)");
      }
      const unsigned char* p = dynamic_smem() + addr;
      check_async_read(p, 2, "wgmma", first_thread, 128, seen);
      record(snap, p, 2);
      uint16_t bits;
      std::memcpy(&bits, p, 2);
      out[mn][k] = tensor_core_input(type, bits, 0);
    }
  }
}

struct WgmmaArgs {
  MmaInput type;
  int n;
  float* d;
  const uint32_t* a_regs;  // null: A from shared memory
  uint64_t desc_a, desc_b;
  bool scale_d;
  int scale_a, scale_b, trans_a, trans_b;
  float c[128];  // this thread's accumulator inputs, then its results
  std::shared_ptr<Snapshot> snapshot;  // the collective's operand bytes
};

// The register fragments of 9.7.15.5.1 (m64nNk16): thread r of the warpgroup is lane r % 32
// of warp w = r / 32, which holds rows 16 w .. 16 w + 15.
//   D (f32): d_i, i < N / 2: row = 16 w + groupID + 8 * ((i >> 1) & 1),
//            col = 8 * (i >> 2) + 2 * threadID_in_group + (i & 1).
//   A (16-bit, 4 x .b32): a_i, i < 8, two per register (a_{2j} in bits 15:0 of register j):
//            row = 16 w + groupID (+ 8 for i in {2, 3, 6, 7}),
//            col = 2 * threadID_in_group + (i & 1) (+ 8 for i >= 4).
int d_row(int r, int i) { return 16 * (r / 32) + (r % 32) / 4 + 8 * ((i >> 1) & 1); }
int d_col(int r, int i) { return 8 * (i >> 2) + 2 * (r % 4) + (i & 1); }

void wgmma_compute(void* const (&ops)[128]) {
  const auto& a0 = *static_cast<const WgmmaArgs*>(ops[0]);
  const int n = a0.n;
  const unsigned first = current().tid - current().tid % 128;
  auto snap = std::make_shared<Snapshot>();
  snap->readers = 128;
  static double A[64][16], B[256][16];  // B[n][k]
  if (a0.a_regs == nullptr) {
    read_operand(a0.type, a0.desc_a, a0.trans_a != 0, 64, A, *snap, "A", first);
  } else {
    for (int r = 0; r < 128; ++r) {
      const auto& op = *static_cast<const WgmmaArgs*>(ops[r]);
      const int g = (r % 32) / 4, t = r % 4, w = r / 32;
      for (int i = 0; i < 8; ++i) {
        const int row = 16 * w + g + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0);
        A[row][2 * t + (i & 1) + (i >= 4 ? 8 : 0)] =
            tensor_core_input(a0.type, op.a_regs[i / 2], i & 1);
      }
    }
  }
  read_operand(a0.type, a0.desc_b, a0.trans_b != 0, n, B, *snap, "B", first);
  if (a0.scale_a < 0) for (auto& row : A) for (double& x : row) x = -x;
  if (a0.scale_b < 0) for (int j = 0; j < n; ++j) for (double& x : B[j]) x = -x;
  for (int r = 0; r < 128; ++r) {
    auto& op = *static_cast<WgmmaArgs*>(ops[r]);
    for (int i = 0; i < n / 2; ++i) {
      const float c = a0.scale_d ? op.c[i] : 0.f;
      op.c[i] = tensor_core_dot16(A[d_row(r, i)], B[d_col(r, i)], c);
    }
  }
  for (int r = 0; r < 128; ++r) static_cast<WgmmaArgs*>(ops[r])->snapshot = snap;
}

// The value the accumulator registers at d will hold once everything in flight retires.
const WgmmaOp* in_flight(ThreadState& t, const float* d) {
  const WgmmaOp* latest = nullptr;
  for (const auto& g : t.wgmma_groups) for (const WgmmaOp& op : g) if (op.d == d) latest = &op;
  for (const WgmmaOp& op : t.wgmma_open) if (op.d == d) latest = &op;
  return latest;
}

void wgmma(WgmmaArgs& args) {
  ThreadState& t = me();
  if (args.n < 8 || args.n > 256 || args.n % 8 != 0) {
    fail("wgmma .m64n" + std::to_string(args.n) + "k16: N must be a multiple of 8 in 8 .. 256");
  }
  if (!t.wgmma_fenced) {
    fail("wgmma.mma_async without a wgmma.fence since the warpgroup last touched its "
         "registers (the emulator requires one at the start and after every wgmma.wait_group)");
  }
  if ((args.scale_a != 1 && args.scale_a != -1) || (args.scale_b != 1 && args.scale_b != -1) ||
      (args.trans_a != 0 && args.trans_a != 1) || (args.trans_b != 0 && args.trans_b != 1)) {
    fail("wgmma imm-scale-a/b must be 1 or -1 and imm-trans-a/b 0 or 1");
  }
  if (const WgmmaOp* prev = in_flight(t, args.d)) {
    if (prev->count != args.n / 2) fail("wgmma accumulators reused in flight with another shape");
    std::memcpy(args.c, prev->result.data(), sizeof(float) * prev->count);
  } else {
    std::memcpy(args.c, args.d, sizeof(float) * (args.n / 2));
  }
  uint64_t key = 0x9e3779b97f4a7c15ull;
  for (uint64_t v : {uint64_t(args.type), uint64_t(args.n), uint64_t(args.a_regs != nullptr),
                     args.desc_a, args.desc_b, uint64_t(args.scale_d), uint64_t(args.scale_a + 2),
                     uint64_t(args.scale_b + 2), uint64_t(args.trans_a), uint64_t(args.trans_b)}) {
    key = (key ^ v) * 0x100000001b3ull;
  }
  warpgroup_collective(key, &args, &wgmma_compute);
  WgmmaOp op{args.d, args.n / 2, std::vector<float>(args.c, args.c + args.n / 2),
             args.snapshot, args.a_regs, {}};
  if (args.a_regs != nullptr) std::memcpy(op.a_values, args.a_regs, sizeof op.a_values);
  mark_in_flight(args.d, op.count);
  t.wgmma_open.push_back(std::move(op));
}

// ---- TMA stores: the global writes of a group, once it is waited for --------------------------
void finish_stores(StoreGroup& g) {
  for (TmaStore& s : g.stores) {
    if (!g.read_done) check_unchanged(*s.snapshot, "TMA store", "cp.async.bulk.wait_group.read");
    for (auto& [dst, bytes] : s.writes) std::memcpy(dst, bytes.data(), bytes.size());
  }
}

void on_thread_exit(unsigned tid) {
  ThreadState& t = g_block.threads[tid];
  if (!t.wgmma_open.empty() || !t.wgmma_groups.empty()) {
    fail("exits with wgmma operations in flight (wgmma.commit_group / wait_group missing)");
  }
  if (!t.stores_open.empty()) {
    fail("exits with a TMA store never committed (cp.async.bulk.commit_group missing)");
  }
  for (StoreGroup& g : t.store_groups) {
    if (!g.read_done) {
      fail("exits while a TMA store may still read its shared memory "
           "(cp.async.bulk.wait_group.read missing)");
    }
    finish_stores(g);
  }
  t.store_groups.clear();
  if (++g_block.exited == g_block.threads.size()) {
    for (auto& [key, b] : g_block.barriers) {
      if (!b.loads.empty()) {
        fail("the block ends with TMA loads whose mbarrier phase never completed (mbarrier at " +
             hex(key - 1) + ")");
      }
    }
  }
}

struct RegisterHooks {
  RegisterHooks() { add_block_hooks(&on_block_start, &on_thread_exit); }
} g_register_hooks;

}  // namespace

bool tma_landing_seen(const ShadowByte& s, unsigned tid) {
  const auto& seen = g_block.threads[tid].observed;
  const auto it = seen.find(s.mbarrier);
  return it != seen.end() && it->second > s.mbar_phase;
}

uint32_t smem_window_address(const void* p) {
  if (!in_dynamic_smem(p, 1)) fail("cvta.to.shared of an address outside dynamic shared memory");
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - dynamic_smem());
}

// ---- mbarrier ---------------------------------------------------------------------------------
void mbarrier_init(uint64_t* bar, uint32_t count) {
  const uint32_t key = barrier_key(bar, "mbarrier.init");
  if (count < 1 || count > (1u << 20) - 1) {
    fail("mbarrier.init count " + std::to_string(count) + " outside 1 .. 2^20 - 1");
  }
  auto it = g_block.barriers.find(key);
  if (it != g_block.barriers.end() && !it->second.loads.empty()) {
    fail("mbarrier.init on an mbarrier with TMA loads in flight");
  }
  Mbarrier& b = g_block.barriers[key];
  b = Mbarrier{};
  b.expected = b.pending = count;
  auto* p = reinterpret_cast<unsigned char*>(bar);
  for (int i = 0; i < 8; ++i) {
    ShadowByte& s = *shadow(p + i);
    if (s.state == ByteState::kPending) fail("mbarrier.init over a copy in flight");
    s = ShadowByte{};
    s.state = ByteState::kBarrier;
    p[i] = 0;
  }
}

void mbarrier_arrive(uint64_t* bar, uint32_t count) { arrive(bar, count, "mbarrier.arrive"); }

void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes) {
  add_tx(barrier(bar, "mbarrier.arrive.expect_tx"), tx_bytes, "mbarrier.arrive.expect_tx");
  arrive(bar, 1, "mbarrier.arrive.expect_tx");
}

void mbarrier_expect_tx(uint64_t* bar, uint32_t tx_bytes) {
  Mbarrier& b = barrier(bar, "mbarrier.expect_tx");
  add_tx(b, tx_bytes, "mbarrier.expect_tx");
  complete_phase_if_done(barrier_key(bar, "mbarrier.expect_tx"), b);
}

bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  const uint32_t key = barrier_key(bar, "mbarrier.try_wait.parity");
  barrier(bar, "mbarrier.try_wait.parity");
  if (parity > 1) fail("mbarrier.try_wait.parity with phase parity " + std::to_string(parity));
  auto done = [key, parity] { return g_block.barriers[key].phase % 2 != parity; };
  wait_until(done, "mbarrier at " + hex(key - 1) + " to complete a phase of parity " +
                       std::to_string(parity));
  Mbarrier& b = g_block.barriers[key];
  uint32_t& seen = me().observed[key];
  seen = std::max(seen, b.phase);
  b.waited = b.phase;
  return true;
}

void fence_mbarrier_init() {}
void fence_proxy_async() {
  g_block.fenced.assign(dynamic_smem(), dynamic_smem() + dynamic_smem_size());
}

// ---- tensor maps ------------------------------------------------------------------------------
CUresult tensor_map_encode_tiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank,
                                 void* global_address, const cuuint64_t* global_dim,
                                 const cuuint64_t* global_strides, const cuuint32_t* box_dim,
                                 const cuuint32_t* element_strides,
                                 CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                 CUtensorMapL2promotion /*l2_promotion*/,
                                 CUtensorMapFloatOOBfill oob_fill) {
  const int elem = elem_bytes_of(type);
  if (elem == 0) throw std::logic_error("cuda_emu: packed tensor map data types are not emulated");
  if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) {
    throw std::logic_error("cuda_emu: interleaved tensor maps are not emulated");
  }
  if (swizzle > CU_TENSOR_MAP_SWIZZLE_128B) {
    throw std::logic_error("cuda_emu: the 128B_ATOM swizzle modes are not emulated");
  }
  // the driver's documented requirements
  if (map == nullptr || reinterpret_cast<uintptr_t>(map) % 64 != 0) return CUDA_ERROR_INVALID_VALUE;
  if (rank < 1 || rank > 5) return CUDA_ERROR_INVALID_VALUE;
  if (reinterpret_cast<uintptr_t>(global_address) % 16 != 0) return CUDA_ERROR_INVALID_VALUE;
  for (cuuint32_t d = 0; d < rank; ++d) {
    if (global_dim[d] == 0 || global_dim[d] > (1ull << 32)) return CUDA_ERROR_INVALID_VALUE;
    if (box_dim[d] == 0 || box_dim[d] > 256) return CUDA_ERROR_INVALID_VALUE;
    if (element_strides[d] == 0 || element_strides[d] > 8) return CUDA_ERROR_INVALID_VALUE;
    if (d > 0 && element_strides[d] != 1) {
      throw std::logic_error("cuda_emu: tensor map element strides other than 1 are not emulated");
    }
  }
  for (cuuint32_t d = 0; d + 1 < rank; ++d) {
    if (global_strides[d] % 16 != 0 || global_strides[d] >= (1ull << 40)) {
      return CUDA_ERROR_INVALID_VALUE;
    }
  }
  const uint64_t inner_bytes = uint64_t(box_dim[0]) * elem;
  if (inner_bytes % 16 != 0) return CUDA_ERROR_INVALID_VALUE;
  static constexpr int kSpan[4] = {0, 32, 64, 128};
  const int span = kSpan[swizzle];
  if (span != 0 && inner_bytes > uint64_t(span)) return CUDA_ERROR_INVALID_VALUE;
  if (span != 0 && inner_bytes != uint64_t(span)) {
    throw std::logic_error("cuda_emu: a swizzled box whose inner dimension (" +
                           std::to_string(inner_bytes) + " bytes) is narrower than the swizzle "
                           "span is not emulated");
  }
  if (oob_fill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA && !is_float_type(type)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  MapRecord r{};
  r.magic = kMapMagic;
  r.rank = static_cast<uint8_t>(rank);
  r.elem_bytes = static_cast<uint8_t>(elem);
  r.swizzle_span = static_cast<uint8_t>(span);
  r.oob_nan = oob_fill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA;
  r.base = static_cast<unsigned char*>(global_address);
  for (cuuint32_t d = 0; d < rank; ++d) {
    r.dim[d] = global_dim[d];
    r.box[d] = static_cast<uint16_t>(box_dim[d]);
    if (d + 1 < rank) r.stride[d] = global_strides[d];
  }
  std::memset(map, 0, sizeof(CUtensorMap));
  std::memcpy(map, &r, sizeof r);
  return CUDA_SUCCESS;
}

// ---- 9.7.9.25.5.2: cp.async.bulk.tensor -------------------------------------------------------
// Load (.shared::cluster.global, .mbarrier::complete_tx::bytes): the box at the coordinates
// (innermost first, signed; elements outside the tensor are filled with zeros, or NaN with
// the map's OOB NaN fill) goes to shared memory in the box's row-major order, swizzled as the
// map says; the copy signals complete-tx of the box's bytes on the mbarrier. The shared
// destination is 128-byte aligned.
void tma_load(void* smem_dst, const CUtensorMap* map, const int32_t* coords, int rank,
              uint64_t* bar) {
  const MapRecord& m = map_record(map, rank, "cp.async.bulk.tensor (load)");
  auto* dst = static_cast<unsigned char*>(smem_dst);
  const uint64_t bytes = box_bytes(m);
  if (reinterpret_cast<uintptr_t>(dst) % 128 != 0) {
    fail("cp.async.bulk.tensor destination is not 128-byte aligned");
  }
  if (m.swizzle_span != 0 && (dst - dynamic_smem()) % (8 * m.swizzle_span) != 0) {
    fail("cp.async.bulk.tensor destination (window address " + hex(dst - dynamic_smem()) +
         ") is not aligned to its " + std::to_string(m.swizzle_span) + "-byte swizzle pattern (" +
         std::to_string(8 * m.swizzle_span) + " bytes): the wgmma that reads it would need a "
         "base offset");
  }
  if (!in_dynamic_smem(dst, bytes)) {
    fail("cp.async.bulk.tensor box of " + std::to_string(bytes) + " bytes does not fit the "
         "block's dynamic shared memory from its destination");
  }
  const uint32_t key = barrier_key(bar, "cp.async.bulk.tensor");
  Mbarrier& b = barrier(bar, "cp.async.bulk.tensor");
  const uint32_t base = smem_window_address(dst);
  TmaLoad load{dst, std::vector<unsigned char>(bytes), current().tid, current().epoch};
  for_each_box_element(m, coords, [&](uint64_t off, const unsigned char* g) {
    const uint32_t at = swizzle_address(base + static_cast<uint32_t>(off), m.swizzle_span) - base;
    unsigned char* out = load.image.data() + at;
    if (g != nullptr) {
      std::memcpy(out, g, m.elem_bytes);
    } else if (m.oob_nan) {
      // 0x7fff..ff: a NaN in every float format of that width, and not the poison pattern
      std::memset(out, 0xff, m.elem_bytes);
      out[m.elem_bytes - 1] = 0x7f;
    } else {
      std::memset(out, 0, m.elem_bytes);
    }
  });
  for (uint64_t i = 0; i < bytes; ++i) {
    ShadowByte& s = *shadow(dst + i);
    if (s.state == ByteState::kPending) {
      fail("cp.async.bulk.tensor into shared memory another copy (thread " +
           std::to_string(s.writer) + ") still has in flight");
    }
    if (s.state == ByteState::kBarrier) fail("cp.async.bulk.tensor over an mbarrier");
    s.state = ByteState::kPending;
    s.writer = static_cast<uint16_t>(current().tid);
    s.mbarrier = key;
    dst[i] = kSmemPoison;
  }
  b.loads.push_back(std::move(load));
  add_tx(b, -static_cast<int64_t>(bytes), "cp.async.bulk.tensor complete_tx");
  complete_phase_if_done(key, b);
}

// Store (.global.shared::cta.bulk_group): the box read from shared memory (same layout) goes
// to the tensor; elements outside it are not written. The shared memory may be reused after
// cp.async.bulk.wait_group.read covers the store's group; the writes are done after
// cp.async.bulk.wait_group.
void tma_store(const CUtensorMap* map, const int32_t* coords, int rank, const void* smem_src) {
  const MapRecord& m = map_record(map, rank, "cp.async.bulk.tensor (store)");
  const auto* src = static_cast<const unsigned char*>(smem_src);
  const uint64_t bytes = box_bytes(m);
  if (reinterpret_cast<uintptr_t>(src) % 128 != 0) {
    fail("cp.async.bulk.tensor source is not 128-byte aligned");
  }
  if (!in_dynamic_smem(src, bytes)) {
    fail("cp.async.bulk.tensor store box does not fit the block's dynamic shared memory");
  }
  const uint32_t base = smem_window_address(src);
  TmaStore store{{}, std::make_shared<Snapshot>()};
  SeenLandings seen;
  for_each_box_element(m, coords, [&](uint64_t off, const unsigned char* g) {
    const unsigned char* p =
        dynamic_smem() + swizzle_address(base + static_cast<uint32_t>(off), m.swizzle_span);
    check_async_read(p, m.elem_bytes, "cp.async.bulk.tensor (store)", current().tid, 1, seen);
    record(*store.snapshot, p, m.elem_bytes);
    if (g != nullptr) {
      store.writes.emplace_back(const_cast<unsigned char*>(g),
                                std::vector<unsigned char>(p, p + m.elem_bytes));
    }
  });
  me().stores_open.push_back(std::move(store));
}

void bulk_commit_group() {
  ThreadState& t = me();
  t.store_groups.push_back(StoreGroup{std::move(t.stores_open), false});
  t.stores_open.clear();
}

void bulk_wait_group_read(int n) {
  ThreadState& t = me();
  for (size_t i = 0; i + n < t.store_groups.size(); ++i) {
    if (t.store_groups[i].read_done) continue;
    for (TmaStore& s : t.store_groups[i].stores) {
      check_unchanged(*s.snapshot, "TMA store", "cp.async.bulk.wait_group.read");
    }
    t.store_groups[i].read_done = true;
  }
}

void bulk_wait_group(int n) {
  ThreadState& t = me();
  while (static_cast<int>(t.store_groups.size()) > n) {
    finish_stores(t.store_groups.front());
    t.store_groups.pop_front();
  }
}

// ---- 9.7.15.6: wgmma.fence, commit_group, wait_group ------------------------------------------
// wgmma.fence orders the warpgroup's register accesses before the wgmma.mma_async that
// follow; the accumulators (and A registers) of an operation in flight may be touched only by
// another wgmma.mma_async with the same accumulators, until a wgmma.wait_group retires it.
// wait_group n returns when at most n of the thread's committed groups are pending.
void wgmma_fence() { me().wgmma_fenced = true; }

void wgmma_commit_group() {
  ThreadState& t = me();
  t.wgmma_groups.push_back(std::move(t.wgmma_open));
  t.wgmma_open.clear();
}

void wgmma_wait_group(int n) {
  ThreadState& t = me();
  if (n < 0) fail("wgmma.wait_group " + std::to_string(n));
  const size_t retiring = t.wgmma_groups.size() > size_t(n) ? t.wgmma_groups.size() - n : 0;
  for (size_t g = 0; g < retiring; ++g) {  // checked before any result lands in the registers
    for (WgmmaOp& op : t.wgmma_groups[g]) {
      check_unchanged(*op.snapshot, "wgmma", "wgmma.wait_group retired it");
      if (op.a_regs != nullptr && std::memcmp(op.a_regs, op.a_values, sizeof op.a_values) != 0) {
        fail("the A registers of an in-flight wgmma changed before the wgmma.wait_group that "
             "retires it");
      }
      for (int i = 0; i < op.count; ++i) {
        uint32_t bits;
        std::memcpy(&bits, op.d + i, 4);
        if (bits != kInFlight) {
          fail("accumulator " + std::to_string(i) + " of an in-flight wgmma was written before "
               "the wgmma.wait_group that retires it");
        }
      }
    }
  }
  for (size_t g = 0; g < retiring; ++g) {
    for (WgmmaOp& op : t.wgmma_groups.front()) {
      std::memcpy(op.d, op.result.data(), sizeof(float) * op.count);
    }
    t.wgmma_groups.pop_front();
  }
  // accumulators that a younger operation still has in flight stay undefined
  for (const auto& g : t.wgmma_groups) for (const WgmmaOp& op : g) mark_in_flight(op.d, op.count);
  for (const WgmmaOp& op : t.wgmma_open) mark_in_flight(op.d, op.count);
  t.wgmma_fenced = false;
}

void wgmma_ss(MmaInput type, int n, float* d, uint64_t desc_a, uint64_t desc_b, bool scale_d,
              int scale_a, int scale_b, int trans_a, int trans_b) {
  WgmmaArgs args{type, n, d, nullptr, desc_a, desc_b, scale_d, scale_a, scale_b, trans_a, trans_b,
                 {}};
  wgmma(args);
}

void wgmma_rs(MmaInput type, int n, float* d, const uint32_t (&a)[4], uint64_t desc_b,
              bool scale_d, int scale_a, int scale_b, int trans_b) {
  WgmmaArgs args{type, n, d, a, 0, desc_b, scale_d, scale_a, scale_b, 0, trans_b, {}};
  wgmma(args);
}

// ---- 9.7.17.x: setmaxnreg ---------------------------------------------------------------------
// setmaxnreg.{inc,dec}.sync.aligned.u32 count: count in 24 .. 256, a multiple of 8, the same
// for the whole warpgroup (which must execute it together); .dec must not raise the count and
// .inc not lower it; .inc waits until the CTA's register pool has the registers. The pool is
// the SM's 65536: warpgroups whose count is not known here are taken at the minimum, 24.
constexpr int kRegisterFile = 65536;

static void apply_setmaxnreg(void* const (&ops)[128]) {
  const uint32_t word = *static_cast<const uint32_t*>(ops[0]);
  const bool increase = word >> 16;
  const int count = static_cast<int>(word & 0xffff);
  int& mine = g_block.max_registers[current().tid / 128];
  if (mine != 0 && (increase ? count < mine : count > mine)) {
    fail(std::string("setmaxnreg.") + (increase ? "inc" : "dec") + " " + std::to_string(count) +
         " from " + std::to_string(mine) + " registers");
  }
  mine = count;
  int total = 0;
  for (int r : g_block.max_registers) total += 128 * (r == 0 ? 24 : r);
  if (total > kRegisterFile) {
    fail("setmaxnreg: the warpgroups ask for " + std::to_string(total) + " registers in all, more "
         "than the SM's " + std::to_string(kRegisterFile) + " (setmaxnreg.inc would wait forever)");
  }
}

void setmaxnreg(bool increase, uint32_t count) {
  if (count < 24 || count > 256 || count % 8 != 0) {
    fail("setmaxnreg count " + std::to_string(count) + " is not a multiple of 8 in 24 .. 256");
  }
  uint32_t word = uint32_t(increase) << 16 | count;
  warpgroup_collective(uint64_t(word) ^ 0x5e7a1ull << 40, &word, &apply_setmaxnreg);
}

}  // namespace cuda_emu
