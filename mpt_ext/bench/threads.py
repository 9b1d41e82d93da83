"""CPU threads and CPU contention: one intra-op thread count for every contender of a run,
and the measurements that say whether a row was timed on a CPU that other processes took.

Why: on a shared machine, more intra-op threads than free cores makes every parallel region
wait on a descheduled worker, and ops with many parallel regions (a baseline's eager chain
of kernels) stall far more than one fused kernel: that made CPU speedups of 1000x out of
stalls. So a run picks its thread count once (--threads, else 1), applies it with torch.set_num_threads
(which sets torch's intra-op pool, used by at::parallel_for in our CPU kernels, and the
OpenMP and MKL thread counts that the baselines' MKL/oneDNN calls use), and records it.

Contention is measured per timed call: the run-queue wait of this process's threads
(/proc/self/task/*/schedstat, Linux: time runnable but not running). A call that waited for
a core is left out of the row's statistics (core.py), and a row where most calls waited is
flagged. Per burst, CPU time over wall time is recorded too (a library that starts more
threads than we set shows as more busy cores than threads), and per problem the 1-minute load
average (a coarse signal, lagging by a minute: it flags rows only where the run-queue wait
cannot be read)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def loadavg() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def default_threads() -> tuple[int, str]:
    """One thread, and why. Two threads on an idle 2-core machine measure real scaling (torch's
    eager ops scale, our CPU kernels barely do at the bench's small sizes), but the same run on
    a busy machine measures stalls; one thread per contender gives numbers that a rerun
    anywhere reproduces. --threads N measures N."""
    return 1, "one thread, the default (reproducible on a shared machine; --threads N for N)"


@dataclass
class ThreadPlan:
    intra_op: int
    chosen_by: str
    previous: int   # torch's setting before, restored by restore()

    def apply(self) -> None:
        """(Re)applies the setting; cheap when it is already in place."""
        if torch.get_num_threads() != self.intra_op:
            torch.set_num_threads(self.intra_op)

    def restore(self) -> None:
        if torch.get_num_threads() != self.previous:
            torch.set_num_threads(self.previous)

    def record(self) -> dict:
        return {"intra_op": self.intra_op, "chosen_by": self.chosen_by, "cores": cores(),
                "interop": torch.get_num_interop_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
                "load_at_start": loadavg()}


def plan(requested: Optional[int]) -> ThreadPlan:
    previous = torch.get_num_threads()
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return ThreadPlan(requested, "--threads", previous)
    n, why = default_threads()
    return ThreadPlan(n, why, previous)


# ---- contention ----------------------------------------------------------------------------


def _runqueue_wait_ns() -> Optional[int]:
    """Summed run-queue wait of this process's threads (ns), or None where unavailable."""
    total, found = 0, False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[1])
                found = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total if found else None


class WaitProbe:
    """The summed run-queue wait (ns) of this process's threads, cheap enough to read around
    every timed call (a pread per thread on descriptors opened once per burst). A call whose
    threads waited for a core measured the other processes, not the kernel."""

    def __init__(self):
        self.fds: list[int] = []
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            return
        for tid in tids:
            try:
                self.fds.append(os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY))
            except OSError:
                continue

    @property
    def available(self) -> bool:
        return bool(self.fds)

    def read(self) -> int:
        total = 0
        for fd in self.fds:
            try:
                total += int(os.pread(fd, 128, 0).split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended
        return total

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def __enter__(self) -> "WaitProbe":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class Clock:
    """Wall time, process CPU time and run-queue wait over a span (one timed burst)."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.wait = _runqueue_wait_ns()

    def since(self, start: "Clock") -> dict:
        out = {"wall_s": self.wall - start.wall, "cpu_s": self.cpu - start.cpu,
               "wait_s": None}
        if self.wait is not None and start.wait is not None:
            out["wait_s"] = max(0, self.wait - start.wait) * 1e-9
        return out


@dataclass
class Usage:
    """Sums of Clock spans, for one contender."""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    wait_s: Optional[float] = 0.0

    def add(self, span: dict) -> None:
        self.wall_s += span["wall_s"]
        self.cpu_s += span["cpu_s"]
        if span["wait_s"] is None or self.wait_s is None:
            self.wait_s = None
        else:
            self.wait_s += span["wait_s"]

    def summary(self, threads: int) -> dict:
        """cpu_util: busy cores on average (CPU time / wall); wait_share: the fraction of
        the threads' time spent runnable but not running."""
        if self.wall_s <= 0:
            return {}
        out = {"cpu_util": round(self.cpu_s / self.wall_s, 2)}
        if self.wait_s is not None:
            out["wait_share"] = round(self.wait_s / (self.wall_s * max(1, threads)), 3)
        return out
