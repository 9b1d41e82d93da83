// attn_fwd and attn_bwd (flash_attn_func, flash_attn_varlen_func and their backward): every
// input check, Tensor -> params, and the per-device registration. One body per op serves every
// device; the registration at the bottom picks the kernels (csrc/attn/attn.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../csrc/attn/attn.h"
#include "attn_args.h"
#include "page_table_args.h"

namespace mpt_ext {
namespace {

// cu_seqlens: int32 (batch + 1) on q's device, starting at 0, non-decreasing, each length
// <= max_seqlen, last <= total. Its type, device and shape are checked here; its values on the
// host by the CPU kernels' path (check_cu_seqlens_values) and on the device by the CUDA
// kernels (csrc/common/device_input_errors.h), so that a CUDA call never syncs.
void check_cu_seqlens_tensor(const at::Tensor& cu, const char* name, const at::Tensor& q) {
  TORCH_CHECK_TYPE(cu.scalar_type() == at::kInt, name, " must be int32, got ", cu.scalar_type());
  check_same_device(cu, name, q, "q");
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 1, name,
                    " must be 1-D of size batch + 1, got shape ", cu.sizes());
}

struct CuSeqlensInfo {
  int64_t last = 0;     // cu[-1]: the number of rows the sequences cover
  int64_t max_len = 0;  // the longest sequence: the kernels' real max_seqlen
};

// A bad value would index out of bounds: every one is checked (cu contiguous on the CPU, no
// sync).
CuSeqlensInfo check_cu_seqlens_values(const at::Tensor& host, const char* name, int64_t total,
                                      int64_t max_seqlen, const char* max_name) {
  const int32_t* c = host.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(c[0] == 0, name, "[0] must be 0, got ", c[0]);
  CuSeqlensInfo info;
  for (int64_t b = 0; b + 1 < host.size(0); ++b) {
    const int64_t len = int64_t(c[b + 1]) - c[b];
    TORCH_CHECK_VALUE(len >= 0, name, " must be non-decreasing, but ", name, "[", b + 1, "] = ",
                      c[b + 1], " < ", name, "[", b, "] = ", c[b]);
    // flash-attn sizes its grid by max_seqlen and silently skips rows past it; refuse instead
    TORCH_CHECK_VALUE(len <= max_seqlen, max_name, " = ", max_seqlen,
                      " is smaller than the longest sequence: sequence ", b, " has length ", len,
                      " in ", name, " (", max_name, " must be >= every sequence length)");
    info.max_len = std::max(info.max_len, len);
  }
  info.last = c[host.size(0) - 1];
  TORCH_CHECK_VALUE(info.last <= total, name, "[-1] = ", info.last,
                    " exceeds the number of tokens (", total, ")");
  return info;
}

// Paged keys on the CPU: every sequence fits its row of the block table, and the pages it
// uses exist.
void check_paged_sequences(const at::Tensor& cu_k, const PageTable& pages, int64_t table_width) {
  const int32_t* c = cu_k.data_ptr<int32_t>();
  for (int64_t b = 0; b + 1 < cu_k.size(0); ++b) {
    const int64_t len = int64_t(c[b + 1]) - c[b];
    TORCH_CHECK_VALUE(len <= table_width * pages.page_size, "sequence ", b, " has ", len,
                      " keys (cu_seqlens_k) but its row of block_table holds ", table_width,
                      " blocks of ", pages.page_size, " positions");
    check_pages_on_host(pages, b, 0, len, "k");
  }
}

struct Prepared {
  AttnFwdParams p;
  bool varlen = false;
  // Contiguous copies (no-ops when already contiguous) that p points into: the kernels index
  // cu_seqlens densely, and the backward writes d(slopes) with the slopes' own layout into a
  // dense buffer, so a strided input would be misread or written out of bounds.
  at::Tensor cu_q, cu_k;
  // Varlen rows past cu_seqlens[-1] belong to no sequence: the kernels never touch them, so
  // their outputs and gradients are filled here (out 0, lse -inf, grads 0), not left as garbage.
  // (The CUDA kernels find and fill them on the device: these stay false there.)
  bool uncovered_q = false, uncovered_k = false;
  std::optional<at::Tensor> slopes;
};

// With block_table (varlen only), cu_seqlens_k's values are not rows of k: any int32 prefix
// sum is in bounds, and each sequence's length is bounded by its row of the block table.
constexpr int64_t kPagedTotalK = std::numeric_limits<int32_t>::max();

// seqlens_on_device: the kernels check cu_seqlens' values themselves (CUDA), so nothing here
// reads them.
Prepared prepare_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& cu_seqlens_q,
                     const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                     int64_t max_seqlen_k, const std::optional<at::Tensor>& alibi_slopes,
                     double softmax_scale, bool causal, int64_t window_left,
                     int64_t window_right, double softcap, bool seqlens_on_device,
                     const std::optional<at::Tensor>& block_table = std::nullopt) {
  TORCH_CHECK_VALUE(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(),
                    "cu_seqlens_q and cu_seqlens_k must be given together");
  Prepared r;
  r.varlen = cu_seqlens_q.has_value();
  const bool paged = block_table.has_value();
  TORCH_CHECK_VALUE(!paged || r.varlen,
                    "block_table needs cu_seqlens_q and cu_seqlens_k (flash_attn_varlen_func)");
  check_qkv(q, k, v, r.varlen, paged ? KVForm::kPages : KVForm::kLikeQ);
  check_mask_args(softmax_scale, window_left, window_right, softcap);
  AttnFwdParams& p = r.p;
  AttnShape& s = p.shape;
  s.num_heads = q.size(-2);
  s.num_heads_k = k.size(-2);
  s.head_dim = q.size(-1);
  if (r.varlen) {
    TORCH_CHECK_VALUE(max_seqlen_q >= 0 && max_seqlen_k >= 0,
                      "max_seqlen_q and max_seqlen_k must be >= 0, got ", max_seqlen_q, " and ",
                      max_seqlen_k);
    check_cu_seqlens_tensor(*cu_seqlens_q, "cu_seqlens_q", q);
    check_cu_seqlens_tensor(*cu_seqlens_k, "cu_seqlens_k", q);
    TORCH_CHECK_VALUE(cu_seqlens_q->size(0) == cu_seqlens_k->size(0),
                      "cu_seqlens_q and cu_seqlens_k must have the same size (batch + 1), got ",
                      cu_seqlens_q->size(0), " and ", cu_seqlens_k->size(0));
    s.batch = cu_seqlens_q->size(0) - 1;
    s.total_q = q.size(0);
    s.total_k = paged ? kPagedTotalK : k.size(0);
    if (paged) {
      p.kv_pages = page_table_of(*block_table, q, s.batch, k, "k");
      // CUDA: no sequence is longer than its row of the block table (the CPU says which is)
      if (seqlens_on_device) {
        max_seqlen_k = std::min(max_seqlen_k, block_table->size(1) * p.kv_pages.page_size);
      }
    }
    r.cu_q = cu_seqlens_q->contiguous();
    r.cu_k = cu_seqlens_k->contiguous();
    if (seqlens_on_device) {
      // max_seqlen is an upper bound; no sequence is longer than the tensor. The grid has a
      // block row per max_seqlen_q rows: blocks past a sequence's end return at once.
      s.seqlen_q = std::min(max_seqlen_q, s.total_q);
      s.seqlen_k = std::min(max_seqlen_k, s.total_k);
    } else {
      const CuSeqlensInfo info_q = check_cu_seqlens_values(r.cu_q, "cu_seqlens_q", s.total_q,
                                                           max_seqlen_q, "max_seqlen_q");
      const CuSeqlensInfo info_k = check_cu_seqlens_values(r.cu_k, "cu_seqlens_k", s.total_k,
                                                           max_seqlen_k, "max_seqlen_k");
      r.uncovered_q = info_q.last < s.total_q;
      r.uncovered_k = !paged && info_k.last < s.total_k;
      // max_seqlen is only an upper bound (callers pass the padded length, or anything
      // larger): the CPU kernels get the real longest sequence, so their work (a task per
      // block of max_seqlen_q rows, per batch and head) is bounded by the tokens.
      s.seqlen_q = info_q.max_len;
      s.seqlen_k = info_k.max_len;
    }
    s.cu_seqlens_q = r.cu_q.data_ptr<int32_t>();
    s.cu_seqlens_k = r.cu_k.data_ptr<int32_t>();
  } else {
    s.batch = q.size(0);
    s.seqlen_q = q.size(1);
    s.seqlen_k = k.size(1);
  }
  fill_common(p, q, k, v, softmax_scale, causal, window_left, window_right, softcap);
  if (paged && !seqlens_on_device) {
    check_paged_sequences(r.cu_k, p.kv_pages, block_table->size(1));
  }
  if (alibi_slopes.has_value()) r.slopes = alibi_slopes->contiguous();
  fill_alibi(p.mask, r.slopes, q, s.batch, s.num_heads);
  return r;
}

