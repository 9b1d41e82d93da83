// The emulated GPU's scheduler: fibers, barriers, warp collectives, shared memory and its
// shadow, cp.async groups. See emu_runtime.h for the model.
#include "emu_runtime.h"

#include <cuda_runtime_api.h>

#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <xmmintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

extern "C" {
// Bounds of the linker section holding every static __shared__ variable (cuda_emulation.h);
// weak: a build whose kernels declare none has no such section.
extern unsigned char __start_cuda_emu_shared[] __attribute__((weak));
extern unsigned char __stop_cuda_emu_shared[] __attribute__((weak));
}

namespace cuda_emu {

uint3 block_idx;
dim3 block_dim, grid_dim;

DeviceProps& device_props() {
  static DeviceProps p;
  return p;
}

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;  // PROT_NONE below each stack: an overflow faults

enum class FiberState { kRunnable, kAtBarrier, kInWarpOp, kInWarpgroupOp, kWaiting, kDone };

struct PendingCopy {
  unsigned char* dst;
  int bytes;
  unsigned char data[16];
};

struct Fiber {
  ucontext_t ctx;
  ThreadCtx t;
  FiberState state = FiberState::kRunnable;
  int barrier_id = -1;
  std::vector<PendingCopy> uncommitted;
  std::deque<std::vector<PendingCopy>> groups;  // committed, oldest first
  std::function<bool()> ready;  // kWaiting: what it waits for (wait_until)
  std::string waiting_for;
};

struct Warp {
  // One slot per lane suffices: a lane writes only its own slot, and only after the previous
  // collective's compute has consumed every input; it then reads only its own outputs.
  WarpSlot slots[32];
  uint32_t arrived = 0;
  uint32_t alive = 0;  // lanes not exited (a partial last warp has fewer than 32)
};

struct Warpgroup {
  void* operands[128] = {};
  uint64_t keys[128] = {};
  int arrived = 0;
};

struct Barrier {
  int arrived = 0;
  int count = 0;  // 0: the whole block (non-exited threads)
  const char* site = nullptr;  // file:line of the barrier the waiting threads reached
};

struct Launch {
  const void* kernel = nullptr;
  std::string name;
  std::function<void()> body;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<Warpgroup> warpgroups;
  Barrier barriers[16];
  int alive = 0;
  ucontext_t scheduler;
  Fiber* running = nullptr;
  std::string error;  // first error; stops the launch
  std::vector<unsigned char> smem_storage;
  unsigned char* smem = nullptr;  // 1024-byte aligned, inside smem_storage
  std::vector<ShadowByte> shadow;
  size_t smem_bytes = 0;
};

Launch* g_launch = nullptr;
Schedule g_schedule = Schedule::kSkewAlternating;
unsigned long g_blocks_run = 0;  // over all launches: consecutive blocks alternate the order
uint64_t g_block_order_seed = 0;  // set_block_order_seed
uint64_t g_launches = 0;          // launches run so far: varies the permutation per launch
std::map<const void*, int> g_smem_optin;

struct BlockHooks {
  void (*on_block_start)(unsigned threads);
  void (*on_thread_exit)(unsigned tid);
};
std::vector<BlockHooks>& block_hooks() {
  static std::vector<BlockHooks> h;
  return h;
}

// Fiber stacks, kept across launches (mmap: untouched pages cost nothing).
std::vector<unsigned char*>& stacks() {
  static std::vector<unsigned char*> s;
  return s;
}

unsigned char* stack_for(size_t i) {
  auto& s = stacks();
  while (s.size() <= i) {
    void* p = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map a fiber stack");
    mprotect(p, kGuardBytes, PROT_NONE);
    s.push_back(static_cast<unsigned char*>(p) + kGuardBytes);
  }
  return s[i];
}

std::string kernel_name(const void* kernel) {
  Dl_info info{};
  if (kernel != nullptr && dladdr(kernel, &info) && info.dli_sname != nullptr) {
    int status = 0;
    char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 && d ? d : info.dli_sname;
    std::free(d);
    return name;
  }
  return "<kernel>";
}

std::string where() {
  Launch& L = *g_launch;
  std::string s = L.name + " block (" + std::to_string(block_idx.x) + "," +
                  std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) + ")";
  if (L.running != nullptr) {
    const ThreadCtx& t = L.running->t;
    s += " thread (" + std::to_string(t.idx.x) + "," + std::to_string(t.idx.y) + "," +
         std::to_string(t.idx.z) + ") [warp " + std::to_string(t.warp) + " lane " +
         std::to_string(t.lane) + "]";
  }
  return s;
}

