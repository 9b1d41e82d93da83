"""Proof that the emulation tests can fail: each mutation plants one bug in a copy of the CUDA
sources (a dropped cp.async wait or barrier, swapped fragment rows, an off-by-one ALiBi
distance, ...), builds that copy's kernels library, and runs one of the emulated tests against
it in a subprocess (emulation.py's MPT_EXT_EMU_KERNELS_LIB). The test passes only when that
test fails, and for the reason the mutation should cause: the emulator's race or wait check,
or a numerical mismatch with the float64 reference. The printed line says which.

The copy is built for head dim 64 only; the mutations share one build directory, so each one
recompiles only the sources that include the file it changes."""
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

import emulation

ROOT = emulation.ROOT

ATTN_FAST = "tests/test_attention_emulated.py::test_attention_emulated[d64_causal_alibi_gqa]"
KVCACHE_FAST = "tests/test_attention_kvcache_emulated.py::test_kvcache_emulated[decode_gqa_splits3]"
KVCACHE_LAYOUT = "tests/test_attention_kvcache_emulated.py::test_kvcache_layouts_emulated["
NORM_FAST = "tests/test_norm_emulated.py::test_norm_emulated[scalar_multi_warp]"
SEQLENS_ON_DEVICE = "tests/test_seqlens_on_device_emulated.py::"
DQ_ATOMIC = "tests/test_attention_emulated.py::test_bwd_dq_variant_emulated[atomic-d64_causal_alibi_gqa]"
DQ_SPLIT = "tests/test_attention_emulated.py::test_bwd_dq_variant_emulated[split-d64_causal_alibi_gqa]"
PAGED_EMULATED = "tests/test_attention_varlen_paged_emulated.py::"
PAGED_FAST = PAGED_EMULATED + "test_paged_varlen_emulated[d64_page128_causal_alibi]"
SM90_FWD = "csrc/attn/cuda/sm90/attn_fwd_sm90_kernel.cuh"
# 520 keys in 128-key tiles: the 3-stage ring wraps
SM90_FAST = "tests/test_attention_sm90_emulated.py::test_sm90_fwd_emulated[d64_plain_ring_wraps]"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str      # relative to the tree
    old: str       # must occur exactly once
    new: str
    test: str      # the emulated test that must catch it
    expect: str    # a regular expression the failure must match


