"""Autoregressive generation with a preallocated KV cache.

The prompt is prefilled in one pass (packed through flash_attn_varlen_func when padded),
its keys/values written to per-layer caches at positions 0..len-1 of each sequence; every
decode step then appends one token per sequence through flash_attn_with_kvcache with
per-sequence cache_seqlens, so left padding costs nothing after the prefill.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .layout import TokenLayout, layout_from_mask

__all__ = ["KVCache", "generate", "sample_next", "NonFiniteLogitsError"]


class NonFiniteLogitsError(FloatingPointError):
    """A step's logits hold NaN or +inf, or ban every token: no token can be chosen (argmax
    would pick id 0 and sampling fails). NaN weights or an overflow in a low-precision
    dtype are the usual causes. step is the 0-based index of the new token; rows are the
    affected sequences."""

    def __init__(self, message: str, step: int, rows: list):
        super().__init__(message)
        self.step, self.rows = step, rows


def _nonfinite_rows(logits: torch.Tensor, finished: torch.Tensor):
    """(best logit per row, rows that cannot choose a token) on the device: no host sync."""
    best = logits.amax(-1)  # NaN and +inf propagate; -inf when every token is banned
    return best, ~(torch.isfinite(best) | finished)


def _raise_nonfinite(best: torch.Tensor, bad: torch.Tensor, step: int) -> None:
    rows = torch.nonzero(bad).flatten().tolist()
    kinds = [k for k, hit in (("NaN", torch.isnan(best[bad]).any()),
                              ("+inf", (best[bad] == float("inf")).any()),
                              ("-inf everywhere (every token banned)",
                               (best[bad] == float("-inf")).any())) if bool(hit)]
    raise NonFiniteLogitsError(
        f"generation step {step}: the logits of sequence(s) {rows[:8]}"
        f"{' ...' if len(rows) > 8 else ''} are {' / '.join(kinds)}; no token can be chosen "
        "(NaN or inf weights, or an overflow in the model's dtype)", step, rows)


class _FiniteChecks:
    """The per-step logits checks, read on the host only where the loop waits anyway.

    Sampling needs a valid distribution, so its steps are checked before the draw. Greedy
    steps (argmax takes any logits) are queued on the device and read in one copy before a
    token reaches the streamer and after the loop: no host sync per token of its own, and
    still no token of a bad step streamed, and the first bad step is the one reported."""

    def __init__(self):
        self._pending = []  # (step, best, bad) not read yet

    def add(self, logits: torch.Tensor, finished: torch.Tensor, step: int, now: bool) -> None:
        self._pending.append((step, *_nonfinite_rows(logits, finished)))
        if now:
            self.read()

    def read(self) -> None:
        if not self._pending:
            return
        hits = torch.stack([bad.any() for _, _, bad in self._pending]).tolist()
        pending, self._pending = self._pending, []
        for (step, best, bad), hit in zip(pending, hits):
            if hit:
                _raise_nonfinite(best, bad, step)


class KVCache:
    """Per-layer (batch, max_len, kv_heads, head_dim) caches and the valid length of each
    sequence (cache_seqlens). Buffers are allocated on the first write, in k's dtype."""

    def __init__(self, n_layers: int, batch: int, max_len: int, device: torch.device):
        self.n_layers, self.batch, self.max_len = n_layers, batch, max_len
        self.k: list = [None] * n_layers
        self.v: list = [None] * n_layers
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.decoding = False  # False: the next forward is the prompt (prefill)
        self._rows: Optional[torch.Tensor] = None

    def _alloc(self, layer: int, like: torch.Tensor) -> None:
        shape = (self.batch, self.max_len, like.shape[-2], like.shape[-1])
        self.k[layer] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v[layer] = torch.zeros(shape, dtype=like.dtype, device=like.device)

    def write_prompt(self, layer: int, k: torch.Tensor, v: torch.Tensor,
                     layout: TokenLayout) -> None:
        """Stores a prompt's keys/values: sequence b's tokens at cache positions 0.."""
        if self.k[layer] is None:
            self._alloc(layer, k)
        if not layout.packed:
            self.k[layer][:, :layout.seqlen] = k
            self.v[layer][:, :layout.seqlen] = v
            return
        if self._rows is None:  # flat row b * max_len + position of each packed token
            cu = layout.cu_seqlens.long()
            batch_of = torch.repeat_interleave(torch.arange(layout.batch, device=cu.device),
                                               cu.diff())
            pos = torch.arange(int(cu[-1]), device=cu.device) - cu[batch_of]
            self._rows = batch_of * self.max_len + pos
        kh, d = k.shape[-2:]
        self.k[layer].view(-1, kh, d).index_copy_(0, self._rows, k)
        self.v[layer].view(-1, kh, d).index_copy_(0, self._rows, v)


