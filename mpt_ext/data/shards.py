"""Token shards: text files, folders and jsonl turned into one flat array of token ids on
disk (an np.memmap), each document followed by the tokenizer's eos id.

File layout (little-endian), a 64-byte header then the tokens:

    0   8s   magic  b"MPTTOKS\\0"
    8   u32  format version
    12  u32  bytes per token (2 = uint16, 4 = uint32)
    16  u64  token count
    24  16s  tokenizer fingerprint (ascii hex)
    40  24s  tokenizer name (utf-8, NUL padded)

A shard is cached under a name derived from the content of its sources, the tokenizer's
fingerprint and the format version, so the same data is tokenised once and then reused;
it is written to a temporary name and renamed, so a crash never leaves a half shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .corpus import DEFAULT_MAX_BYTES, stdlib_documents
from .tokenizer import ByteTokenizer

MAGIC = b"MPTTOKS\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQ16s24s")
assert HEADER.size == 64

#: the name for the embedded default corpus in a data source list
STDLIB = "stdlib"


class ShardError(ValueError):
    """A token shard is unreadable, truncated, or was built for another tokenizer."""


# ---- documents from sources ------------------------------------------------------------

def _file_documents(path: Path) -> Iterator[tuple[str, str]]:
    if path.suffix == ".jsonl":
        with path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: a jsonl line must be an object with a "
                                     f"'text' string ({e.__class__.__name__})") from e
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{lineno}: 'text' must be a string")
                yield f"{path}:{lineno}", text
        return
    try:
        yield str(path), path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return  # binary file in a folder: not text, skipped


def iter_documents(sources: Sequence[str | os.PathLike], stdlib_max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> Iterator[tuple[str, str]]:
    """(name, text) for every document in sources, in a fixed order: the sources as given,
    folders walked in sorted path order (hidden files skipped)."""
    if not sources:
        raise ValueError("data sources: give at least one file, folder or 'stdlib'")
    for src in sources:
        if str(src) == STDLIB:
            yield from stdlib_documents(stdlib_max_bytes)
            continue
        path = Path(src)
        if path.is_dir():
            files = sorted((p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                           key=lambda p: p.relative_to(path).as_posix())
            for f in files:
                yield from _file_documents(f)
        elif path.is_file():
            yield from _file_documents(path)
        else:
            raise FileNotFoundError(f"data source {str(src)!r} is neither a file, a folder nor 'stdlib'")


def _encode(tokenizer, text: str) -> np.ndarray:
    if isinstance(tokenizer, ByteTokenizer):  # fast path: the bytes are the ids
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# ---- the shard file ----------------------------------------------------------------------

@dataclass
class TokenShard:
    path: Path
    tokens: np.ndarray          # read-only memmap, uint16 or uint32
    tokenizer_name: str
    tokenizer_fingerprint: str

    def __len__(self) -> int:
        return len(self.tokens)


def write_shard(path: Path, docs: Iterable[tuple[str, str]], tokenizer) -> int:
    """Tokenises docs into path (atomically: temporary name, fsync, rename). Returns the
    token count."""
    dtype = token_dtype(tokenizer.vocab_size)
    eos = np.array([tokenizer.eos_token_id], dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * HEADER.size)  # placeholder until the count is known
            for _, text in docs:
                ids = _encode(tokenizer, text)
                if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                    raise ValueError("tokenizer produced an id outside its vocabulary")
                f.write(ids.astype(dtype).tobytes())
                f.write(eos.tobytes())
                count += ids.size + 1
            f.seek(0)
            f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, count,
                                tokenizer.fingerprint.encode("ascii")[:16],
                                tokenizer.name.encode("utf-8")[:24]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def open_shard(path: str | os.PathLike, tokenizer=None) -> TokenShard:
    """Opens and validates a shard; with tokenizer given, it must be the one the shard was
    built with."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER.size:
        raise ShardError(f"token shard {path} is truncated ({size} bytes, header is {HEADER.size})")
    with open(path, "rb") as f:
        magic, version, itemsize, count, fp, name = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise ShardError(f"{path} is not an mpt_ext token shard (bad magic {magic!r})")
    if version != VERSION:
        raise ShardError(f"token shard {path} has format version {version}, this code reads {VERSION}; "
                         "delete it to rebuild")
    if itemsize not in (2, 4):
        raise ShardError(f"token shard {path}: bad token width {itemsize}")
    if size != HEADER.size + count * itemsize:
        raise ShardError(f"token shard {path} is truncated or padded: header says {count} tokens "
                         f"({HEADER.size + count * itemsize} bytes), file has {size} bytes")
    fp, name = fp.decode("ascii"), name.rstrip(b"\0").decode("utf-8")
    if tokenizer is not None and fp != tokenizer.fingerprint:
        raise ShardError(f"token shard {path} was built with tokenizer {name!r} ({fp}), "
                         f"not {tokenizer.name!r} ({tokenizer.fingerprint})")
    dtype = np.uint16 if itemsize == 2 else np.uint32
    tokens = (np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))
              if count else np.zeros(0, dtype=dtype))
    return TokenShard(path, tokens, name, fp)


def sources_hash(sources: Sequence[str | os.PathLike], tokenizer,
                 stdlib_max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """A hash of everything the token stream depends on: document text and order, the
    tokenizer and the format version (paths are excluded: moved data is reused)."""
    h = hashlib.sha256(f"v{VERSION}|{tokenizer.fingerprint}|".encode())
    for _, text in iter_documents(sources, stdlib_max_bytes):
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def build_shard(sources: Sequence[str | os.PathLike], tokenizer, cache_dir: str | os.PathLike,
                stdlib_max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[TokenShard, bool]:
    """Returns (shard, cache_hit): the cached shard for these sources and tokenizer,
    tokenising them first if no valid one exists."""
    sources = [str(s) for s in sources]
    path = Path(cache_dir) / f"tokens-{sources_hash(sources, tokenizer, stdlib_max_bytes)}.bin"
    if path.exists():
        return open_shard(path, tokenizer), True
    count = write_shard(path, iter_documents(sources, stdlib_max_bytes), tokenizer)
    if count == 0:
        raise ValueError(f"data sources {sources} contain no text")
    return open_shard(path, tokenizer), False


def split_tokens(tokens: np.ndarray, val_fraction: float, eos_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split: the last val_fraction of the stream, moved forward to a document
    start so no document is in both halves (unless one document is the whole stream)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(tokens)
    cut = n - int(n * val_fraction)
    if val_fraction == 0.0:
        return tokens, tokens[n:]
    eos_after = np.flatnonzero(np.asarray(tokens[cut:]) == eos_token_id)
    if len(eos_after) and cut + eos_after[0] + 1 < n:
        cut = cut + int(eos_after[0]) + 1
    return tokens[:cut], tokens[cut:]