void yield() {
  Launch& L = *g_launch;
  swapcontext(&L.running->ctx, &L.scheduler);
}

void land(Fiber& f, const std::vector<PendingCopy>& group) {
  for (const PendingCopy& c : group) {
    std::memcpy(c.dst, c.data, c.bytes);
    for (int i = 0; i < c.bytes; ++i) {
      ShadowByte& s = *shadow(c.dst + i);
      s.state = ByteState::kLanded;
      s.writer = static_cast<uint16_t>(f.t.tid);
      s.landed_epoch = f.t.epoch;
      s.mbarrier = 0;
    }
  }
}

bool has_copies_in_flight(const Fiber& f) {
  if (!f.uncommitted.empty()) return true;
  for (const auto& g : f.groups) {
    if (!g.empty()) return true;
  }
  return false;
}

void release_barrier(Launch& L, int id) {
  Barrier& b = L.barriers[id];
  const bool whole_block = id == 0 && b.count == 0;
  for (Fiber& f : L.fibers) {
    if (f.state == FiberState::kAtBarrier && f.barrier_id == id) {
      f.state = FiberState::kRunnable;
      f.barrier_id = -1;
      if (whole_block) ++f.t.epoch;
    }
  }
  b.arrived = 0;
  b.count = 0;
  b.site = nullptr;
}

void check_barriers_after_exit(Launch& L) {
  for (int id = 0; id < 16; ++id) {
    Barrier& b = L.barriers[id];
    if (b.arrived > 0 && b.count == 0 && b.arrived >= L.alive) release_barrier(L, id);
  }
}

void thread_exit(Fiber& f) {
  Launch& L = *g_launch;
  if (has_copies_in_flight(f)) {
    fail("exits with cp.async copies still in flight (a cp.async.wait_group is missing)");
  }
  Warp& w = L.warps[f.t.warp];
  const uint32_t bit = 1u << f.t.lane;
  w.alive &= ~bit;
  if (w.arrived != 0) {
    fail("exits while other lanes of its warp wait in a warp-collective instruction");
  }
  if (f.t.warp / 4 < L.warpgroups.size() && L.warpgroups[f.t.warp / 4].arrived != 0) {
    fail("exits while other threads of its warpgroup wait in a warpgroup instruction (wgmma)");
  }
  for (const BlockHooks& h : block_hooks()) h.on_thread_exit(f.t.tid);
  f.state = FiberState::kDone;
  --L.alive;
  check_barriers_after_exit(L);
}

void fiber_main(int index) {
  Launch& L = *g_launch;
  Fiber& f = L.fibers[index];
  try {
    L.body();
    thread_exit(f);
  } catch (const std::exception& e) {
    if (L.error.empty()) L.error = where() + ": " + e.what();
  }
  f.state = FiberState::kDone;
  setcontext(&L.scheduler);
}

Fiber* pick(Launch& L, bool high_first) {
  const int n = static_cast<int>(L.fibers.size());
  for (int k = 0; k < n; ++k) {
    Fiber& f = L.fibers[high_first ? n - 1 - k : k];
    if (f.state == FiberState::kWaiting && f.ready()) {
      f.state = FiberState::kRunnable;
      f.ready = nullptr;
    }
    if (f.state == FiberState::kRunnable) return &f;
  }
  return nullptr;
}

