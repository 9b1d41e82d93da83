"""`mpt-bench model`: end-to-end MPT, mpt_ext.models against transformers' MptForCausalLM on
the same shapes: training throughput (tokens/s and MFU, bf16 autocast, AdamW) and
generation (prefill time and new tokens/s with a KV cache)."""
from __future__ import annotations

import time

import torch

from . import counting
from .baselines import BASELINE, OURS
from .baselines import mpt_models
from .core import Prepared, Problem
from .runner import Context, make_report, run_grid

NAME = "model"
HELP = "end-to-end MPT training tokens/s + MFU and generation, ours vs transformers"

DEFAULTS = {
    "full": {"presets": "125m,1b", "seq": 2048, "batch": {"125m": 8, "1b": 2}, "steps": 8,
             "gen_preset": "1b", "prompt_len": 2048, "new_tokens": 64, "gen_repeats": 3},
    "small": {"presets": "tiny", "seq": 64, "batch": {}, "steps": 8, "gen_preset": "tiny",
            "prompt_len": 16, "new_tokens": 32, "gen_repeats": 6},
}


class _Impl:
    def __init__(self, name, kind, build, generate):
        self.name, self.kind, self.build, self.generate = name, kind, build, generate


IMPLS = [_Impl("mpt_ext", OURS, mpt_models.build_ours, mpt_models.generate_ours),
         _Impl("HF transformers", BASELINE, mpt_models.build_hf, mpt_models.generate_hf)]


