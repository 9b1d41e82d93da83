"""CPU model checks of the CUDA attention kernels (csrc/attn/cuda/), for machines without
a GPU. Two layers are modelled in numpy:

1. Fragments: the swizzled shared-memory tiles and the ldmatrix / mma.m16n8k16 operand
   layouts as the PTX ISA defines them, driven by the SAME address formulas as tile.cuh
   (swz, load_a, load_b_nk, load_b_kn, c_to_a; mirrored here, keep them in sync). Checks
   that S = Q K^T, O = P V and the backward's S^T = K Q^T, dV = P^T dO come out right, and
   that every ldmatrix phase is bank-conflict free.
2. Control flow: the kernels' tile ranges (which key tiles a query block visits, which query
   blocks a key block visits), the choice of masked tiles, the online softmax with its -inf
   handling, the dQ / dK / dV / d(slope) sums, against dense float64 math.

They cannot catch what only hardware shows (races, pipeline waits, alignment), but they pin
the index arithmetic, which is where a first GPU run would otherwise fail.
"""
import math
import re
from pathlib import Path

import numpy as np
import pytest

LOG2E = 1.4426950408889634
KERNELS = Path(__file__).resolve().parent.parent / "csrc" / "attn" / "cuda"


# ---- the tile sizes, read from the kernels' source (not copied) ----------------------------

def _source(name):
    return (KERNELS / name).read_text()


def _eval_cpp(expr, d):
    """Value of a constant C++ expression in kD made of ints, comparisons, parentheses and
    ?: (the config aliases' template arguments)."""
    expr = re.sub(r"\bkD\b", str(d), expr)
    while "(" in expr:  # innermost parenthesis first
        expr = re.sub(r"\(([^()]*)\)", lambda m: str(_eval_flat(m.group(1))), expr, count=1)
    return _eval_flat(expr)


def _eval_flat(expr):
    cond, sep, rest = expr.partition("?")
    if not sep:
        return int(eval(expr, {}))  # a literal or a comparison of literals
    yes, _, no = rest.partition(":")
    return _eval_flat(yes) if eval(cond, {}) else _eval_flat(no)


def _alias_args(name, header):
    """The template arguments after kD of `using <name> = Config<kD, a, b, ...>;`."""
    m = re.search(rf"using {name} = \w+<kD, (.*)>;", _source(header))
    assert m, f"{name} not found in {header}"
    args, depth, cur = [], 0, ""
    for ch in m.group(1):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            args.append(cur)
            cur = ""
        else:
            cur += ch
    return args + [cur]


def _constant(pattern, header):
    m = re.search(pattern, _source(header))
    assert m, f"{pattern} not found in {header}"
    return int(m.group(1))


HEAD_DIMS = (64, 128, 256)
# keys per forward tile (FwdConfigFor<kD>::kBlockN)
FWD_BLOCK_N = {d: _eval_cpp(_alias_args("FwdConfigFor", "attn_fwd_launch.cuh")[0], d)
               for d in HEAD_DIMS}
# query rows per dK/dV step (BwdKVConfigFor<kD>::kBlockM)
BWD_KV_ROWS = {d: _eval_cpp(_alias_args("BwdKVConfigFor", "attn_bwd_launch.cuh")[0], d)
               for d in HEAD_DIMS}
# keys per dK/dV CTA (BwdKVConfig::kBlockN: 16 per warp) of the default tile, and of every
# tile a run may pick (BwdKVTiles: BwdKVConfig<kD, rows, warps, false>)
_KEYS_PER_WARP = _constant(
    r"struct BwdKVConfig \{[^}]*?static constexpr int kBlockN = (\d+) \* kWarps;",
    "attn_bwd_kernels.cuh")
BWD_KV_KEYS = _KEYS_PER_WARP * _eval_cpp(
    _alias_args("BwdKVConfigFor", "attn_bwd_launch.cuh")[1], 64)
BWD_KV_KEYS_ALL = sorted({BWD_KV_KEYS} | {
    _KEYS_PER_WARP * int(w)
    for w in re.findall(r"BwdKVConfig<\d+, \d+, (\d+), false>", _source("attn_bwd_launch.cuh"))})
