"""mpt-generate: stream text from an MPT checkpoint dir (ours or Hugging Face's).

    mpt-generate CKPT_DIR --prompt "def fib(n):" --max-new-tokens 100
    python -m mpt_ext.generate CKPT_DIR --prompt-file story.txt --tokenizer path/to/tok --top-p 0.9
    mpt-generate --preset 7b --prompt-tokens 68000 --max-new-tokens 32 --quiet   # a benchmark

The generated text goes to stdout as it is produced; the prefill time and decode speed go
to stderr. The tokenizer is --tokenizer (byte, or a local Hugging Face tokenizer dir); by
default the checkpoint dir itself when it holds tokenizer files, else the byte tokenizer.

A mistake in what it is given (a missing or corrupt checkpoint, prompt file or tokenizer,
NaN weights) is one line, `mpt-generate: error: ...`, on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

import torch

from .errors import UsageError, one_line

__all__ = ["main", "build_parser", "StreamPrinter"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpt-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint dir: config.json + model.safetensors (or sharded / "
                   "pytorch_model.bin)")
    p.add_argument("--preset", default=None,
                   help="instead of a checkpoint: random weights of this MPTConfig preset "
                   "(speed measurements, e.g. --preset 7b --prompt-tokens 68000)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="prompt text")
    src.add_argument("--prompt-file", default=None, help="file whose text is the prompt")
    src.add_argument("--prompt-tokens", type=int, default=None,
                     help="a prompt of this many random token ids (speed measurements)")
    p.add_argument("--tokenizer", default=None,
                   help="'byte' or a local Hugging Face tokenizer dir (default: the checkpoint "
                   "dir if it has tokenizer files, else 'byte')")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores sampling flags)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the eos token")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", *_DTYPES],
                   help="auto: bfloat16 on a GPU, the checkpoint's dtype on a CPU")
    p.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    p.add_argument("--quiet", action="store_true", help="print no text, only the timing line")
    return p


def _load_tokenizer(spec: Optional[str], checkpoint: Path):
    from .data.tokenizer import load_tokenizer  # noqa: PLC0415  (the trainer's tokenizers)

    if spec is None:
        has_files = any((checkpoint / f).is_file() for f in _TOKENIZER_FILES)
        spec = str(checkpoint) if has_files else "byte"
    return load_tokenizer(spec)


class StreamPrinter:
    """Decodes one sequence's ids incrementally and writes only the new text. Text that
    ends in U+FFFD (half a multi-byte character) is held back until it completes."""

    def __init__(self, tokenizer, out: TextIO):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = 0

    def add(self, token_id: int) -> None:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[self.printed:])
        self.out.flush()
        self.printed = len(text)

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.printed:])
        self.out.flush()
        self.printed = len(text)
        return text


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.checkpoint is None) == (args.preset is None):
        parser.error("give a checkpoint dir or --preset (one of them)")
    if args.max_new_tokens < 0:
        parser.error(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        parser.error(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
    if not args.temperature >= 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")


def _read_prompt(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"--prompt-file {path}: cannot read it ({e.strerror or e})") from e


def _non_finite_weights(model) -> list[str]:
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def main(argv: Optional[list] = None, out: TextIO = None, err: TextIO = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        return _generate(args, out, err)
    except UsageError as e:
        err.write(f"{parser.prog}: error: {one_line(e)}\n")
        err.flush()
        return 2


def _generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .models import MPTConfig, MPTForCausalLM  # noqa: PLC0415  (keeps --help fast)
    from .models.generation import NonFiniteLogitsError  # noqa: PLC0415
    from .train.distributed import pick_device  # noqa: PLC0415

    # A bad --preset (MPTConfig.preset's UsageError) is said before a bad --device.
    config = MPTConfig.preset(args.preset) if args.preset is not None else None
    device = pick_device(args.device, local_rank=None)
    dtype = _DTYPES.get(args.dtype)
    if dtype is None and device.type == "cuda":
        dtype = torch.bfloat16
    if args.preset is not None:
        checkpoint = Path(".")
        tokenizer = _load_tokenizer(args.tokenizer or "byte", checkpoint)
        model = MPTForCausalLM(config, device=device)
        model = model.to(dtype or torch.float32).eval()
    else:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_dir():
            raise UsageError(f"checkpoint dir {checkpoint} " + (
                "is a file, not a directory" if checkpoint.exists() else "does not exist"))
        if not (checkpoint / "config.json").is_file():
            hint = (" (a trainer checkpoint: export one with mpt-train --export-hf DIR)"
                    if (checkpoint / "state.pt").exists() else "")
            raise UsageError(f"{checkpoint} is not a model dir: no config.json{hint}")
        tokenizer = _load_tokenizer(args.tokenizer, checkpoint)
        model = MPTForCausalLM.from_pretrained(checkpoint, dtype=dtype, device=device).eval()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UsageError(f"tokenizer {tokenizer.name} has vocab_size {tokenizer.vocab_size}, more "
                         f"than the model's {model.config.vocab_size}: not this model's tokenizer")

    if args.prompt_tokens is not None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, tokenizer.vocab_size, (args.prompt_tokens,), generator=g).tolist()
        prompt = "" if args.quiet else tokenizer.decode(ids)
    else:
        if args.prompt_file is not None:
            prompt = _read_prompt(args.prompt_file)
        else:
            prompt = args.prompt if args.prompt is not None else ""
        ids = tokenizer.encode(prompt)
    if not ids:  # generation needs one token to condition on
        start = getattr(tokenizer, "bos_token_id", None)
        ids = [start if start is not None else tokenizer.eos_token_id]
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)

    if args.quiet:
        args.no_stream = True
    printer = StreamPrinter(tokenizer, out)
    times: list[float] = []

    def on_token(token: torch.Tensor) -> None:
        tid = int(token[0])  # synchronises with the device: the timing below is honest
        times.append(time.perf_counter())
        if not args.no_stream and tid != tokenizer.eos_token_id:
            printer.add(tid)
        elif tid != tokenizer.eos_token_id:
            printer.ids.append(tid)

    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    sampling = {} if args.greedy else dict(temperature=args.temperature, top_k=args.top_k,
                                           top_p=args.top_p, do_sample=True)
    if not args.no_stream:
        out.write(prompt)
        out.flush()
    def tokenizer_ids_only(logits: torch.Tensor) -> torch.Tensor:
        # Model vocabularies are often padded past the tokenizer's (MPT-7B: 50432 vs 50277).
        logits[:, tokenizer.vocab_size:] = float("-inf")
        return logits

    sampling["logits_processor"] = tokenizer_ids_only
    start = time.perf_counter()
    try:
        if args.prompt_tokens is not None:  # a measurement: warm up kernels and allocator first
            model.generate(input_ids[:, :16], 2, **sampling)
            start = time.perf_counter()
        model.generate(input_ids, args.max_new_tokens, generator=generator, streamer=on_token,
                       eos_token_id=None if args.ignore_eos else tokenizer.eos_token_id,
                       **sampling)
    except NonFiniteLogitsError as e:
        if not args.no_stream:
            printer.finish()  # what came before the bad step is valid text
            out.write("\n")
            out.flush()
        bad = _non_finite_weights(model)
        what = "NaN" if "NaN" in str(e) else "non-finite"
        if bad:
            raise UsageError(f"{what} logits at new token {e.step}: the weights hold NaN/inf in "
                             f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                             f"({args.checkpoint or args.preset})") from e
        raise UsageError(f"{what} logits at new token {e.step} with finite weights: an overflow "
                         f"in {model.dtype}? (try --dtype float32)") from e
    if not args.quiet:
        if args.no_stream:
            out.write(prompt + tokenizer.decode(printer.ids))
        else:
            printer.finish()
        out.write("\n")
        out.flush()

    n = len(times)
    if n:
        prefill = times[0] - start
        decode = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else float("nan")
        err.write(f"[mpt-generate] prompt {len(ids)} tokens, prefill {prefill:.3f} s "
                  f"({len(ids) / max(prefill, 1e-9):.1f} tokens/s); {n} new tokens at "
                  f"{decode:.1f} tokens/s; device {device}, dtype {model.dtype}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