std::string deadlock_report(Launch& L) {
  std::string s = where() + ": deadlock: no thread can proceed;";
  int shown = 0;
  for (const Fiber& f : L.fibers) {
    if (f.state == FiberState::kDone || shown >= 4) continue;
    std::string waits = " waits in a warp collective";
    if (f.state == FiberState::kAtBarrier) {
      waits = " waits at barrier " + std::to_string(f.barrier_id);
    }
    if (f.state == FiberState::kInWarpgroupOp) waits = " waits in a warpgroup instruction";
    if (f.state == FiberState::kWaiting) waits = " waits for " + f.waiting_for;
    s += " thread " + std::to_string(f.t.tid) + waits + ";";
    ++shown;
  }
  return s;
}

void run_block(Launch& L, unsigned n_threads, bool high_first) {
  // Fresh, poisoned shared memory for every block: nothing carries over from the last one.
  std::memset(L.smem, kSmemPoison, L.smem_bytes);
  std::fill(L.shadow.begin(), L.shadow.end(), ShadowByte{});
  if (__start_cuda_emu_shared != nullptr && __stop_cuda_emu_shared > __start_cuda_emu_shared) {
    std::memset(__start_cuda_emu_shared, kSmemPoison,
                __stop_cuda_emu_shared - __start_cuda_emu_shared);
  }
  L.fibers.assign(n_threads, Fiber{});
  L.warps.assign((n_threads + 31) / 32, Warp{});
  for (unsigned w = 0; w < L.warps.size(); ++w) {
    const unsigned lanes = std::min(32u, n_threads - 32 * w);
    L.warps[w].alive = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  }
  L.warpgroups.assign((n_threads + 127) / 128, Warpgroup{});
  for (auto& b : L.barriers) b = Barrier{};
  L.alive = static_cast<int>(n_threads);
  for (const BlockHooks& h : block_hooks()) h.on_block_start(n_threads);
  for (unsigned t = 0; t < n_threads; ++t) {
    Fiber& f = L.fibers[t];
    f.t.tid = t;
    f.t.idx = uint3{t % block_dim.x, (t / block_dim.x) % block_dim.y,
                    t / (block_dim.x * block_dim.y)};
    f.t.lane = t % 32;
    f.t.warp = t / 32;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack_for(t);
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 1, static_cast<int>(t));
  }
  for (;;) {
    Fiber* f = pick(L, high_first);
    if (f == nullptr) break;
    L.running = f;
    swapcontext(&L.scheduler, &f->ctx);
    if (!L.error.empty()) return;
  }
  L.running = nullptr;
  for (const Fiber& f : L.fibers) {
    if (f.state != FiberState::kDone) {
      L.error = deadlock_report(L);
      return;
    }
  }
}

// Launch-configuration errors are reported the way CUDA does: a sticky error for
// cudaGetLastError, and nothing runs.
cudaError_t g_last_error = cudaSuccess;
std::string g_launch_log;  // the kernels launched since the last cuda_emu_take_launch_log()

}  // namespace

// ---- the public side ---------------------------------------------------------------------

void set_schedule(Schedule s) { g_schedule = s; }

void set_block_order_seed(uint64_t seed) {
  g_block_order_seed = seed;
  g_launches = 0;  // the same seed, the same permutations, whatever ran before
}

void set_max_dynamic_smem(const void* kernel, int bytes) { g_smem_optin[kernel] = bytes; }

ThreadCtx& current() { return g_launch->running->t; }

bool in_kernel() { return g_launch != nullptr && g_launch->running != nullptr; }

void fail(const std::string& what) {
  Launch& L = *g_launch;
  if (L.error.empty()) L.error = where() + ": " + what;
  L.running->state = FiberState::kDone;
  setcontext(&L.scheduler);
  std::abort();  // not reached
}

unsigned char* dynamic_smem() { return g_launch->smem; }
size_t dynamic_smem_size() { return g_launch->smem_bytes; }

