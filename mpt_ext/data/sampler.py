"""Random-window batches from a flat token stream, with an explicit, resumable RNG.

Every rank draws the same global batch from the same generator and keeps only its own
rows, so a run on N processes sees exactly the data a single process sees with the same
global batch (and the split into micro-batches changes nothing either).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError

IGNORE_INDEX = -100


class WindowSampler:
    """Draws global batches of `global_batch` windows of seq_len + 1 tokens at uniformly
    random offsets; input_ids are the first seq_len tokens, labels the last seq_len.

    packed=True keeps the windows but marks document boundaries: the label after each
    eos is ignored (a new document is not predictable from the old one), and
    `cu_seqlens(input_ids, eos)` gives the per-document lengths for varlen attention.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1, packed: bool = False,
                 eos_token_id: int | None = None):
        if seq_len < 1:
            raise UsageError(f"seq_len must be >= 1, got {seq_len}")
        if global_batch < 1:
            raise UsageError(f"global_batch must be >= 1, got {global_batch}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if global_batch % world_size:
            raise UsageError(f"global_batch {global_batch} must be divisible by the world size {world_size}")
        if len(tokens) < seq_len + 1:
            raise UsageError(f"the token stream has {len(tokens)} tokens, fewer than seq_len + 1 = "
                             f"{seq_len + 1}: give more data or a shorter --seq-len")
        if packed and eos_token_id is None:
            raise ValueError("packed=True needs eos_token_id (documents are split at it)")
        self.tokens = tokens
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.rank, self.world_size = rank, world_size
        self.packed, self.eos_token_id = packed, eos_token_id
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.batches_drawn = 0

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (input_ids, labels), int64, shape (local_batch, seq_len)."""
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)
        self.batches_drawn += 1
        mine = starts[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
        return windows(self.tokens, mine, self.seq_len, self.eos_token_id if self.packed else None)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state, "batches_drawn": self.batches_drawn,
                "seq_len": self.seq_len, "global_batch": self.global_batch, "n_tokens": len(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seq_len", "global_batch", "n_tokens"):
            mine = len(self.tokens) if key == "n_tokens" else getattr(self, key)
            if state[key] != mine:
                raise UsageError(f"sampler state was saved with {key}={state[key]}, this run has {mine}: "
                                 "resuming would not continue the same data order")
        self.rng.bit_generator.state = state["bit_generator"]
        self.batches_drawn = state["batches_drawn"]


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int, eos_token_id: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts]) \
        if len(starts) else np.zeros((0, seq_len + 1), dtype=np.int64)
    x, y = torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
    if eos_token_id is not None:
        y[x == eos_token_id] = IGNORE_INDEX
    return x, y


def eval_batches(tokens: np.ndarray, seq_len: int, global_batch: int, n_batches: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, packed: bool = False, eos_token_id: int | None = None):
    """The same n_batches held-out batches every call (a fixed seed), so eval losses are
    comparable across steps."""
    sampler = WindowSampler(tokens, seq_len, global_batch, seed, rank, world_size, packed, eos_token_id)
    for _ in range(n_batches):
        yield sampler.next_batch()


def cu_seqlens(input_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, int]:
    """Document boundaries of a packed (batch, seq_len) block flattened row by row: a new
    sequence starts at each row start and after each eos. Returns (cu_seqlens int32 of
    shape (n_seqs + 1,), max_seqlen)."""
    b, n = input_ids.shape
    flat = input_ids.reshape(-1)
    starts = torch.zeros(b * n, dtype=torch.bool, device=flat.device)
    if n:
        starts[::n] = True
    if n > 1:
        ends_here = (input_ids[:, :-1] == eos_token_id)
        starts.view(b, n)[:, 1:] |= ends_here
    idx = torch.nonzero(starts).flatten().to(torch.int32)
    cu = torch.cat([idx, torch.tensor([b * n], dtype=torch.int32, device=flat.device)])
    max_len = int((cu[1:] - cu[:-1]).max()) if len(cu) > 1 else 0
    return cu, max_len