MUTATIONS = [
    Mutation("fwd_drops_cp_async_wait", "csrc/attn/cuda/attn_fwd_kernel.cuh",
             "    cp_async_wait<kStages - 2>();\n    __syncthreads();  // tile t visible",
             "    __syncthreads();  // tile t visible",
             ATTN_FAST, "has not been waited for"),
    Mutation("fwd_drops_barrier_after_wait", "csrc/attn/cuda/attn_fwd_kernel.cuh",
             "    __syncthreads();  // tile t visible to all; stage (t - 1) % kStages free for reuse\n",
             "", ATTN_FAST, "barrier interval|nothing has written"),
    Mutation("swapped_rows_in_v_fragments", "csrc/attn/cuda/tile.cuh",
             "swz<kCols>(k0 + (lane & 15), n0 + (lane >> 4) * 8)",
             "swz<kCols>(k0 + ((lane & 15) ^ 1), n0 + (lane >> 4) * 8)",
             ATTN_FAST, "max error"),
    Mutation("alibi_distance_off_by_one", "csrc/attn/cuda/seq_score.cuh",
             "return fabsf(static_cast<float>(row_offset) - static_cast<float>(col));",
             "return fabsf(static_cast<float>(row_offset) - static_cast<float>(col) + 1.f);",
             ATTN_FAST, "max error"),
    Mutation("alibi_split_drops_the_row_part", "csrc/attn/cuda/seq_score.cuh",
             "return kHasSlopes ? -tile_slope * static_cast<float>(row_offset) : 0.f;",
             "return 0.f;", ATTN_FAST, "max error"),
    Mutation("alibi_split_on_a_straddling_tile", "csrc/attn/cuda/seq_score.cuh",
             "*one_sided = !kHasSlopes || (split_ok && (before || after));",
             "*one_sided = true;",  # |distance| replaced by a signed one across the diagonal
             "tests/test_attention_emulated.py::"
             "test_score_kind_emulated[alibi_both_sides_of_the_diagonal]", "max error"),
    Mutation("one_sided_before_one_key_too_far", "csrc/attn/cuda/seq_score.cuh",
             "const bool before = n0 + n - 1 <= first_diag,", "const bool before = n0 + n - 2 <= first_diag,",
             "tests/test_attention_emulated.py::test_score_kind_emulated[alibi_tile_edge_before_d64]",
             "max error"),
    Mutation("one_sided_after_one_key_too_early", "csrc/attn/cuda/seq_score.cuh",
             "after = n0 >= last_diag;", "after = n0 + 1 >= last_diag;",
             "tests/test_attention_emulated.py::test_score_kind_emulated[alibi_tile_edge_after_d64]",
             "max error"),
    Mutation("fma_exp_on_huge_scores", "csrc/attn/cuda/fwd_softmax.cuh",
             "if (units.fma_exp_ok(ref, row_shift)) {", "if (true) {",
             "tests/test_attention_emulated.py::test_huge_slopes_keep_only_the_diagonal_emulated",
             "NaN in output"),
    Mutation("sm90_reads_v_before_it_lands", SM90_FWD,
             "    mbarrier_wait(&full_v[stage], parity);\n", "", SM90_FAST,
             "that a TMA load landed in phase 0 .* has not waited for"),
    Mutation("sm90_refills_a_stage_in_use", SM90_FWD,
             "        mbarrier_wait(&empty[s], (round & 1) ^ 1);\n", "", SM90_FAST,
             "whose previous phase no try_wait has seen complete"),
    Mutation("sm90_releases_the_stage_before_p_v_retires", SM90_FWD,
             "    wgmma_wait_group<0>(o_acc, pa_regs);\n    mbarrier_arrive(&empty[stage]);",
             "    mbarrier_arrive(&empty[stage]);\n    wgmma_wait_group<0>(o_acc, pa_regs);",
             SM90_FAST, "an in-flight wgmma reads .* changed before wgmma.wait_group"),
    Mutation("sm90_drops_the_wgmma_fence", SM90_FWD,
             "  // the previous tile's reads of S stay before the wgmma\n    wgmma_fence();\n",
             "  // the previous tile's reads of S stay before the wgmma\n", SM90_FAST,
             "wgmma.mma_async without a wgmma.fence"),
    Mutation("sm90_announces_half_the_k_bytes", SM90_FWD,
             "mbarrier_arrive_expect_tx(&full_k[s], Cfg::kKVBytes);",
             "mbarrier_arrive_expect_tx(&full_k[s], Cfg::kKVBytes / 2);", SM90_FAST, "deadlock"),
    Mutation("sm90_both_warpgroups_read_the_first_q_rows", SM90_FWD,
             "chunk * kBlockM * 64 + wg_row0 * 64 + k_elem", "chunk * kBlockM * 64 + k_elem",
             SM90_FAST, "out: max error"),
    Mutation("sm90_reads_s_before_it_retires", SM90_FWD,
             "    wgmma_wait_group<0>(s_acc);\n", "", SM90_FAST,
             "accumulator 0 of an in-flight wgmma was written"),
    Mutation("dkdv_split_column_part_with_the_forward_sign", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "fmaf(col_slope, static_cast<float>(col), -tL[il])",
             "fmaf(-col_slope, static_cast<float>(col), -tL[il])",  # keys are the rows here
             ATTN_FAST, "max error"),
    Mutation("dq_split_drops_the_row_part", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "row_bias[r] = fast ? units.row_shift(tile_slope, row_offset[r]) * units.exp_scale -",
             "row_bias[r] = fast ? 0.f -", ATTN_FAST, "dq: max error"),
    Mutation("dkdv_drops_cp_async_wait", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "  for (int it = 0; it < n_iters; ++it) {\n    cp_async_wait<kStages - 2>();\n",
             "  for (int it = 0; it < n_iters; ++it) {\n", ATTN_FAST, "has not been waited for"),
    Mutation("dslopes_reduce_drops_the_last_tree_level", "csrc/attn/cuda/attn_bwd_prep.cu",
             "for (int n = kReduceThreads / 2; n > 0; n /= 2) {",
             "for (int n = kReduceThreads / 2; n > 1; n /= 2) {",
             # the fp32-accurate test: a small loss (a partial of a few early query rows)
             # can sit inside ATTN_FAST's 2x-PyTorch tolerance
             "tests/test_attention_emulated.py::test_dslopes_emulated_fp32_accurate",
             "the fp32 bound"),
    Mutation("dslopes_with_the_outputs_delta", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "return quad_sum(ds_dist) - quad_sum(ds) * quad_sum(p_dist);",
             "return quad_sum(ds_dist);",
             "tests/test_attention_emulated.py::test_dslopes_emulated_fp32_accurate",
             "the fp32 bound"),
    Mutation("dq_atomic_add_becomes_a_store", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "if (col < d) red_add_f32(dq + row * kD + col, acc[nt][e]);",
             "if (col < d) dq[row * kD + col] = acc[nt][e];",  # the last key block wins
             DQ_ATOMIC, "dq: max error"),
    Mutation("dq_atomic_reads_ds_without_barrier", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "      __syncthreads();  // every warp's dS^T rows written; the loop-top barrier",
             "      // every warp's dS^T rows written; the loop-top barrier",
             DQ_ATOMIC, "nothing has written|dq: max error"),
    Mutation("dq_row_tiles_added_twice_on_8_warps", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "mt += Cfg::kDqRowWarps", "mt += 1",  # both row groups add rows 16.. of dQ
             "tests/test_attention_emulated.py::"
             "test_bwd_tile_variant_emulated[64-128x64-atomic-causal_alibi_gqa]",
             "dq: max error"),
    Mutation("dq_split_convert_drops_later_slices", "csrc/attn/cuda/attn_bwd_prep.cu",
             "for (int64_t s = 1; s < splits; ++s)", "for (int64_t s = 1; s < 1; ++s)",
             DQ_SPLIT, "dq: max error"),
    Mutation("split_launches_repeat_the_first_key_blocks", "csrc/attn/cuda/attn_bwd_launch.cuh",
             "x.key_block0 = static_cast<int>(first);", "x.key_block0 = 0;",
             "tests/test_attention_emulated.py::test_bwd_split_dq_over_several_launches_emulated",
             "dq: max error"),
    Mutation("dq_splits_share_one_slice", "csrc/attn/cuda/attn_bwd_kernels.cuh",
             "float* dq_slice = x.dq_accum + blockIdx.x * x.dq_split_stride;",
             "float* dq_slice = x.dq_accum;",
             # dQ stays right, its last bits follow the order the blocks ran in
             "tests/test_attention_emulated.py::test_bwd_deterministic_whatever_order_blocks_run",
             r">\s+assert all\(torch\.equal\(split"),
    Mutation("decode_drops_barrier_before_merge", "csrc/attn_kvcache/cuda/attn_kvcache_split_kv.cuh",
             "  __syncthreads();\n\n  T* out_ptr", "\n  T* out_ptr", KVCACHE_FAST, "out: max error"),
    Mutation("decode_combine_drops_first_split", "csrc/attn_kvcache/cuda/attn_kvcache_combine.cu",
             "for (int s = 0; s < a.num_splits; ++s) {",
             "for (int s = 1; s < a.num_splits; ++s) {", KVCACHE_FAST,
             "out: max error"),
    Mutation("varlen_bad_sequence_used_unchecked", "csrc/attn/cuda/seq_score.cuh",
             "    if (q_ok && k_ok) {", "    if (true) {",
             SEQLENS_ON_DEVICE + "test_bad_cu_seqlens_run_as_empty_and_are_reported[q_longer_than_max]",
             "DID NOT RAISE"),
    Mutation("varlen_tail_left_unfilled", "csrc/attn/cuda/attn_varlen_tail.cu",
             "static_cast<uint16_t*>(t.data)[off] = 0;", "(void)off;",
             SEQLENS_ON_DEVICE + "test_uncovered_rows_are_filled_on_the_device",
             r"assert torch\.equal\(out\[7:\]"),
    Mutation("decode_cache_length_used_unchecked", "csrc/attn_kvcache/kvcache_layout.h",
             "s.num_keys = s.ok ? s.cached - s.first + seqlen_new : 0;",
             "s.num_keys = s.cached - s.first + seqlen_new;",
             SEQLENS_ON_DEVICE + "test_bad_cache_seqlens_attend_to_nothing_and_are_reported[no_room]",
             r"assert torch\.equal\(out\[1\]"),
    Mutation("decode_key_position_drops_leftpad", "csrc/attn_kvcache/cuda/attn_kvcache_split_kv.cuh",
             "kvcache::place_of(a.layout, b, seq_row, first + j)",
             "kvcache::place_of(a.layout, b, seq_row, j)",
             KVCACHE_LAYOUT + "paged_3_prefill_leftpad]", "out: (NaN in output|max error)"),
    Mutation("append_rotates_keys_one_position_late", "csrc/attn_kvcache/cuda/attn_kvcache_append.cu",
             "dst[e] = rotated(a.rotary, src, e, pos);", "dst[e] = rotated(a.rotary, src, e, pos + 1);",
             KVCACHE_LAYOUT + "rotary_interleaved_causal]", r"k_cache \(rotated keys\)"),
    Mutation("q_rotation_ignores_the_row_position", "csrc/attn_kvcache/cuda/attn_kvcache_append.cu",
             "(a.rotary.per_query_position ? i : 0)", "0",
             KVCACHE_LAYOUT + "rotary_interleaved_causal]", "out: max error"),
    Mutation("paged_tile_ignores_the_page", "csrc/attn/cuda/paged_tile.cuh",
             "return {place.page * p.k_strides.batch + place.row * p.k_strides.row,",
             "return {place.row * p.k_strides.row,",
             PAGED_FAST, "differs from the packed keys'"),
    Mutation("paged_bad_entry_not_noted", "csrc/attn/cuda/paged_tile.cuh",
             "      note_bad_sequence(input_errors, SeqlensArg::kBlockTable, b);\n", "",
             PAGED_EMULATED + "test_block_table_entry_outside_the_pages_is_reported",
             "DID NOT RAISE"),
    Mutation("norm_row_sum_drops_barrier", "csrc/norm/cuda/norm_cuda_common.cuh",
             "  __syncthreads();  // scratch may still be read by the previous row_sum\n", "",
             NORM_FAST, "y: max error"),
]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutation_target_is_in_the_tree(mutation):
    """Fast guard for the slow test below: an edit that moves a mutation's text fails here,
    in every run, not only where the slow tests run."""
    assert (ROOT / mutation.path).read_text().count(mutation.old) == 1, \
        f"{mutation.name}: the text to mutate moved; update MUTATIONS"


