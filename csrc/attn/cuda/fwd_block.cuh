// The query block a forward CTA owns, shared by the mma.sync kernel (attn_fwd_kernel.cuh) and
// the wgmma one (sm90/attn_fwd_sm90_kernel.cuh): grid (query blocks, heads, batch), the
// heaviest (last, for causal) blocks first for a better tail; where its rows and outputs
// live and which key tiles some row of it can see.
#pragma once

#include <cstdint>

#include "seq_score.cuh"

namespace mpt_ext::attn::cuda {

struct FwdBlock {
  SeqInfo si;
  int h, b, hk;      // query head, sequence, key / value head (GQA)
  int m0;            // the block's first query row
  int rows_here;     // its rows inside the sequence
  int diag_shift;    // sk - sq: the diagonal of query row i is key i + diag_shift
  TileKeys tk;       // the visible keys of its first and last rows
  int n_min, n_max;  // the key tiles [n_min, n_max) some row sees (none when n_max <= n_min)
  uint16_t* go;      // out at (row m0, head h)
  float* glse;       // lse at (row m0, head h)
};

// This CTA's block of block_m rows, with key tiles of block_n keys; false when the block
// lies past its sequence (the CTA has nothing to do).
__device__ __forceinline__ bool fwd_block(const AttnFwdParams& p, int block_m, int block_n,
                                          FwdBlock& blk) {
  blk.h = blockIdx.y;
  blk.b = blockIdx.z;
  blk.si = seq_info(p.shape, blk.b);
  blk.m0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * block_m;
  if (blk.m0 >= blk.si.sq) return false;
  blk.hk = blk.h / static_cast<int>(p.shape.num_heads / p.shape.num_heads_k);
  blk.diag_shift = blk.si.sk - blk.si.sq;
  blk.go = static_cast<uint16_t*>(p.out) +
           seq_offset(p.out_strides, blk.b, blk.si.q_row0, blk.si.varlen) +
           blk.h * p.out_strides.head + blk.m0 * p.out_strides.row;
  blk.glse = p.lse + lse_offset(p, blk.si, blk.b, blk.h) + blk.m0;
  const int m_last = min(blk.m0 + block_m, blk.si.sq) - 1;
  blk.rows_here = m_last - blk.m0 + 1;
  blk.tk = tile_keys(blk.m0, m_last, blk.si, p.mask);
  // lo and hi of the visible keys grow with the row
  blk.n_min = static_cast<int>(blk.tk.first.lo / block_n);
  blk.n_max = blk.tk.last.hi > blk.tk.first.lo
                  ? static_cast<int>((blk.tk.last.hi + block_n - 1) / block_n)
                  : blk.n_min;
  return true;
}

}  // namespace mpt_ext::attn::cuda
