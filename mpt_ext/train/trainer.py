"""The training loop (read top to bottom: setup, train, evaluate, checkpoint, sample).

One optimizer step = one global batch of `global_batch` sequences, split over ranks and
then into micro-batches (gradient accumulation). The loss is summed per token and divided
by the global token count, so the gradient is the same however the batch is split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data import (WindowSampler, build_shard, cu_seqlens, eval_batches, heldout_problem, load_tokenizer,
                    split_tokens)
from ..data.sampler import IGNORE_INDEX
from ..data.tokenizer import tokenizer_info
from ..errors import UsageError
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import (DistInfo, all_reduce_sum, barrier, generation_context, init_distributed,
                          shutdown, unwrap, wrap_model)
from .optim import build_optimizer, build_scheduler
from .telemetry import MetricsLog, Throughput, flops_per_token, format_metrics, memory_stats, peak_flops, progress_bar


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite."""


def model_config(cfg: TrainConfig, vocab_size: int):
    """The MPTConfig of cfg.preset with cfg.model overrides; the vocabulary follows the
    tokenizer and max_seq_len covers seq_len unless overridden. A bad preset, field or
    value is a UsageError."""
    from ..models import MPTConfig
    from ..models.config import AttnConfig, check_preset
    check_preset(cfg.preset)   # before the --model checks, and not wrapped in their message
    known = ({f.name for f in dataclasses.fields(MPTConfig)} | {f.name for f in dataclasses.fields(AttnConfig)}
             | {"attn_config"}) - {"extra"}
    unknown = sorted(set(cfg.model) - known)
    if unknown:
        raise UsageError(f"--model {', '.join(unknown)}: not an MPTConfig field; the fields are "
                         f"{', '.join(sorted(known))}")
    overrides = dict(cfg.model)
    overrides.setdefault("vocab_size", vocab_size)
    try:
        config = MPTConfig.preset(cfg.preset, **overrides)
        if config.max_seq_len < cfg.seq_len and "max_seq_len" not in cfg.model:
            config = MPTConfig.preset(cfg.preset, **{**overrides, "max_seq_len": cfg.seq_len})
    except (TypeError, ValueError) as e:   # MPTConfig's checks name the field and value
        raise UsageError(f"--preset {cfg.preset} --model {' '.join(f'{k}={v}' for k, v in cfg.model.items())}: {e}") from e
    return config


def build_model(cfg: TrainConfig, vocab_size: int) -> torch.nn.Module:
    """The MPT model of model_config(cfg, vocab_size)."""
    from ..models import MPTForCausalLM
    return MPTForCausalLM(model_config(cfg, vocab_size))


# What state.pt must hold to be resumed (written by Trainer.save).
_STATE_KEYS = ("step", "tokens_seen", "config", "model_config", "tokenizer", "optim_format",
               "model", "optimizer", "scheduler", "sampler", "rng")


def cpu_threads() -> int:
    """Intra-op threads for a CPU run: the cores that the 1-minute load average leaves free
    (at least 1). On a shared machine, more threads than free cores makes every op wait on
    descheduled workers (measured here: 2 threads on 2 busy cores ran 4x slower than 1)."""
    try:
        free = len(os.sched_getaffinity(0)) - os.getloadavg()[0]
    except (AttributeError, OSError):
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), int(free + 0.5)))


def capture_rng() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np_state = np.random.get_state(legacy=False)
    state["numpy"] = {**np_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                            for k, v in np_state["state"].items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {k: (np.asarray(v, dtype=np.uint32) if isinstance(v, list) else v)
                                               for k, v in np_state["state"].items()}})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    # random.setstate wants tuples back where pickling via weights_only gave lists
    return tuple(_tuples(i) for i in x) if isinstance(x, (list, tuple)) else x