@pytest.fixture(scope="module")
def mutant_tree(tmp_path_factory, emulation_build):
    """A copy of the sources the emulation build reads, and its (head dim 64) build dir."""
    root = tmp_path_factory.mktemp("mutant")
    tree = root / "tree"
    for part in ("csrc", "python", "cmake"):
        shutil.copytree(ROOT / part, tree / part)
    build_dir = root / "build"
    emulation.build(build_dir, source_dir=tree, target="mpt_emu_kernels", head_dims="64")
    return tree, build_dir


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_planted_bug_is_caught(mutant_tree, emulation_build, mutation):
    tree, build_dir = mutant_tree
    path = tree / mutation.path
    original = path.read_text()
    assert original.count(mutation.old) == 1, f"{mutation.name}: the text to mutate moved"
    path.write_text(original.replace(mutation.old, mutation.new))
    try:
        emulation.build(build_dir, source_dir=tree, target="mpt_emu_kernels", head_dims="64")
        env = {**os.environ, "MPT_EXT_EMU_KERNELS_LIB": str(build_dir / emulation.KERNELS_LIB)}
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                              mutation.test], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    finally:
        path.write_text(original)
    output = run.stdout + run.stderr
    assert run.returncode == 1, f"{mutation.name} was not caught:\n{output[-3000:]}"
    assert re.search(mutation.expect, output), \
        f"{mutation.name} failed for another reason:\n{output[-3000:]}"
    print(next(line for line in output.splitlines() if line.startswith("E ")))
