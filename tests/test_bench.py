"""mpt-bench: the counting rules, the statistics, failure handling, one thread setting and
interleaved rounds for every contender, the reliability flags, and a CPU smoke run of every
subcommand (tiny sizes, in-process so that torch is imported once)."""
import dataclasses
import json
import math
import os
import runpy
import subprocess
import sys

import pytest
import torch

from mpt_ext.bench import attention as attention_cmd
from mpt_ext.bench import cli, core, counting, report
from mpt_ext.bench import norms as norms_cmd
from mpt_ext.bench import threads as threads_mod
from mpt_ext.bench.baselines import BASELINE, OURS, AttentionImpl, NormImpl
from mpt_ext.bench.core import (Prepared, Problem, Settings, Skip, Unavailable, classify_error,
                                is_fatal_cuda_error, measure, percentile, rotation_count,
                                run_case, run_contenders, summarize)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")

# Fast, few repeats: these runs check the harness, not speed.
FAST = ["--device", "cpu", "--target-ms", "1", "--min-repeats", "2", "--max-repeats", "3",
        "--warmup-ms", "0", "--no-progress"]
TINY = {
    "attention": ["--shapes", "32x2", "--seqlens", "16,33", "--tokens", "48"],
    "decode": ["--cache-lens", "40", "--batches", "2", "--heads", "4:2", "--head-dim", "32"],
    "norms": ["--rows", "8", "--hidden", "24,64"],
    "model": ["--presets", "tiny", "--seq", "16", "--batch", "2", "--steps", "1",
              "--prompt-len", "4", "--new-tokens", "2"],
}


@pytest.fixture(autouse=True)
def one_thread():
    # The CI box is shared: one intra-op thread avoids spinning against other jobs.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- counting (docs/DESIGN.md's Performance protocol and its anchor numbers) ---------------

def test_attention_flops_match_design_formula_and_anchor():
    # hd128, N=8192, 16384 tokens -> B=2, 16 heads: 4*B*H*N*N*D/2.
    fwd = counting.attention_flops(2, 16, 8192, 8192, 128, causal=True)
    assert fwd == 4 * 2 * 16 * 8192 * 8192 * 128 / 2 == 549755813888
    assert counting.attention_flops(2, 16, 8192, 8192, 128, True, "fwd+bwd") == 3.5 * fwd
    assert counting.attention_flops(2, 16, 8192, 8192, 128, causal=False) == 2 * fwd
    # The anchor: flex ALiBi forward at 1.545 ms is 355.8 TFLOP/s.
    assert counting.throughput(fwd, 1.545, 1e12) == pytest.approx(355.8, abs=0.1)
    with pytest.raises(ValueError, match="pass_"):
        counting.attention_flops(1, 1, 1, 1, 1, True, "bwd")


def test_norm_and_decode_bytes_match_anchors():
    # F.layer_norm bf16, 32768 x 768: fwd 0.0702 ms -> 1433 GB/s, fwd+bwd 0.3303 ms -> 762.
    fwd = counting.norm_bytes(32768, 768, 2, "fwd")
    assert fwd == 2 * 32768 * 768 * 2
    assert counting.norm_bytes(32768, 768, 2, "fwd+bwd") == 2.5 * fwd
    assert counting.throughput(fwd, 0.0702, 1e9) == pytest.approx(1433.1, rel=2e-3)
    assert counting.throughput(2.5 * fwd, 0.3303, 1e9) == pytest.approx(761.9, rel=2e-3)
    # Decode, 32 heads x 128, 65536 cached keys, bf16: eager 0.4405 ms -> 2437.5 GB/s.
    kv = counting.decode_bytes(1, 32, 65536, 128, 2)
    assert kv == 2 * 32 * 65536 * 128 * 2
    assert counting.throughput(kv, 0.4405, 1e9) == pytest.approx(2437.5, rel=1e-3)
    # GQA reads only the KV heads.
    assert counting.decode_bytes(1, 8, 65536, 128, 2) == kv / 4


def test_model_flops_match_the_hf_anchor_mfu():
    # HF MPT-125M: 123.6M params, seq 2048, 63034 tokens/s -> 6.2% of 989 TFLOP/s.
    fpt = counting.model_flops_per_token(123.6e6, 12, 768, 2048)
    assert fpt * 63034 / 989e12 == pytest.approx(0.062, abs=5e-4)


