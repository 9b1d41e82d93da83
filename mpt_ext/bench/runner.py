"""What the subcommands share beyond timing: the run's context, the loop over a grid of
problems x implementations with a progress bar, and writing a subcommand's outputs."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch

from . import report
from . import threads as threads_mod
from .core import (Prepared, Problem, Result, Settings, is_fatal_cuda_error, run_contenders,
                   skipped)

SCHEMA = "mpt-bench/1"


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype
    settings: Settings
    env: dict
    ceilings: dict
    out_dir: str
    profile: str = "full"                    # grid sizes: "full" (GPU) or "small" (CPU, --quick)
    impl_filter: Optional[list[str]] = None  # substrings of impl names to keep
    plot: bool = True
    progress: bool = True
    notes: list[str] = field(default_factory=list)
    deadline: Optional[float] = None         # time.time() after which cases are skipped
    fatal: Optional[str] = None              # a CUDA error that poisoned the context
    threads: dict = field(default_factory=dict)  # the run's thread plan (threads.ThreadPlan)

    @property
    def cpu_fallback(self) -> bool:
        return self.device.type != "cuda"

    def wants(self, impl_name: str) -> bool:
        if not self.impl_filter:
            return True
        return any(f.lower() in impl_name.lower() for f in self.impl_filter)


class _PlainProgress:
    """Stands in for tqdm where it is not installed: a line every tenth of the grid."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.n = total, desc, enabled, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, flush=True)

    def update(self, k: int = 1) -> None:
        step = max(1, self.total // 10)
        self.n += k
        if self.enabled and (self.n % step == 0 or self.n == self.total):
            print(f"{self.desc}: {self.n}/{self.total} cases", flush=True)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc, enabled)
    return tqdm(total=total, desc=desc, unit="case", disable=not enabled, dynamic_ncols=True,
                leave=False)


def run_grid(ctx: Context, suite: str, cases: Sequence[tuple[Problem, object, Optional[str]]],
             prepare: Callable[[Problem, object], Callable[[], Prepared]],
             repeats: Optional[int] = None, collect: bool = False) -> list[Result]:
    """cases: (problem, impl, skip_reason or None). impl has .name and .kind. With
    ctx.settings.interleave the contenders of one problem are timed together in alternating
    rounds; else each on its own. Results come back in the cases' order."""
    groups: "dict[str, list[int]]" = {}
    for i, (problem, _, _) in enumerate(cases):
        groups.setdefault(problem.key, []).append(i)
    if not ctx.settings.interleave:
        groups = {str(i): [i] for i in range(len(cases))}
    results: list[Optional[Result]] = [None] * len(cases)
    with _progress(len(cases), suite, ctx.progress) as bar:
        for idx in groups.values():
            problem = cases[idx[0]][0]
            bar.set_postfix_str(f"{problem.key} | "
                                + ", ".join(cases[i][1].name for i in idx), refresh=False)
            run = []
            for i in idx:
                _, impl, skip_reason = cases[i]
                if not skip_reason and ctx.fatal:
                    skip_reason = f"CUDA context lost after: {ctx.fatal}"
                if not skip_reason and ctx.deadline is not None and time.time() > ctx.deadline:
                    skip_reason = "time budget reached (--budget-s)"
                if skip_reason:
                    results[i] = skipped(suite, problem, impl.name, impl.kind, skip_reason)
                else:
                    run.append(i)
            timed = run_contenders(
                suite, problem,
                [(cases[i][1].name, cases[i][1].kind, prepare(problem, cases[i][1]))
                 for i in run], ctx.settings, repeats=repeats, collect=collect) if run else []
            for i, res in zip(run, timed):
                results[i] = res
            for i in idx:
                res = results[i]
                if not res.ok and not res.status.startswith(("skipped", "unavailable")):
                    bar.write(f"  {suite}: {problem.key} | {res.impl}: {res.status}")
                if ctx.device.type == "cuda" and is_fatal_cuda_error(res.status) and not ctx.fatal:
                    ctx.fatal = f"{problem.key} | {res.impl}: {res.status[:120]}"
                    ctx.notes.append(f"stopped: {ctx.fatal}; later cases were not run")
            bar.update(len(idx))
    return results  # type: ignore[return-value]


def make_report(ctx: Context, suite: str, results: Iterable[Result], config: dict,
                plot_spec: dict, started: float) -> dict:
    rows = [r.to_dict() for r in results]
    report.annotate(rows, ctx.ceilings)
    return {
        "schema": SCHEMA,
        "suite": suite,
        "cpu_fallback": ctx.cpu_fallback,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "env": ctx.env,
        "ceilings": ctx.ceilings,
        "config": config,
        "notes": list(ctx.notes),
        "threads": {**ctx.threads, "load_at_end": threads_mod.loadavg(),
                    "interleaved": ctx.settings.interleave},
        "plot": plot_spec,
        "elapsed_s": round(time.time() - started, 1),
        "rows": rows,
    }


def emit(ctx: Context, rep: dict) -> dict:
    """Write <suite>.json, <suite>.txt and <suite>.png under ctx.out_dir, print the table.
    Returns the paths written."""
    os.makedirs(ctx.out_dir, exist_ok=True)
    suite = rep["suite"]
    paths = {"json": os.path.join(ctx.out_dir, f"{suite}.json"),
             "table": os.path.join(ctx.out_dir, f"{suite}.txt")}
    table = report.format_table(rep)
    with open(paths["table"], "w") as fh:
        fh.write(table + "\n")
    if ctx.plot:
        png = os.path.join(ctx.out_dir, f"{suite}.png")
        try:
            report.plot(rep, png)
            paths["png"] = png
        except ImportError:
            rep["notes"].append("no plot: matplotlib is not installed here "
                                "(scripts/make-benchmarks-md draws it from the JSON)")
        except Exception as exc:  # a plotting problem must not lose the measurements
            rep["notes"].append(f"plot failed: {type(exc).__name__}: {exc}")
    report.write_json(rep, paths["json"])
    print(table, flush=True)
    return paths