bool in_dynamic_smem(const void* p, size_t bytes) {
  const auto* b = static_cast<const unsigned char*>(p);
  const unsigned char* base = g_launch->smem;
  return b >= base && b + bytes <= base + g_launch->smem_bytes;
}

ShadowByte* shadow(const void* smem_byte) {
  return &g_launch->shadow[static_cast<const unsigned char*>(smem_byte) - g_launch->smem];
}

void barrier_sync(int id, int count, const char* site) {
  Launch& L = *g_launch;
  if (id < 0 || id >= 16) fail("barrier id " + std::to_string(id) + " outside 0..15");
  if (count < 0 || count % 32 != 0) {
    fail("barrier thread count " + std::to_string(count) + " is not a multiple of 32");
  }
  Barrier& b = L.barriers[id];
  if (b.arrived > 0 && b.count != count) {
    fail("barrier " + std::to_string(id) + " used with thread counts " + std::to_string(b.count) +
         " and " + std::to_string(count) + " at once");
  }
  // bar.sync is .aligned: every thread must reach the same barrier instruction
  if (b.arrived > 0 && site != nullptr && b.site != nullptr && std::strcmp(site, b.site) != 0) {
    fail(std::string("threads wait at different barriers (") + b.site + " and " + site +
         "): divergent __syncthreads");
  }
  Fiber& f = *L.running;
  b.count = count;
  if (b.site == nullptr) b.site = site;
  ++b.arrived;
  f.state = FiberState::kAtBarrier;
  f.barrier_id = id;
  const int expected = count == 0 ? L.alive : count;
  if (b.arrived >= expected) release_barrier(L, id);
  if (f.state == FiberState::kAtBarrier) yield();
}

const WarpSlot& warp_collective(const WarpSlot& mine, WarpCompute compute) {
  Launch& L = *g_launch;
  Fiber& f = *L.running;
  Warp& w = L.warps[f.t.warp];
  WarpSlot& slot = w.slots[f.t.lane];
  slot = mine;
  if (mine.mask != 0xffffffffu || w.alive != 0xffffffffu) {
    fail("warp-collective instruction with member mask " + std::to_string(mine.mask) +
         " on a warp whose live lanes are " + std::to_string(w.alive) +
         " (the emulator supports full warps with mask 0xffffffff)");
  }
  w.arrived |= 1u << f.t.lane;
  if (w.arrived != w.alive) {
    f.state = FiberState::kInWarpOp;
    yield();
  } else {
    for (unsigned l = 0; l < 32; ++l) {
      const WarpSlot& s = w.slots[l];
      if (s.op != mine.op || s.variant != mine.variant) {
        fail("lanes of one warp execute different warp-collective instructions (lane " +
             std::to_string(l) + " op " + std::to_string(int(s.op)) + "/" +
             std::to_string(s.variant) + " vs op " + std::to_string(int(mine.op)) + "/" +
             std::to_string(mine.variant) + "): divergent control flow");
      }
    }
    // the emulator's own arithmetic must not see the kernel's flush-to-zero mode
    const unsigned int mxcsr = _mm_getcsr();
    _mm_setcsr(mxcsr & ~0x8040u);
    compute(w.slots, f.t.epoch);
    _mm_setcsr(mxcsr);
    w.arrived = 0;
    for (unsigned l = 0; l < 32; ++l) {
      Fiber& other = L.fibers[f.t.warp * 32 + l];
      if (other.state == FiberState::kInWarpOp) other.state = FiberState::kRunnable;
    }
  }
  return slot;
}

