"""The measurement core every subcommand shares.

One case = one implementation on one problem; the contenders of a problem are the cases
that share it. run_contenders() prepares each, calls it once (the first call, compilation
included, is reported separately), warms it up and measures its peak memory on one
steady-state call, then times them: CUDA events around each call on a GPU,
time.perf_counter on a CPU. With settings.interleave (the CPU default) the contenders are
timed in alternating rounds (A B C, then C B A, ...), each round a short burst of calls per
contender, so that a burst of load from another process hits every contender alike; without
it (the GPU default, where holding every contender's tensors at once would change what runs
out of memory) each is timed on its own, as run_case() does. Every burst runs with the same
intra-op thread count (settings.threads). A row reports the median, the 10th/25th/75th/90th
percentiles, and the flags that make it unreliable: a wide spread, and on a CPU, time spent
waiting for a core (see threads.py). Small problems rotate over several input sets whose
total is larger than the L2 cache, so that a bandwidth-bound kernel is not timed reading
from cache. Any failure becomes the row's status ("OOM", "not built", "error: ...") and the
run goes on.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from . import threads as threads_mod

# ---- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    p25_ms: float = 0.0
    p75_ms: float = 0.0

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the run-to-run noise of this case."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def iqr(self) -> float:
        """(p75 - p25) / median: the spread of the middle half, which the reliability flag
        uses (p10..p90 moves with single outliers that the median ignores)."""
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms > 0 else 0.0


def summarize(times_ms: Sequence[float]) -> Timing:
    if not times_ms:
        raise ValueError("no timings to summarize")
    return Timing(median_ms=percentile(times_ms, 50), p10_ms=percentile(times_ms, 10),
                  p90_ms=percentile(times_ms, 90), min_ms=min(times_ms), repeats=len(times_ms),
                  p25_ms=percentile(times_ms, 25), p75_ms=percentile(times_ms, 75))


# ---- settings and devices ------------------------------------------------------------------


@dataclass
class Settings:
    device: torch.device
    warmup_ms: float = 25.0   # after the first call
    target_ms: float = 150.0  # measured time per case; repeats follow from it
    min_repeats: int = 5
    max_repeats: int = 200
    max_sets: int = 32        # cap on rotating input sets
    threads: Optional[int] = None  # torch intra-op threads for every contender (None: as is)
    interleave: bool = False  # time a problem's contenders in alternating rounds
    noisy_iqr: float = 0.25   # a row whose (p75 - p25) / median exceeds this is unreliable
    # CPU: a call whose threads waited for a core longer than this share of their time is
    # left out of the statistics; a row with less than min_clean of its calls left is
    # flagged as contended.
    max_call_wait: float = 0.05
    min_clean: float = 0.75

    @classmethod
    def for_device(cls, device: torch.device) -> "Settings":
        if device.type == "cuda":
            return cls(device=device)
        # CPU runs are at small sizes; the contenders are interleaved, with enough rounds
        # for a median that a burst of load elsewhere does not move.
        return cls(device=device, warmup_ms=10.0, target_ms=200.0, min_repeats=5,
                   max_repeats=200, interleave=True)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_cache_bytes(device: torch.device) -> int:
    """The device's L2 size (0 on a CPU: no rotation there)."""
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)


def rotation_count(set_bytes: int, l2_bytes: int, max_sets: int = 32) -> int:
    """How many input sets to cycle through so that a set has been evicted from L2 by the
    time it is used again: the other sets together must exceed twice the cache."""
    if set_bytes <= 0 or l2_bytes <= 0 or set_bytes >= 2 * l2_bytes:
        return 1
    return max(1, min(max_sets, 1 + math.ceil(2 * l2_bytes / set_bytes)))


def tensor_bytes(obj: Any) -> int:
    """Total bytes of the tensors in a (nested) tuple/list/dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def all_finite(obj: Any) -> bool:
    """No NaN/inf in the floating-point tensors of a (nested) output."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(o) for o in obj)
    if isinstance(obj, dict):
        return all(all_finite(o) for o in obj.values())
    return True


# A CUDA error of this kind poisons the context: every later call would fail too.
_FATAL_CUDA_ERRORS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                      "misaligned address", "illegal instruction", "an illegal")