class Trainer:
    def __init__(self, cfg: TrainConfig, model_factory: Optional[Callable] = None,
                 dist_info: Optional[DistInfo] = None, echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)   # a missing CUDA device: UsageError
        self.device = self.dist.device
        self.echo = echo if self.dist.is_main else (lambda *_: None)
        self.precision = cfg.precision if cfg.precision != "auto" else (
            "bf16" if self.device.type == "cuda" else "fp32")
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads or cpu_threads())
        self._set_seeds(cfg.seed)
        # ---- the run dir: a fresh run must not mix with an earlier one (checked first, cheap)
        resume_path = ckpt.resolve_checkpoint(cfg.resume, cfg.out_dir) if cfg.resume else None
        if resume_path is None:
            self._check_run_dir()

        # ---- data: rank 0 tokenises (or finds the cached shard), the others then open it
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        if model_factory is None:   # a bad --preset / --model fails before tokenising
            model_config(cfg, self.tokenizer.vocab_size)
        if self.dist.is_main:
            shard, hit = build_shard(cfg.data, self.tokenizer, cfg.shard_cache, cfg.stdlib_max_bytes,
                                     log=self.echo)
            self.echo(f"data: {len(shard):,} tokens ({'cached' if hit else 'tokenised'}) in {shard.path}")
        barrier(self.dist)
        if not self.dist.is_main:
            shard, _ = build_shard(cfg.data, self.tokenizer, cfg.shard_cache, cfg.stdlib_max_bytes,
                                   log=self.echo)
        self.train_tokens, self.val_tokens = split_tokens(shard.tokens, cfg.val_fraction,
                                                          self.tokenizer.eos_token_id)
        no_eval = heldout_problem(self.val_tokens, cfg.seq_len, cfg.val_fraction)
        if no_eval and cfg.eval_batches:
            self.echo(no_eval)
        eos = self.tokenizer.eos_token_id
        self.sampler = WindowSampler(self.train_tokens, cfg.seq_len, cfg.global_batch, cfg.seed,
                                     self.dist.rank, self.dist.world_size, cfg.packed, eos)
        local = self.sampler.local_batch
        self.micro = cfg.micro_batch or local
        if local % self.micro:
            raise UsageError(f"--micro-batch {self.micro} must divide the per-rank batch {local} "
                             f"(--global-batch {cfg.global_batch} / {self.dist.world_size} ranks)")

        # ---- model
        factory = model_factory or build_model
        module = factory(cfg, self.tokenizer.vocab_size).to(self.device)
        mconf = module.config
        if mconf.vocab_size < self.tokenizer.vocab_size:
            raise UsageError(f"model vocab_size {mconf.vocab_size} < tokenizer vocab_size "
                             f"{self.tokenizer.vocab_size}")
        self.n_params = sum(p.numel() for p in module.parameters())
        self.forward_kwargs = self._packing_support(module)
        if cfg.activation_checkpointing:
            if not hasattr(module, "gradient_checkpointing_enable"):
                raise ValueError("activation_checkpointing: the model has no gradient_checkpointing_enable()")
            module.gradient_checkpointing_enable()
        self.module = module
        self.model = wrap_model(module, cfg.strategy, self.dist)
        if cfg.compile:
            self.model = torch.compile(self.model)

        # ---- optimizer, schedule, telemetry
        self.total_steps = cfg.total_steps()
        self.optimizer = build_optimizer(module, cfg.optimizer, cfg.lr, cfg.betas, cfg.weight_decay, cfg.eps)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup(), self.total_steps, cfg.alpha_f)
        self.flops_per_tok = flops_per_token(self.n_params, mconf.n_layers, mconf.d_model, cfg.seq_len)
        self.peak = peak_flops(self.device, self.precision)
        self.log = MetricsLog(cfg.out_dir / "metrics.jsonl" if self.dist.is_main else None)
        self.step, self.tokens_seen, self.history = 0, 0, []
        self._stop_signal: Optional[str] = None
        self._saved_step: Optional[int] = None    # the step of the newest checkpoint in out_dir
        self._resumed_step: Optional[int] = None
        if resume_path is not None:
            self.load(resume_path)
        elif cfg.overwrite:   # after every check above: a mistyped option deletes nothing
            self._clear_run_dir()

    # ---- setup helpers ---------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        """A fresh run into a dir that holds another run's checkpoints or metrics.jsonl would
        mix with it (and --resume latest would later pick either): refuse, unless
        cfg.overwrite asks to delete them (_clear_run_dir, once every other check passed)."""
        cfg = self.cfg
        found = ckpt.run_dir_contents(cfg.out_dir)
        if found and not cfg.overwrite:
            names = ", ".join(p.name for p in found[-3:])
            hint = "continue it with --resume latest, " if ckpt.list_checkpoints(cfg.out_dir) else ""
            raise ckpt.CheckpointError(
                f"{cfg.out_dir} already holds a run ({names}): {hint}start another with --name NAME "
                f"or --run-dir DIR, or delete it and start over with --overwrite")

    def _clear_run_dir(self) -> None:
        if self.dist.is_main:
            found = ckpt.clear_run_dir(self.cfg.out_dir)
            if found:
                self.echo(f"--overwrite: deleted the earlier run in {self.cfg.out_dir} "
                          f"({', '.join(p.name for p in found)})")
        barrier(self.dist)

    @staticmethod
    def _set_seeds(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _packing_support(self, module) -> bool:
        if not self.cfg.packed:
            return False
        params = inspect.signature(module.forward).parameters
        if "cu_seqlens" not in params:
            raise NotImplementedError(
                "packed=True needs a model forward that takes cu_seqlens (document-boundary "
                f"attention through the varlen kernels); {type(module).__name__}.forward does not")
        return True

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync_grads(self, last: bool):
        """Gradient all-reduce only on the last micro-batch of a step."""
        if hasattr(self.model, "no_sync") and not last:
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # ---- one forward ----------------------------------------------------------------------
    def loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed next-token cross entropy of a micro-batch (labels already shifted)."""
        kwargs = {}
        if self.forward_kwargs:
            cu, max_len = cu_seqlens(x, self.tokenizer.eos_token_id)
            kwargs = {"cu_seqlens": cu, "max_seqlen": max_len}
        with self.autocast():
            logits = self.model(x, **kwargs).logits
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")

    # ---- the loop -------------------------------------------------------------------------
    def train(self, until_step: Optional[int] = None) -> list[dict]:
        """Trains to total_steps (or until_step), stopping cleanly with a checkpoint on
        SIGTERM/SIGINT. Returns the per-step history."""
        cfg, end = self.cfg, min(until_step or self.total_steps, self.total_steps)
        old_handlers = self._install_signal_handlers()
        bar = progress_bar(self.total_steps, self.step, cfg.progress and self.dist.is_main)
        tput = Throughput(self.flops_per_tok, self.peak, self.dist.world_size)
        self.model.train()
        try:
            while self.step < end:
                record = self._train_step()
                tput.add(record["tokens"])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                if cfg.log_interval and (self.step % cfg.log_interval == 0 or self.step == end):
                    record.update(tput.report(), **memory_stats(self.device))
                    (bar.write if bar is not None else self.echo)(format_metrics(record))
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step < self.total_steps:
                    record.update(self._eval_and_report(bar))
                self.log.write(record)
                if record.get("stop_signal"):
                    self.echo(f"{record['stop_signal']} received: saving a checkpoint at step {self.step} and stopping")
                    self.save()
                    break
                if cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return self.history

    def _train_step(self) -> dict:
        x, y = self.sampler.next_batch()
        # Count the loss tokens on the host batch: no device round trip before the step.
        counts = torch.tensor([float((y != IGNORE_INDEX).sum())], dtype=torch.float64,
                              device=self.device)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        n_tokens = all_reduce_sum(counts, self.dist).item()
        # DDP/FSDP average gradients over ranks: scale so the average is sum / global count.
        scale = self.dist.world_size / max(n_tokens, 1.0)
        n_micro = x.shape[0] // self.micro
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (xm, ym) in enumerate(zip(x.split(self.micro), y.split(self.micro))):
            with self._sync_grads(i == n_micro - 1):
                loss = self.loss_sum(xm, ym)
                (loss * scale).backward()
            total += loss.detach().double()
        stats = torch.stack([total, torch.tensor(float(self._stop_signal is not None),
                                                 dtype=torch.float64, device=self.device)])
        stats = all_reduce_sum(stats, self.dist)
        loss = (stats[0] / max(n_tokens, 1.0)).item()
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"loss is {loss} at step {self.step + 1}: training diverged "
                                   f"(try a lower --lr than {self.cfg.lr}, or --clip)")
        grad_norm = None
        if self.cfg.clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.clip))
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(f"gradient norm is {grad_norm} at step {self.step + 1} "
                                       f"(loss {loss:.4f}): training diverged")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += x.shape[0] * x.shape[1] * self.dist.world_size
        record = {"step": self.step, "loss": loss, "lr": lr, "tokens": x.numel() * self.dist.world_size,
                  "tokens_seen": self.tokens_seen, "time": time.time()}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if stats[1].item() > 0:
            record["stop_signal"] = self._stop_signal or "signal (another rank)"
        self.history.append({"step": self.step, "loss": loss})
        return record

    def _install_signal_handlers(self) -> dict:
        def handler(signum, _frame):
            self._stop_signal = signal.Signals(signum).name
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return old

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean held-out loss over the same eval_batches global batches every time."""
        cfg = self.cfg
        if len(self.val_tokens) < cfg.seq_len + 1 or cfg.eval_batches == 0:
            return {}
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x, y in eval_batches(self.val_tokens, cfg.seq_len, cfg.global_batch, cfg.eval_batches,
                                 cfg.seed + 1, self.dist.rank, self.dist.world_size, cfg.packed,
                                 self.tokenizer.eos_token_id):
            x, y = x.to(self.device), y.to(self.device)
            for xm, ym in zip(x.split(self.micro), y.split(self.micro)):
                sums[0] += self.loss_sum(xm, ym).double()
                sums[1] += (ym != IGNORE_INDEX).sum()
        self.model.train()
        sums = all_reduce_sum(sums, self.dist)
        loss = (sums[0] / sums[1].clamp(min=1)).item()
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}

    def _eval_and_report(self, bar=None) -> dict:
        out = self.evaluate()
        if out:
            (bar.write if bar is not None else self.echo)(
                f"eval step {self.step} | loss {out['eval_loss']:.4f} | ppl {out['eval_ppl']:.2f}")
        return out

    def finish(self) -> dict:
        """End of run: final eval and checkpoint (unless this process trained no step, or
        the last step's checkpoint is already written), optional HF export."""
        out = {}
        if self.step != self._resumed_step:
            out = self._eval_and_report()
            if out:
                self.log.write({"step": self.step, **out})
        if self._saved_step != self.step:
            self.save()
        if self.cfg.export_hf:
            self.export_hf(self.cfg.export_hf)
        return out

    # ---- checkpoints ----------------------------------------------------------------------
    def _full_state(self) -> tuple[dict, dict]:
        if self.dist.distributed and self.cfg.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
            return get_state_dict(self.module, self.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.module.state_dict(), self.optimizer.state_dict()

    def save(self):
        model_sd, optim_sd = self._full_state()   # collective under FSDP: every rank calls
        path = None
        if self.dist.is_main:
            state = {
                "step": self.step, "tokens_seen": self.tokens_seen,
                "config": self.cfg.to_dict(), "model_config": self.module.config.to_dict(),
                "tokenizer": tokenizer_info(self.tokenizer), "world_size": self.dist.world_size,
                "optim_format": "fqn" if self.cfg.strategy == "fsdp" and self.dist.distributed else "index",
                "model": model_sd, "optimizer": optim_sd, "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(), "rng": capture_rng(),
            }
            path = ckpt.save_checkpoint(self.cfg.out_dir, self.step, state, self.cfg.keep_last)
            self.echo(f"checkpoint: {path}")
        barrier(self.dist)
        self._saved_step = self.step
        return path

    def load(self, path) -> None:
        """Restores everything a checkpoint holds. Every rank reads the file (a filesystem
        all ranks see); under FSDP each then keeps only its shard of the full state.
        Settings that shape the optimisation (config.RESUME_SETTINGS) must match the
        checkpoint's unless cfg.allow_config_change; then they apply from its step on."""
        state = ckpt.load_checkpoint(path)
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path}: state.pt has no {', '.join(missing)} "
                                       "(not written by mpt-train?)")
        mine = self.module.config.to_dict()
        if state["model_config"] != mine:
            saved = state["model_config"] if isinstance(state["model_config"], dict) else {}
            diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
            raise ckpt.CheckpointError(f"checkpoint {path} is for another model: {', '.join(diff)} differ")
        saved_tok = state["tokenizer"] if isinstance(state["tokenizer"], dict) else {}
        if saved_tok.get("fingerprint") != self.tokenizer.fingerprint:
            raise ckpt.CheckpointError(f"checkpoint {path} was trained with tokenizer "
                                       f"{saved_tok.get('name')!r}, this run uses {self.tokenizer.name!r}")
        changes, old_optimizer = self._setting_changes(path, state["config"])
        step = state["step"]
        if step > self.total_steps:
            raise ckpt.CheckpointError(
                f"checkpoint {path} is at step {step}, past this run's last step {self.total_steps} "
                "(--max-steps / --max-tokens): give a larger one, or start a new run")
        optim_format = "fqn" if self.cfg.strategy == "fsdp" and self.dist.distributed else "index"
        if state["optim_format"] != optim_format:
            raise ckpt.CheckpointError(f"checkpoint {path} holds a {state['optim_format']} optimizer state, "
                                       f"this run needs {optim_format} (resume with the same --strategy)")
        sampler_state = state["sampler"]
        if changes and isinstance(sampler_state, dict):
            # allowed: a changed batch shape continues the same random stream of windows
            sampler_state = {**sampler_state, "seq_len": self.cfg.seq_len,
                             "global_batch": self.cfg.global_batch}
        try:
            self.sampler.load_state_dict(sampler_state)
        except (ValueError, KeyError, TypeError) as e:
            raise ckpt.CheckpointError(f"checkpoint {path}: sampler state does not fit ({e})") from e
        same_optimizer = old_optimizer == self.cfg.optimizer   # never feed AdamW state to Lion
        # this run's hyperparameters, as built from cfg, before the checkpoint's replace them
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        fresh_base_lrs = list(self.scheduler.base_lrs)
        if optim_format == "fqn":
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_state_dict)
            options = StateDictOptions(full_state_dict=True)
            if same_optimizer:
                set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                               optim_state_dict=state["optimizer"], options=options)
            else:
                set_model_state_dict(self.module, state["model"], options=options)
        else:
            self.module.load_state_dict(state["model"])
            if same_optimizer:
                self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if changes:
            self._apply_optimizer_settings(fresh_groups, fresh_base_lrs)
        restore_rng(state["rng"])
        self.step, self.tokens_seen = step, state["tokens_seen"]
        self._resumed_step = step
        in_run_dir = Path(path).resolve().parent == self.cfg.out_dir.resolve()
        self._saved_step = step if in_run_dir else None
        msg = f"resumed from {path} at step {step} of {self.total_steps}"
        if changes:
            msg += f"; changed (--allow-config-change, from step {step} on): {', '.join(changes)}"
        if not same_optimizer:
            msg += f"; optimizer {old_optimizer} -> {self.cfg.optimizer}: its state starts fresh"
        if step == self.total_steps:
            msg += "; the run is complete: nothing to train"
        self.echo(msg)

    def _setting_changes(self, path, saved_config) -> tuple[list[str], str]:
        """'name: old -> new' for each RESUME_SETTINGS value that differs from the
        checkpoint's; raises unless cfg.allow_config_change. Also the saved optimizer."""
        try:
            names = {f.name for f in dataclasses.fields(TrainConfig)}
            old = TrainConfig.from_dict({k: v for k, v in saved_config.items() if k in names})
        except (AttributeError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"checkpoint {path}: its saved config cannot be read ({e})") from e
        before, now = old.resume_settings(), self.cfg.resume_settings()
        changes = [f"{k}: {before[k]} -> {now[k]}" for k in now if before[k] != now[k]]
        if changes and not self.cfg.allow_config_change:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was trained with other settings ({'; '.join(changes)}): resume with "
                "the checkpoint's, or pass --allow-config-change to apply these from its step on")
        return changes, old.optimizer

    def _apply_optimizer_settings(self, fresh_groups: list[dict], fresh_base_lrs: list[float]) -> None:
        """Puts back this run's hyperparameters (lr, betas, eps, weight decay, as built from
        cfg; load_state_dict restored the checkpoint's) and its schedule's base lrs, with
        each group's lr set for the current step."""
        sched = self.scheduler
        sched.base_lrs = fresh_base_lrs
        for i, (group, fresh) in enumerate(zip(self.optimizer.param_groups, fresh_groups)):
            group.update(fresh)
            group["lr"] = fresh_base_lrs[i] * sched.lr_lambdas[i](sched.last_epoch)
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def export_hf(self, out_dir):
        model_sd, _ = self._full_state() if self.dist.distributed and self.cfg.strategy == "fsdp" else (None, None)
        if self.dist.is_main:
            module = self.module
            if model_sd is not None:  # FSDP: save an unsharded copy
                module = type(self.module)(self.module.config)
                module.load_state_dict(model_sd)
            path = ckpt.export_hf(module, out_dir, self.tokenizer)
            self.echo(f"Hugging Face format model: {path}")
        barrier(self.dist)

    # ---- the end -------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the model, optimizer and their DDP/FSDP state, then leaves the process
        group (distributed.shutdown). Under FSDP the wrapped modules hold communication
        state of the group; freed after the group they were released by a gloo thread
        during interpreter shutdown, which aborted a finished run. Safe to call twice."""
        for name in ("model", "module", "optimizer", "scheduler"):
            if hasattr(self, name):
                delattr(self, name)
        shutdown(self.dist)

    # ---- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompt: Optional[str] = None, max_new_tokens: Optional[int] = None) -> str:
        cfg = self.cfg
        prompt = cfg.sample_prompt if prompt is None else prompt
        ids = self.tokenizer.encode(prompt) or [self.tokenizer.eos_token_id]
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        torch.manual_seed(cfg.seed)
        self.model.eval()
        with self.autocast(), generation_context(self.module, self.dist) as logits_processor:
            out = self.module.generate(x, max_new_tokens=max_new_tokens or cfg.sample_tokens,
                                       temperature=cfg.temperature, top_k=cfg.top_k,
                                       eos_token_id=self.tokenizer.eos_token_id,
                                       logits_processor=logits_processor)
        self.model.train()
        out = out[0].tolist()
        new = out[len(ids):] if out[:len(ids)] == ids else out
        return prompt + self.tokenizer.decode(new)