def test_ceiling_counts():
    assert counting.copy_bytes(2**30) == 2**31
    assert counting.matmul_flops(8192, 8192, 8192) == 2 * 8192**3


# ---- statistics ----------------------------------------------------------------------------

def test_percentile_interpolates_between_order_statistics():
    vals = [10.0, 1.0, 7.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]  # 1..10, shuffled
    assert percentile(vals, 50) == pytest.approx(5.5)
    assert percentile(vals, 10) == pytest.approx(1.9)
    assert percentile(vals, 90) == pytest.approx(9.1)
    assert percentile(vals, 0) == 1.0 and percentile(vals, 100) == 10.0
    assert percentile([4.2], 90) == 4.2
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_reports_median_and_spread():
    t = summarize([2.0, 1.0, 3.0, 100.0, 2.0])  # one outlier does not move the median
    assert t.median_ms == 2.0 and t.min_ms == 1.0 and t.repeats == 5
    assert t.p10_ms == pytest.approx(1.4) and t.p90_ms == pytest.approx(61.2)
    assert t.spread == pytest.approx((61.2 - 1.4) / 2.0)
    with pytest.raises(ValueError):
        summarize([])


def test_rotation_count_exceeds_l2():
    l2 = 50 * 2**20
    assert rotation_count(200 * 2**20, l2) == 1          # larger than 2x L2: no rotation
    assert rotation_count(0, l2) == 1 and rotation_count(1024, 0) == 1  # CPU: none
    n = rotation_count(4 * 2**20, l2, max_sets=64)
    assert (n - 1) * 4 * 2**20 >= 2 * l2                  # the others flush the cache
    assert rotation_count(1, l2, max_sets=8) == 8         # capped


def test_measure_times_the_requested_repeats_and_cycles_input_sets():
    seen = []
    settings = Settings(device=CPU, warmup_ms=0.0, target_ms=0.0, min_repeats=1)
    t = measure(seen.append, ["a", "b", "c"], settings, repeats=7)
    assert t.repeats == 7
    timed = seen[-7:]
    assert timed == ["a", "b", "c", "a", "b", "c", "a"]
    assert all(x >= 0 for x in (t.min_ms, t.p10_ms, t.median_ms, t.p90_ms))
    assert t.min_ms <= t.p10_ms <= t.median_ms <= t.p90_ms


def test_measure_picks_repeats_within_bounds():
    settings = Settings(device=CPU, warmup_ms=0.0, target_ms=1e6, min_repeats=2, max_repeats=4)
    assert measure(lambda x: None, [0], settings).repeats == 4
    settings.target_ms = 0.0
    assert measure(lambda x: None, [0], settings).repeats == 2


# ---- failures are reported and the run goes on ---------------------------------------------

def test_classify_error():
    assert classify_error(torch.cuda.OutOfMemoryError("CUDA out of memory"), BASELINE) == "OOM"
    assert classify_error(RuntimeError("DefaultCPUAllocator: can't allocate memory"),
                          BASELINE) == "OOM"
    assert classify_error(NotImplementedError("no CUDA kernel"), OURS) == "not built"
    assert classify_error(NotImplementedError("no CUDA kernel"), BASELINE).startswith(
        "unsupported: no CUDA kernel")
    assert classify_error(Unavailable("flash-attn missing"), BASELINE) == \
        "unavailable: flash-attn missing"
    assert classify_error(Skip("ours only"), BASELINE) == "skipped: ours only"
    assert classify_error(ValueError("bad\nsecond line"), BASELINE) == "error: ValueError: bad"


def test_non_finite_output_is_an_error_not_a_result():
    settings = Settings.for_device(CPU)
    nan = run_case("t", _problem(), "nan", OURS,
                   lambda: Prepared(call=lambda x: (x, x / 0 * 0), inputs=torch.ones(3)),
                   settings)
    assert nan.status == "error: non-finite values (NaN/inf) in the output"
    assert nan.value is None
    ints = run_case("t", _problem(), "ids", BASELINE,
                    lambda: Prepared(call=lambda x: x + 1, inputs=torch.arange(3)), settings)
    assert ints.ok


def test_fatal_cuda_errors_are_recognised():
    assert is_fatal_cuda_error("error: AcceleratorError: CUDA error: an illegal memory access "
                               "was encountered")
    assert is_fatal_cuda_error("error: RuntimeError: CUDA error: device-side assert triggered")
    assert not is_fatal_cuda_error("OOM")
    assert not is_fatal_cuda_error("error: ValueError: head_dim must be a multiple of 8")


