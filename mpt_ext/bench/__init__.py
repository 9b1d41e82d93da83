"""mpt_ext.bench: mpt-bench, the kernel microbenchmarks and end-to-end comparisons.

Layout: core (timing, statistics, one case), counting (FLOPs and bytes per DESIGN.md),
ceilings and env (in every report), baselines/ (one adapter per implementation),
attention / decode / norms / model (the subcommands), runner (the grid loop and outputs),
report (tables, JSON, plots, Markdown), cli (argument parsing)."""
