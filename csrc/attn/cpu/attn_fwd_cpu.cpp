// CPU flash attention forward: one task per (batch, head, block of kBlockQ queries). The
// task streams key tiles of kBlockK keys (only those some row of the block can see), with
// an online softmax in the log2 domain, so extra memory is a few tiles per thread.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../attn.h"
#include "attn_tiles.h"
#include "flash_forward.h"

namespace mpt_ext {
namespace attn::cpu {
namespace {

struct FwdContext {
  const AttnFwdParams& p;
  const KeySource* keys;  // null: p.k / p.v's rows
  int64_t d, dp;           // head dim, padded to kTileCols
  int64_t q_blocks;        // per (batch, head)
  int64_t heads_per_kv;    // GQA group size
};

template <typename Acc>
struct FwdScratch {
  TileMatmul<Acc> matmul = tile_matmul_for<Acc>(cpu_has_avx2_fma());
  std::vector<Acc> q, kt, v, s, o, m, l;
  explicit FwdScratch(int64_t dp)
      : q(kBlockQ * dp), kt(dp * kBlockK, Acc(0)), v(kBlockK * dp), s(kBlockQ * kBlockK),
        o(kBlockQ * dp), m(kBlockQ), l(kBlockQ) {}
};

// Keys j0 .. j0 + nc - 1 of a KV-cache sequence into the tiles, one contiguous run (a page,
// or the whole tile) at a time; k and v point at the caches' head hk.
template <typename T, typename Acc>
MPT_CPU_INLINE void load_cache_tile(const AttnFwdParams& p, const KeySource& keys, int64_t b,
                                    const T* k, const T* v, int64_t j0, int64_t nc, int64_t d,
                                    int64_t dp, FwdScratch<Acc>& w) {
  for (int64_t j = j0; j < j0 + nc;) {
    int64_t block = 0, row = 0, run = 0;
    keys.locate(keys.ctx, b, j, &block, &row, &run);
    run = std::min(run, j0 + nc - j);
    const int64_t col = j - j0;
    load_rows_transposed_only(k + block * p.k_strides.batch + row * p.k_strides.row,
                              p.k_strides.row, run, d, w.kt.data() + col, kBlockK);
    load_rows(v + block * p.v_strides.batch + row * p.v_strides.row, p.v_strides.row, run, run,
              d, w.v.data() + col * dp, dp);
    j += run;
  }
  zero_columns(w.kt.data(), d, kBlockK, nc);
  load_rows(v, 0, 0, kBlockK - nc, d, w.v.data() + nc * dp, dp);  // zero rows nc .. kBlockK
}

template <typename T, typename Acc>
MPT_CPU_INLINE void forward_block(const FwdContext& c, int64_t task, FwdScratch<Acc>& w) {
  const AttnFwdParams& p = c.p;
  const AttnShape& sh = p.shape;
  const int64_t bh = task / c.q_blocks;
  const int64_t b = bh / sh.num_heads;
  const int64_t h = bh % sh.num_heads;
  const int64_t hk = h / c.heads_per_kv;
  const int64_t sq = sequence_length(sh.cu_seqlens_q, b, sh.seqlen_q);
  const int64_t sk = c.keys ? c.keys->num_keys[b]
                            : sequence_length(sh.cu_seqlens_k, b, sh.seqlen_k);
  const int64_t i0 = (task % c.q_blocks) * kBlockQ;
  if (i0 >= sq) return;  // varlen: this sequence is shorter than max_seqlen_q
  const int64_t nr = std::min(kBlockQ, sq - i0);
  const int64_t mr = round_up(nr, kTileRows);
  const int64_t d = c.d, dp = c.dp;

  const T* q = static_cast<const T*>(p.q) + sequence_offset(p.q_strides, sh.cu_seqlens_q, b) +
               i0 * p.q_strides.row + h * p.q_strides.head;
  // The KV cache's keys are located per tile (load_cache_tile); its sequences start at block 0.
  const int64_t k_seq = c.keys ? 0 : sequence_offset(p.k_strides, sh.cu_seqlens_k, b);
  const int64_t v_seq = c.keys ? 0 : sequence_offset(p.v_strides, sh.cu_seqlens_k, b);
  const T* k = static_cast<const T*>(p.k) + k_seq + hk * p.k_strides.head;
  const T* v = static_cast<const T*>(p.v) + v_seq + hk * p.v_strides.head;
  T* out = static_cast<T*>(p.out) + sequence_offset(p.out_strides, sh.cu_seqlens_q, b) +
           i0 * p.out_strides.row + h * p.out_strides.head;
  float* lse = p.lse + lse_offset(p, b) + h * p.lse_head_stride + i0;

  BlockKeys keys;
  keys.compute(i0, nr, sq, sk, p.mask);
  const ScoreMath<Acc> math(p.mask, alibi_slope<Acc>(p.mask, b, h));

  load_rows(q, p.q_strides.row, nr, mr, d, w.q.data(), dp);
  std::fill(w.o.begin(), w.o.end(), Acc(0));
  std::fill(w.m.begin(), w.m.end(), kNegInf<Acc>);
  std::fill(w.l.begin(), w.l.end(), Acc(0));

  // Key tiles outside [keys.lo, keys.hi) are never loaded (causal / window skipping).
  for (int64_t j0 = keys.lo; j0 < keys.hi; j0 += kBlockK) {
    const int64_t nc = std::min(kBlockK, keys.hi - j0);
    if (!keys.touches(j0, j0 + nc, nr)) continue;  // a gap in a windowed block
    if (c.keys) {
      load_cache_tile(p, *c.keys, b, k, v, j0, nc, d, dp, w);
    } else {
      load_rows_transposed(k + j0 * p.k_strides.row, p.k_strides.row, nc, d, w.kt.data(), kBlockK);
      load_rows(v + j0 * p.v_strides.row, p.v_strides.row, nc, kBlockK, d, w.v.data(), dp);
    }
    w.matmul(mr, kBlockK, dp, w.q.data(), dp, w.kt.data(), kBlockK, w.s.data(), kBlockK, false);
    for (int64_t r = 0; r < mr; ++r) {
      Acc* s = w.s.data() + r * kBlockK;
      if (r >= nr) {  // padding rows: keep them out of the P.V product
        std::fill(s, s + kBlockK, Acc(0));
        continue;
      }
      math.row(s, nullptr, i0 + r, j0, nc, kBlockK, keys.rows[r], sq, sk);
      const Acc tile_max = row_max(s, kBlockK);  // NaN-propagating, unlike std::max
      const Acc m_new = (tile_max > w.m[r] || tile_max != tile_max) ? tile_max : w.m[r];
      if (m_new == kNegInf<Acc>) {  // nothing visible yet in this row
        std::fill(s, s + kBlockK, Acc(0));
        continue;
      }
      exp2_shifted_row(s, m_new, kBlockK);
      const Acc sum = row_sum(s, kBlockK);
      const Acc alpha = exp2_nonpositive(w.m[r] - m_new);  // 0 when m was -inf
      w.l[r] = w.l[r] * alpha + sum;
      w.m[r] = m_new;
      if (alpha != Acc(1)) {
        Acc* o = w.o.data() + r * dp;
        for (int64_t x = 0; x < dp; ++x) o[x] *= alpha;
      }
    }
    w.matmul(mr, dp, kBlockK, w.s.data(), kBlockK, w.v.data(), dp, w.o.data(), dp, true);
  }

  for (int64_t r = 0; r < nr; ++r) {
    T* o = out + r * p.out_strides.row;
    if (w.l[r] != Acc(0)) {  // NaN inputs give NaN (as flash-attn and SDPA do), not a masked row
      store_row(w.o.data() + r * dp, d, Acc(1) / w.l[r], o);
      lse[r] = static_cast<float>((w.m[r] + std::log2(w.l[r])) * kLn2<Acc>);
    } else {  // no visible key: output 0 and lse -inf, never NaN
      for (int64_t x = 0; x < d; ++x) o[x] = from_acc<T>(Acc(0));
      lse[r] = kNegInf<float>;
    }
  }
}

template <typename T, typename Acc>
MPT_CPU_TARGET_AVX2 void forward_block_avx2(const FwdContext& c, int64_t t, FwdScratch<Acc>& w) {
  forward_block<T, Acc>(c, t, w);
}
template <typename T, typename Acc>
void forward_block_baseline(const FwdContext& c, int64_t t, FwdScratch<Acc>& w) {
  forward_block<T, Acc>(c, t, w);
}

template <typename T, typename Acc>
void run_forward(const AttnFwdParams& p, const KeySource* keys) {
  const AttnShape& sh = p.shape;
  const FwdContext c{p, keys, sh.head_dim, round_up(sh.head_dim, kTileCols),
                     (sh.seqlen_q + kBlockQ - 1) / kBlockQ, sh.num_heads / sh.num_heads_k};
  const bool avx2 = cpu_has_avx2_fma();
  run_tasks(
      sh.batch * sh.num_heads * c.q_blocks, [&] { return FwdScratch<Acc>(c.dp); },
      [&](int64_t t, FwdScratch<Acc>& w) {
        if (avx2)
          forward_block_avx2<T, Acc>(c, t, w);
        else
          forward_block_baseline<T, Acc>(c, t, w);
      });
}

}  // namespace

void flash_forward(const AttnFwdParams& p, const KeySource* keys) {
  if (p.shape.batch <= 0 || p.shape.num_heads <= 0 || p.shape.seqlen_q <= 0) return;
  dispatch_attention_dtype(p.dtype, "attention forward", [&](auto t, auto acc) {
    run_forward<decltype(t), decltype(acc)>(p, keys);
  });
}

}  // namespace attn::cpu

namespace {

// attn::cpu::KeySource::locate for flash_attn_varlen_func's pages: key j of sequence b is
// position j of its row of the block table (the binding checked every page it uses).
void locate_paged_key(const void* ctx, int64_t b, int64_t j, int64_t* block, int64_t* row,
                      int64_t* run) {
  const PageTable& pages = *static_cast<const PageTable*>(ctx);
  const PagePlace place = page_place(pages, b, j);
  *block = place.page;
  *row = place.row;
  *run = pages.page_size - place.row;
}

}  // namespace

void attn_fwd_cpu(const AttnFwdParams& p) {
  if (p.kv_pages.block_table == nullptr) return attn::cpu::flash_forward(p, nullptr);
  const AttnShape& sh = p.shape;
  std::vector<int64_t> num_keys(std::max<int64_t>(sh.batch, 0));
  for (int64_t b = 0; b < sh.batch; ++b) {
    num_keys[b] = int64_t(sh.cu_seqlens_k[b + 1]) - sh.cu_seqlens_k[b];
  }
  attn::cpu::KeySource source;
  source.num_keys = num_keys.data();
  source.ctx = &p.kv_pages;
  source.locate = &locate_paged_key;
  attn::cpu::flash_forward(p, &source);
}

}  // namespace mpt_ext
