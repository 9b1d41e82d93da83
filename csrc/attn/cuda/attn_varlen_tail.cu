// The varlen tail fill (attn_varlen_tail.h): a grid-stride loop over the tail's elements only,
// so a call whose sequences cover every row costs one launch and one 4-byte read per block.
#include "attn_varlen_tail.h"

#include <cmath>
#include <stdexcept>

#include "../../common/cuda_host.h"

namespace mpt_ext::attn::cuda {
namespace {

struct VarlenTails {
  VarlenTail t[kMaxVarlenTails];
};

constexpr int kTailThreads = 256;
constexpr int kTailElemsPerThread = 8;  // sizes the grid: no block starts for a few elements
constexpr int kTailMaxBlocks = 1024;

__global__ void __launch_bounds__(kTailThreads) attn_varlen_tail_kernel(const VarlenTails tails) {
  const VarlenTail& t = tails.t[blockIdx.y];
  int64_t first = t.start != nullptr ? *t.start : 0;
  first = first < 0 ? 0 : (first > t.rows ? t.rows : first);  // a bad value is noted elsewhere
  const int64_t per_row = t.heads * t.cols;
  const int64_t n = (t.rows - first) * per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = first + idx / per_row;
    const int64_t rest = idx % per_row;
    const int64_t off = r * t.row_stride + rest / t.cols * t.head_stride + rest % t.cols;
    if (t.lse) {
      static_cast<float*>(t.data)[off] = -INFINITY;
    } else {
      static_cast<uint16_t*>(t.data)[off] = 0;  // +0 in fp16 and bf16
    }
  }
}

}  // namespace

VarlenTail varlen_tail_rows(void* data, const TensorStrides& st, const int32_t* cu_seqlens,
                            int64_t batch, int64_t rows, int64_t heads, int64_t head_dim) {
  VarlenTail t;
  t.data = data;
  t.start = batch > 0 ? cu_seqlens + batch : nullptr;
  t.rows = rows;
  t.heads = heads;
  t.cols = head_dim;
  t.row_stride = st.row;
  t.head_stride = st.head;
  return t;
}

VarlenTail varlen_tail_lse(float* lse, const int32_t* cu_seqlens_q, int64_t batch,
                           int64_t total_q, int64_t heads, int64_t head_stride) {
  VarlenTail t;
  t.data = lse;
  t.lse = true;
  t.start = batch > 0 ? cu_seqlens_q + batch : nullptr;
  t.rows = total_q;
  t.heads = heads;
  t.cols = 1;
  t.row_stride = 1;
  t.head_stride = head_stride;
  return t;
}

void launch_varlen_tails(const VarlenTail* tails, int count, cudaStream_t stream) {
  if (count > kMaxVarlenTails) throw std::logic_error("launch_varlen_tails: too many tensors");
  VarlenTails all{};
  int used = 0;
  int64_t most = 0;  // elements of the largest tensor: the grid covers a whole-tensor tail
  for (int i = 0; i < count; ++i) {
    const int64_t elems = tails[i].rows * tails[i].heads * tails[i].cols;
    if (elems == 0 || tails[i].data == nullptr) continue;
    all.t[used++] = tails[i];
    most = elems > most ? elems : most;
  }
  if (used == 0) return;
  const int64_t blocks = ceil_div(most, int64_t(kTailThreads) * kTailElemsPerThread);
  const dim3 grid(static_cast<unsigned>(blocks < kTailMaxBlocks ? blocks : kTailMaxBlocks),
                  static_cast<unsigned>(used));
  launch_kernel(attn_varlen_tail_kernel, grid, kTailThreads, 0, stream, all);
  check_launch("attn_varlen_tail_kernel", stream);
}

}  // namespace mpt_ext::attn::cuda
