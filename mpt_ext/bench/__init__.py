"""mpt_ext.bench: mpt-bench, the kernel microbenchmarks and end-to-end comparisons.

    mpt-bench                                  # all four suites, ~10 min on an H100
    mpt-bench attention --seqlens 2048,8192    # one suite, chosen sizes
    mpt-bench --out $OUT/bench && scripts/make-benchmarks-md $OUT/bench   # BENCHMARKS.md

Layout: core (timing, statistics, one case), counting (FLOPs and bytes per docs/DESIGN.md),
ceilings and env (in every report), baselines/ (one adapter per implementation),
attention / decode / norms / model (the subcommands), runner (the grid loop and outputs),
report (tables, JSON, plots, Markdown), cli (argument parsing).

Every implementation of a run is timed with one torch intra-op thread count (--threads,
else 1: threads.py), and on a CPU the implementations
of a problem are timed in alternating rounds, leaving out calls that waited for a core
(core.py). Each suite writes <suite>.json: env, ceilings, config, the thread setting, notes
and one row per (problem, implementation) with its status ("ok", "OOM", "not built",
"unavailable: ...", "skipped: ...", "error: ..."), median/p10/p25/p75/p90 ms, throughput,
ratio to the best baseline, fraction of the measured ceiling, peak memory, and the flags
that make it unreliable (a wide spread, a contended CPU), which tables and plots mark."""