BWD_Q_ROWS = _constant(r"struct BwdQConfig \{[^}]*?static constexpr int kBlockM = (\d+);",
                       "attn_bwd_kernels.cuh")


def test_tile_sizes_read_from_the_source():
    # the reader itself (a parse gone wrong fails here, not inside a model) ...
    nested = "(kD <= 64 ? 64 : (kD <= 128 ? 32 : 16))"
    assert [_eval_cpp(nested, d) for d in HEAD_DIMS] == [64, 32, 16]
    # ... and what it read: whole mma tiles (m16 rows, k16 / n8 pairs of keys)
    for size in [*FWD_BLOCK_N.values(), *BWD_KV_ROWS.values(), *BWD_KV_KEYS_ALL, BWD_Q_ROWS]:
        assert size > 0 and size % 16 == 0
    assert BWD_KV_KEYS_ALL == [64, 128]  # 4 warps by default, 8 in the variants


# ---- 1. fragments -----------------------------------------------------------------------

def swz(cols, row, col):  # tile.cuh swz<kCols>
    unit = col >> 3
    return row * cols + ((((unit ^ row) & 7) | (unit & ~7)) * 8) + (col & 7)


def store_tile(mat, cols):
    t = np.full(mat.shape[0] * cols, np.nan)
    for r in range(mat.shape[0]):
        for c in range(cols):
            t[swz(cols, r, c)] = mat[r, c] if c < mat.shape[1] else 0.0
    return t


