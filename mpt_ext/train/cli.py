"""mpt-train: train an MPT model (python -m mpt_ext.train).

With no arguments it trains the tiny preset on the Python standard library's own sources
with a byte-level tokenizer (a minute or two on a laptop CPU; on a GPU it uses the CUDA
kernels and bf16) and prints a generated sample. Outputs go to runs/<name>/.

Examples:
  mpt-train                                         # the default run
  mpt-train --data my_texts/ --name mine            # your own text files / jsonl
  mpt-train --preset 125m --tokenizer ./gpt-neox-tok --data corpus.jsonl \\
            --seq-len 2048 --global-batch 256 --micro-batch 16 --lr 6e-4
  mpt-train --resume latest                         # continue runs/<name>
  mpt-train --resume latest --export-hf runs/tiny-hf  # export a finished run (no training)
  mpt-train --overwrite                             # start runs/<name> over
  torchrun --nproc_per_node 8 -m mpt_ext.train --preset 1b --strategy fsdp ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..errors import UsageError, one_line
from .config import RESUME_SETTINGS, TrainConfig

_DEFAULTS = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
             for f in dataclasses.fields(TrainConfig)}


def _model_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)      # numbers, true/false, null, lists
    except json.JSONDecodeError:
        return key, value                  # plain strings, e.g. norm_type=rmsnorm


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpt-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(group, flag, field, help, **kw):
        d = _DEFAULTS[field]
        if d is not None and "(default:" not in help:   # argparse itself shows no defaults here
            shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else d
            help = f"{help} (default: {shown})"
        group.add_argument(flag, dest=field, default=None, help=help, **kw)

    def flag(group, name, field, help):
        group.add_argument(name, dest=field, action="store_true", default=None, help=help)

    g = p.add_argument_group("run")
    add(g, "--name", "name", "run name; outputs go to runs/<name>")
    add(g, "--run-dir", "run_dir", "output dir instead of runs/<name>")
    add(g, "--seed", "seed", "random seed (init, data order, sample)", type=int)
    add(g, "--device", "device", "auto, cpu, cuda or cuda:N")
    add(g, "--threads", "threads", "CPU threads (default: the cores the load average leaves free, >= 1)", type=int)
    add(g, "--resume", "resume", "'latest' (newest checkpoint in the run dir) or a checkpoint dir; "
        "a checkpoint already at --max-steps trains nothing (e.g. to --export-hf a finished run)")
    flag(g, "--overwrite", "overwrite", "start a new run in a run dir that holds one: deletes its "
         "checkpoints and metrics.jsonl (without it, mpt-train refuses to mix two runs)")
    flag(g, "--allow-config-change", "allow_config_change",
         "with --resume: apply changed settings (" + ", ".join(RESUME_SETTINGS) + ") from the "
         "checkpoint's step on instead of refusing; a changed --optimizer starts its state fresh")

    g = p.add_argument_group("model")
    add(g, "--preset", "preset", "model size: tiny, 125m, 350m, 760m, 1b, 3b, 7b, 13b, 30b")
    g.add_argument("--model", dest="model", action="append", type=_model_override, metavar="KEY=VALUE",
                   help="MPTConfig override, repeatable (e.g. --model n_layers=2 --model norm_type=rmsnorm)")

    g = p.add_argument_group("data")
    add(g, "--data", "data", "text files, folders, .jsonl ('text' field) or 'stdlib'", nargs="+")
    add(g, "--tokenizer", "tokenizer", "'byte' or a local Hugging Face tokenizer dir")
    add(g, "--cache-dir", "cache_dir", "token shard cache (default: runs/.cache)")
    add(g, "--stdlib-max-bytes", "stdlib_max_bytes", "size cap of the stdlib corpus", type=int)
    add(g, "--val-fraction", "val_fraction", "held-out fraction of the tokens", type=float)
    flag(g, "--packed", "packed", "attention stops at document boundaries (varlen kernels)")

    g = p.add_argument_group("batch and length")
    add(g, "--seq-len", "seq_len", "tokens per sequence", type=int)
    add(g, "--global-batch", "global_batch", "sequences per optimizer step, all ranks", type=int)
    add(g, "--micro-batch", "micro_batch", "sequences per forward/backward per rank (default: all)", type=int)
    add(g, "--max-steps", "max_steps", "optimizer steps", type=int)
    add(g, "--max-tokens", "max_tokens", "train this many tokens instead of --max-steps", type=int)

    g = p.add_argument_group("optimizer")
    add(g, "--optimizer", "optimizer", "adamw (fused on GPU) or lion (decoupled LionW)", choices=["adamw", "lion"])
    add(g, "--lr", "lr", "peak learning rate", type=float)
    add(g, "--weight-decay", "weight_decay", "weight decay on matrices", type=float)
    add(g, "--betas", "betas", "optimizer betas", type=float, nargs=2, metavar=("B1", "B2"))
    add(g, "--warmup", "warmup_steps", "linear warmup steps (default: min(100, 10%% of the run))", type=int)
    add(g, "--alpha-f", "alpha_f", "final lr fraction of the cosine decay", type=float)
    add(g, "--clip", "clip", "gradient norm clip, 0 = off", type=float)

    g = p.add_argument_group("speed and memory")
    add(g, "--precision", "precision", "auto = bf16 autocast on GPU, fp32 on CPU", choices=["auto", "fp32", "bf16"])
    flag(g, "--activation-checkpointing", "activation_checkpointing", "recompute blocks in backward")
    flag(g, "--compile", "compile", "torch.compile the model")
    add(g, "--strategy", "strategy", "under torchrun: ddp or fsdp (FSDP2 fully_shard)", choices=["ddp", "fsdp"])

    g = p.add_argument_group("evaluation, logging and checkpoints")
    add(g, "--eval-interval", "eval_interval", "steps between held-out evals, 0 = only at the end", type=int)
    add(g, "--eval-batches", "eval_batches", "global batches per eval", type=int)
    add(g, "--log-interval", "log_interval", "steps between log lines", type=int)
    add(g, "--ckpt-interval", "ckpt_interval", "steps between checkpoints, 0 = only at the end", type=int)
    add(g, "--keep-last", "keep_last", "checkpoints kept", type=int)
    add(g, "--export-hf", "export_hf", "also write a Hugging Face format model dir here at the end")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (there is none anyway when stderr is not a terminal)")

    g = p.add_argument_group("sample at the end")
    add(g, "--prompt", "sample_prompt", "prompt of the generated sample")
    add(g, "--sample-tokens", "sample_tokens", "tokens to generate, 0 = no sample", type=int)
    add(g, "--temperature", "temperature", "sampling temperature", type=float)
    add(g, "--top-k", "top_k", "sample from the k most likely tokens", type=int)
    return p


def config_from_args(argv=None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    if "model" in given:
        given["model"] = dict(given["model"])
    if "max_tokens" in given and "max_steps" not in given:
        given["max_steps"] = None
    return TrainConfig(**given)


def _error(e: BaseException) -> None:
    print("mpt-train: error: " + one_line(e), file=sys.stderr)


def main(argv=None) -> int:
    try:
        cfg = config_from_args(argv)
    except UsageError as e:
        _error(e)
        return 2
    from .trainer import Trainer, TrainingDiverged
    try:
        trainer = Trainer(cfg)
        trainer.echo(f"model: {trainer.module.config.n_layers} layers, d_model {trainer.module.config.d_model}, "
                     f"{trainer.n_params / 1e6:.2f}M parameters | device {trainer.device} | {trainer.precision} | "
                     f"{trainer.dist.world_size} process(es) | {trainer.total_steps} steps of "
                     f"{cfg.global_batch} x {cfg.seq_len} tokens")
        trainer.train()
        if not trainer._stop_signal:
            trainer.finish()
            if cfg.sample_tokens:
                text = trainer.sample()
                trainer.echo("\n---- sample " + "-" * 60 + "\n" + text + "\n" + "-" * 72)
        # Only a run that ended well leaves the process group in step with its peers; after
        # an error a rank may be alone (waiting for peers would hang), so it just exits and
        # torchrun stops the others.
        trainer.close()
        return 0
    except UsageError as e:   # a user's mistake (CheckpointError included): one line, no traceback
        _error(e)
        return 2
    except TrainingDiverged as e:
        _error(e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
