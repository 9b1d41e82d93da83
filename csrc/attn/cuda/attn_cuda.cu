// CUDA attention entry points: validate what the kernels assume, pick the head-dim bucket
// and element type, and call the instantiated launcher. The backward workspace is sized here
// from the launcher's own layout (attn_bwd_workspace.h), which the launcher checks again
// against the one it runs. Only the launchers' declarations are
// included (instantiations.h): the kernels compile in instantiations/, once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "../attn.h"
#include "../../common/cuda_host.h"
#include "../../common/device_input_errors.h"
#include "attn_bwd_workspace.h"
#include "attn_varlen_tail.h"
#include "fwd_kernel_choice.h"
#include "hdims.cuh"
#include "instantiations.h"
#include "paged_tile.cuh"
#include "sm90/fwd_sm90_fit.h"

namespace mpt_ext {
namespace {

using attn::cuda::FwdKernel;

// Smallest compiled bucket holding head_dim (smaller head dims run zero-padded).
int head_dim_bucket(int64_t d) {
  if (d < 1 || d > 256) {
    throw std::invalid_argument("mpt_ext attention (CUDA): head_dim must be in [1, 256], got " +
                                std::to_string(d));
  }
  if (MPT_ATTN_HDIM_64 && d <= 64) return 64;
  if (MPT_ATTN_HDIM_128 && d <= 128) return 128;
  if (MPT_ATTN_HDIM_256) return 256;
  throw std::invalid_argument("mpt_ext attention (CUDA): head_dim " + std::to_string(d) +
                              " needs a head-dim bucket this build left out (MPT_EXT_HEAD_DIMS)");
}

void check_dtype(DType t) {
  if (t != DType::kFloat16 && t != DType::kBFloat16) {
    throw std::invalid_argument(std::string("mpt_ext attention: q dtype ") + dtype_name(t) +
                                " is not supported on CUDA, use bf16/fp16");
  }
}

void check_heads(const AttnShape& s) {
  if (s.num_heads_k <= 0 || s.num_heads % s.num_heads_k != 0) {
    throw std::invalid_argument("mpt_ext attention (CUDA): num_heads must be a multiple of "
                                "num_heads_k");
  }
  if (s.seqlen_q > INT32_MAX / 2 || s.seqlen_k > INT32_MAX / 2) {
    throw std::invalid_argument("mpt_ext attention (CUDA): sequence lengths must be < 2^30");
  }
}

// Calls f(T{}, std::integral_constant<int, kD>{}) for p's element type T and the compiled
// head-dim bucket kD: the one switch every attention entry point goes through.
template <typename F>
void dispatch(DType dtype, int bucket, F&& f) {
  const auto with_type = [&](auto t) {
    switch (bucket) {
#if MPT_ATTN_HDIM_64
      case 64: return f(t, std::integral_constant<int, 64>{});
#endif
#if MPT_ATTN_HDIM_128
      case 128: return f(t, std::integral_constant<int, 128>{});
#endif
#if MPT_ATTN_HDIM_256
      case 256: return f(t, std::integral_constant<int, 256>{});
#endif
      default: break;
    }
    throw std::logic_error("mpt_ext attention (CUDA): no kernel for head-dim bucket " +
                           std::to_string(bucket));
  };
  if (dtype == DType::kBFloat16) return with_type(__nv_bfloat16{});
  return with_type(__half{});
}

// Varlen: the host never reads cu_seqlens. A bad sequence an earlier call's kernels noted is
// raised here; this call's kernels note theirs in the words the params now point at. The
// words are made on every call (a lookup after the first), so that any attention call as a
// warm-up makes them before a CUDA graph capture.
AttnShape checked_on_device(const AttnShape& s) {
  int32_t* words = checked_input_error_words();
  AttnShape c = s;
  if (s.cu_seqlens_q != nullptr) c.input_errors = words;
  return c;
}

cudaStream_t stream_of(const AttnFwdParams& p) { return static_cast<cudaStream_t>(p.stream); }

// Whether the forward runs the sm_90a kernel (fwd_kernel_choice.h): asked for, and this call
// is one it covers; asked for alone (sm90) where it is not, an error that says why.
bool fwd_runs_sm90(FwdKernel kernel, const AttnFwdParams& p, int bucket) {
  // no keys: nothing to attend to, and a tensor map needs a nonzero extent; the portable
  // kernel writes the empty rows
  if (kernel == FwdKernel::kPortable || p.shape.seqlen_k == 0) return false;
  const std::string unfit = bucket == 64 || bucket == 128
                                ? attn::cuda::sm90::fwd_sm90_unfit(p)
                                : "head-dim bucket " + std::to_string(bucket) +
                                      " has no sm90 kernel";
  if (unfit.empty()) return true;
  if (kernel == FwdKernel::kSm90) {
    throw std::invalid_argument(std::string(attn::cuda::kFwdKernelVariable) + "=sm90: " + unfit);
  }
  return false;
}

}  // namespace

void attn_fwd_cuda(const AttnFwdParams& params) {
  check_dtype(params.dtype);
  check_heads(params.shape);
  const int64_t page_size = params.kv_pages.page_size;
  if (params.kv_pages.block_table != nullptr &&
      page_size % attn::cuda::kPagedPageMultiple != 0) {
    throw std::invalid_argument(
        "flash_attn_varlen_func with block_table on CUDA: page_block_size must be a multiple "
        "of " + std::to_string(attn::cuda::kPagedPageMultiple) + " (so that no key tile "
        "straddles two pages; flash-attn needs 256, the CPU takes any), got " +
        std::to_string(page_size));
  }
  AttnFwdParams p = params;
  p.shape = checked_on_device(params.shape);
  const AttnShape& s = p.shape;
  if (s.cu_seqlens_q != nullptr) {
    const attn::cuda::VarlenTail tails[] = {
        attn::cuda::varlen_tail_rows(p.out, p.out_strides, s.cu_seqlens_q, s.batch, s.total_q,
                                     s.num_heads, s.head_dim),
        attn::cuda::varlen_tail_lse(p.lse, s.cu_seqlens_q, s.batch, s.total_q, s.num_heads,
                                    p.lse_head_stride)};
    attn::cuda::launch_varlen_tails(tails, 2, stream_of(p));
  }
  const int bucket = head_dim_bucket(s.head_dim);
  const FwdKernel kernel = attn::cuda::requested_fwd_kernel();  // checked on every call
  if (s.batch == 0 || s.num_heads == 0 || attn::cuda::grid_seqlen(s, s.seqlen_q) == 0) return;
  const bool sm90 = fwd_runs_sm90(kernel, p, bucket);
  dispatch(p.dtype, bucket, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int kD = decltype(d)::value;
    if constexpr (kD == 64 || kD == 128) {
      if (sm90) return attn::cuda::sm90::run_attn_fwd_sm90<T, kD>(p);
    }
    attn::cuda::run_attn_fwd<T, kD>(p);
  });
}

