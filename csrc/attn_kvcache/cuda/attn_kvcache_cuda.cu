// CUDA flash_attn_with_kvcache: checks, the launch plan (head-dim bucket, rows per block,
// split count), then append -> split-KV attention -> combine on the caller's stream.
#include <cuda_runtime.h>

#include <climits>
#include <stdexcept>
#include <string>

#include "../../common/cuda_host.h"
#include "../../common/device_input_errors.h"
#include "../attn_kvcache.h"
#include "attn_kvcache_common.cuh"
#include "attn_kvcache_heuristic.h"
#include "attn_kvcache_kernels.h"

namespace mpt_ext {
namespace {

[[noreturn]] void bad(const std::string& what) {
  throw std::invalid_argument("mpt_ext.flash_attn_with_kvcache (CUDA): " + what);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Strides that a size-1 dimension never uses are not held against the caller.
bool rows_aligned(const void* base, const TensorStrides& st, int64_t batch, int64_t rows,
                  int64_t heads) {
  return aligned16(base) && (batch <= 1 || st.batch % attn_kvcache::cuda::kVec == 0) &&
         (rows <= 1 || st.row % attn_kvcache::cuda::kVec == 0) && (heads <= 1 || st.head % attn_kvcache::cuda::kVec == 0);
}

void validate(const AttnKVCacheParams& p) {
  const AttnFwdParams& f = p.fwd;
  const AttnShape& s = f.shape;
  if (f.dtype != DType::kBFloat16 && f.dtype != DType::kFloat16) {
    bad(std::string("q, k_cache and v_cache must be bfloat16 or float16 on CUDA, got ") +
        dtype_name(f.dtype) + " (use bf16/fp16: the decode kernel streams 16-bit K/V)");
  }
  if (s.head_dim < 8 || s.head_dim > 256 || s.head_dim % attn_kvcache::cuda::kVec != 0) {
    bad("head dim must be a multiple of 8 in [8, 256] on CUDA, got " + std::to_string(s.head_dim));
  }
  if (s.num_heads_k < 1 || s.num_heads % s.num_heads_k != 0) {
    bad("nheads (" + std::to_string(s.num_heads) + ") must be a multiple of nheads_k (" +
        std::to_string(s.num_heads_k) + ")");
  }
  // Key positions, row counts and head indices are 32-bit inside the kernels.
  const int64_t limit = INT_MAX / 2;
  if (s.seqlen_k > limit || s.seqlen_q > limit || p.seqlen_new > limit || s.num_heads > limit ||
      s.batch > limit || s.num_heads * s.seqlen_q > limit) {
    bad("sizes too large: seqlen_cache " + std::to_string(s.seqlen_k) + ", seqlen_q " +
        std::to_string(s.seqlen_q) + ", nheads " + std::to_string(s.num_heads) +
        " must each stay below 2^30");
  }
  const KVCacheLayout& l = p.layout;
  const int64_t cache_positions =
      l.pages.block_table != nullptr ? l.pages.page_size : l.seqlen_cache;
  if (!rows_aligned(f.k, f.k_strides, l.cache_rows, cache_positions, s.num_heads_k) ||
      !rows_aligned(f.v, f.v_strides, l.cache_rows, cache_positions, s.num_heads_k)) {
    bad("k_cache and v_cache must start at 16-byte aligned addresses and have strides that are "
        "multiples of 8 elements (the kernel reads 16-byte vectors)");
  }
  if (p.seqlen_new < 0) bad("seqlen_new must be >= 0");
  if (p.seqlen_new > 0 && (p.layout.cache_seqlens == nullptr || p.k_new == nullptr || p.v_new == nullptr)) {
    bad("appending k and v needs k, v and cache_seqlens");
  }
  if (p.rotary.cos != nullptr && (p.k_new == nullptr || p.rotary.q_rotated == nullptr)) {
    bad("rotary needs the new keys and a buffer for the rotated q");
  }
  if (p.num_splits < 0) bad("num_splits must be >= 0 (0: automatic), got " + std::to_string(p.num_splits));
}

template <typename T>
attn_kvcache::cuda::SplitKvKernel split_kv_kernel_for(int dpad, int rows_per_block) {
  switch (dpad) {
    case 64: return attn_kvcache::cuda::split_kv_kernel_ptr<T, 64>(rows_per_block);
    case 128: return attn_kvcache::cuda::split_kv_kernel_ptr<T, 128>(rows_per_block);
    case 256: return attn_kvcache::cuda::split_kv_kernel_ptr<T, 256>(rows_per_block);
    default: return nullptr;
  }
}

struct Plan {
  attn_kvcache::cuda::SplitKvKernel kernel = nullptr;
  int rows_per_block = 1;
  int row_tiles = 0;
  int64_t blocks_per_split = 0;
  int num_splits = 1;
  int64_t rows = 0;  // batch * heads * seqlen_q
  int64_t partial_out_bytes = 0;
  int64_t workspace_bytes = 0;
};

Plan make_plan(const AttnKVCacheParams& p) {
  const AttnShape& s = p.fwd.shape;
  Plan plan;
  const int dpad = s.head_dim <= 64 ? 64 : (s.head_dim <= 128 ? 128 : 256);
  const int64_t group = s.num_heads / s.num_heads_k;
  const int64_t rows_per_seq = group * s.seqlen_q;
  plan.rows_per_block = rows_per_seq == 1 ? 1 : 4;
  plan.row_tiles = static_cast<int>(ceil_div(rows_per_seq, plan.rows_per_block));
  plan.kernel = p.fwd.dtype == DType::kBFloat16
                    ? split_kv_kernel_for<__nv_bfloat16>(dpad, plan.rows_per_block)
                    : split_kv_kernel_for<__half>(dpad, plan.rows_per_block);
  if (plan.kernel == nullptr) bad("no kernel instance for this head dim");
  plan.blocks_per_split = s.batch * s.num_heads_k * plan.row_tiles;
  if (plan.blocks_per_split > INT_MAX) bad("batch * nheads_k * row tiles exceeds the grid limit");
  plan.rows = s.batch * s.num_heads * s.seqlen_q;
  if (plan.rows == 0) return plan;

  if (p.num_splits > 0) {
    plan.num_splits = std::min(p.num_splits, attn_kvcache::cuda::kMaxSplits);  // same result, capped
  } else {
    attn_kvcache::cuda::SplitHeuristicInput in;
    in.blocks_per_split = plan.blocks_per_split;
    in.max_keys = s.seqlen_k;
    in.num_sms = sm_count();
    in.blocks_per_sm = max_active_blocks_per_sm(reinterpret_cast<const void*>(plan.kernel),
                                                attn_kvcache::cuda::kThreads, 0);
    plan.num_splits = attn_kvcache::cuda::choose_num_splits(in, attn_kvcache::cuda::kMaxSplits);
  }
  if (plan.num_splits > 1) {
    plan.partial_out_bytes = ceil_div(plan.num_splits * plan.rows * s.head_dim * 4, 256) * 256;
    plan.workspace_bytes = plan.partial_out_bytes + plan.num_splits * plan.rows * 4;
    if (ceil_div(plan.rows, 4) > INT_MAX) bad("batch * nheads * seqlen_q exceeds the grid limit");
  }
  return plan;
}

void run_append(const AttnKVCacheParams& p, int32_t* input_errors, cudaStream_t stream) {
  const AttnFwdParams& f = p.fwd;
  const AttnShape& s = f.shape;
  attn_kvcache::cuda::AppendArgs a{};
  a.k = {p.k_new, const_cast<void*>(f.k), p.k_new_strides, f.k_strides};
  a.v = {p.v_new, const_cast<void*>(f.v), p.v_new_strides, f.v_strides};
  a.layout = p.layout;
  a.rotary = p.rotary;
  a.q = f.q;
  a.q_strides = f.q_strides;
  a.input_errors = input_errors;
  a.batch = static_cast<int>(s.batch);
  a.seqlen_new = static_cast<int>(p.seqlen_new);
  a.seqlen_q = static_cast<int>(s.seqlen_q);
  a.heads = static_cast<int>(s.num_heads);
  a.heads_k = static_cast<int>(s.num_heads_k);
  a.head_dim = static_cast<int>(s.head_dim);
  a.elem_bytes = 2;
  a.row_bytes = s.head_dim * a.elem_bytes;
  const bool vectorised =
      rows_aligned(p.k_new, p.k_new_strides, s.batch, p.seqlen_new, s.num_heads_k) &&
      rows_aligned(p.v_new, p.v_new_strides, s.batch, p.seqlen_new, s.num_heads_k);
  attn_kvcache::cuda::launch_append(a, f.dtype == DType::kBFloat16, vectorised, stream);
}

attn_kvcache::cuda::SplitKvArgs split_kv_args(const AttnKVCacheParams& p, const Plan& plan,
                                              int32_t* input_errors) {
  const AttnFwdParams& f = p.fwd;
  const AttnShape& s = f.shape;
  attn_kvcache::cuda::SplitKvArgs a{};
  const bool rotary = p.rotary.cos != nullptr;  // then q is the append kernel's rotated copy
  a.q = rotary ? p.rotary.q_rotated : f.q;
  a.q_strides = rotary ? TensorStrides{s.seqlen_q * s.num_heads * s.head_dim,
                                       s.num_heads * s.head_dim, s.head_dim}
                       : f.q_strides;
  a.k = f.k;
  a.v = f.v;
  a.out = f.out;
  a.lse = f.lse;
  a.k_strides = f.k_strides;
  a.v_strides = f.v_strides;
  a.out_strides = f.out_strides;
  a.lse_batch = f.lse_batch_stride;
  a.lse_head = f.lse_head_stride;
  a.layout = p.layout;
  a.input_errors = input_errors;
  a.seqlen_new = static_cast<int>(p.seqlen_new);
  a.seqlen_q = static_cast<int>(s.seqlen_q);
  a.heads = static_cast<int>(s.num_heads);
  a.heads_k = static_cast<int>(s.num_heads_k);
  a.group = static_cast<int>(s.num_heads / s.num_heads_k);
  a.head_dim = static_cast<int>(s.head_dim);
  a.row_tiles = plan.row_tiles;
  a.num_splits = plan.num_splits;
  a.scale = static_cast<float>(f.mask.softmax_scale);
  a.softcap = static_cast<float>(f.mask.softcap);
  a.causal = f.mask.causal;
  a.window_left = f.mask.window_left;
  a.window_right = f.mask.window_right;
  a.slopes = f.mask.alibi_slopes;
  a.slopes_batch_stride = f.mask.alibi_batch_stride;
  a.rows = plan.rows;
  if (plan.num_splits > 1) {
    if (p.workspace == nullptr || p.workspace_bytes < plan.workspace_bytes) {
      bad("needs a workspace of " + std::to_string(plan.workspace_bytes) + " bytes for " +
          std::to_string(plan.num_splits) + " splits (attn_kvcache_workspace_bytes_cuda), got " +
          std::to_string(p.workspace_bytes));
    }
    a.partial_out = static_cast<float*>(p.workspace);
    a.partial_lse = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + plan.partial_out_bytes);
  }
  return a;
}

}  // namespace

int64_t attn_kvcache_workspace_bytes_cuda(const AttnKVCacheParams& p) {
  validate(p);
  return make_plan(p).workspace_bytes;
}

void attn_kvcache_cuda(const AttnKVCacheParams& p) {
  // Raises a bad cache_seqlens an earlier call's kernels noted. The words are made (or looked
  // up) on every call, so that any warm-up makes them before a capture.
  int32_t* input_errors = checked_input_error_words();
  validate(p);
  const AttnShape& s = p.fwd.shape;
  cudaStream_t stream = static_cast<cudaStream_t>(p.fwd.stream);
  if (s.batch == 0) return;
  // Plan (which can throw) before the append, so a failing call leaves the cache untouched.
  const Plan plan = make_plan(p);
  attn_kvcache::cuda::SplitKvArgs args;
  if (plan.rows > 0) args = split_kv_args(p, plan, input_errors);
  if (p.seqlen_new > 0 || p.rotary.cos != nullptr) run_append(p, input_errors, stream);
  if (plan.rows == 0) return;
  const dim3 grid(static_cast<unsigned>(plan.blocks_per_split), static_cast<unsigned>(plan.num_splits));
  launch_kernel(plan.kernel, grid, attn_kvcache::cuda::kThreads, 0, stream, args);
  check_launch("attn_kvcache split_kv_kernel", stream);
  if (plan.num_splits > 1) {
    attn_kvcache::cuda::launch_combine(args, p.fwd.dtype == DType::kBFloat16, stream);
  }
}

}  // namespace mpt_ext