def _problem():
    return Problem(key="p", params={"n": 1}, work=1e6, metric="GB/s", unit=1e9)


def test_run_case_reports_failures_without_raising():
    settings = Settings.for_device(CPU)

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 16 GiB")

    def boom_in_call():
        def call(x):
            raise RuntimeError("kernel exploded")
        return Prepared(call=call, inputs=None)
    r1 = run_case("t", _problem(), "a", BASELINE, oom, settings)
    r2 = run_case("t", _problem(), "b", BASELINE, boom_in_call, settings)
    r3 = run_case("t", _problem(), "c", OURS,
                  lambda: Prepared(call=lambda x: x * 2, inputs=torch.ones(4)), settings)
    assert (r1.status, r1.value, r1.timing) == ("OOM", None, None)
    assert r2.status == "error: RuntimeError: kernel exploded"
    assert r3.ok and r3.value > 0 and r3.timing.repeats >= settings.min_repeats
    assert r3.value == pytest.approx(1e6 / (r3.timing.median_ms * 1e-3) / 1e9)


def test_failing_baseline_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    def broken(spec):
        raise RuntimeError("this baseline is broken")

    def raises_in_call(spec):
        def fn(q, k, v):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return fn
    real = attention_cmd.attention_impls
    monkeypatch.setattr(attention_cmd, "attention_impls", lambda: [
        AttentionImpl("broken", BASELINE, "bhsd", broken),
        AttentionImpl("ooms", BASELINE, "bhsd", raises_in_call),
        *[i for i in real() if i.name == "eager (HF MPT)"],
        *[dataclasses.replace(i, name="eager, fwd+bwd only", passes=("fwd+bwd",))
          for i in real() if i.name == "eager (HF MPT)"],
    ])
    rc = cli.main(["attention", "--out", str(tmp_path), *FAST, *TINY["attention"],
                   "--no-plot"])
    assert rc == 0
    rep = json.loads((tmp_path / "attention.json").read_text())
    by_impl = {}
    for r in rep["rows"]:
        by_impl.setdefault(r["impl"], []).append(r)
    assert all(r["status"] == "error: RuntimeError: this baseline is broken"
               for r in by_impl["broken"])
    assert all(r["status"] == "OOM" for r in by_impl["ooms"])
    assert len(by_impl["eager (HF MPT)"]) == 4  # 2 seqlens x 2 passes, all ran
    assert all(r["status"] == "ok" and r["value"] > 0 for r in by_impl["eager (HF MPT)"])
    assert [r["params"]["pass"] for r in by_impl["eager, fwd+bwd only"]] == ["fwd+bwd"] * 2
    out = capsys.readouterr().out
    assert "this baseline is broken" in out and "OOM" in out


# ---- the baselines compute what they claim (ALiBi, bottom-right causal, GQA) ---------------

