// The emulated GPU: how a kernel launch runs on the CPU. Every CUDA thread of a block is a
// fiber (ucontext) on the launching OS thread; blocks run one after another. A fiber runs
// until it reaches a barrier (__syncthreads, bar.sync) or a warp-collective instruction
// (shfl, ldmatrix, mma, __syncwarp), then the scheduler picks the next one. The pick is
// deliberately skewed (lowest thread first, or highest first on alternate blocks) so that
// one warp runs as far ahead of the others as the synchronisation allows: a missing barrier
// then shows up as a read of poisoned or still-in-flight shared memory.
//
// Dynamic shared memory is poisoned (0xff bytes: NaN in fp16, bf16 and fp32) at every block
// start and carries a shadow state per byte, so that the cp.async / ldmatrix emulation
// (emu_ptx.h) can report reads of copies that have not landed, reads of another warp's copy
// without a barrier in between, and copies into memory another warp read in the same barrier
// interval. Static __shared__ variables live in one linker section, poisoned per block too.
//
// Errors found while a kernel runs (a race, a bad address, a deadlock, a divergent warp
// collective) stop the launch and surface as std::runtime_error from the launch call,
// naming the kernel, the block and the thread.
#pragma once

#include <driver_types.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace cuda_emu {

// What cudaDeviceGetAttribute and the occupancy query report (an H100 / H200 SXM; a test may
// change sm_count, emulation.sm_count).
struct DeviceProps {
  int sm_count = 132;
  int cc_major = 9;  // an H100 / H200: sm_90
  int cc_minor = 0;
  int max_threads_per_block = 1024;
  int smem_per_block = 48 * 1024;          // without the opt-in attribute
  int smem_per_block_optin = 227 * 1024;   // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int blocks_per_sm = 2;                   // cudaOccupancyMaxActiveBlocksPerMultiprocessor
};
DeviceProps& device_props();

// Which runnable thread the scheduler resumes first (see the file comment).
enum class Schedule { kSkewAlternating, kLowFirst, kHighFirst };
void set_schedule(Schedule s);

// The order blocks of a launch run in. 0 (the default): x fastest, then y, then z, as CUDA
// numbers them. Any other seed: a permutation of the grid drawn from the seed and the launch's
// number, so that a result which depends on the order blocks finish in (float atomics from
// several blocks into one address) changes with the seed, as it would on a GPU.
void set_block_order_seed(uint64_t seed);

// Runs body() once per thread of every block of the grid. kernel identifies the __global__
// function (its address): its name for messages and its dynamic shared memory opt-in.
// Launch-configuration errors set the sticky error cudaGetLastError reports (as CUDA does);
// errors inside the kernel throw std::runtime_error.
void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
            std::function<void()> body);

// Per-kernel dynamic shared memory limit (cudaFuncSetAttribute).
void set_max_dynamic_smem(const void* kernel, int bytes);

// The sticky launch error (cudaGetLastError clears it, cudaPeekAtLastError does not).
cudaError_t take_last_error();
cudaError_t peek_last_error();

// Reports an error in the running kernel: stops the launch (never returns to the caller).
[[noreturn]] void fail(const std::string& what);
bool in_kernel();  // a kernel thread is running (fail() may be called)

// ---- the running thread ------------------------------------------------------------------
struct ThreadCtx {
  uint3 idx;              // threadIdx
  unsigned tid = 0;       // linear index in the block
  unsigned lane = 0;
  unsigned warp = 0;
  uint32_t epoch = 0;     // __syncthreads (bar 0, whole block) completed by this thread
};
ThreadCtx& current();
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;

// Block-wide barrier id (0..15) over `count` threads (0: every thread of the block). site
// ("file:line", optional) names the barrier instruction: threads meeting at one id must have
// reached the same one (bar.sync is .aligned). Only whole-block barrier 0 advances the epochs
// the shared-memory race checks use.
void barrier_sync(int id, int count, const char* site = nullptr);