def is_fatal_cuda_error(status: str) -> bool:
    s = status.lower()
    return s.startswith("error") and any(m in s for m in _FATAL_CUDA_ERRORS)


def cleanup(device: torch.device, collect: bool = False) -> None:
    """Free what the previous case left behind, so that it cannot cause the next one's OOM."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---- timing --------------------------------------------------------------------------------


def _wall_ms(call: Callable[[Any], Any], inputs: Any, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    call(inputs)
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def _time_calls(call: Callable[[Any], Any], sets: Sequence[Any], n: int,
                device: torch.device) -> list[float]:
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        synchronize(device)
        for i in range(n):
            x = sets[i % len(sets)]
            starts[i].record()
            call(x)
            ends[i].record()
        synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return _time_calls_cpu(call, sets, n, None)[0]


def _time_calls_cpu(call: Callable[[Any], Any], sets: Sequence[Any], n: int,
                    probe: Optional[threads_mod.WaitProbe]) -> tuple[list[float], list[float]]:
    """Wall ms of each call, and the run-queue wait (ms, summed over this process's
    threads) around each; the waits are empty without a probe or where it cannot read them."""
    times, waits = [], []
    read = probe.read if probe is not None and probe.available else None
    for i in range(n):
        x = sets[i % len(sets)]
        w0 = read() if read else 0
        t0 = time.perf_counter()
        call(x)
        t1 = time.perf_counter()
        if read:
            waits.append((read() - w0) * 1e-6)
        times.append((t1 - t0) * 1e3)
    return times, waits


def measure(call: Callable[[Any], Any], sets: Sequence[Any], settings: Settings,
            repeats: Optional[int] = None) -> Timing:
    """Warm up, then time `repeats` calls (default: as many as fill settings.target_ms,
    within [min_repeats, max_repeats]), cycling through the input sets."""
    if not sets:
        raise ValueError("measure needs at least one input set")
    est = max(_wall_ms(call, sets[0], settings.device), 1e-3)
    warm = min(settings.max_repeats, max(1, math.ceil(settings.warmup_ms / est)))
    for i in range(warm):
        call(sets[i % len(sets)])
    if repeats is None:
        repeats = round(settings.target_ms / est)
        repeats = max(settings.min_repeats, min(settings.max_repeats, repeats))
    return summarize(_time_calls(call, sets, repeats, settings.device))


# ---- cases ---------------------------------------------------------------------------------


class Unavailable(Exception):
    """The implementation cannot run here (package not installed, feature absent)."""


class Skip(Exception):
    """The case is deliberately not run (e.g. a baseline at a size only ours is run at)."""


@dataclass
class Problem:
    """One point of a benchmark grid: what is computed, and how much work one call is."""
    key: str                  # unique, human-readable: "hd128 h16 N=2048 B=8 fwd"
    params: dict              # the sizes, for JSON and plots
    work: float               # FLOPs, bytes or tokens per call
    metric: str = "TFLOP/s"
    unit: float = 1e12


@dataclass
class Prepared:
    """An implementation ready to run on a problem."""
    call: Callable[[Any], Any]                   # call(input_set)
    inputs: Any                                  # the first input set
    make_inputs: Optional[Callable[[], Any]] = None  # more sets for L2 rotation
    set_bytes: int = 0                           # bytes one input set touches
    info: dict = field(default_factory=dict)     # facts for the row's `extra` (read after timing)
    # More calls on the same inputs, timed in the same rounds as `call` (e.g. a prefill
    # beside the whole generation); the median of each lands in `extra` as <name>_ms.
    aux: dict = field(default_factory=dict)


@dataclass
class Result:
    suite: str
    key: str
    impl: str
    kind: str                  # "ours", "baseline" or "ceiling" (a no-ALiBi upper reference)
    status: str                # "ok", "OOM", "not built", "unavailable: ...", "error: ..."
    params: dict
    metric: str
    value: Optional[float] = None   # throughput in `metric`
    timing: Optional[Timing] = None
    first_call_s: Optional[float] = None
    peak_gib: Optional[float] = None  # what the case allocated at its peak, inputs included
    input_sets: int = 1
    extra: dict = field(default_factory=dict)
    threads: Optional[int] = None     # torch intra-op threads while it was timed
    load: Optional[float] = None      # highest 1-minute load average seen around its timing
    cpu_util: Optional[float] = None  # busy cores while timed (process CPU time / wall)
    wait_share: Optional[float] = None  # share of its threads' time spent waiting for a core
    clean_share: Optional[float] = None  # share of its timed calls that did not wait (CPU)
    flags: list = field(default_factory=list)  # why its number is unreliable (empty: reliable)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def reliable(self) -> bool:
        return self.ok and not self.flags

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("timing")
        if self.timing is not None:
            d.update(asdict(self.timing))
            d["spread"] = round(self.timing.spread, 4)
            d["iqr"] = round(self.timing.iqr, 4)
        d["reliable"] = self.reliable
        return d


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, MemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg
                                              or "can't allocate memory" in msg)


def classify_error(exc: BaseException, kind: str) -> str:
    """The status a failed case reports."""
    if is_oom(exc):
        return "OOM"
    if isinstance(exc, Unavailable):
        return f"unavailable: {exc}"
    if isinstance(exc, Skip):
        return f"skipped: {exc}"
    first_line = (str(exc).strip().splitlines() or [""])[0][:160]
    if isinstance(exc, FloatingPointError):
        return f"error: {first_line}"
    if isinstance(exc, NotImplementedError):
        # Our ops raise it when this build has no kernel for the device.
        return "not built" if kind == "ours" else f"unsupported: {first_line}"
    return f"error: {type(exc).__name__}: {first_line}"


def apply_threads(settings: Settings) -> None:
    """Puts the run's intra-op thread count in place (a library may have changed it)."""
    if settings.threads is not None and torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)


