"""`mpt-bench attention`: ALiBi attention forward and forward+backward, ours against what a
PyTorch user has (docs/DESIGN.md's protocol: causal, 16384 tokens per batch, hd128 x 16 heads
and hd64 x 12 heads, TFLOP/s counted 4*B*H*N*N*D/2, fwd+bwd 3.5x)."""
from __future__ import annotations

import os
import time

import torch

from . import counting
from .baselines import CEILING, OURS, AttnSpec, attention_impls, runs_on
from .core import Prepared, Problem, tensor_bytes
from .runner import Context, make_report, run_grid

NAME = "attention"
HELP = "ALiBi attention fwd and fwd+bwd (TFLOP/s, peak memory)"

DEFAULTS = {
    "full": {"shapes": "128x16,64x12", "seqlens": "512,1024,2048,4096,8192,16384",
             "long_seqlens": "65536", "tokens": 16384, "passes": "fwd,fwd+bwd"},
    "small": {"shapes": "64x4", "seqlens": "128,256", "long_seqlens": "", "tokens": 512,
            "passes": "fwd,fwd+bwd"},
}


def add_arguments(p) -> None:
    p.add_argument("--shapes", help="head_dim x heads, comma separated (default: %s)"
                   % DEFAULTS["full"]["shapes"])
    p.add_argument("--seqlens", help="sequence lengths every implementation runs (default: %s)"
                   % DEFAULTS["full"]["seqlens"])
    p.add_argument("--long-seqlens", help="lengths run for ours (and the no-ALiBi ceilings) "
                   "only, where the baselines run out of memory (default: %s)"
                   % DEFAULTS["full"]["long_seqlens"])
    p.add_argument("--tokens", type=int, help="tokens per batch: batch = tokens // seqlen "
                   "(default: %d)" % DEFAULTS["full"]["tokens"])
    p.add_argument("--passes", help="fwd, fwd+bwd or both")


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            d, h = item.lower().split("x")
            out.append((int(d), int(h)))
        except ValueError:
            raise SystemExit(f"--shapes: expected HEADDIMxHEADS like 128x16, got {item!r}")
    return out


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _passes(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        if s not in counting.PASSES:
            raise SystemExit(f"--passes: expected fwd and/or fwd+bwd, got {s!r}")
    return out


def problems(shapes, seqlens, long_seqlens, tokens, passes):
    """(problem, long) pairs in table order."""
    out = []
    for d, h in shapes:
        for n in sorted(set(seqlens) | set(long_seqlens)):
            b = max(1, tokens // n)
            for pass_ in passes:
                work = counting.attention_flops(b, h, n, n, d, True, pass_)
                out.append((Problem(key=f"hd{d} h{h} N={n} B={b} {pass_}",
                                    params={"D": d, "H": h, "N": n, "B": b, "pass": pass_,
                                            "causal": True},
                                    work=work, metric=counting.TFLOPS[0],
                                    unit=counting.TFLOPS[1]),
                            n in long_seqlens and n not in seqlens))
    return out


def _spec(ctx: Context, pr: Problem) -> AttnSpec:
    import mpt_ext
    p = pr.params
    return AttnSpec(batch=p["B"], heads=p["H"], heads_k=p["H"], seqlen_q=p["N"],
                    seqlen_k=p["N"], head_dim=p["D"], causal=p["causal"],
                    slopes=mpt_ext.alibi_slopes(p["H"], device=ctx.device), dtype=ctx.dtype,
                    device=ctx.device)


def _make_inputs(spec: AttnSpec, layout: str, grad: bool):
    shape = ((spec.batch, spec.seqlen_q, spec.heads, spec.head_dim) if layout == "bshd"
             else (spec.batch, spec.heads, spec.seqlen_q, spec.head_dim))

    def make():
        q, k, v = (torch.randn(shape, device=spec.device, dtype=spec.dtype,
                               requires_grad=grad) for _ in range(3))
        if not grad:
            return q, k, v
        return q, k, v, torch.randn(shape, device=spec.device, dtype=spec.dtype)
    return make


def _with_env(env, call):
    """call with the environment variables `env` set around it (and restored after): a
    contender that picks a kernel variant, forward and backward alike."""
    if not env:
        return call

    def with_env(x):
        saved = {name: os.environ.get(name) for name, _ in env}
        os.environ.update(env)
        try:
            return call(x)
        finally:
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value
    return with_env


def preparer(ctx: Context):
    def prepare(pr: Problem, impl):
        def go() -> Prepared:
            spec = _spec(ctx, pr)
            fn = impl.build(spec)
            grad = pr.params["pass"] == counting.FWD_BWD
            make = _make_inputs(spec, impl.layout, grad)
            if grad:
                def call(x):
                    q, k, v, do = x
                    # autograd.grad, not .backward(): no .grad accumulation kernels timed.
                    return torch.autograd.grad(fn(q, k, v), (q, k, v), do)
            else:
                def call(x):
                    with torch.no_grad():
                        return fn(*x)
            call = _with_env(impl.env, call)
            first = make()
            # Inputs, gradients/outputs: about twice the set's tensors are touched per call.
            return Prepared(call=call, inputs=first, make_inputs=make,
                            set_bytes=2 * tensor_bytes(first))
        return go
    return prepare


def run(ctx: Context, args) -> dict:
    started = time.time()
    dflt = DEFAULTS[ctx.profile]
    shapes = _shapes(args.shapes or dflt["shapes"])
    seqlens = _ints(args.seqlens or dflt["seqlens"])
    long_seqlens = _ints(dflt["long_seqlens"] if args.long_seqlens is None
                         else args.long_seqlens)
    tokens = args.tokens or dflt["tokens"]
    passes = _passes(args.passes or dflt["passes"])
    impls = [i for i in attention_impls() if runs_on(i, ctx.device.type) and ctx.wants(i.name)]
    cases = []
    for pr, long_only in problems(shapes, seqlens, long_seqlens, tokens, passes):
        for impl in impls:
            if impl.passes is not None and pr.params["pass"] not in impl.passes:
                continue
            skip = None
            if long_only and impl.kind not in (OURS, CEILING):
                skip = "ours and the no-ALiBi ceilings only at this length"
            cases.append((pr, impl, skip))
    results = run_grid(ctx, NAME, cases, preparer(ctx))
    config = {"shapes": shapes, "seqlens": seqlens, "long_seqlens": long_seqlens,
              "tokens": tokens, "passes": passes, "causal": True,
              "impls": [i.name for i in impls]}
    plot_spec = {"kind": "lines", "x": "N", "panels": ["D", "H", "pass"], "logx": True,
                 "xlabel": "sequence length (batch = tokens / N)", "cols": 2,
                 "memory_table": True}
    return make_report(ctx, NAME, results, config, plot_spec, started)