int64_t attn_bwd_workspace_bytes_cuda(const AttnBwdParams& p) {
  // Asked before the binding returns early for empty inputs: those need no bucket.
  const AttnShape& s = p.fwd.shape;
  const bool empty = attn::cuda::bwd_workspace_rows(s) == 0 || s.num_heads == 0 || s.head_dim == 0;
  return attn::cuda::bwd_workspace_layout(p, empty ? 0 : head_dim_bucket(s.head_dim)).total_bytes;
}

// The launcher checks p.workspace_bytes against the layout it runs (run_attn_bwd).
void attn_bwd_cuda(const AttnBwdParams& params) {
  check_dtype(params.fwd.dtype);
  check_heads(params.fwd.shape);
  const int bucket = head_dim_bucket(params.fwd.shape.head_dim);
  AttnBwdParams p = params;
  p.fwd.shape = checked_on_device(params.fwd.shape);
  const AttnShape& s = p.fwd.shape;
  if (s.cu_seqlens_q != nullptr) {
    const attn::cuda::VarlenTail tails[] = {
        attn::cuda::varlen_tail_rows(p.dq, p.dq_strides, s.cu_seqlens_q, s.batch, s.total_q,
                                     s.num_heads, s.head_dim),
        attn::cuda::varlen_tail_rows(p.dk, p.dk_strides, s.cu_seqlens_k, s.batch, s.total_k,
                                     s.num_heads_k, s.head_dim),
        attn::cuda::varlen_tail_rows(p.dv, p.dv_strides, s.cu_seqlens_k, s.batch, s.total_k,
                                     s.num_heads_k, s.head_dim)};
    attn::cuda::launch_varlen_tails(tails, 3, stream_of(p.fwd));
  }
  dispatch(p.fwd.dtype, bucket, [&](auto t, auto d) {
    attn::cuda::run_attn_bwd<decltype(t), decltype(d)::value>(p);
  });
}

}  // namespace mpt_ext
