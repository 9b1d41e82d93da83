// Runs CUDA kernel source on the CPU for testing without a GPU: every CUDA thread of a block
// is a std::thread, __syncthreads is a std::barrier, warp shuffles go through a slot array
// between two barriers, __shared__ variables are function statics (blocks run one at a time).
// Only what the norm kernels use is provided. Slow, and it checks logic (indexing, reductions,
// synchronisation points, partial sums), not performance or the memory model.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace cuda_emu {

inline thread_local uint3 thread_idx;
inline thread_local uint3 block_idx;
inline thread_local unsigned linear_tid = 0;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<float> shuffle_slots;

// kernel(): the kernel call with its arguments bound, e.g. [&] { my_kernel<T>(params); }.
template <typename Kernel>
void launch(dim3 grid, dim3 block, Kernel&& kernel) {
  grid_dim = grid;
  block_dim = block;
  const unsigned n = block.x * block.y * block.z;
  shuffle_slots.assign(n, 0.0f);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> barrier(n);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        threads.reserve(n);
        for (unsigned t = 0; t < n; ++t) {
          threads.emplace_back([&, t] {
            thread_idx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            block_idx = uint3{bx, by, bz};
            linear_tid = t;
            kernel();
            barrier.arrive_and_drop();  // a finished thread no longer holds others back
          });
        }
        for (auto& th : threads) th.join();
      }
    }
  }
}

}  // namespace cuda_emu

#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define threadIdx cuda_emu::thread_idx
#define blockIdx cuda_emu::block_idx
#define blockDim cuda_emu::block_dim
#define gridDim cuda_emu::grid_dim

inline void __syncthreads() { cuda_emu::block_barrier->arrive_and_wait(); }

// All threads of the block must call it together (true for block-uniform reductions).
inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
  cuda_emu::shuffle_slots[cuda_emu::linear_tid] = v;
  cuda_emu::block_barrier->arrive_and_wait();
  const float other = cuda_emu::shuffle_slots[cuda_emu::linear_tid ^ static_cast<unsigned>(lane_mask)];
  cuda_emu::block_barrier->arrive_and_wait();
  return other;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