// One body per op; Kernels (AttnCpu, AttnCuda below) says which device's kernels it calls.
template <typename Kernels>
std::tuple<at::Tensor, at::Tensor> attn_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
    int64_t max_seqlen_q, int64_t max_seqlen_k, const std::optional<at::Tensor>& alibi_slopes,
    double softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    bool deterministic, const std::optional<at::Tensor>& block_table) {
  c10::DeviceGuard guard(q.device());
  Prepared r = prepare_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           alibi_slopes, softmax_scale, causal, window_left, window_right, softcap,
                           Kernels::kSeqlensOnDevice, block_table);
  at::Tensor out = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor lse = at::empty(lse_shape(q, r.p.shape, r.varlen), q.options().dtype(at::kFloat));
  set_out(r.p, out, lse, r.varlen);
  if (r.uncovered_q) {
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
  }
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse};
  value_errors([&] { Kernels::fwd(r.p); });
  return {out, lse};
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const std::optional<at::Tensor>& alibi_slopes, double softmax_scale, bool causal,
    int64_t window_left, int64_t window_right, double softcap, bool deterministic,
    bool compute_dslopes, const std::optional<at::Tensor>& block_table) {
  c10::DeviceGuard guard(q.device());
  // Raised here, when a backward runs, not when one is traced (torch.compile traces the
  // backward of any call whose inputs require grad).
  TORCH_CHECK_NOT_IMPLEMENTED(
      !block_table.has_value(),
      "flash_attn_varlen_func with block_table has no backward (nor has flash-attn's): paged "
      "keys are for inference. For gradients, gather the pages into (total_k, nheads_k, "
      "headdim) tensors and call it without block_table.");
  // The kernels write d(slopes) with the slopes' strides into a contiguous zeros tensor, so
  // give them contiguous slopes (a strided (batch, nheads) view would index out of bounds).
  const std::optional<at::Tensor> slopes =
      alibi_slopes.has_value() ? std::optional<at::Tensor>(alibi_slopes->contiguous())
                               : std::nullopt;
  Prepared r = prepare_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           slopes, softmax_scale, causal, window_left, window_right, softcap,
                           Kernels::kSeqlensOnDevice);
  TORCH_CHECK_VALUE(dout.sizes() == q.sizes(), "dout must have q's shape ", q.sizes(), ", got ",
                    dout.sizes());
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have q's shape ", q.sizes(), ", got ",
                    out.sizes());
  check_like(dout, "dout", q, "q");
  check_like(out, "out", q, "q");
  const std::vector<int64_t> expected_lse = lse_shape(q, r.p.shape, r.varlen);
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef(expected_lse) && lse.scalar_type() == at::kFloat,
                    "softmax_lse must be float32 of shape ", at::IntArrayRef(expected_lse),
                    ", got ", lse.scalar_type(), " ", lse.sizes());
  check_same_device(lse, "softmax_lse", q, "q");
  TORCH_CHECK_VALUE(!compute_dslopes || alibi_slopes.has_value(),
                    "compute_dslopes needs alibi_slopes");
  const at::Tensor lse_c = lse.contiguous();

  AttnBwdParams b;
  b.fwd = r.p;
  b.fwd.out = const_cast<void*>(out.data_ptr());
  b.fwd.out_strides = strides_of(out);
  set_lse(b.fwd, lse_c, r.varlen);
  b.dout = dout.data_ptr();
  b.dout_strides = strides_of(dout);
  at::Tensor dq = at::empty_like(q, at::MemoryFormat::Contiguous);
  at::Tensor dk = at::empty_like(k, at::MemoryFormat::Contiguous);
  at::Tensor dv = at::empty_like(v, at::MemoryFormat::Contiguous);
  if (r.uncovered_q) dq.zero_();
  if (r.uncovered_k) {
    dk.zero_();
    dv.zero_();
  }
  at::Tensor dslopes = compute_dslopes
                           ? at::zeros(slopes->sizes(), slopes->options())
                           : at::empty({0}, q.options().dtype(at::kFloat));
  b.dq = dq.data_ptr();
  b.dk = dk.data_ptr();
  b.dv = dv.data_ptr();
  b.dq_strides = strides_of(dq);
  b.dk_strides = strides_of(dk);
  b.dv_strides = strides_of(dv);
  b.dslopes = compute_dslopes ? static_cast<float*>(dslopes.data_ptr()) : nullptr;
  b.deterministic = deterministic;
  at::Tensor workspace;
  const int64_t ws_bytes = value_errors([&] { return Kernels::bwd_workspace_bytes(b); });
  if (ws_bytes > 0) {
    workspace = at::empty({ws_bytes}, q.options().dtype(at::kByte));
    b.workspace = workspace.data_ptr();
    b.workspace_bytes = ws_bytes;
  }
  if (q.numel() == 0) {  // no query: nothing flows back to the keys (0 heads included)
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv, dslopes};
  }
  value_errors([&] { Kernels::bwd(b); });
  return {dq, dk, dv, dslopes};
}

