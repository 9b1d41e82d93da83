// LayerNorm / RMSNorm backward on CUDA: workspace sizing, launch and dispatch.
#include "../../common/cuda_host.h"
#include "../norm.h"
#include "norm_bwd_kernel.cuh"

namespace mpt_ext {
namespace norm::cuda {
namespace {

template <typename T, typename W, int kWidth>
void launch_bwd(const NormBwdParams& p, const BwdLaunch& plan) {
  float* dw_part = nullptr;
  float* db_part = nullptr;
  const int64_t part_floats = plan.blocks * p.hidden;
  if (plan.n_partials > 0) {
    const int64_t need = plan.n_partials * part_floats * static_cast<int64_t>(sizeof(float));
    if (p.workspace == nullptr || p.workspace_bytes < need || !aligned(p.workspace, 16)) {
      throw std::invalid_argument("mpt_ext norm backward: workspace too small (need " +
                                  std::to_string(need) + " bytes, got " +
                                  std::to_string(p.workspace_bytes) + ")");
    }
    float* ws = static_cast<float*>(p.workspace);
    if (p.dweight) dw_part = ws;
    if (p.dbias) db_part = ws + (p.dweight ? part_floats : 0);
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const dim3 block(plan.layout.threads_x, plan.layout.rows_y);
  launch_kernel(norm_bwd_kernel<T, W, kWidth>, static_cast<unsigned>(plan.blocks), block, 0,
                stream, p, plan.layout.cached, dw_part, db_part);
  check_launch("norm_bwd_kernel", stream);
  if (plan.n_partials > 0) {
    const dim3 grid(static_cast<unsigned>((p.hidden + 31) / 32), plan.n_partials);
    // With dbias only (no dweight) the dbias partials go in the first slot.
    const float* first = dw_part ? dw_part : db_part;
    float* first_out = p.dweight ? p.dweight : p.dbias;
    launch_kernel(sum_partials_kernel<kSumLanes>, grid, dim3(32, kSumLanes), 0, stream, first,
                  db_part, plan.blocks, p.hidden, first_out, p.dbias);
    check_launch("norm_bwd sum_partials_kernel (dweight/dbias)", stream);
  }
}

}  // namespace
}  // namespace norm::cuda

int64_t norm_bwd_workspace_bytes_cuda(const NormBwdParams& p) {
  using namespace norm::cuda;
  if (p.rows <= 0 || (p.dweight == nullptr && p.dbias == nullptr)) return 0;
  const BwdLaunch plan = plan_bwd(p, sm_count());
  return plan.n_partials * plan.blocks * p.hidden * static_cast<int64_t>(sizeof(float));
}

void norm_bwd_cuda(const NormBwdParams& p) {
  using namespace norm::cuda;
  if (p.rows <= 0) {  // no rows: the parameter gradients are zero
    const cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
    const size_t bytes = static_cast<size_t>(p.hidden) * sizeof(float);
    if (p.dweight) check_cuda(cudaMemsetAsync(p.dweight, 0, bytes, stream), "cudaMemsetAsync(dweight)");
    if (p.dbias) check_cuda(cudaMemsetAsync(p.dbias, 0, bytes, stream), "cudaMemsetAsync(dbias)");
    return;
  }
  const BwdLaunch plan = plan_bwd(p, sm_count());
  dispatch_dtypes(p.x_dtype, p.weight != nullptr ? p.w_dtype : DType::kFloat32,
                  [&]<typename T, typename W>() {
                    if (plan.width > 1) {
                      launch_bwd<T, W, 16 / sizeof(T)>(p, plan);
                    } else {
                      launch_bwd<T, W, 1>(p, plan);
                    }
                  });
}

}  // namespace mpt_ext
