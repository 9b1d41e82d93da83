"""TrainConfig: every knob of a run in one dataclass (saved in each checkpoint).

Defaults are the README's main job: the tiny preset on the embedded stdlib corpus with
the byte tokenizer, about a minute or two on a 2-core CPU. None means "derived" (see
resolve()), so that e.g. warmup follows llm-foundry's 100 batches on long runs but
shrinks for short ones.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError

# The settings that shape the optimisation itself: a resumed run must keep them (or say
# so with allow_config_change). Compared with the checkpoint's saved config on resume.
RESUME_SETTINGS = ("optimizer", "lr", "betas", "eps", "weight_decay", "warmup", "alpha_f",
                   "max_steps", "max_tokens", "global_batch", "seq_len", "clip")


@dataclass
class TrainConfig:
    # ---- run ---------------------------------------------------------------------------
    name: str = "tiny-stdlib"            # run name: outputs go to runs/<name>
    run_dir: Optional[str] = None        # overrides runs/<name>
    seed: int = 1234
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None        # CPU intra-op threads; None: cores not busy (>= 1)
    # ---- model -------------------------------------------------------------------------
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)   # MPTConfig overrides
    # ---- data --------------------------------------------------------------------------
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    tokenizer: str = "byte"              # 'byte' or a local Hugging Face tokenizer dir
    cache_dir: Optional[str] = None      # token shard cache (default runs/.cache)
    stdlib_max_bytes: int = 2 * 1024 * 1024
    val_fraction: float = 0.05
    packed: bool = False                 # document-boundary attention (varlen path)
    # ---- batch & length ----------------------------------------------------------------
    seq_len: int = 128
    global_batch: int = 16               # sequences per optimizer step, all ranks together
    micro_batch: Optional[int] = None    # sequences per forward/backward on one rank
    max_steps: Optional[int] = 400       # the default run: ~75 s on 2 CPU cores, loss ~1.9
    max_tokens: Optional[int] = None     # alternative to max_steps
    # ---- optimizer & schedule ----------------------------------------------------------
    optimizer: str = "adamw"             # adamw | lion
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: Optional[int] = None   # default min(100, 10% of the run)
    alpha_f: float = 0.1                 # final lr = alpha_f * lr (cosine)
    clip: float = 1.0                    # global grad-norm clip; 0 disables
    # ---- speed & memory ----------------------------------------------------------------
    precision: str = "auto"              # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    activation_checkpointing: bool = False
    compile: bool = False
    strategy: str = "ddp"                # with torchrun: ddp | fsdp
    # ---- evaluation, logging, checkpoints ----------------------------------------------
    eval_interval: int = 100
    eval_batches: int = 8
    log_interval: int = 10
    ckpt_interval: int = 0               # 0: only at the end (and on SIGTERM/SIGINT)
    keep_last: int = 2
    resume: Optional[str] = None         # 'latest' or a checkpoint dir
    overwrite: bool = False              # a fresh run may replace the run dir's checkpoints and log
    allow_config_change: bool = False    # resume may change RESUME_SETTINGS (applied from its step on)
    export_hf: Optional[str] = None      # write a Hugging Face format dir at the end
    progress: bool = True                # tqdm bar
    # ---- sample at the end -------------------------------------------------------------
    sample_prompt: str = "def "
    sample_tokens: int = 200
    temperature: float = 0.8
    top_k: Optional[int] = 40

    # ------------------------------------------------------------------------------------
    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.data = [str(d) for d in self.data]
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise UsageError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("seq_len", "global_batch"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.micro_batch is not None and self.micro_batch < 1:
            bad("micro_batch", "must be >= 1")
        if self.max_steps is None and self.max_tokens is None:
            bad("max_steps", "give max_steps or max_tokens")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", "must be >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", "must be >= 1")
        if self.optimizer not in ("adamw", "lion"):
            bad("optimizer", "expected 'adamw' or 'lion'")
        if self.precision not in ("auto", "fp32", "bf16"):
            bad("precision", "expected auto, fp32 or bf16")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            bad("device", "expected auto, cpu, cuda or cuda:N")
        if self.overwrite and self.resume:
            bad("overwrite", "overwrite starts a new run; it cannot be combined with resume")
        if self.strategy not in ("ddp", "fsdp"):
            bad("strategy", "expected ddp or fsdp")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad("betas", "expected two values in [0, 1)")
        if not self.eps > 0:
            bad("eps", "must be > 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if not 0.0 <= self.alpha_f <= 1.0:
            bad("alpha_f", "must be in [0, 1]")
        if self.clip < 0:
            bad("clip", "must be >= 0 (0 disables clipping)")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        if self.threads is not None and self.threads < 1:
            bad("threads", "must be >= 1")
        if self.keep_last < 1:
            bad("keep_last", "must be >= 1")
        for name in ("eval_interval", "log_interval", "ckpt_interval", "eval_batches", "sample_tokens"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")

    # ---- derived values ------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    @property
    def shard_cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path("runs") / ".cache"

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, -(-self.max_tokens // (self.global_batch * self.seq_len)))

    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(100, max(1, self.total_steps() // 10))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UsageError(f"TrainConfig: unknown fields {sorted(unknown)}")
        return cls(**d)

    def resume_settings(self) -> dict:
        """RESUME_SETTINGS with derived values resolved (warmup follows max_steps when not
        given), so a resume compares what the optimisation actually uses."""
        out = {k: getattr(self, k) for k in RESUME_SETTINGS if k != "warmup"}
        out["betas"] = list(self.betas)
        out["warmup"] = self.warmup()
        return out