// The kernels each device runs. kSeqlensOnDevice: the kernels check cu_seqlens' values
// themselves (the host reading them would sync the stream).
struct AttnCpu {
  static constexpr bool kSeqlensOnDevice = false;
  static void fwd(const AttnFwdParams& p) { attn_fwd_cpu(p); }
  static void bwd(const AttnBwdParams& p) { attn_bwd_cpu(p); }
  static int64_t bwd_workspace_bytes(const AttnBwdParams&) { return 0; }
};

#ifdef MPT_EXT_CUDA_ATTN
struct AttnCuda {
  static constexpr bool kSeqlensOnDevice = true;
  static void fwd(const AttnFwdParams& p) { attn_fwd_cuda(p); }
  static void bwd(const AttnBwdParams& p) { attn_bwd_cuda(p); }
  static int64_t bwd_workspace_bytes(const AttnBwdParams& p) {
    return attn_bwd_workspace_bytes_cuda(p);
  }
};
#else
struct AttnCuda {  // the family is not enabled in this build
  static constexpr bool kSeqlensOnDevice = true;
  static void fwd(const AttnFwdParams&) {
    cuda_family_not_enabled("attn", "flash_attn_func / flash_attn_varlen_func");
  }
  static void bwd(const AttnBwdParams&) {
    cuda_family_not_enabled("attn", "flash_attn_func / flash_attn_varlen_func backward");
  }
  static int64_t bwd_workspace_bytes(const AttnBwdParams&) { return 0; }
};
#endif

template <typename Kernels>
void register_attn(torch::Library& m) {
  m.impl("attn_fwd", &attn_fwd<Kernels>);
  m.impl("attn_bwd", &attn_bwd<Kernels>);
}

}  // namespace

MPT_EXT_REGISTER_DEVICES(register_attn, AttnCpu, AttnCuda)

}  // namespace mpt_ext
