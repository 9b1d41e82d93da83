// LayerNorm / RMSNorm forward on CUDA, with the fused residual add: launch and dispatch.
#include "../../common/cuda_host.h"
#include "../norm.h"
#include "norm_fwd_kernel.cuh"

namespace mpt_ext {
namespace norm::cuda {
namespace {

template <typename T, typename W, int kWidth>
void launch_fwd(const NormFwdParams& p) {
  const RowLayout l = row_layout<kFwdPacks>(p.hidden, kWidth);
  const dim3 block(l.threads_x, l.rows_y);
  const int64_t blocks = (p.rows + l.rows_y - 1) / l.rows_y;
  if (blocks > 0x7fffffff) throw std::invalid_argument("mpt_ext norm: too many rows for one launch");
  launch_kernel(norm_fwd_kernel<T, W, kWidth>, static_cast<unsigned>(blocks), block, 0,
                static_cast<cudaStream_t>(p.stream), p, l.cached);
  check_launch("norm_fwd_kernel", static_cast<cudaStream_t>(p.stream));
}

}  // namespace
}  // namespace norm::cuda

void norm_fwd_cuda(const NormFwdParams& p) {
  using namespace norm::cuda;
  if (p.rows <= 0) return;
  dispatch_dtypes(p.x_dtype, p.weight != nullptr ? p.w_dtype : DType::kFloat32,
                  [&]<typename T, typename W>() {
                    if (fwd_vectorizable<T, W>(p)) {
                      launch_fwd<T, W, 16 / sizeof(T)>(p);
                    } else {
                      launch_fwd<T, W, 1>(p);
                    }
                  });
}

}  // namespace mpt_ext