def ldmatrix_x4(tile, addrs, trans=False):
    """PTX ldmatrix .x4: lane 8i + r addresses row r of matrix i; register i of lane l holds
    elements (l // 4, 2 (l % 4) + {0, 1}) of matrix i (of its transpose with .trans)."""
    regs = [[None] * 4 for _ in range(32)]
    for i in range(4):
        m = np.array([tile[addrs[8 * i + r]:addrs[8 * i + r] + 8] for r in range(8)])
        assert not np.isnan(m).any(), "address outside the tile"
        if trans:
            m = m.T
        for lane in range(32):
            regs[lane][i] = (m[lane // 4, 2 * (lane % 4)], m[lane // 4, 2 * (lane % 4) + 1])
    return regs


def load_a(tile, cols, r0, c0):
    return ldmatrix_x4(tile, [swz(cols, r0 + (l & 15), c0 + (l >> 4) * 8) for l in range(32)])


def load_b_nk(tile, cols, n0, k0):
    return ldmatrix_x4(tile, [swz(cols, n0 + (l & 7) + (l >> 4) * 8, k0 + ((l >> 3) & 1) * 8)
                              for l in range(32)])


def load_b_kn(tile, cols, k0, n0):
    return ldmatrix_x4(tile, [swz(cols, k0 + (l & 15), n0 + (l >> 4) * 8) for l in range(32)],
                       trans=True)


def mma(c, a, b0, b1):
    """PTX mma.m16n8k16 .row.col: A a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..),
    a3 (g+8, 2t+8..); B b0 (k 2t.., n g), b1 (k 2t+8.., n g); C c0,c1 (g, 2t..), c2,c3 (g+8, 2t..)."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2 * t:2 * t + 2] = a[lane][0]
        A[g + 8, 2 * t:2 * t + 2] = a[lane][1]
        A[g, 2 * t + 8:2 * t + 10] = a[lane][2]
        A[g + 8, 2 * t + 8:2 * t + 10] = a[lane][3]
        B[2 * t:2 * t + 2, g] = b0[lane]
        B[2 * t + 8:2 * t + 10, g] = b1[lane]
    C = A @ B
    for lane in range(32):
        g, t = lane // 4, lane % 4
        c[lane][0] += C[g, 2 * t]
        c[lane][1] += C[g, 2 * t + 1]
        c[lane][2] += C[g + 8, 2 * t]
        c[lane][3] += C[g + 8, 2 * t + 1]


def c_to_a(c0, c1):
    return [[(c0[l][0], c0[l][1]), (c0[l][2], c0[l][3]), (c1[l][0], c1[l][1]),
             (c1[l][2], c1[l][3])] for l in range(32)]


def frags(n):
    return [[[0.0] * 4 for _ in range(32)] for _ in range(n)]


def frag_to_mat(acc):
    m = np.zeros((16, len(acc) * 8))
    for nt, c in enumerate(acc):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            m[g, nt * 8 + 2 * t:nt * 8 + 2 * t + 2] = c[lane][0:2]
            m[g + 8, nt * 8 + 2 * t:nt * 8 + 2 * t + 2] = c[lane][2:4]
    return m


def warp_matmul_nk(sa, sb, cols, a_row0, n_rows):
    """One warp's 16 x n_rows block of A B^T with A rows from sa (at a_row0), B rows from sb,
    both [row][k] tiles: the kernels' S = Q K^T (and S^T = K Q^T, dP = dO V^T) loop."""
    acc = frags(n_rows // 8)
    for ks in range(cols // 16):
        a = load_a(sa, cols, a_row0, ks * 16)
        for p in range(n_rows // 16):
            b = load_b_nk(sb, cols, p * 16, ks * 16)
            mma(acc[2 * p], a, [x[0] for x in b], [x[1] for x in b])
            mma(acc[2 * p + 1], a, [x[2] for x in b], [x[3] for x in b])
    return acc


def warp_matmul_kn(acc_a, sb, cols):
    """acc_a (16 x K accumulators, reused as A operands) times the [k][n] tile sb: P V, dQ = dS K,
    dV = P^T dO."""
    out = frags(cols // 8)
    for kk in range(len(acc_a) // 2):
        a = c_to_a(acc_a[2 * kk], acc_a[2 * kk + 1])
        for dp in range(cols // 16):
            b = load_b_kn(sb, cols, kk * 16, dp * 16)
            mma(out[2 * dp], a, [x[0] for x in b], [x[1] for x in b])
            mma(out[2 * dp + 1], a, [x[2] for x in b], [x[3] for x in b])
    return out


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_fragment_layouts(fresh_seed, d):
    # a dK/dV step's query rows, a forward key tile; the last warp of the step
    rows, keys = BWD_KV_ROWS[d], FWD_BLOCK_N[d]
    warp = rows // 16 - 1
    rng = np.random.default_rng(fresh_seed)
    q = rng.standard_normal((max(rows, 16 * (warp + 1)), d))
    k = rng.standard_normal((keys, d))
    v = rng.standard_normal((keys, d))
    sq, sk, sv = store_tile(q, d), store_tile(k, d), store_tile(v, d)
    r0 = 16 * warp
    s = warp_matmul_nk(sq, sk, d, r0, keys)  # forward S = Q K^T
    np.testing.assert_allclose(frag_to_mat(s), q[r0:r0 + 16] @ k.T, atol=1e-9)
    o = warp_matmul_kn(s, sv, d)  # O = P V
    np.testing.assert_allclose(frag_to_mat(o), frag_to_mat(s) @ v, atol=1e-9)
    st = warp_matmul_nk(sk, sq, d, 0, (q.shape[0] // 16) * 16)  # dK/dV kernel: S^T = K Q^T
    n_q = (q.shape[0] // 16) * 16
    np.testing.assert_allclose(frag_to_mat(st), k[:16] @ q[:n_q].T, atol=1e-9)
    dv = warp_matmul_kn(st, store_tile(q[:n_q], d), d)  # dV = P^T dO (dO = q here)
    np.testing.assert_allclose(frag_to_mat(dv), frag_to_mat(st) @ q[:n_q], atol=1e-9)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_swizzle_conflict_free(d):
    def phases_ok(addrs):  # each 8-address phase must hit 8 distinct 16-byte bank groups
        return all(len({(a * 2 % 128) // 16 for a in addrs[8 * i:8 * i + 8]}) == 8
                   for i in range(4))
    for r0 in range(0, 64, 16):
        for c0 in range(0, d, 16):
            assert phases_ok([swz(d, r0 + (l & 15), c0 + (l >> 4) * 8) for l in range(32)])
            assert phases_ok([swz(d, r0 + (l & 7) + (l >> 4) * 8, c0 + ((l >> 3) & 1) * 8)
                              for l in range(32)])
    # a permutation of each row's units: nothing overwritten, nothing left out
    assert sorted(swz(d, r, c) for r in range(8) for c in range(d)) == list(range(8 * d))


# ---- 2. control flow --------------------------------------------------------------------

def visible_keys(i, sq, sk, causal, wl, wr):  # attention_mask.h
    diag = i + sk - sq
    lo, hi = 0, sk
    if wl >= 0:
        lo = max(diag - wl, 0)
    right = 0 if causal else wr
    if right >= 0:
        hi = min(diag + right + 1, sk)
    return lo, hi


def dense(q, k, v, do, slope, scale, cap, causal, wl, wr):
    sq, sk = q.shape[0], k.shape[0]
    raw = scale * q @ k.T
    s = cap * np.tanh(raw / cap) if cap > 0 else raw.copy()
    i, j = np.arange(sq)[:, None], np.arange(sk)[None, :]
    s = s - slope * np.abs(i + sk - sq - j)
    mask = np.zeros((sq, sk), bool)
    for r in range(sq):
        lo, hi = visible_keys(r, sq, sk, causal, wl, wr)
        mask[r, lo:max(hi, lo)] = True
    s = np.where(mask, s, -np.inf)
    m = s.max(1, keepdims=True) if sk else np.full((sq, 1), -np.inf)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    l = p.sum(1, keepdims=True)
    P = np.where(l > 0, p / np.where(l > 0, l, 1), 0)
    lse = np.where(l[:, 0] > 0, np.log(np.where(l[:, 0] > 0, l[:, 0], 1)) + m[:, 0], -np.inf)
    o = P @ v
    dS = P * (do @ v.T - (do * o).sum(1, keepdims=True))
    dslope = -(dS * np.abs(i + sk - sq - j)).sum()
    draw = dS * ((1 - np.tanh(raw / cap) ** 2) if cap > 0 else 1)
    return o, lse, scale * draw @ k, scale * draw.T @ q, P.T @ do, dslope


def score_units(slope, scale, cap):  # seq_score.cuh score_kind, ScoreUnits::make
    """(folded, exp_scale, slope in units of u)."""
    folded = cap == 0 and scale >= 2.0 ** -32
    return (True, scale * LOG2E, slope / scale) if folded else (False, LOG2E, slope)


def score_u(acc, i, j, sq, sk, units, scale, cap):  # ScoreUnits::full
    folded, _, slope_u = units
    v = acc if folded else (cap * np.tanh(acc * scale / cap) if cap > 0 else acc * scale)
    return v - slope_u * abs(i + sk - sq - j)


def key_tiles(m0, m_last, sq, sk, mask, bn):  # fwd / dQ kernels: n_min, n_max, TileKeys
    first, last = visible_keys(m0, sq, sk, *mask), visible_keys(m_last, sq, sk, *mask)
    n_min = first[0] // bn
    n_max = (last[1] + bn - 1) // bn if last[1] > first[0] else n_min
    return n_min, n_max, first, last


def model_fwd(q, k, v, slope, scale, cap, mask, bm, bn):
    sq, sk, d = q.shape[0], k.shape[0], q.shape[1]
    units = score_units(slope, scale, cap)
    folded, exp_scale, slope_u = units
    out, lse = np.full((sq, d), np.nan), np.full(sq, np.nan)
    for m0 in range(0, sq, bm):
        m_last = min(m0 + bm, sq) - 1
        n_min, n_max, first, last = key_tiles(m0, m_last, sq, sk, mask, bn)
        for i in range(m0, m_last + 1):
            lo, hi = visible_keys(i, sq, sk, *mask)
            mx, l, o = -np.inf, 0.0, np.zeros(d)
            for nb in range(n_min, n_max):
                n0 = nb * bn
                masked = not (n0 >= last[0] and n0 + bn <= first[1])
                # ScoreUnits::tile_slope: every key on one side of every row's diagonal
                before = n0 + bn - 1 <= m0 + sk - sq
                after = n0 >= m0 + bm - 1 + sk - sq
                fast = folded and not masked and (before or after)
                tile_slope = slope_u if before else -slope_u
                u = np.empty(bn)  # u + row_shift, each lane's own shift (col0) added
                for c, j in enumerate(range(n0, n0 + bn)):
                    acc = q[i] @ k[j] if j < sk else 0.0
                    full = score_u(acc, i, j, sq, sk, units, scale, cap)
                    if fast:  # the m16n8 fragment: lane column col0, element column col
                        col0, col = (c % 8) // 2 * 2, c // 8 * 8 + c % 2
                        row_offset = i + sk - sq - n0 - col0
                        x = (acc + tile_slope * col) + -tile_slope * row_offset
                        assert abs(x - full) <= 1e-9 * max(1.0, abs(full)), "tile not one-sided"
                    else:
                        x = full
                    if masked and (j < lo or j >= hi):
                        x = -np.inf
                    assert masked or lo <= j < hi, "unmasked tile holds an invisible key"
                    u[c] = x
                new = max(mx, u.max())
                ref = 0.0 if new == -np.inf else new
                rescale, mx = 2.0 ** ((mx - ref) * exp_scale), new
                p = 2.0 ** ((u - ref) * exp_scale)
                l = l * rescale + p.sum()
                vv = np.array([v[j] if j < sk else np.zeros(d) for j in range(n0, n0 + bn)])
                o = o * rescale + p @ vv
            out[i] = o / l if l > 0 else 0.0
            lse[i] = (mx * exp_scale + math.log2(l)) / LOG2E if l > 0 else -np.inf
    return out, lse


def model_bwd(q, k, v, o, do, lse, slope, scale, cap, mask, bm, bn, kv_keys=BWD_KV_KEYS):
    sq, sk, d = q.shape[0], k.shape[0], q.shape[1]
    causal, wl, wr = mask
    lse2 = np.where(lse == -np.inf, np.inf, lse * LOG2E)
    dsum = (do * o).sum(1)
    shift = sk - sq

    units = score_units(slope, scale, cap)
    folded, exp_scale, slope_u = units

    def tile_slope(m0, rows, n0, keys):  # ScoreUnits::tile_slope; None: the full form
        before, after = n0 + keys - 1 <= m0 + shift, n0 >= m0 + rows - 1 + shift
        return (slope_u if before else -slope_u) if before or after else None

    def p_ds(i, j, masked, tile, keys_as_rows):
        """P and dS of (query i, key j) in the (m0, rows) x (n0, keys) tile of the dK/dV
        kernel (keys_as_rows) or the dQ kernel, as each computes its exp2 argument."""
        inside = i < sq and j < sk
        acc = q[i] @ k[j] if inside else 0.0
        l2 = lse2[i] if i < sq else np.inf
        full = exp_scale * score_u(acc, i, j, sq, sk, units, scale, cap) - l2
        m0, n0 = tile[0], tile[2]
        ts = tile_slope(*tile) if folded and not masked else None
        if ts is None:
            x = full
            if masked:
                lo, hi = visible_keys(i, sq, sk, *mask)
                if j < lo or j >= hi:
                    x = -np.inf
        elif keys_as_rows:  # queries are the fragment's columns: lane col0, element col
            c = i - m0
            col0, col = (c % 8) // 2 * 2, c // 8 * 8 + c % 2
            key_offset = j - (m0 + col0 + shift)
            x = exp_scale * acc + ((-ts * exp_scale) * col - l2 + ts * key_offset * exp_scale)
        else:
            c = j - n0
            col0, col = (c % 8) // 2 * 2, c // 8 * 8 + c % 2
            row_offset = i + shift - n0 - col0
            x = exp_scale * (acc + ts * col) + (-ts * row_offset * exp_scale - l2)
        if ts is not None and np.isfinite(full):
            assert abs(x - full) <= 1e-9 * max(1.0, abs(full)), "tile not one-sided"
        p = 2.0 ** x
        ds = p * ((do[i] @ v[j] if inside else 0.0) - (dsum[i] if i < sq else 0.0))
        factor = (1 - np.tanh(acc * scale / cap) ** 2) if cap > 0 else 1.0
        return p, ds, ds * factor

    dk, dv = np.full((sk, d), np.nan), np.full((sk, d), np.nan)
    for n0 in range(0, sk, kv_keys):  # dK/dV kernel, BwdKVConfig::kBlockN keys per CTA
        n1 = min(n0 + kv_keys, sk)
        right = 0 if causal else wr
        i_lo = max(n0 - shift - right if right >= 0 else 0, 0)
        i_hi = min(n1 - shift + wl if wl >= 0 else sq, sq)
        m_lo = i_lo // bm
        m_count = (i_hi + bm - 1) // bm - m_lo if i_hi > i_lo else 0
        dk[n0:n1], dv[n0:n1] = 0, 0
        for mb in range(m_lo, m_lo + m_count):
            m0 = mb * bm
            m_last = min(m0 + bm, sq) - 1
            _, _, first, last = key_tiles(m0, m_last, sq, sk, mask, bn)
            masked = not (n0 >= last[0] and n0 + kv_keys <= first[1])
            for j in range(n0, n1):
                for i in range(m0, m0 + bm):
                    p, ds, dsr = p_ds(i, j, masked, (m0, bm, n0, kv_keys), True)
                    if i < sq:
                        dv[j] += p * do[i]
                        dk[j] += dsr * q[i] * scale
    dq = np.full((sq, d), np.nan)
    row_sums = np.zeros((sq, 3))
    for m0 in range(0, sq, BWD_Q_ROWS):  # dQ kernel, BwdQConfig::kBlockM rows per CTA
        m_last = min(m0 + BWD_Q_ROWS, sq) - 1
        n_min, n_max, first, last = key_tiles(m0, m_last, sq, sk, mask, bn)
        dq[m0:m_last + 1] = 0
        for nb in range(n_min, n_max):
            n0 = nb * bn
            masked = not (n0 >= last[0] and n0 + bn <= first[1])
            for i in range(m0, m_last + 1):
                for j in range(n0, min(n0 + bn, sk)):
                    p, ds, dsr = p_ds(i, j, masked, (m0, BWD_Q_ROWS, n0, bn), False)
                    dq[i] += dsr * k[j] * scale
                    dist = abs(i + shift - j)  # DslopeRowSums: sum dS|d| - (sum dS)(sum P|d|)
                    row_sums[i] += (ds * dist, ds, p * dist)
    dslope = -sum(x - y * z for x, y, z in row_sums)
    return dq, dk, dv, dslope


MODEL_MASKS = [(False, -1, -1), (True, -1, -1), (False, 5, -1), (False, -1, 3), (False, 7, 2),
               (True, 9, -1), (False, 0, 0)]


@pytest.mark.parametrize("sq,sk", [(1, 1), (17, 17), (5, 70), (70, 5), (130, 33), (130, 130),
                                   (0, 9), (9, 0)], ids=str)
@pytest.mark.parametrize("mask", MODEL_MASKS, ids=str)
@pytest.mark.parametrize("kv_keys", BWD_KV_KEYS_ALL, ids=lambda n: f"kv{n}")
def test_control_flow(fresh_seed, sq, sk, mask, kv_keys):
    rng = np.random.default_rng(fresh_seed)
    d, scale = 8, 0.3
    for cap in (0.0, 5.0):
        slope = rng.random() * 0.5
        q, k, v, do = (rng.standard_normal((n, d)) for n in (sq, sk, sk, sq))
        ref = dense(q, k, v, do, slope, scale, cap, *mask)
        o, lse = model_fwd(q, k, v, slope, scale, cap, mask, bm=16, bn=16)
        np.testing.assert_allclose(o, ref[0], atol=1e-9)
        np.testing.assert_allclose(lse, ref[1], atol=1e-9)
        dq, dk, dv, dslope = model_bwd(q, k, v, o, do, lse, slope, scale, cap, mask, bm=16, bn=16,
                                       kv_keys=kv_keys)
        for got, want in zip((dq, dk, dv), ref[2:5]):
            np.testing.assert_allclose(got, want, atol=1e-9)
        assert abs(dslope - ref[5]) <= 1e-8 * max(1.0, abs(ref[5]))