void warpgroup_collective(uint64_t key, void* operands, WarpgroupCompute compute) {
  Launch& L = *g_launch;
  Fiber& f = *L.running;
  const unsigned group = f.t.warp / 4, rank = f.t.tid % 128;
  if ((group + 1) * 128 > L.fibers.size()) {
    fail("warpgroup instruction in a block of " + std::to_string(L.fibers.size()) +
         " threads: warpgroup " + std::to_string(group) + " is incomplete (128 threads each)");
  }
  for (unsigned w = 4 * group; w < 4 * group + 4; ++w) {
    if (L.warps[w].alive != 0xffffffffu) {
      fail("warpgroup instruction while threads of warp " + std::to_string(w) + " have exited");
    }
  }
  Warpgroup& g = L.warpgroups[group];
  g.operands[rank] = operands;
  g.keys[rank] = key;
  if (++g.arrived < 128) {
    f.state = FiberState::kInWarpgroupOp;
    yield();
    return;
  }
  for (unsigned r = 0; r < 128; ++r) {
    if (g.keys[r] != key) {
      fail("threads of warpgroup " + std::to_string(group) + " execute different warpgroup "
           "instructions (rank " + std::to_string(r) + "): divergent control flow");
    }
  }
  const unsigned int mxcsr = _mm_getcsr();
  _mm_setcsr(mxcsr & ~0x8040u);
  compute(g.operands);
  _mm_setcsr(mxcsr);
  g.arrived = 0;
  for (unsigned r = 0; r < 128; ++r) {
    Fiber& other = L.fibers[group * 128 + r];
    if (other.state == FiberState::kInWarpgroupOp) other.state = FiberState::kRunnable;
  }
}

void wait_until(std::function<bool()> ready, const std::string& what) {
  if (ready()) return;
  Fiber& f = *g_launch->running;
  f.ready = std::move(ready);
  f.waiting_for = what;
  f.state = FiberState::kWaiting;
  yield();
}

void yield_to_others() { yield(); }

void add_block_hooks(void (*on_block_start)(unsigned), void (*on_thread_exit)(unsigned)) {
  block_hooks().push_back({on_block_start, on_thread_exit});
}

void async_copy(void* smem_dst, const void* gmem_src, int cp_size, int src_size) {
  Fiber& f = *g_launch->running;
  auto* dst = static_cast<unsigned char*>(smem_dst);
  PendingCopy c{dst, cp_size, {}};
  std::memcpy(c.data, gmem_src, src_size);  // the rest stays zero: the zero-fill
  for (int i = 0; i < cp_size; ++i) {
    ShadowByte& s = *shadow(dst + i);
    if (s.state == ByteState::kPending) {
      fail("cp.async into shared memory another copy (thread " + std::to_string(s.writer) +
           ") still has in flight");
    }
    if (s.state == ByteState::kBarrier) fail("cp.async over an mbarrier");
    if (s.read_epoch == f.t.epoch && (s.read_warps & ~(1u << f.t.warp)) != 0) {
      fail("cp.async overwrites shared memory that another warp read in the same barrier "
           "interval (a __syncthreads is missing between the read and this copy)");
    }
    s.state = ByteState::kPending;
    s.writer = static_cast<uint16_t>(f.t.tid);
    s.mbarrier = 0;
    dst[i] = kSmemPoison;  // the copy may land at any time until it is waited for
  }
  f.uncommitted.push_back(c);
}

void async_commit() {
  Fiber& f = *g_launch->running;
  f.groups.push_back(std::move(f.uncommitted));
  f.uncommitted.clear();
}

void async_wait(int n_pending_allowed) {
  Fiber& f = *g_launch->running;
  while (static_cast<int>(f.groups.size()) > n_pending_allowed) {
    land(f, f.groups.front());
    f.groups.pop_front();
  }
}