def sample_next(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token per row of logits (batch, vocab): argmax, or a sample at temperature
    from the top_k most likely tokens and the smallest set whose probability reaches top_p."""
    logits = logits.float()
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the more likely ones already reach top_p (the first one stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(input_ids, max_new_tokens, temperature, top_k, top_p) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, seqlen) tensor, got "
                         f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one token per sequence")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None,
             eos_token_id: Union[None, int, list] = None,
             attention_mask: Optional[torch.Tensor] = None, do_sample: Optional[bool] = None,
             generator: Optional[torch.Generator] = None, pad_token_id: Optional[int] = None,
             streamer: Optional[Callable[[torch.Tensor], None]] = None,
             logits_processor: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
             ) -> torch.Tensor:
    """input_ids (batch, seqlen), left-padded with attention_mask for prompts of different
    lengths; returns (batch, seqlen + n) with the n <= max_new_tokens new tokens appended.

    do_sample None samples when temperature != 1, top_k or top_p is given; otherwise (and
    at temperature 0) decoding is greedy. A sequence stops at eos_token_id (one id or a
    list); its later positions hold pad_token_id (default: the eos id). Generation ends
    when every sequence has stopped. streamer, if given, is called with each step's new
    tokens (batch,); logits_processor, if given, maps each step's float32 logits (batch,
    vocab) before the choice (e.g. to ban ids). Contexts longer than max_seq_len run on ALiBi extrapolation, with a
    warning. Dropout is not switched off: call model.eval() first.

    Logits with NaN or +inf (or every token banned) in a running sequence raise
    NonFiniteLogitsError naming the first such step; its token never reaches the streamer or
    the output. Greedy steps are read on the host only where the loop waits anyway."""
    _check_args(input_ids, max_new_tokens, temperature, top_k, top_p)
    if do_sample is None:
        do_sample = temperature != 1.0 or top_k is not None or top_p is not None
    if temperature == 0:
        do_sample = False
    eos = [] if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)

    batch, seqlen = input_ids.shape
    device = input_ids.device
    layout = layout_from_mask(attention_mask, batch, seqlen, device)
    lengths = (layout.seqlens if layout.packed else
               torch.full((batch,), seqlen, dtype=torch.int32, device=device))
    if batch and int(lengths.min()) == 0:
        raise ValueError("every sequence needs at least one token (an attention_mask row "
                         "is all zeros)")
    if max_new_tokens == 0 or batch == 0:
        return input_ids
    model.warn_if_long(int(lengths.max()) + max_new_tokens)

    cache = KVCache(model.config.n_layers, batch, int(lengths.max()) + max_new_tokens, device)
    hidden = model.transformer(input_ids, layout, cache)
    last = hidden[layout.last_token_rows()] if layout.packed else hidden[:, -1]
    logits = model.logits_from_hidden(last)
    cache.seqlens.copy_(lengths)
    cache.decoding = True

    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    step_layout = TokenLayout(batch, 1)
    new_tokens = []
    checks = _FiniteChecks()
    for step in range(max_new_tokens):
        if logits_processor is not None:
            logits = logits_processor(logits.float())
        checks.add(logits, finished, step, now=do_sample)
        sampled = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
        token = sampled.masked_fill(finished, pad)
        new_tokens.append(token)
        if streamer is not None:
            checks.read()
            streamer(token)
        if eos:
            finished |= torch.isin(token, eos_ids)
            if bool(finished.all()):
                break
        if step == max_new_tokens - 1:
            break
        # Finished sequences keep decoding their sampled (valid) ids; the output hides them.
        hidden = model.transformer(sampled[:, None].to(input_ids.dtype), step_layout, cache)
        cache.seqlens += 1
        logits = model.logits_from_hidden(hidden[:, -1])
    checks.read()
    return torch.cat([input_ids, torch.stack(new_tokens, 1).to(input_ids.dtype)], 1)
