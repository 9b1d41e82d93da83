// norm_fwd and norm_bwd (layer_norm / rms_norm over the last dimension, fused residual): every
// input check, Tensor -> params, and the per-device registration (csrc/norm/norm.h). Inputs
// are viewed as (rows, hidden); a non-contiguous x is copied once.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../csrc/norm/norm.h"
#include "checks.h"
#include "device_impl.h"

namespace mpt_ext {
namespace {

void check_param(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                 int64_t hidden) {
  if (!t.has_value()) return;
  to_dtype(*t, name, x.is_cpu());
  check_same_device(*t, name, x, "x");
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == hidden, name,
                    " must have shape (hidden,) = (", hidden, ",), got ", t->sizes());
}

// One body per op; Kernels (NormCpu, NormCuda below) says which device's kernels it calls.
template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_fwd(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight_in,
    const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& residual_in,
    double eps, bool is_rms) {
  c10::DeviceGuard guard(x_in.device());
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have at least one dimension (..., hidden)");
  const int64_t hidden = x_in.size(-1);
  TORCH_CHECK_VALUE(hidden >= 1, "x's last dimension (hidden) must be >= 1, got ", hidden);
  TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), "eps must be >= 0, got ", eps);
  const DType x_dtype = to_dtype(x_in, "x", x_in.is_cpu());
  check_param(weight_in, "weight", x_in, hidden);
  check_param(bias_in, "bias", x_in, hidden);
  TORCH_CHECK_VALUE(!(is_rms && bias_in.has_value()), "rms_norm takes no bias");
  if (weight_in.has_value() && bias_in.has_value()) {
    check_same_dtype(*bias_in, "bias", *weight_in, "weight");
  }
  TORCH_CHECK_VALUE(!bias_in.has_value() || weight_in.has_value(),
                    "bias without weight is not supported: pass weight=torch.ones(hidden)");
  if (residual_in.has_value()) {
    TORCH_CHECK_VALUE(residual_in->sizes() == x_in.sizes(), "residual must have x's shape ",
                      x_in.sizes(), ", got ", residual_in->sizes());
    check_same_dtype(*residual_in, "residual", x_in, "x");
    check_same_device(*residual_in, "residual", x_in, "x");
  }

  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.has_value() ? weight_in->contiguous() : at::Tensor();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous() : at::Tensor();
  const int64_t rows = x.numel() / hidden;
  const auto fopts = x.options().dtype(at::kFloat);

  at::Tensor y = at::empty_like(x);
  at::Tensor residual_out = residual.defined() ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor mean = is_rms ? at::empty({0}, fopts) : at::empty({rows}, fopts);
  at::Tensor rstd = at::empty({rows}, fopts);

  NormFwdParams p;
  p.rows = rows;
  p.hidden = hidden;
  p.is_rms = is_rms;
  p.eps = static_cast<float>(eps);
  p.x_dtype = x_dtype;
  p.w_dtype = weight.defined() ? to_dtype(weight, "weight", x.is_cpu()) : x_dtype;
  p.x = x.data_ptr();
  p.residual = residual.defined() ? residual.data_ptr() : nullptr;
  p.weight = weight.defined() ? weight.data_ptr() : nullptr;
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.residual_out = residual.defined() ? residual_out.data_ptr() : nullptr;
  p.mean = is_rms ? nullptr : mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.x_row_stride = p.residual_row_stride = p.y_row_stride = p.residual_out_row_stride = hidden;
  p.stream = stream_for(x);
  if (rows > 0) value_errors([&] { Kernels::fwd(p); });
  return {y, residual_out, mean, rstd};
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd(
    const at::Tensor& dy_in, const std::optional<at::Tensor>& dresidual_out_in,
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight_in,
    const std::optional<at::Tensor>& bias_in, const at::Tensor& mean, const at::Tensor& rstd,
    bool is_rms) {
  c10::DeviceGuard guard(x_in.device());
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) >= 1, "x must have shape (..., hidden)");
  const int64_t hidden = x_in.size(-1);
  const int64_t rows = x_in.numel() / hidden;
  const DType x_dtype = to_dtype(x_in, "x", x_in.is_cpu());
  TORCH_CHECK_VALUE(dy_in.sizes() == x_in.sizes(), "dy must have x's shape ", x_in.sizes(),
                    ", got ", dy_in.sizes());
  check_same_dtype(dy_in, "dy", x_in, "x");
  check_same_device(dy_in, "dy", x_in, "x");
  check_param(weight_in, "weight", x_in, hidden);
  check_param(bias_in, "bias", x_in, hidden);
  TORCH_CHECK_VALUE(rstd.scalar_type() == at::kFloat && rstd.numel() == rows,
                    "rstd must be float32 with one value per row (", rows, "), got ",
                    rstd.scalar_type(), " ", rstd.sizes());
  TORCH_CHECK_VALUE(is_rms || (mean.scalar_type() == at::kFloat && mean.numel() == rows),
                    "mean must be float32 with one value per row (", rows, "), got ",
                    mean.scalar_type(), " ", mean.sizes());
  check_same_device(rstd, "rstd", x_in, "x");
  if (!is_rms) check_same_device(mean, "mean", x_in, "x");
  if (dresidual_out_in.has_value()) {
    TORCH_CHECK_VALUE(dresidual_out_in->sizes() == x_in.sizes(),
                      "dresidual_out must have x's shape ", x_in.sizes(), ", got ",
                      dresidual_out_in->sizes());
    check_same_dtype(*dresidual_out_in, "dresidual_out", x_in, "x");
    check_same_device(*dresidual_out_in, "dresidual_out", x_in, "x");
  }

  const at::Tensor dy = dy_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.has_value() ? weight_in->contiguous() : at::Tensor();
  const at::Tensor dres = dresidual_out_in.has_value() ? dresidual_out_in->contiguous() : at::Tensor();
  const at::Tensor mean_c = mean.contiguous();
  const at::Tensor rstd_c = rstd.contiguous();
  const auto fopts = x.options().dtype(at::kFloat);

  at::Tensor dx = at::empty_like(x);
  at::Tensor dweight32 = weight.defined() ? at::empty({hidden}, fopts) : at::Tensor();
  at::Tensor dbias32 = bias_in.has_value() ? at::empty({hidden}, fopts) : at::Tensor();

  NormBwdParams p;
  p.rows = rows;
  p.hidden = hidden;
  p.is_rms = is_rms;
  p.x_dtype = x_dtype;
  p.w_dtype = weight.defined() ? to_dtype(weight, "weight", x.is_cpu()) : x_dtype;
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = weight.defined() ? weight.data_ptr() : nullptr;
  p.mean = is_rms ? nullptr : mean_c.data_ptr<float>();
  p.rstd = rstd_c.data_ptr<float>();
  p.dresidual_out = dres.defined() ? dres.data_ptr() : nullptr;
  p.dx = dx.data_ptr();
  p.dweight = dweight32.defined() ? dweight32.data_ptr<float>() : nullptr;
  p.dbias = dbias32.defined() ? dbias32.data_ptr<float>() : nullptr;
  p.dy_row_stride = p.x_row_stride = p.dresidual_out_row_stride = p.dx_row_stride = hidden;

  p.stream = stream_for(x);

  // Two-stage dweight/dbias reduction: the device's kernels size their partial-sum scratch.
  at::Tensor workspace;
  const int64_t ws_bytes = value_errors([&] { return Kernels::bwd_workspace_bytes(p); });
  if (ws_bytes > 0) {
    workspace = at::empty({ws_bytes}, x.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
    p.workspace_bytes = ws_bytes;
  }
  if (rows > 0) {
    value_errors([&] { Kernels::bwd(p); });
  } else {
    if (dweight32.defined()) dweight32.zero_();
    if (dbias32.defined()) dbias32.zero_();
  }
  at::Tensor dweight = dweight32.defined() ? dweight32.to(weight.scalar_type())
                                           : at::empty({0}, x.options());
  at::Tensor dbias = dbias32.defined() ? dbias32.to(bias_in->scalar_type())
                                       : at::empty({0}, x.options());
  return {dx, dweight, dbias};
}

