"""The measurement core every subcommand shares.

One case = one implementation on one problem. run_case() prepares it, calls it once (the
first call, compilation included, is reported separately), warms it up, measures its peak
memory on one steady-state call, then times it: CUDA events around each call on a GPU,
time.perf_counter on a CPU. It reports the median and the 10th/90th percentiles. Small
problems rotate over several input sets whose total is larger than the L2 cache, so that a
bandwidth-bound kernel is not timed reading from cache. Any failure becomes the row's status
("OOM", "not built", "error: ...") and the run goes on.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

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

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the run-to-run noise of this case."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0


def summarize(times_ms: Sequence[float]) -> Timing:
    if not times_ms:
        raise ValueError("no timings to summarize")
    return Timing(median_ms=percentile(times_ms, 50), p10_ms=percentile(times_ms, 10),
                  p90_ms=percentile(times_ms, 90), min_ms=min(times_ms), repeats=len(times_ms))


# ---- settings and devices ------------------------------------------------------------------


@dataclass
class Settings:
    device: torch.device
    warmup_ms: float = 25.0   # after the first call
    target_ms: float = 150.0  # measured time per case; repeats follow from it
    min_repeats: int = 5
    max_repeats: int = 200
    max_sets: int = 32        # cap on rotating input sets

    @classmethod
    def for_device(cls, device: torch.device) -> "Settings":
        if device.type == "cuda":
            return cls(device=device)
        # CPU runs are smoke runs at small sizes: few, short repeats.
        return cls(device=device, warmup_ms=5.0, target_ms=30.0, min_repeats=3, max_repeats=20)

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
    times = []
    for i in range(n):
        x = sets[i % len(sets)]
        t0 = time.perf_counter()
        call(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


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

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("timing")
        if self.timing is not None:
            d.update(asdict(self.timing))
            d["spread"] = round(self.timing.spread, 4)
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


def run_case(suite: str, problem: Problem, impl: str, kind: str,
             prepare: Callable[[], Prepared], settings: Settings,
             repeats: Optional[int] = None, rotate: bool = True,
             collect: bool = False) -> Result:
    """Prepare, first call, warm-up, peak memory, timing; never raises for the case's own
    failures (KeyboardInterrupt still stops the run)."""
    dev = settings.device
    res = Result(suite=suite, key=problem.key, impl=impl, kind=kind, status="ok",
                 params=dict(problem.params), metric=problem.metric)
    failed = False
    try:
        cleanup(dev)
        base = torch.cuda.memory_allocated(dev) if settings.is_cuda else 0
        if settings.is_cuda:
            torch.cuda.reset_peak_memory_stats(dev)
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
        res.timing = measure(prep.call, sets, settings, repeats=repeats)
        res.value = problem.work / (res.timing.median_ms * 1e-3) / problem.unit
        res.extra.update(prep.info)
    except Exception as exc:  # one failing case must not stop the run
        res.status = classify_error(exc, kind)
        res.timing, res.value = None, None
        failed = True
    # Outside the except block: the traceback (and the tensors its frames hold) is gone.
    prep = sets = out = None  # noqa: F841
    try:
        cleanup(dev, collect=failed or collect)
    except Exception as exc:  # a poisoned CUDA context fails even here; the status says why
        if res.ok:
            res.status = classify_error(exc, kind)
    return res


def skipped(suite: str, problem: Problem, impl: str, kind: str, why: str) -> Result:
    return Result(suite=suite, key=problem.key, impl=impl, kind=kind, status=f"skipped: {why}",
                  params=dict(problem.params), metric=problem.metric)