@dataclass
class _Lane:
    """One timed callable: a contender's call, or one of its aux calls."""
    res: Result
    call: Callable[[Any], Any]
    sets: list
    aux: Optional[str] = None
    est_ms: float = 0.0
    burst: int = 1
    pos: int = 0               # next input set
    times: list = field(default_factory=list)
    waits: Optional[list] = field(default_factory=list)  # per call (CPU); None: unreadable
    usage: threads_mod.Usage = field(default_factory=threads_mod.Usage)
    seen_threads: set = field(default_factory=set)


def _prepare(res: Result, prepare: Callable[[], Prepared], settings: Settings,
             rotate: bool) -> tuple[Prepared, list]:
    """Prepare, first call, non-finite check, peak memory, input sets."""
    dev = settings.device
    cleanup(dev)
    base = torch.cuda.memory_allocated(dev) if settings.is_cuda else 0
    if settings.is_cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    apply_threads(settings)
    prep = prepare()
    synchronize(dev)
    t0 = time.perf_counter()
    out = prep.call(prep.inputs)
    synchronize(dev)
    res.first_call_s = round(time.perf_counter() - t0, 3)
    if not all_finite(out):  # a fast wrong answer is not a result
        raise FloatingPointError("non-finite values (NaN/inf) in the output")
    out = None
    if settings.is_cuda:
        prep.call(prep.inputs)  # settle allocator caches before measuring the peak
        torch.cuda.reset_peak_memory_stats(dev)
        _wall_ms(prep.call, prep.inputs, dev)
        res.peak_gib = round((torch.cuda.max_memory_allocated(dev) - base) / 2**30, 3)
    sets = [prep.inputs]
    if rotate and prep.make_inputs is not None:
        n = rotation_count(prep.set_bytes, l2_cache_bytes(dev), settings.max_sets)
        sets += [prep.make_inputs() for _ in range(n - 1)]
    res.input_sets = len(sets)
    return prep, sets


def _warm_up(lane: _Lane, settings: Settings) -> None:
    """Warm-up calls (at least two), timed: their median is the lane's time estimate, which
    one call alone would get wrong whenever another process took the CPU during it."""
    apply_threads(settings)
    first = max(_wall_ms(lane.call, lane.sets[0], settings.device), 1e-3)
    warm = min(settings.max_repeats, max(2, math.ceil(settings.warmup_ms / first)))
    times = [first] + [_wall_ms(lane.call, lane.sets[i % len(lane.sets)], settings.device)
                       for i in range(1, warm + 1)]
    lane.est_ms = max(percentile(times, 50), 1e-3)


