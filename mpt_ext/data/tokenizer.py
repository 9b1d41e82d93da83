"""Tokenizers: a dependency-free byte-level one (the default) and any local Hugging Face
tokenizer directory behind the same small interface.

Interface every tokenizer here offers (what the data pipeline, trainer and generator use):
    encode(text) -> list[int]        decode(ids) -> str
    vocab_size, eos_token_id, bos_token_id, pad_token_id
    name                             a short human-readable name
    fingerprint                      a hash that changes whenever the text -> ids map could
                                     change (stored in token shard headers, so a cache built
                                     with another tokenizer is never silently reused)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Protocol

from ..errors import UsageError, one_line


class TokenizerNotFound(UsageError, FileNotFoundError):
    """--tokenizer names neither 'byte' nor an existing directory."""


class Tokenizer(Protocol):
    name: str
    fingerprint: str
    vocab_size: int
    eos_token_id: int
    bos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are the tokens 0..255; three specials follow.

    Every string round-trips exactly (UTF-8 is lossless); decoding ids that are not valid
    UTF-8 (a sampled model can emit half a character) replaces the bad bytes with U+FFFD
    rather than raising. Special tokens decode to nothing.
    """

    BYTES = 256
    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259
    name = "byte"

    @property
    def fingerprint(self) -> str:
        # The mapping is fixed by the constants above; bump the tag if they ever change.
        return hashlib.sha256(b"mpt_ext.ByteTokenizer/v1:256+bos,eos,pad").hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode: text must be str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        data = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < self.BYTES:
                data.append(i)
            elif not 0 <= i < self.vocab_size:
                raise ValueError(f"ByteTokenizer.decode: id {i} outside the vocabulary [0, {self.vocab_size})")
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259, bos=256, eos=257, pad=258)"


class HFTokenizer:
    """A local Hugging Face tokenizer directory (tokenizer.json, or whatever
    transformers.AutoTokenizer reads). Never downloads: the path must exist."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_dir():
            why = "it does not exist" if not path.exists() else "it is a file"
            raise TokenizerNotFound(f"tokenizer {str(path)!r} is not a directory ({why}): expected "
                                    "'byte' or a local Hugging Face tokenizer dir")
        self.path = path
        self._tok = self._load(path)
        vocab = len(self._tok)
        eos = self._tok.eos_token_id
        if eos is None:
            raise UsageError(f"tokenizer at {str(path)!r} defines no eos token; the data pipeline "
                             "separates documents with it")
        self.vocab_size = vocab
        self.eos_token_id = int(eos)
        self.bos_token_id = self._tok.bos_token_id
        self.pad_token_id = self._tok.pad_token_id
        self.name = f"hf:{path.name}"
        self.fingerprint = self._hash_files(path)

    @staticmethod
    def _load(path: Path):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("a Hugging Face tokenizer dir needs `transformers` "
                              "(pip install 'mpt_ext[hf]')") from e
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:  # not a tokenizer dir, or unreadable files in it
            raise UsageError(f"tokenizer dir {str(path)!r} cannot be loaded by transformers: "
                             f"{one_line(e, limit=300)}") from e

    @staticmethod
    def _hash_files(path: Path) -> str:
        # Hash the files that define the mapping, not the directory's mtime: a copy of the
        # same tokenizer elsewhere reuses the same shards.
        h = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".model", ".txt")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str | os.PathLike | None = "byte"):
    """'byte' (or None) -> ByteTokenizer; a local directory -> HFTokenizer."""
    if spec is None or str(spec) == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)


def tokenizer_info(tok) -> dict:
    """What a checkpoint records to rebuild the same tokenizer at generate time."""
    return {"name": tok.name, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
            "path": str(getattr(tok, "path", "byte"))}


__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "TokenizerNotFound", "load_tokenizer",
           "tokenizer_info"]