// The kernels each device runs.
struct NormCpu {
  static void fwd(const NormFwdParams& p) { norm_fwd_cpu(p); }
  static void bwd(const NormBwdParams& p) { norm_bwd_cpu(p); }
  static int64_t bwd_workspace_bytes(const NormBwdParams&) { return 0; }
};

#ifdef MPT_EXT_CUDA_NORM
struct NormCuda {
  static void fwd(const NormFwdParams& p) { norm_fwd_cuda(p); }
  static void bwd(const NormBwdParams& p) { norm_bwd_cuda(p); }
  static int64_t bwd_workspace_bytes(const NormBwdParams& p) {
    return norm_bwd_workspace_bytes_cuda(p);
  }
};
#else
struct NormCuda {  // the family is not enabled in this build
  static void fwd(const NormFwdParams&) {
    cuda_family_not_enabled("norm", "layer_norm / rms_norm");
  }
  static void bwd(const NormBwdParams&) {
    cuda_family_not_enabled("norm", "layer_norm / rms_norm backward");
  }
  static int64_t bwd_workspace_bytes(const NormBwdParams&) { return 0; }
};
#endif

template <typename Kernels>
void register_norm(torch::Library& m) {
  m.impl("norm_fwd", &norm_fwd<Kernels>);
  m.impl("norm_bwd", &norm_bwd<Kernels>);
}

}  // namespace

MPT_EXT_REGISTER_DEVICES(register_norm, NormCpu, NormCuda)

}  // namespace mpt_ext