// ---- warp collectives --------------------------------------------------------------------
// Every lane of the warp deposits its operands in its slot; the last lane to arrive checks that
// all lanes execute the same operation, runs `compute` for the whole warp (it fills the
// out fields of every slot) and releases the others.
enum class WarpOp : int { kShflBfly = 1, kShflIdx, kShflUp, kShflDown, kSyncwarp, kLdmatrix,
                          kMma };
struct WarpSlot {
  WarpOp op{};
  unsigned mask = 0;
  uint32_t variant = 0;      // op-specific: ldmatrix count/trans, mma type
  uint32_t in[8] = {};       // shfl: value, b, c; mma: a0..a3, b0, b1
  float fin[4] = {};         // mma: c0..c3
  const void* addr = nullptr;  // ldmatrix row address
  uint32_t out[4] = {};
  float fout[4] = {};
};
using WarpCompute = void (*)(WarpSlot (&slots)[32], uint32_t epoch);
// Returns this lane's slot after the collective completed (outputs filled in).
const WarpSlot& warp_collective(const WarpSlot& mine, WarpCompute compute);

// ---- warpgroup collectives (sm_90: wgmma) ----------------------------------------------------
// The 128 threads of warps 4g .. 4g+3 each deposit `operands` (a pointer into the thread's own
// frame, valid while it waits) under `key`; the last to arrive checks that all 128 keys agree
// (the same instruction, .sync.aligned) and runs `compute` once over the 128 operand pointers,
// indexed by the thread's rank in the warpgroup.
using WarpgroupCompute = void (*)(void* const (&operands)[128]);
void warpgroup_collective(uint64_t key, void* operands, WarpgroupCompute compute);

// ---- waiting on a condition (mbarrier.try_wait) ---------------------------------------------
// Suspends the running thread until ready() holds (checked whenever the scheduler picks the
// next thread). `what` names the wait in a deadlock report.
void wait_until(std::function<bool()> ready, const std::string& what);

// Lets the scheduler run another thread now (the running one stays runnable): a release
// (mbarrier.arrive) is where a waiting thread may act before the releasing one goes on.
void yield_to_others();

// ---- per-block state of other units (emu_sm90.cpp) ------------------------------------------
// Called at every block start with the block's thread count, and when a thread exits (a
// handler may fail(): e.g. an exit with asynchronous work still in flight).
void add_block_hooks(void (*on_block_start)(unsigned threads), void (*on_thread_exit)(unsigned tid));

// ---- shared memory -----------------------------------------------------------------------
// What shared memory holds before anything writes it, in every block: 0xff bytes, a NaN in
// fp16, bf16 and fp32.
constexpr unsigned char kSmemPoison = 0xff;
unsigned char* dynamic_smem();       // base of this block's dynamic shared memory
size_t dynamic_smem_size();
bool in_dynamic_smem(const void* p, size_t bytes);

// Shadow state of a dynamic shared memory byte (what the async copy checks read and write).
// kPending / kLanded: a cp.async or a TMA copy (then `mbarrier` names the barrier + 1 whose
// phase `mbar_phase` the copy completes, and a reader must have waited for that phase);
// kBarrier: an mbarrier object, touched only by mbarrier instructions.
enum class ByteState : uint8_t { kPlain = 0, kPending, kLanded, kBarrier };
struct ShadowByte {
  ByteState state = ByteState::kPlain;
  uint16_t writer = 0;       // thread that issued (pending) or landed (landed) the copy
  uint32_t landed_epoch = 0;
  uint32_t read_epoch = 0;   // the barrier interval of the last ldmatrix read ...
  uint32_t read_warps = 0;   // ... and the warps that read it in that interval
  uint32_t mbarrier = 0;     // TMA copies: 1 + the mbarrier's offset in shared memory
  uint32_t mbar_phase = 0;
};
ShadowByte* shadow(const void* smem_byte);

// ---- cp.async groups (per thread) --------------------------------------------------------
void async_copy(void* smem_dst, const void* gmem_src, int cp_size, int src_size);
void async_commit();
void async_wait(int n_pending_allowed);

}  // namespace cuda_emu