def _alibi_reference(q, k, v, slopes, causal):
    """Direct formula in float64, bhsd: softmax(q k^T / sqrt(d) - slope*|i + sk - sq - j|)."""
    h, hk, sq, sk, d = q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    k, v = (t.double().repeat_interleave(h // hk, 1) for t in (k, v))
    rel = (torch.arange(sk)[None] - (torch.arange(sq)[:, None] + sk - sq)).double()
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(d) - slopes.double()[:, None, None] * rel.abs()
    if causal:
        s = s.masked_fill(rel > 0, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("adapter", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("sq,sk,h,hk", [(17, 17, 4, 4), (5, 9, 6, 2), (1, 13, 8, 2)])
def test_attention_baselines_compute_alibi(adapter, sq, sk, h, hk, monkeypatch):
    import mpt_ext
    from mpt_ext.bench.baselines import eager, flex, sdpa
    from mpt_ext.bench.baselines.spec import AttnSpec
    if adapter == "flex":  # uncompiled: the same score_mod and mask, no minutes of compiling
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    build = {"eager": eager.build, "sdpa": sdpa.build_with_bias(None), "flex": flex.build}
    slopes = mpt_ext.alibi_slopes(h)
    spec = AttnSpec(2, h, hk, sq, sk, 32, True, slopes, torch.float32, CPU)
    q = torch.randn(2, h, sq, 32)
    k, v = torch.randn(2, hk, sk, 32), torch.randn(2, hk, sk, 32)
    out = build[adapter](spec)(q, k, v)
    ref = _alibi_reference(q, k, v, slopes, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_tile_variants_are_contenders_where_their_bucket_has_them(monkeypatch):
    """The A/B of the CUDA kernels' tiles (MPT_EXT_ATTN_FWD_TILE, MPT_EXT_ATTN_BWD_TILE): one
    contender per non-default tile, which sets its variable around each timed call; the
    backward's are timed forward+backward only; unavailable at head dims whose bucket lacks
    the tile."""
    import mpt_ext
    from mpt_ext import _library
    from mpt_ext.bench import counting
    from mpt_ext.bench.baselines import attention_impls, ours
    from mpt_ext.bench.baselines.spec import AttnSpec
    from mpt_ext.bench.core import Unavailable
    monkeypatch.setattr(_library, "ATTN_FWD_TILES",
                        {64: ("128x64",), 128: ("64x64", "128x32", "128x64"), 256: ("64x32",)})
    monkeypatch.setattr(_library, "ATTN_BWD_TILES",
                        {64: ("64x64", "128x64"), 128: ("64x32", "128x32"), 256: ("64x16",)})
    assert ours.tile_variants("fwd") == ["128x32", "128x64"]
    assert ours.tile_variants("bwd") == ["128x32", "128x64"]
    impls = {impl.name: impl for impl in attention_impls()}
    names = list(impls)
    assert names[:5] == ["mpt_ext", "mpt_ext fwd tile 128x32", "mpt_ext fwd tile 128x64",
                         "mpt_ext bwd tile 128x32", "mpt_ext bwd tile 128x64"]
    fwd, bwd = impls["mpt_ext fwd tile 128x32"], impls["mpt_ext bwd tile 128x64"]
    assert fwd.env == (("MPT_EXT_ATTN_FWD_TILE", "128x32"),) and fwd.passes is None
    assert bwd.env == (("MPT_EXT_ATTN_BWD_TILE", "128x64"),)
    assert bwd.passes == (counting.FWD_BWD,) and fwd.cuda_only and bwd.cuda_only
    slopes = mpt_ext.alibi_slopes(2)
    for impl, head_dim, available in ((fwd, 64, False), (fwd, 96, True), (fwd, 128, True),
                                      (fwd, 200, False), (bwd, 64, True), (bwd, 128, False)):
        spec = AttnSpec(1, 2, 2, 8, 8, head_dim, True, slopes, torch.float32, CPU)
        if available:
            assert callable(impl.build(spec))
        else:
            which, tile = impl.name.split()[1], impl.name.split()[-1]
            with pytest.raises(Unavailable, match=f"no {which} tile {tile} at head dim"):
                impl.build(spec)


def test_contender_env_is_set_around_forward_and_backward(monkeypatch):
    """AttentionImpl.env holds for the whole timed call, the backward included (where a
    backward tile takes effect), and the caller's own value comes back after."""
    from types import SimpleNamespace

    from mpt_ext.bench import counting
    from mpt_ext.bench.core import Problem
    variable, seen = "MPT_EXT_TEST_CONTENDER_ENV", []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q):
            seen.append(("fwd", os.environ.get(variable)))
            return q.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(("bwd", os.environ.get(variable)))
            return grad

    impl = AttentionImpl("probe", OURS, "bshd",
                         lambda spec: lambda q, k, v: Probe.apply(q) + k + v,
                         env=((variable, "on"),))
    problem = Problem(key="p", params={"D": 8, "H": 2, "N": 4, "B": 1, "pass": counting.FWD_BWD,
                                       "causal": True}, work=1.0, metric="m", unit="u")
    monkeypatch.setenv(variable, "caller's")
    ctx = SimpleNamespace(device=CPU, dtype=torch.float32)
    prepared = attention_cmd.preparer(ctx)(problem, impl)()
    prepared.call(prepared.inputs)
    assert seen == [("fwd", "on"), ("bwd", "on")]
    assert os.environ[variable] == "caller's"
    monkeypatch.delenv(variable)
    prepared.call(prepared.inputs)
    assert seen[-2:] == [("fwd", "on"), ("bwd", "on")] and variable not in os.environ


def test_deterministic_contender_is_timed_forward_backward_only(monkeypatch):
    """The backward's reproducible dQ (deterministic=True: split) A/B's against the default
    atomic dQ in the forward+backward pass; its forward is the default's, so it is not timed
    twice. So does the separate dQ kernel, through its variable."""
    import mpt_ext
    from mpt_ext.bench import counting
    from mpt_ext.bench.baselines import attention_impls, ours
    from mpt_ext.bench.baselines.spec import AttnSpec
    impl = {i.name: i for i in attention_impls()}["mpt_ext deterministic"]
    assert impl.passes == (counting.FWD_BWD,) and impl.cuda_only
    seen = []
    monkeypatch.setattr(mpt_ext, "flash_attn_func", lambda q, k, v, **kw: seen.append(kw))
    spec = AttnSpec(1, 2, 2, 8, 8, 64, True, mpt_ext.alibi_slopes(2), torch.float32, CPU)
    impl.build(spec)(None, None, None)
    ours.build_attention(spec)(None, None, None)
    assert [kw["deterministic"] for kw in seen] == [True, False]
    separate = {i.name: i for i in attention_impls()}["mpt_ext dQ separate"]
    assert separate.passes == (counting.FWD_BWD,) and separate.cuda_only
    assert separate.env == (("MPT_EXT_ATTN_BWD_DQ", "separate"),)


def test_sm90_contender_sets_the_forward_kernel_where_it_runs(monkeypatch):
    """The sm_90a forward A/B's against the portable one through MPT_EXT_ATTN_FWD_KERNEL, in
    both passes, on sm_90 GPUs and head dims up to 128 only."""
    import mpt_ext
    from mpt_ext.bench.baselines import attention_impls
    from mpt_ext.bench.baselines.spec import AttnSpec
    from mpt_ext.bench.core import Unavailable
    impl = {i.name: i for i in attention_impls()}["mpt_ext sm90"]
    assert impl.env == (("MPT_EXT_ATTN_FWD_KERNEL", "sm90"),)
    assert impl.cuda_only and impl.passes is None
    slopes = mpt_ext.alibi_slopes(2)
    with pytest.raises(Unavailable, match="needs an sm_90 GPU"):
        impl.build(AttnSpec(1, 2, 2, 8, 8, 64, True, slopes, torch.float32, CPU))
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(mpt_ext._library, "CUDA_ATTN", True)
    assert callable(impl.build(AttnSpec(1, 2, 2, 8, 8, 128, True, slopes, torch.bfloat16, cuda)))
    with pytest.raises(Unavailable, match="no sm90 forward at head dim 256"):
        impl.build(AttnSpec(1, 2, 2, 8, 8, 256, True, slopes, torch.bfloat16, cuda))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(Unavailable, match="needs an sm_90 GPU"):
        impl.build(AttnSpec(1, 2, 2, 8, 8, 64, True, slopes, torch.bfloat16, cuda))


# ---- one thread setting, interleaved rounds, reliability flags -----------------------------

def _recording_norm_impls(log):
    """Two fake norm contenders that log (name, torch threads) on every call."""
    def build(name):
        def builder(spec):
            def fn(x, w):
                log.append((name, torch.get_num_threads()))
                return x * w
            return fn
        return builder
    return [NormImpl("fake ours", OURS, build("a")), NormImpl("fake baseline", BASELINE,
                                                             build("b"))]


@pytest.mark.parametrize("threads", [1, 2])
def test_every_contender_runs_with_the_one_thread_setting(threads, tmp_path, monkeypatch):
    # The bug: baselines ran with torch's default threads on a loaded machine and stalled.
    # Every contender of a run must be timed with the one chosen count, recorded in the JSON.
    log = []
    monkeypatch.setattr(norms_cmd, "norm_impls", lambda: _recording_norm_impls(log))
    before = torch.get_num_threads()
    assert cli.main(["norms", "--out", str(tmp_path), *FAST, "--no-plot", "--rows", "8",
                     "--hidden", "16", "--ops", "layer_norm", "--passes", "fwd",
                     "--threads", str(threads)]) == 0
    assert torch.get_num_threads() == before  # the caller's setting comes back
    assert {name for name, _ in log} == {"a", "b"}
    assert {n for _, n in log} == {threads}
    rep = json.loads((tmp_path / "norms.json").read_text())
    assert rep["threads"]["intra_op"] == threads and rep["threads"]["chosen_by"] == "--threads"
    assert rep["threads"]["interleaved"] is True
    assert all(r["threads"] == threads for r in rep["rows"])
    assert f"threads: {threads} intra-op for every implementation" in \
        (tmp_path / "norms.txt").read_text()
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["threads"]["intra_op"] == threads


def test_default_threads_is_one_whatever_the_load(monkeypatch):
    # A default that follows the free cores measured scaling on an idle machine and stalls on
    # a busy one: reruns disagreed by more than 20% (issue 13).
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for load in (0.0, 1.6, 9.0):
        monkeypatch.setattr(threads_mod.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert threads_mod.default_threads()[0] == 1
        assert threads_mod.plan(None).intra_op == 1
    assert threads_mod.plan(3).intra_op == 3
    with pytest.raises(ValueError):
        threads_mod.plan(0)


def test_contenders_are_timed_in_alternating_rounds(tmp_path, monkeypatch):
    # All-A-then-all-B lets a burst of load from another process hit one contender only.
    log = []
    monkeypatch.setattr(norms_cmd, "norm_impls", lambda: _recording_norm_impls(log))
    assert cli.main(["norms", "--out", str(tmp_path), *FAST, "--no-plot", "--rows", "8",
                     "--hidden", "16", "--ops", "layer_norm", "--passes", "fwd",
                     "--min-repeats", "6", "--max-repeats", "6"]) == 0
    names = [name for name, _ in log]
    switches = sum(1 for x, y in zip(names, names[1:]) if x != y)
    assert switches >= 6, names  # sequential timing would switch once

    # The rounds alternate the order (a b, b a, a b ...), each a burst per contender.
    bursts = []
    settings = Settings(device=CPU, warmup_ms=0.0, target_ms=0.0, min_repeats=1,
                        interleave=True, threads=1)
    prep = lambda: Prepared(call=lambda x: x + 1, inputs=torch.ones(2))  # noqa: E731
    res = run_contenders("t", _problem(), [("a", OURS, prep), ("b", BASELINE, prep)],
                         settings, repeats=4, log=bursts)
    assert [b[0] for b in bursts] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(r.ok and r.timing.repeats <= 4 and r.threads == 1 for r in res)


def _fake_cpu_timings(times, waits):
    """Stands in for the CPU timer: call i (counted across bursts) took times[i] ms and
    waited waits[i] ms for a core."""
    count = [0]

    def fake(call, sets, n, probe):
        idx = range(count[0], count[0] + n)
        count[0] += n
        for i in range(n):
            call(sets[i % len(sets)])
        return [times[i % len(times)] for i in idx], [waits[i % len(waits)] for i in idx]
    return fake


def test_calls_that_waited_for_a_core_are_left_out_and_flagged(monkeypatch):
    settings = Settings(device=CPU, warmup_ms=0.0, target_ms=0.0, min_repeats=1,
                        interleave=True, threads=1)
    prep = lambda: Prepared(call=lambda x: x + 1, inputs=torch.ones(2))  # noqa: E731
    # every other call was descheduled for 2 ms: those calls are not the kernel's time
    monkeypatch.setattr(core, "_time_calls_cpu", _fake_cpu_timings([1.0, 3.0], [0.0, 2.0]))
    r = run_contenders("t", _problem(), [("a", OURS, prep)], settings, repeats=8)[0]
    assert r.ok and r.timing.median_ms == 1.0 and r.timing.repeats == 4
    assert r.clean_share == 0.5
    assert not r.reliable and any(f.startswith("contended") for f in r.flags)
    # a few short waits: kept out, row reliable
    monkeypatch.setattr(core, "_time_calls_cpu",
                        _fake_cpu_timings([1.0] * 9 + [3.0], [0.0] * 9 + [2.0]))
    r = run_contenders("t", _problem(), [("a", OURS, prep)], settings, repeats=20)[0]
    assert r.timing.median_ms == 1.0 and r.clean_share == 0.9 and r.reliable, r.flags
    # wide spread without any wait: noisy
    monkeypatch.setattr(core, "_time_calls_cpu", _fake_cpu_timings([1.0, 2.0, 3.0, 4.0], [0.0]))
    r = run_contenders("t", _problem(), [("a", OURS, prep)], settings, repeats=8)[0]
    assert r.clean_share == 1.0 and any(f.startswith("noisy") for f in r.flags)
    d = r.to_dict()
    assert d["reliable"] is False and d["iqr"] > 0.25 and d["flags"]


def test_unreliable_speedups_are_marked_in_tables_and_plots(tmp_path):
    rows = [_row("p", "ours", OURS, 50.0), _row("p", "flex", BASELINE, 100.0),
            _row("q", "ours", OURS, 300.0), _row("q", "flex", BASELINE, 200.0)]
    rows[1]["flags"] = ["contended: 60% of its calls waited for a core"]
    rows[1]["reliable"] = False
    report.annotate(rows, {})
    assert rows[0]["vs_best_baseline"] == 0.5 and rows[0]["vs_best_reliable"] is False
    assert rows[2]["vs_best_reliable"] is True
    rep = {"suite": "attention", "rows": rows, "plot": {"kind": "lines", "x": "N",
                                                         "panels": []},
           "env": {}, "ceilings": {}, "cpu_fallback": True,
           "threads": {"intra_op": 1, "chosen_by": "--threads", "cores": 2,
                       "interleaved": True, "load_at_start": 1.0}}
    table = report.format_table(rep)
    assert "0.50x?" in table and "1.50x" in table and "1.50x?" not in table
    assert "UNRELIABLE: contended" in table and "threads: 1 intra-op" in table
    md = report.markdown(rep)
    assert "| p | 50.0 | 100? | 0.50x? |" in md and "| q | 300 | 200 | 1.50x |" in md
    assert "unreliable" in md and "Threads: 1 intra-op" in md
    pytest.importorskip("matplotlib")
    report.plot(rep, str(tmp_path / "a.png"))
    rep["plot"] = {"kind": "bars", "panels": []}
    report.plot(rep, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_time_budget_skips_the_remaining_cases(tmp_path):
    rc = cli.main(["decode", "--out", str(tmp_path), *FAST, *TINY["decode"], "--no-plot",
                   "--budget-s", "1e-6"])
    assert rc == 0
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert rows and all(r["status"] == "skipped: time budget reached (--budget-s)"
                        for r in rows)


# ---- reports -------------------------------------------------------------------------------

def _row(key, impl, kind, value, status="ok"):
    return {"key": key, "impl": impl, "kind": kind, "status": status, "value": value,
            "metric": "TFLOP/s", "params": {"N": 1}}


def test_ratios_are_to_the_best_baseline_not_to_ceilings():
    rows = [_row("p", "ours", OURS, 300.0), _row("p", "flex", BASELINE, 200.0),
            _row("p", "sdpa", BASELINE, 100.0), _row("p", "nobias", "ceiling", 600.0),
            _row("p", "eager", BASELINE, None, status="OOM"),
            _row("q", "ours", OURS, 5.0)]  # no baseline succeeded at q
    report.annotate(rows, {"matmul_tflops": 600.0})
    ours, flex, sdpa, ceil, eager, lonely = rows
    assert ours["best_baseline"] == "flex" and ours["vs_best_baseline"] == 1.5
    assert flex["vs_best_baseline"] == 1.0 and sdpa["vs_best_baseline"] == 0.5
    assert ceil["vs_best_baseline"] == 3.0
    assert ours["of_ceiling"] == 0.5
    assert eager["vs_best_baseline"] is None and eager["of_ceiling"] is None
    assert lonely["vs_best_baseline"] is None


def test_markdown_pivot_marks_failures():
    rows = [_row("p", "ours", OURS, 300.0), _row("p", "flex", BASELINE, 200.0),
            _row("p", "eager", BASELINE, None, status="OOM"),
            _row("p", "sdpa", BASELINE, None, status="error: ValueError: x")]
    report.annotate(rows, {})
    md = report.markdown({"suite": "attention", "rows": rows, "plot": {}}, "a.png")
    assert "| p | 300 | 200 | OOM | error | 1.50x |" in md
    assert "- p / sdpa: error: ValueError: x" in md and "![attention](a.png)" in md


# ---- CPU smoke runs of every subcommand ----------------------------------------------------

@pytest.mark.parametrize("name", ["attention", "decode", "norms", "model"])
def test_subcommand_smoke_on_cpu(name, tmp_path, capsys):
    rc = cli.main([name, "--out", str(tmp_path), *FAST, *TINY[name]])
    assert rc == 0
    out = capsys.readouterr().out
    assert "no CUDA GPU" in out                       # says that it ran the CPU paths
    assert f"== {name} |" in out and "problem" in out  # the table
    rep = json.loads((tmp_path / f"{name}.json").read_text())
    assert rep["suite"] == name and rep["cpu_fallback"] is True
    env = rep["env"]
    for key in ("torch", "cuda", "commit", "gpu", "mpt_ext_build", "date_utc"):
        assert key in env
    assert rep["ceilings"]["copy_gbps"] > 0 and rep["ceilings"]["matmul_tflops"] > 0
    assert rep["rows"]
    assert all(r["status"] for r in rep["rows"])
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    if name != "model":  # the baselines always run on a CPU
        assert ok and all(r["value"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
                          for r in ok)
        # Every op has a CPU kernel: ours runs through the public API.
        assert all(r["status"] == "ok" for r in rep["rows"] if r["kind"] == OURS)
    else:  # ours and transformers' MPT (a test dependency) both train and generate here
        for impl in ("mpt_ext", "HF transformers"):
            train, gen = [r for r in rep["rows"] if r["impl"] == impl]
            assert train["params"]["task"] == "train" and gen["params"]["task"] == "generate"
            assert train["status"] == "ok" and train["value"] > 0, train["status"]
            assert train["extra"]["params_m"] > 0 and train["extra"]["tflops"] > 0
            # A 2-token generation on a loaded CPU may time no slower than its prefill:
            # then the row says so instead of a rate.
            assert gen["status"] == "ok" or "timing noise" in gen["status"], gen["status"]
            assert gen["extra"]["prefill_ms"] > 0
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert (tmp_path / f"{name}.txt").read_text().startswith(f"== {name}")
    assert json.loads((tmp_path / "index.json").read_text())["outputs"][name]["json"]


def test_attention_rows_follow_the_protocol(tmp_path):
    cli.main(["attention", "--out", str(tmp_path), *FAST, "--no-plot", "--impls", "eager",
              "--shapes", "32x2", "--seqlens", "16,32", "--tokens", "64", "--passes", "fwd"])
    rows = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert [(r["params"]["N"], r["params"]["B"]) for r in rows] == [(16, 4), (32, 2)]
    for r in rows:
        assert r["metric"] == "TFLOP/s"
        flops = counting.attention_flops(r["params"]["B"], 2, r["params"]["N"],
                                         r["params"]["N"], 32, True)
        assert r["value"] == pytest.approx(flops / (r["median_ms"] * 1e-3) / 1e12)


def test_module_entry_point_and_make_benchmarks_md(tmp_path, monkeypatch):
    out = tmp_path / "run"
    # `python -m mpt_ext.bench`, in this interpreter (a new one would import torch again).
    monkeypatch.setattr(sys, "argv", ["mpt-bench", "norms", "--out", str(out), *FAST,
                                      *TINY["norms"]])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("mpt_ext.bench", run_name="__main__", alter_sys=True)
    assert stop.value.code == 0
    # The docs script needs no torch: a subprocess is cheap.
    md = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-benchmarks-md"),
                           str(out), "-o", str(md)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "this run had no GPU" in text and "### norms (GB/s" in text
    assert "| layer_norm h=24 rows=8 fwd |" in text
    assert "![norms](benchmarks/norms.png)" in text
    assert (tmp_path / "benchmarks" / "norms.png").exists()


def test_runs_without_tqdm_and_matplotlib(tmp_path, monkeypatch, capsys):
    # The GPU machine may lack both: the run still completes, and the docs script draws the
    # plots from the JSON afterwards.
    for mod in ("tqdm", "matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, mod, None)
    out = tmp_path / "run"
    assert cli.main(["norms", "--out", str(out), *FAST[:-1], *TINY["norms"]]) == 0
    assert "norms: 16/16 cases" in capsys.readouterr().out  # 8 problems x 2 impls
    rep = json.loads((out / "norms.json").read_text())
    assert any("matplotlib is not installed" in n for n in rep["notes"])
    assert not (out / "norms.png").exists()
    monkeypatch.undo()
    md = tmp_path / "B.md"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-benchmarks-md"),
                           str(out), "-o", str(md)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "benchmarks" / "norms.png").stat().st_size > 1000


@pytest.mark.slow
def test_default_suite_runs_everything_on_cpu(tmp_path):
    assert cli.main(["--out", str(tmp_path), *FAST]) == 0
    for name in ("attention", "decode", "norms", "model"):
        assert (tmp_path / f"{name}.json").exists()
