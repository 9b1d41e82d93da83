// The forward's per-row work on 16 query rows of scores held in registers, shared by the
// mma.sync kernel (attn_fwd_kernel.cuh) and the wgmma one (sm90/attn_fwd_sm90_kernel.cuh):
// both hold a warp's 16 x N fp32 tile in the m16n8 C layout (n8 tile nt, element e: row
// lane / 4 + 8 (e >> 1), column 8 nt + 2 (lane % 4) + (e & 1)), which is also how a wgmma
// m64nN accumulator gives each warp its 16 rows. Per key tile: score mod and mask
// (score_mod_rows), online softmax with the output's rescale (online_softmax_rows); at the
// end the normalised output and lse (store_out_rows), or write_empty_rows for a block no row
// of which sees any key.
#pragma once

#include <cstdint>

#include "seq_score.cuh"
#include "tile.cuh"

namespace mpt_ext::attn::cuda {

// How one key tile's scores turn into units u (ScoreUnits): log2 score = exp_scale * (u +
// row_shift). Fast tiles (no mask; for ALiBi, keys on one side of every row's diagonal: all
// unmasked causal tiles) take one FMA per score at most; the others the full form and the mask.
struct KeyTileForm {
  bool masked;
  bool fast;
  float tile_slope;
};

template <ScoreKind kKind>
__device__ __forceinline__ KeyTileForm key_tile_form(const ScoreUnits<kKind>& units,
                                                     const TileKeys& tk, int first_diag,
                                                     int last_diag, int n0, int n) {
  KeyTileForm f;
  f.masked = !tk.fully_visible(n0, n);
  bool one_sided = false;
  f.tile_slope = units.tile_slope(first_diag, last_diag, n0, n, &one_sided);
  f.fast = ScoreUnits<kKind>::kFolded && !f.masked && one_sided;
  return f;
}

// Score mod and mask of one warp's 16 rows of a key tile. row_offset[r]: the diagonal of
// the thread's row r (of 2) minus its column 0 of the tile, n0 + 2 (lane % 4) (alibi_dist);
// key0: that column's key.
template <ScoreKind kKind, int kNT>
__device__ __forceinline__ void score_mod_rows(float (&s)[kNT][4], const ScoreUnits<kKind>& units,
                                               const DiagMask& mask, const KeyTileForm& form,
                                               const int (&row_offset)[2], int key0) {
  if (form.fast) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = units.column(s[nt][e], form.tile_slope, nt * 8 + (e & 1));
      }
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, col = nt * 8 + (e & 1);
        float unused;
        float v = units.full(s[nt][e], alibi_dist(row_offset[r], col), &unused);
        if (form.masked && mask.hidden(row_offset[r] - col, key0 + col)) v = -INFINITY;
        s[nt][e] = v;
      }
    }
  }
}

// Online softmax in u over one key tile, exponentiated by one FMA and ex2 each
// (ScoreUnits::fma_exp_ok); s becomes P (unnormalised) and o is rescaled to the new maxima.
// row_max is in u; row_sum holds this thread's columns only (quad-summed at the end). A row
// that has seen only masked keys keeps max -inf; it exponentiates against 0 instead so that
// no (-inf) - (-inf) NaN appears.
template <ScoreKind kKind, int kNT, int kDT>
__device__ __forceinline__ void online_softmax_rows(float (&s)[kNT][4], float (&o)[kDT][4],
                                                    float (&row_max)[2], float (&row_sum)[2],
                                                    const ScoreUnits<kKind>& units,
                                                    const KeyTileForm& form,
                                                    const int (&row_offset)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    // the ALiBi row part of a fast tile (0 on the others, whose u holds all of it)
    const float row_shift = form.fast ? units.row_shift(form.tile_slope, row_offset[r]) : 0.f;
    mx = quad_max(fmaxf(row_max[r], mx + row_shift));
    const float ref = mx == -INFINITY ? 0.f : mx;
    // 0 when the old max was -inf
    const float rescale = exp2f((row_max[r] - ref) * units.exp_scale);
    row_max[r] = mx;
    float sum = 0.f;
    if (units.fma_exp_ok(ref, row_shift)) {
      const float bias = (row_shift - ref) * units.exp_scale;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[nt][e] = exp2f(fmaf(s[nt][e], units.exp_scale, bias));
          sum += s[nt][e];
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[nt][e] = exp2f((s[nt][e] + row_shift - ref) * units.exp_scale);
          sum += s[nt][e];
        }
      }
    }
    row_sum[r] = row_sum[r] * rescale + sum;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      o[dt][2 * r] *= rescale;
      o[dt][2 * r + 1] *= rescale;
    }
  }
}

// The epilogue of one warp's 16 rows: O / l for rows < rows_here and columns < d, straight
// from registers (32-bit pair stores when out_pair_ok), and the natural-log lse. go / glse:
// the tile's row 0; row_local[r]: the thread's row r within the tile.
template <typename T, ScoreKind kKind, int kDT>
__device__ __forceinline__ void store_out_rows(const float (&o)[kDT][4], const float (&row_max)[2],
                                               const float (&row_sum)[2],
                                               const ScoreUnits<kKind>& units,
                                               const int (&row_local)[2], int rows_here, int d,
                                               uint16_t* go, int64_t out_row_stride, float* glse,
                                               bool out_pair_ok, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(row_sum[r]);  // all lanes: before the row check
    const bool empty = (l == 0.f);  // NaN scores give NaN out and lse, not a masked row
    const float inv = empty ? 0.f : 1.f / l;
    const int rl = row_local[r];
    if (rl >= rows_here) continue;
    uint16_t* orow = go + rl * out_row_stride;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const int col = dt * 8 + (lane & 3) * 2;
      store_pair<T>(orow, col, d, out_pair_ok, o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    }
    if ((lane & 3) == 0) {
      glse[rl] = empty ? -INFINITY : fmaf(row_max[r], units.exp_scale, log2f(l)) * kLn2;
    }
  }
}

// A query block none of whose rows sees a key: output 0 and lse -inf for its rows_here rows,
// by the block's `threads` threads.
__device__ __forceinline__ void write_empty_rows(uint16_t* go, int64_t out_row_stride,
                                                 float* glse, int rows_here, int d, int tid,
                                                 int threads) {
  for (int e = tid; e < rows_here * d; e += threads) go[(e / d) * out_row_stride + e % d] = 0;
  for (int r = tid; r < rows_here; r += threads) glse[r] = -INFINITY;
}

}  // namespace mpt_ext::attn::cuda
