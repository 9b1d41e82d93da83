"""mpt-bench: kernel microbenchmarks and end-to-end comparisons, one CLI.

    mpt-bench                      # the default suite (all), ~10 minutes on an H100
    mpt-bench attention --seqlens 2048,8192 --passes fwd
    mpt-bench norms --hidden 4096 --impls mpt_ext,compile
    python -m mpt_ext.bench decode --cache-lens 65536

Each subcommand prints a table and writes <name>.json, <name>.txt and <name>.png under
--out. Without a CUDA GPU every subcommand runs the CPU paths at small sizes and says so.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from typing import Optional, Sequence

import torch

from . import attention, decode, model, norms
from . import threads as threads_mod
from .ceilings import measure_ceilings
from .core import Settings
from .env import collect as collect_env
from .runner import SCHEMA, Context, emit

SUBCOMMANDS = {m.NAME: m for m in (attention, decode, norms, model)}
# How `all` splits its time budget (what one suite leaves unused rolls over to the next).
_BUDGET_SHARES = {"attention": 4.0, "decode": 1.5, "norms": 2.0, "model": 1.5}
_ALL_BUDGET_S = 500.0  # with start-up and the last cases, `all` stays under 10 minutes
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--out", help="output directory (default: runs/bench/<UTC time>)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    g.add_argument("--dtype", choices=("auto", *_DTYPES), default="auto",
                   help="auto: bf16 on a GPU, fp32 on a CPU")
    g.add_argument("--quick", action="store_true",
                   help="the small (CPU-sized) grids on any device: checks the harness")
    g.add_argument("--impls", help="only implementations whose name contains one of these "
                   "comma-separated substrings (e.g. mpt_ext,flex)")
    g.add_argument("--target-ms", type=float, help="measured time per case (sets repeats)")
    g.add_argument("--min-repeats", type=int)
    g.add_argument("--max-repeats", type=int)
    g.add_argument("--warmup-ms", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int,
                   help="torch intra-op threads for every implementation (our CPU kernels' "
                   "at::parallel_for and the baselines' OpenMP/MKL alike). Default: 1, which a "
                   "rerun on a busy machine reproduces")
    g.add_argument("--interleave", dest="interleave", action="store_true", default=None,
                   help="time each problem's implementations in alternating rounds (the "
                   "default on a CPU)")
    g.add_argument("--no-interleave", dest="interleave", action="store_false",
                   help="time each implementation on its own (the default on a GPU)")
    g.add_argument("--budget-s", type=float,
                   help="stop starting new cases after this many seconds; the rest are "
                   "reported as skipped (default: %d for all, none otherwise; 0: none)"
                   % _ALL_BUDGET_S)
    g.add_argument("--no-plot", action="store_true")
    g.add_argument("--no-progress", action="store_true")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="mpt-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Subcommand options: mpt-bench <subcommand> --help")
    sub = parser.add_subparsers(dest="command", metavar="{all,attention,decode,norms,model}")
    subparsers = {}
    p_all = sub.add_parser("all", help="every subcommand with its defaults (the default)")
    _common(p_all)
    subparsers["all"] = p_all
    for name, mod in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=mod.HELP)
        mod.add_arguments(p)
        _common(p)
        subparsers[name] = p
    return parser, subparsers


def _resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("mpt-bench: --device cuda but no CUDA GPU is visible")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _settings(device: torch.device, args) -> Settings:
    s = Settings.for_device(device)
    for name in ("target_ms", "min_repeats", "max_repeats", "warmup_ms", "interleave"):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    s.max_repeats = max(s.max_repeats, s.min_repeats)
    return s


def _default_out() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", "bench", stamp)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["all"] + argv  # the default suite
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    # One thread count for the whole run, chosen before anything is measured.
    plan = threads_mod.plan(args.threads)
    plan.apply()
    try:
        return _run(args, subparsers, plan)
    finally:
        plan.restore()  # in-process callers (the tests) get their setting back


def _run(args, subparsers, plan) -> int:
    device = _resolve_device(args.device)
    dtype = (_DTYPES[args.dtype] if args.dtype != "auto"
             else torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(args.seed)
    out_dir = args.out or _default_out()
    small = device.type != "cuda" or args.quick
    if device.type != "cuda":
        print(f"mpt-bench: no CUDA GPU{' requested' if args.device == 'cpu' else ' found'}: "
              f"running the CPU paths at small sizes ({str(dtype)[6:]}). The numbers compare "
              "the CPU kernels with the baselines under one thread setting; they say nothing "
              "about GPU speed.", flush=True)
    else:
        print(f"mpt-bench: {torch.cuda.get_device_name(device)}, {str(dtype)[6:]}"
              f"{', --quick: small grids (checks the harness)' if args.quick else ''}; "
              f"results in {out_dir}", flush=True)

    started = time.time()
    settings = _settings(device, args)
    settings.threads = plan.intra_op
    threads = plan.record()
    print(f"mpt-bench: {plan.intra_op} intra-op thread(s) for every implementation "
          f"({plan.chosen_by}); {'interleaved rounds' if settings.interleave else 'one at a time'}"
          , flush=True)
    env = collect_env(device)
    ceilings = measure_ceilings(settings)
    impl_filter = [s.strip() for s in args.impls.split(",") if s.strip()] if args.impls else None
    ctx = Context(device=device, dtype=dtype, settings=settings, env=env, ceilings=ceilings,
                  out_dir=out_dir, impl_filter=impl_filter, plot=not args.no_plot,
                  progress=not args.no_progress, profile="small" if small else "full",
                  threads=threads)
    if args.quick:
        ctx.notes.append("--quick: small grids")

    names = list(SUBCOMMANDS) if args.command == "all" else [args.command]
    budget = args.budget_s if args.budget_s is not None else (
        _ALL_BUDGET_S if args.command == "all" else 0)
    end = started + budget if budget and budget > 0 else None
    rc, written = 0, {}
    for i, name in enumerate(names):
        if end is not None:  # this suite's share of what is left
            shares = [_BUDGET_SHARES.get(n, 1.0) for n in names[i:]]
            ctx.deadline = time.time() + max(0.0, end - time.time()) * shares[0] / sum(shares)
        sub_args = args
        if args.command == "all":  # this subcommand's own defaults + the common options
            sub_args = subparsers[name].parse_args([])
            for k, v in vars(args).items():
                setattr(sub_args, k, v)
        try:
            rep = SUBCOMMANDS[name].run(ctx, sub_args)
            written[name] = emit(ctx, rep)
        except KeyboardInterrupt:
            raise
        except Exception:  # a harness bug in one subcommand must not lose the others
            print(f"mpt-bench {name}: failed", file=sys.stderr)
            traceback.print_exc()
            rc = 1
        print(flush=True)

    os.makedirs(out_dir, exist_ok=True)
    index = {"schema": SCHEMA, "command": args.command, "elapsed_s": round(time.time() - started, 1),
             "cpu_fallback": device.type != "cuda", "env": env, "ceilings": ceilings,
             "threads": threads, "outputs": written}
    with open(os.path.join(out_dir, "index.json"), "w") as fh:
        json.dump(index, fh, indent=1, default=str)
    print(f"mpt-bench: {', '.join(names)} done in {index['elapsed_s']:.0f} s; results in "
          f"{out_dir}", flush=True)
    return rc