def add_arguments(p) -> None:
    p.add_argument("--presets", help="model presets to train (default: %s)"
                   % DEFAULTS["full"]["presets"])
    p.add_argument("--seq", type=int, help="training sequence length")
    p.add_argument("--batch", type=int, help="training batch (default: 8 for 125m, 2 else)")
    p.add_argument("--steps", type=int, help="timed training steps")
    p.add_argument("--gen-preset", help="preset for generation ('' to skip)")
    p.add_argument("--prompt-len", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing in training (long contexts)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-generate", action="store_true")
    p.epilog = ("Long context (docs/DESIGN.md targets): model --no-train --gen-preset 7b "
                "--prompt-len 68000 --new-tokens 32;  model --no-generate --presets 1b "
                "--seq 65536 --batch 1 --checkpointing")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def _train_prepare(ctx: Context, pr: Problem, impl) -> Prepared:
    p = pr.params
    model = impl.build(p["preset"], p["seq"], ctx.device).train()
    if p["checkpointing"]:
        model.gradient_checkpointing_enable()  # both models have this method
    cfg = mpt_models.our_config(p["preset"], p["seq"])
    n_params = _n_params(model)
    cuda = ctx.device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    vocab = cfg.vocab_size
    ids = torch.randint(0, vocab, (p["batch"], p["seq"]), device=ctx.device)
    amp_dtype = ctx.dtype if ctx.dtype != torch.float32 else None
    last_loss = {}

    def step(x):
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last_loss["loss"] = loss.detach()
        return loss
    info = {"params_m": round(n_params / 1e6, 1),
            "flops_per_token": counting.model_flops_per_token(n_params, cfg.n_layers,
                                                              cfg.d_model, p["seq"])}
    return Prepared(call=step, inputs=ids, info=info)


def _gen_prepare(ctx: Context, pr: Problem, impl) -> Prepared:
    p = pr.params
    # max_seq_len covers prompt + new tokens: no ALiBi-extrapolation warning in a benchmark.
    model = impl.build(p["preset"], p["prompt"] + p["new"] + 1, ctx.device)
    model = model.to(ctx.dtype).eval()
    vocab = mpt_models.our_config(p["preset"], 16).vocab_size
    ids = torch.randint(0, vocab, (p["batch"], p["prompt"]), device=ctx.device)

    def gen(n):
        def call(x):
            with torch.no_grad():
                return impl.generate(model, x, n)
        return call
    # Prefill alone (one new token), timed in the same rounds, so that the decode rate
    # excludes it: extra["prefill_ms"].
    return Prepared(call=gen(p["new"] + 1), inputs=ids, aux={"prefill": gen(1)})


def _finish_rows(ctx: Context, results) -> None:
    """MFU for training rows; decode-only tokens/s for generation rows."""
    spec = ctx.ceilings.get("spec_bf16_tflops")
    measured = ctx.ceilings.get("matmul_tflops")
    for r in results:
        if not r.ok:
            continue
        if r.params["task"] == "train":
            fpt = r.extra.pop("flops_per_token")
            achieved = fpt * r.value / 1e12
            r.extra["tflops"] = float(f"{achieved:.4g}")
            if spec:
                r.extra["mfu"] = round(achieved / spec, 4)
            if measured:
                r.extra["of_matmul"] = round(achieved / measured, 4)
        else:
            decode_ms = r.timing.median_ms - r.extra["prefill_ms"]
            new = r.params["new"] * r.params["batch"]
            r.value = new / (decode_ms * 1e-3) if decode_ms > 0 else None
            if r.value is None:
                r.status = ("error: generating took no longer than the prefill alone "
                            "(timing noise: try more --new-tokens)")


def run(ctx: Context, args) -> dict:
    started = time.time()
    dflt = DEFAULTS[ctx.profile]
    presets = [s.strip() for s in (args.presets or dflt["presets"]).split(",") if s.strip()]
    seq = args.seq or dflt["seq"]
    steps = args.steps or dflt["steps"]
    gen_preset = dflt["gen_preset"] if args.gen_preset is None else args.gen_preset
    prompt = args.prompt_len or dflt["prompt_len"]
    new = args.new_tokens or dflt["new_tokens"]
    impls = [i for i in IMPLS if ctx.wants(i.name)]
    train_cases, gen_cases = [], []
    if not args.no_train:
        for preset in presets:
            batch = args.batch or dflt["batch"].get(preset, 2)
            ckpt = " ckpt" if args.checkpointing else ""
            pr = Problem(key=f"train {preset} seq={seq} B={batch}{ckpt}",
                         params={"task": "train", "preset": preset, "seq": seq, "batch": batch,
                                 "checkpointing": bool(args.checkpointing)},
                         work=batch * seq, metric=counting.TOKENS_PER_S[0], unit=1.0)
            train_cases += [(pr, impl, None) for impl in impls]
    if gen_preset and not args.no_generate:
        pr = Problem(key=f"generate {gen_preset} prompt={prompt} new={new} B=1",
                     params={"task": "generate", "preset": gen_preset, "prompt": prompt,
                             "new": new, "batch": 1},
                     work=new, metric=counting.TOKENS_PER_S[0], unit=1.0)
        gen_cases += [(pr, impl, None) for impl in impls]

    # Whole models: collect garbage after each case so that one model is gone before the
    # next is built.
    results = run_grid(ctx, NAME, train_cases,
                       lambda pr, impl: lambda: _train_prepare(ctx, pr, impl), repeats=steps,
                       collect=True)
    results += run_grid(ctx, NAME, gen_cases,
                        lambda pr, impl: lambda: _gen_prepare(ctx, pr, impl),
                        repeats=dflt["gen_repeats"], collect=True)
    _finish_rows(ctx, results)
    config = {"presets": presets, "seq": seq, "steps": steps, "optimizer": "AdamW",
              "autocast": str(ctx.dtype).replace("torch.", "") if ctx.dtype != torch.float32
              else None, "gen_preset": gen_preset, "prompt_len": prompt, "new_tokens": new,
              "mfu_flops": "6*params + 12*layers*d_model*seq per token (llm-foundry)",
              "generate_rate": "new tokens / (generate time - prefill time)"}
    plot_spec = {"kind": "bars", "panels": ["task"], "cols": 2}
    return make_report(ctx, NAME, results, config, plot_spec, started)