void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
            std::function<void()> body) {
  const DeviceProps& dev = device_props();
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const auto optin = g_smem_optin.find(kernel);
  const size_t smem_limit = optin != g_smem_optin.end() ? optin->second : dev.smem_per_block;
  if (threads == 0 || threads > uint64_t(dev.max_threads_per_block) || block.z > 64 ||
      grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 0x7fffffffu) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (dynamic_smem_bytes > smem_limit) {
    g_last_error = cudaErrorInvalidValue;  // what CUDA reports without the opt-in attribute
    return;
  }
  if (g_launch != nullptr) throw std::logic_error("cuda_emu: a kernel launched from a kernel");
  auto L = std::make_unique<Launch>();
  L->kernel = kernel;
  L->name = kernel_name(kernel);
  if (g_launch_log.size() > (1u << 20)) g_launch_log.clear();  // nobody is asking
  g_launch_log += L->name + "\t" + std::to_string(grid.x) + " " + std::to_string(grid.y) + " " +
                  std::to_string(grid.z) + "\n";
  L->body = std::move(body);
  L->smem_bytes = dynamic_smem_bytes;
  // 1024-byte aligned, as the 128-byte swizzle patterns of TMA and wgmma repeat every 1024 B
  L->smem_storage.assign(dynamic_smem_bytes + 1024, kSmemPoison);
  L->smem = L->smem_storage.data() +
            (1024 - reinterpret_cast<uintptr_t>(L->smem_storage.data()) % 1024);
  L->shadow.assign(dynamic_smem_bytes, ShadowByte{});
  grid_dim = grid;
  block_dim = block;
  // nvcc --use_fast_math flushes fp32 subnormals (-ftz=true): so does SSE with FTZ | DAZ.
  // Set before the fibers' contexts are captured (each context restores its MXCSR).
  struct Active {  // restores the host state however the launch ends
    unsigned int mxcsr = _mm_getcsr();
    explicit Active(Launch* l) { g_launch = l; _mm_setcsr(mxcsr | 0x8040); }
    ~Active() { _mm_setcsr(mxcsr); g_launch = nullptr; }
  } active(L.get());
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order;  // linear block indices, x fastest; empty: in order
  if (g_block_order_seed != 0) {
    order.resize(blocks);
    for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
    std::mt19937_64 rng(g_block_order_seed * 0x9e3779b97f4a7c15ull + g_launches);
    for (uint64_t i = blocks; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  }
  ++g_launches;
  for (uint64_t n = 0; n < blocks && L->error.empty(); ++n) {
    const uint64_t linear = order.empty() ? n : order[n];
    block_idx = uint3{static_cast<unsigned>(linear % grid.x),
                      static_cast<unsigned>(linear / grid.x % grid.y),
                      static_cast<unsigned>(linear / grid.x / grid.y)};
    const bool high_first = g_schedule == Schedule::kHighFirst ||
                            (g_schedule == Schedule::kSkewAlternating && g_blocks_run % 2 == 1);
    ++g_blocks_run;
    run_block(*L, static_cast<unsigned>(threads), high_first);
  }
  if (!L->error.empty()) throw std::runtime_error("cuda_emu: " + L->error);
}

cudaError_t take_last_error() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t peek_last_error() { return g_last_error; }

}  // namespace cuda_emu

// set_block_order_seed for the tests (ctypes): 0 runs blocks in order.
extern "C" void cuda_emu_set_block_order_seed(uint64_t seed) {
  cuda_emu::set_block_order_seed(seed);
}

// The emulated device's SM count (cudaDevAttrMultiProcessorCount) for the tests; returns the
// previous one.
extern "C" int cuda_emu_set_sm_count(int sms) {
  const int previous = cuda_emu::device_props().sm_count;
  cuda_emu::device_props().sm_count = sms;
  return previous;
}

// The emulated device's compute capability (major * 10 + minor, e.g. 90) for the tests;
// returns the previous one.
extern "C" int cuda_emu_set_compute_capability(int cc) {
  cuda_emu::DeviceProps& p = cuda_emu::device_props();
  const int previous = p.cc_major * 10 + p.cc_minor;
  p.cc_major = cc / 10;
  p.cc_minor = cc % 10;
  return previous;
}

// The kernels launched since the last call, one per line, oldest first: the name, a tab and
// the grid's x y z (the tests ask which variant a call ran, and on what grid). The text stays
// valid until the next call.
extern "C" const char* cuda_emu_take_launch_log() {
  static std::string taken;
  taken = std::move(cuda_emu::g_launch_log);
  cuda_emu::g_launch_log.clear();
  return taken.c_str();
}