def _plan_rounds(lanes: Sequence[_Lane], settings: Settings, repeats: Optional[int]) -> int:
    """Rounds, and each lane's burst (calls per round): every lane gets about the calls
    that fill settings.target_ms (within [min_repeats, max_repeats]), spread over as many
    rounds as the slowest lane has calls; `repeats` fixes the calls. One lane is one burst.
    On a GPU, bursts stay long: each starts after a synchronisation, so its first call's
    launch latency is timed, where later calls queue behind their predecessors."""
    if repeats is not None:
        want = [repeats] * len(lanes)
    else:
        want = [max(settings.min_repeats, min(settings.max_repeats,
                                              round(settings.target_ms / lane.est_ms)))
                for lane in lanes]
    rounds = min(want)
    if len(lanes) == 1:
        rounds = 1
    elif settings.is_cuda:
        rounds = min(rounds, settings.min_repeats)
    for lane, n in zip(lanes, want):
        lane.burst = max(1, round(n / rounds))
    return rounds


def _fail(res: Result, exc: BaseException, kind: str) -> None:
    res.status = classify_error(exc, kind)
    res.timing, res.value = None, None


def _clean_times(lane: _Lane, settings: Settings, threads: int) -> tuple[list, Optional[float]]:
    """The calls that did not wait for a core (all of them where waits are unknown), and
    the share of calls that were kept (None: unknown)."""
    if settings.is_cuda or not lane.waits or len(lane.waits) != len(lane.times):
        return lane.times, None
    limit = settings.max_call_wait * max(1, threads)
    clean = [t for t, w in zip(lane.times, lane.waits) if w <= limit * t]
    share = len(clean) / len(lane.times)
    # Too few clean calls for a median: the row is flagged, and keeps every call.
    return (clean if len(clean) >= min(3, len(lane.times)) else lane.times), share


def _finish(res: Result, lanes: Sequence[_Lane], problem: Problem, prep: Prepared,
            settings: Settings, load: Optional[float]) -> None:
    seen = sorted(set().union(*(lane.seen_threads for lane in lanes)))
    res.threads = seen[0] if len(seen) == 1 else None
    if len(seen) > 1:  # cannot happen while apply_threads() precedes every burst
        res.flags.append(f"thread count changed while timed: {seen}")
    n = res.threads or torch.get_num_threads()
    main = next(lane for lane in lanes if lane.aux is None)
    times, kept = _clean_times(main, settings, n)
    res.timing = summarize(times)
    res.value = problem.work / (res.timing.median_ms * 1e-3) / problem.unit
    res.extra.update(prep.info)
    for lane in lanes:
        if lane.aux is not None:
            aux_times, aux_kept = _clean_times(lane, settings, n)
            res.extra[f"{lane.aux}_ms"] = round(percentile(aux_times, 50), 4)
            if aux_kept is not None:
                kept = min(kept, aux_kept) if kept is not None else aux_kept
    if res.timing.iqr > settings.noisy_iqr:
        res.flags.append(f"noisy: IQR {100 * res.timing.iqr:.0f}% of the median")
    if settings.is_cuda:
        return  # CUDA events time the device: host contention does not enter them
    res.clean_share = None if kept is None else round(kept, 3)
    if kept is not None and kept < settings.min_clean:
        res.flags.append(f"contended: {100 * (1 - kept):.0f}% of its calls waited for a core")
    usage = threads_mod.Usage()
    for lane in lanes:
        usage.wall_s += lane.usage.wall_s
        usage.cpu_s += lane.usage.cpu_s
        usage.wait_s = (None if usage.wait_s is None or lane.usage.wait_s is None
                        else usage.wait_s + lane.usage.wait_s)
    summary = usage.summary(res.threads or 1)
    res.cpu_util, res.wait_share, res.load = summary.get("cpu_util"), summary.get(
        "wait_share"), load
    if kept is None and load is not None and load > threads_mod.cores():
        # No per-call wait here: the load average is all there is to go by.
        res.flags.append(f"load {load:.1f} > {threads_mod.cores()} cores")
    if res.cpu_util is not None and res.cpu_util > n + 0.5:
        res.flags.append(f"{res.cpu_util:.1f} busy cores with {n} thread(s) set")


