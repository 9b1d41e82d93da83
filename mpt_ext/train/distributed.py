"""torchrun support: process group setup, DDP / FSDP2 wrapping, small collectives.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the trainer joins a
process group (nccl on GPU, gloo on CPU); otherwise everything here is a no-op and the
run is a plain single process. Data parallelism keeps the global batch fixed: each rank
takes global_batch / world_size rows of the same global batch (see data/sampler.py).
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist

from ..errors import UsageError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(spec: str, local_rank: Optional[int] = 0) -> torch.device:
    """The device of a --device spec (auto, cpu, cuda, cuda:N). auto and a bare cuda get
    cuda:local_rank, or the plain current cuda device when local_rank is None. A spec that
    is not a device, or a CUDA device this machine lacks, is a UsageError."""
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise UsageError(f"--device {spec!r}: not a device (expected auto, cpu, cuda or "
                         "cuda:N)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available here "
                             "(use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Joins the torchrun process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local_rank)
    if world == 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown(info: DistInfo) -> None:
    """Leaves the process group cleanly: every rank first reaches the same point (no
    collective still in flight, e.g. an FSDP all-gather of another rank), then the FSDP /
    DDP state that holds work handles and communication buffers is freed, and only then
    is the group destroyed. Destroying it with work items still alive let a gloo thread
    release one during interpreter shutdown: "terminate called without an active
    exception" (SIGABRT) after a successful run."""
    if not (info.distributed and dist.is_initialized()):
        return
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    dist.barrier()
    gc.collect()   # frees FSDP/DDP objects already dropped by the caller (reference cycles)
    dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, strategy: str, info: DistInfo) -> torch.nn.Module:
    """DDP, or FSDP2 (fully_shard on each transformer block, then the root)."""
    if not info.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for module in list(model.modules()):
            if isinstance(module, torch.nn.ModuleList):   # the blocks
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under DDP / torch.compile wrappers (FSDP2 wraps in place)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@contextlib.contextmanager
def generation_context(model: torch.nn.Module, info: DistInfo
                       ) -> Iterator[Optional[Callable[[torch.Tensor], torch.Tensor]]]:
    """Makes a (possibly FSDP2-sharded) model usable by its generate(), which calls
    sub-modules directly and so bypasses the root's unshard hook. Yields the
    logits_processor to pass to generate() (None outside FSDP).

    Under FSDP every rank must run the same forwards (each block all-gathers its
    parameters), so every rank generates, and every rank must pick the same tokens: the
    processor broadcasts rank 0's logits, so equal seeds give equal tokens and equal stop
    steps even when the ranks' floating point differs in the last bit."""
    sharded = info.distributed and hasattr(model, "unshard") and hasattr(model, "reshard")
    if not sharded:
        yield None
        return

    def rank0_logits(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.contiguous()
        dist.broadcast(logits, src=0)
        return logits

    model.unshard()   # the root's own parameters (embedding, final norm); blocks unshard themselves
    try:
        yield rank0_logits
    finally:
        model.reshard()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
