"""How a batch's tokens are laid out for attention: dense (batch, seqlen) or packed
(unpadded) tokens with cu_seqlens, derived from an attention_mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["TokenLayout", "layout_from_mask", "layout_from_cu_seqlens"]


@dataclass
class TokenLayout:
    """Dense when cu_seqlens is None: activations are (batch, seqlen, ...). Packed
    otherwise: activations are (total_tokens, ...), sequence b being rows
    cu_seqlens[b]:cu_seqlens[b+1], and `index` gives each packed token's flat position
    b * seqlen + s in the padded (batch, seqlen) grid."""
    batch: int
    seqlen: int
    cu_seqlens: Optional[torch.Tensor] = None
    max_seqlen: int = 0
    index: Optional[torch.Tensor] = None
    seqlens: Optional[torch.Tensor] = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seqlen, ...) -> (total_tokens, ...) for a packed layout."""
        flat = x.reshape(self.batch * self.seqlen, *x.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(total_tokens, ...) -> (batch, seqlen, ...), padding positions set to fill."""
        if self.index is None:  # every position is a token (documents packed into rows)
            return x.view(self.batch, self.seqlen, *x.shape[1:])
        out = x.new_full((self.batch * self.seqlen, *x.shape[1:]), fill)
        out.index_copy_(0, self.index, x)
        return out.view(self.batch, self.seqlen, *x.shape[1:])

    def last_token_rows(self) -> torch.Tensor:
        """Row of each sequence's last token among the packed tokens."""
        return (self.cu_seqlens[1:] - 1).long()


def layout_from_mask(attention_mask: Optional[torch.Tensor], batch: int, seqlen: int,
                     device: torch.device) -> TokenLayout:
    """A dense layout when there is no padding, else a packed one. Each row's ones must
    form one contiguous run (left or right padding): the kernels then see exactly the
    positions Hugging Face's MPT sees, since ALiBi depends only on distances."""
    if attention_mask is None:
        return TokenLayout(batch, seqlen)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (batch, seqlen):
        raise ValueError(f"attention_mask must have input_ids' shape {(batch, seqlen)}, got "
                         f"{tuple(attention_mask.shape)}")
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise ValueError(f"attention_mask must be bool or integer (1 = token, 0 = padding), got "
                         f"{attention_mask.dtype}")
    mask = attention_mask.to(device=device)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (token)")
    mask = mask.bool()
    if bool(mask.all()):
        return TokenLayout(batch, seqlen)
    seqlens = mask.sum(1)
    # One contiguous run per row: the number of 0->1 steps (counting a leading 1) is <= 1.
    starts = mask.int().diff(dim=1, prepend=torch.zeros_like(mask[:, :1], dtype=torch.int)) == 1
    if bool((starts.sum(1) > 1).any()):
        raise ValueError("each attention_mask row must be one contiguous run of ones (left or "
                         "right padding); holes inside a sequence are not supported")
    cu = torch.zeros(batch + 1, dtype=torch.int32, device=device)
    cu[1:] = seqlens.cumsum(0)
    index = mask.reshape(-1).nonzero().squeeze(1)
    return TokenLayout(batch, seqlen, cu_seqlens=cu, max_seqlen=int(seqlens.max()),
                       index=index, seqlens=seqlens.to(torch.int32))


def layout_from_cu_seqlens(cu_seqlens: torch.Tensor, max_seqlen: Optional[int], batch: int,
                           seqlen: int, device: torch.device) -> TokenLayout:
    """Documents packed into the rows of a (batch, seqlen) block: cu_seqlens (int32,
    (n_docs + 1,)) splits the row-major flattened tokens; every position is a token."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32 of shape (n_seqs + 1,), got "
                         f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    cu = cu_seqlens.to(device)
    lengths = cu.diff()
    if int(cu[0]) != 0 or int(cu[-1]) != batch * seqlen or bool((lengths < 0).any()):
        raise ValueError(f"cu_seqlens must rise from 0 to batch * seqlen = {batch * seqlen}, got "
                         f"{cu_seqlens.tolist() if cu_seqlens.numel() < 20 else 'a bad sequence'}")
    longest = int(lengths.max())
    if max_seqlen is not None and int(max_seqlen) < longest:
        raise ValueError(f"max_seqlen={max_seqlen} is below the longest sequence ({longest})")
    return TokenLayout(batch, seqlen, cu_seqlens=cu, max_seqlen=longest, index=None,
                       seqlens=lengths.to(torch.int32))
