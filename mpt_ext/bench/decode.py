"""`mpt-bench decode`: one new token per sequence against a long KV cache, the step that
generation repeats. Memory-bound: reported as GB/s of K and V read (docs/DESIGN.md), against
the measured copy ceiling."""
from __future__ import annotations

import time

import torch

from . import counting
from .baselines import AttnSpec, decode_impls, runs_on
from .core import Prepared, Problem, tensor_bytes
from .runner import Context, make_report, run_grid

NAME = "decode"
HELP = "one-token decoding against a KV cache (GB/s of K/V read)"

DEFAULTS = {
    "full": {"cache_lens": "1024,4096,16384,65536,131072", "batches": "1,4,16",
             "heads": "32:32,32:8", "head_dim": 128},
    "small": {"cache_lens": "256,1024", "batches": "1,2", "heads": "8:8,8:2", "head_dim": 64},
}


def add_arguments(p) -> None:
    p.add_argument("--cache-lens", help="cached keys per sequence (default: %s)"
                   % DEFAULTS["full"]["cache_lens"])
    p.add_argument("--batches", help="batch sizes (default: %s)" % DEFAULTS["full"]["batches"])
    p.add_argument("--heads", help="query_heads:kv_heads pairs (default: %s; 32:8 is GQA)"
                   % DEFAULTS["full"]["heads"])
    p.add_argument("--head-dim", type=int, help="(default: %d)" % DEFAULTS["full"]["head_dim"])


def _head_pairs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            h, hk = (int(x) for x in item.split(":"))
        except ValueError:
            raise SystemExit(f"--heads: expected Q:KV like 32:8, got {item!r}")
        if hk < 1 or h % hk:
            raise SystemExit(f"--heads: query heads must be a multiple of kv heads, got {item}")
        out.append((h, hk))
    return out


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def problems(cache_lens, batches, heads, head_dim, element_size):
    out = []
    for h, hk in heads:
        for b in batches:
            for n in cache_lens:
                out.append(Problem(
                    key=f"h{h}:{hk} d{head_dim} B={b} L={n}",
                    params={"H": h, "Hk": hk, "D": head_dim, "B": b, "L": n,
                            "heads": f"{h}:{hk}"},
                    work=counting.decode_bytes(b, hk, n, head_dim, element_size),
                    metric=counting.GBPS[0], unit=counting.GBPS[1]))
    return out


def preparer(ctx: Context):
    import mpt_ext

    def prepare(pr: Problem, impl):
        def go() -> Prepared:
            p = pr.params
            spec = AttnSpec(batch=p["B"], heads=p["H"], heads_k=p["Hk"], seqlen_q=1,
                            seqlen_k=p["L"], head_dim=p["D"], causal=True,
                            slopes=mpt_ext.alibi_slopes(p["H"], device=ctx.device),
                            dtype=ctx.dtype, device=ctx.device)
            fn = impl.build(spec)
            if impl.layout == "bshd":
                q_shape = (spec.batch, 1, spec.heads, spec.head_dim)
                kv_shape = (spec.batch, spec.seqlen_k, spec.heads_k, spec.head_dim)
            else:
                q_shape = (spec.batch, spec.heads, 1, spec.head_dim)
                kv_shape = (spec.batch, spec.heads_k, spec.seqlen_k, spec.head_dim)

            def make():
                return tuple(torch.randn(s, device=ctx.device, dtype=ctx.dtype)
                             for s in (q_shape, kv_shape, kv_shape))

            def call(x):
                with torch.no_grad():
                    return fn(*x)
            first = make()
            return Prepared(call=call, inputs=first, make_inputs=make,
                            set_bytes=tensor_bytes(first))
        return go
    return prepare


def run(ctx: Context, args) -> dict:
    started = time.time()
    dflt = DEFAULTS[ctx.profile]
    cache_lens = _ints(args.cache_lens or dflt["cache_lens"])
    batches = _ints(args.batches or dflt["batches"])
    heads = _head_pairs(args.heads or dflt["heads"])
    head_dim = args.head_dim or dflt["head_dim"]
    element_size = torch.empty((), dtype=ctx.dtype).element_size()
    impls = [i for i in decode_impls() if runs_on(i, ctx.device.type) and ctx.wants(i.name)]
    cases = [(pr, impl, None)
             for pr in problems(cache_lens, batches, heads, head_dim, element_size)
             for impl in impls]
    results = run_grid(ctx, NAME, cases, preparer(ctx))
    config = {"cache_lens": cache_lens, "batches": batches, "heads": heads,
              "head_dim": head_dim, "seqlen_q": 1, "impls": [i.name for i in impls]}
    plot_spec = {"kind": "lines", "x": "L", "panels": ["heads", "B"], "logx": True,
                 "xlabel": "cached keys", "cols": 3}
    return make_report(ctx, NAME, results, config, plot_spec, started)