def run_contenders(suite: str, problem: Problem,
                   contenders: Sequence[tuple[str, str, Callable[[], Prepared]]],
                   settings: Settings, repeats: Optional[int] = None, rotate: bool = True,
                   collect: bool = False, log: Optional[list] = None) -> list[Result]:
    """Times the contenders (impl, kind, prepare) of one problem in alternating rounds, all
    with settings.threads; returns one Result each, in order. Never raises for a case's own
    failures (KeyboardInterrupt still stops the run). `log`, when given, receives
    (impl, aux, calls) per timed burst, in the order they ran."""
    dev = settings.device
    results, lanes, preps = [], [], {}
    load = threads_mod.loadavg()
    for impl, kind, prepare in contenders:
        res = Result(suite=suite, key=problem.key, impl=impl, kind=kind, status="ok",
                     params=dict(problem.params), metric=problem.metric)
        results.append(res)
        try:
            prep, sets = _prepare(res, prepare, settings, rotate)
            preps[id(res)] = (kind, prep)
            own = [_Lane(res, prep.call, sets)]
            own += [_Lane(res, call, sets, aux=name) for name, call in prep.aux.items()]
            for lane in own:
                _warm_up(lane, settings)
            lanes += own
        except Exception as exc:  # one failing case must not stop the run
            _fail(res, exc, kind)
            preps.pop(id(res), None)
            lanes = [lane for lane in lanes if lane.res is not res]
        else:
            continue
        # Outside the except block: the traceback (and the tensors its frames hold) is gone.
        prep = sets = own = None  # noqa: F841
        cleanup(dev, collect=True)
    if lanes:
        rounds = _plan_rounds(lanes, settings, repeats)
        for r in range(rounds):
            for lane in (lanes if r % 2 == 0 else reversed(lanes)):
                res = lane.res
                if not res.ok:
                    continue
                try:
                    apply_threads(settings)
                    lane.seen_threads.add(torch.get_num_threads())
                    sets = lane.sets[lane.pos:] + lane.sets[:lane.pos]
                    c0 = threads_mod.Clock()
                    if settings.is_cuda:
                        lane.times += _time_calls(lane.call, sets, lane.burst, dev)
                    else:
                        with threads_mod.WaitProbe() as probe:
                            times, waits = _time_calls_cpu(lane.call, sets, lane.burst, probe)
                        lane.times += times
                        if lane.waits is not None and len(waits) == len(times):
                            lane.waits += waits
                        else:
                            lane.waits = None
                    lane.usage.add(threads_mod.Clock().since(c0))
                    lane.pos = (lane.pos + lane.burst) % len(lane.sets)
                    if log is not None:
                        log.append((res.impl, lane.aux, lane.burst))
                except Exception as exc:
                    _fail(res, exc, preps.pop(id(res))[0])
        after = threads_mod.loadavg()
        load = max((x for x in (load, after) if x is not None), default=None)
        for res in results:
            if res.ok and id(res) in preps:
                try:
                    _finish(res, [lane for lane in lanes if lane.res is res], problem,
                            preps[id(res)][1], settings, load)
                except Exception as exc:
                    _fail(res, exc, res.kind)
    # The tensors (and failures' tracebacks) go before the next problem is prepared.
    lanes = preps = prep = sets = own = None  # noqa: F841
    failed = any(not r.ok for r in results)
    try:
        cleanup(dev, collect=failed or collect)
    except Exception as exc:  # a poisoned CUDA context fails even here; the status says why
        for res in results:
            if res.ok:
                res.status = classify_error(exc, res.kind)
    return results


def run_case(suite: str, problem: Problem, impl: str, kind: str,
             prepare: Callable[[], Prepared], settings: Settings,
             repeats: Optional[int] = None, rotate: bool = True,
             collect: bool = False) -> Result:
    """One contender on its own: prepare, first call, warm-up, peak memory, timing."""
    return run_contenders(suite, problem, [(impl, kind, prepare)], settings, repeats=repeats,
                          rotate=rotate, collect=collect)[0]


def skipped(suite: str, problem: Problem, impl: str, kind: str, why: str) -> Result:
    return Result(suite=suite, key=problem.key, impl=impl, kind=kind, status=f"skipped: {why}",
                  params=dict(problem.params), metric=problem.metric)
