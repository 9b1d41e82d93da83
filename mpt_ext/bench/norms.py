"""`mpt-bench norms`: LayerNorm and RMSNorm forward and forward+backward, reported as GB/s
with docs/DESIGN.md's count (2 passes of x forward, 5 forward+backward) against the measured
copy ceiling."""
from __future__ import annotations

import time

import torch

from . import counting
from .baselines import NormSpec, norm_impls, runs_on
from .core import Prepared, Problem
from .runner import Context, make_report, run_grid

NAME = "norms"
HELP = "LayerNorm / RMSNorm fwd and fwd+bwd (GB/s)"
OPS = ("layer_norm", "rms_norm")

DEFAULTS = {
    "full": {"rows": 32768, "hidden": "768,1024,2048,4096,5120,8192,16384",
             "ops": "layer_norm,rms_norm", "passes": "fwd,fwd+bwd"},
    "small": {"rows": 256, "hidden": "256,1024", "ops": "layer_norm,rms_norm",
            "passes": "fwd,fwd+bwd"},
}


def add_arguments(p) -> None:
    p.add_argument("--rows", type=int, help="rows (tokens) per call (default: %d)"
                   % DEFAULTS["full"]["rows"])
    p.add_argument("--hidden", help="hidden sizes, comma separated (default: %s)"
                   % DEFAULTS["full"]["hidden"])
    p.add_argument("--ops", help="layer_norm, rms_norm or both")
    p.add_argument("--passes", help="fwd, fwd+bwd or both")


def _list(text: str, allowed, flag: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        if s not in allowed:
            raise SystemExit(f"{flag}: expected one of {', '.join(allowed)}, got {s!r}")
    return out


def problems(ops, hidden_sizes, rows, passes, element_size):
    out = []
    for op in ops:
        for pass_ in passes:
            for h in hidden_sizes:
                out.append(Problem(
                    key=f"{op} h={h} rows={rows} {pass_}",
                    params={"op": op, "hidden": h, "rows": rows, "pass": pass_},
                    work=counting.norm_bytes(rows, h, element_size, pass_),
                    metric=counting.GBPS[0], unit=counting.GBPS[1]))
    return out


def preparer(ctx: Context):
    def prepare(pr: Problem, impl):
        def go() -> Prepared:
            p = pr.params
            spec = NormSpec(op=p["op"], hidden=p["hidden"], eps=1e-5, dtype=ctx.dtype,
                            device=ctx.device)
            fn = impl.build(spec)
            grad = p["pass"] == counting.FWD_BWD

            def make():
                x = torch.randn(p["rows"], p["hidden"], device=ctx.device, dtype=ctx.dtype,
                                requires_grad=grad)
                w = (1 + 0.1 * torch.randn(p["hidden"], device=ctx.device, dtype=ctx.dtype)
                     ).requires_grad_(grad)
                return (x, w, torch.randn_like(x)) if grad else (x, w)
            if grad:
                def call(s):
                    x, w, dy = s
                    return torch.autograd.grad(fn(x, w), (x, w), dy)
            else:
                def call(s):
                    with torch.no_grad():
                        return fn(*s)
            first = make()
            # x and y forward; x, dy and dx backward: ~ the counted passes.
            return Prepared(call=call, inputs=first, make_inputs=make,
                            set_bytes=int(pr.work))
        return go
    return prepare


def run(ctx: Context, args) -> dict:
    started = time.time()
    dflt = DEFAULTS[ctx.profile]
    rows = args.rows or dflt["rows"]
    hidden = [int(s) for s in (args.hidden or dflt["hidden"]).split(",") if s.strip()]
    ops = _list(args.ops or dflt["ops"], OPS, "--ops")
    passes = _list(args.passes or dflt["passes"], counting.PASSES, "--passes")
    element_size = torch.empty((), dtype=ctx.dtype).element_size()
    impls = [i for i in norm_impls() if runs_on(i, ctx.device.type) and ctx.wants(i.name)]
    cases = [(pr, impl, None) for pr in problems(ops, hidden, rows, passes, element_size)
             for impl in impls]
    results = run_grid(ctx, NAME, cases, preparer(ctx))
    config = {"rows": rows, "hidden": hidden, "ops": ops, "passes": passes, "eps": 1e-5,
              "weight": True, "bias": False, "impls": [i.name for i in impls]}
    plot_spec = {"kind": "lines", "x": "hidden", "panels": ["op", "pass"], "logx": True,
                 "xlabel": "hidden size", "cols": 2}
    return make_report(ctx, NAME, results, config, plot_spec, started)
