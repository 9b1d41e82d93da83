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
it is written to a temporary name and renamed, so a crash never leaves a half shard, and
the temporary file of a killed run is removed by the next build in that cache dir.

Everything here that a user's input can get wrong (a missing path, a bad jsonl line, data
without text, a corrupt shard) raises mpt_ext.errors.UsageError.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..errors import UsageError
from .corpus import DEFAULT_MAX_BYTES, stdlib_documents
from .tokenizer import ByteTokenizer

MAGIC = b"MPTTOKS\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQ16s24s")
assert HEADER.size == 64

#: the name for the embedded default corpus in a data source list
STDLIB = "stdlib"


class ShardError(UsageError):
    """A token shard is unreadable, truncated, or was built for another tokenizer."""


class DataSourceNotFound(UsageError, FileNotFoundError):
    """A data source path that does not exist (a UsageError that is also a FileNotFoundError)."""


class DataWarning(UserWarning):
    """build_shard's notices (undecodable or binary files, stale temporary shards) when it
    is given no log function."""


# ---- documents from sources ------------------------------------------------------------

#: a file with a NUL byte in its first BINARY_SNIFF bytes, or with more than
#: BINARY_BAD_FRACTION of its bytes not UTF-8, is binary (skipped, and counted)
BINARY_SNIFF = 8192
BINARY_BAD_FRACTION = 0.3
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape could not decode
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_NAMED = 3


@dataclass
class SourceReport:
    """What reading the sources found: filled in by iter_documents(report=...)."""
    documents: int = 0                                     # documents yielded
    text_documents: int = 0                                # ... holding non-whitespace text
    undecodable: list = field(default_factory=list)        # files kept, bad bytes -> U+FFFD
    binary: list = field(default_factory=list)             # files skipped as binary
    empty_sources: list = field(default_factory=list)      # sources with no text of their own

    def messages(self) -> list[str]:
        out = []
        if self.undecodable:
            n = len(self.undecodable)
            out.append(f"warning: {n} file{'s' if n > 1 else ''} had undecodable (not UTF-8) bytes, "
                       f"kept with each bad byte replaced by U+FFFD: {_named(self.undecodable)}")
        if self.binary:
            n = len(self.binary)
            out.append(f"warning: skipped {n} binary file{'s' if n > 1 else ''} (NUL bytes or mostly "
                       f"not UTF-8): {_named(self.binary)}")
        if self.empty_sources and self.text_documents:
            out += [f"warning: data source {s!r} holds no text" for s in self.empty_sources]
        return out


def _named(names: list) -> str:
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return ", ".join(str(n) for n in names[:_MAX_NAMED]) + more


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"data file {path}: cannot read it ({e.strerror or e})") from e


def _decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 text and the number of bytes that were not UTF-8 (each became U+FFFD)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _ESCAPED.subn("\ufffd", raw.decode("utf-8", errors="surrogateescape"))


def _file_documents(path: Path, report: SourceReport) -> Iterator[tuple[str, str]]:
    if path.suffix == ".jsonl":
        yield from _jsonl_documents(path, report)
        return
    raw = _read(path)
    if b"\0" in raw[:BINARY_SNIFF]:
        report.binary.append(str(path))
        return
    text, bad = _decode(raw)
    if bad > BINARY_BAD_FRACTION * len(raw):
        report.binary.append(str(path))
        return
    if bad:
        report.undecodable.append(str(path))
    yield str(path), text


def _jsonl_documents(path: Path, report: SourceReport) -> Iterator[tuple[str, str]]:
    """One document per non-blank line, streamed (a jsonl file may be large)."""
    bad_bytes = 0
    try:
        f = path.open("rb")
    except OSError as e:
        raise UsageError(f"data file {path}: cannot read it ({e.strerror or e})") from e
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            line, bad = _decode(line)
            bad_bytes += bad
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UsageError(f"{path}:{lineno}: a jsonl line must be an object with a "
                                 f"'text' string ({e.__class__.__name__}: {e})") from e
            if not isinstance(text, str):
                raise UsageError(f"{path}:{lineno}: 'text' must be a string, got "
                                 f"{type(text).__name__}")
            text, bad = _SURROGATE.subn("\ufffd", text)  # "\\ud800" escapes: not encodable
            bad_bytes += bad
            yield f"{path}:{lineno}", text
    if bad_bytes:
        report.undecodable.append(str(path))


def iter_documents(sources: Sequence[str | os.PathLike], stdlib_max_bytes: int = DEFAULT_MAX_BYTES,
                   report: SourceReport | None = None) -> Iterator[tuple[str, str]]:
    """(name, text) for every document in sources, in a fixed order: the sources as given,
    folders walked in sorted path order (hidden files skipped). Bytes that are not UTF-8
    become U+FFFD (the file is kept); binary files are skipped. report, if given, collects
    both, and the document counts."""
    report = report if report is not None else SourceReport()
    if not sources:
        raise UsageError("data sources: give at least one file, folder or 'stdlib'")
    for src in sources:
        before = report.text_documents
        for name, text in _source_documents(src, stdlib_max_bytes, report):
            report.documents += 1
            report.text_documents += bool(text) and not text.isspace()
            yield name, text
        if report.text_documents == before:
            report.empty_sources.append(str(src))


def _source_documents(src, stdlib_max_bytes: int, report: SourceReport) -> Iterator[tuple[str, str]]:
    if str(src) == STDLIB:
        yield from stdlib_documents(stdlib_max_bytes)
        return
    path = Path(src)
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        for f in files:
            yield from _file_documents(f, report)
    elif path.is_file():
        yield from _file_documents(path, report)
    else:
        raise DataSourceNotFound(f"data source {str(src)!r} is missing: it is neither a file, "
                                 "a folder nor 'stdlib'")


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


#: a temporary shard untouched for this long belongs to a dead run, whatever its name says
STALE_TEMP_AGE_S = 6 * 3600
# .tokens-<hash>.bin.tmp-<host>-<pid> (and .tmp<pid>, the name before hosts were recorded)
_TEMP_NAME = re.compile(r"^\.tokens-[^/]*\.bin\.tmp(?:-(?P<host>.+)-)?(?P<pid>\d+)$")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # another user's process (or nonsense, then old age decides)
    return True


def remove_stale_temp_shards(cache_dir: str | os.PathLike, max_age_s: float = STALE_TEMP_AGE_S
                             ) -> list[Path]:
    """Removes the temporary shards that killed runs left in cache_dir: those of this host
    whose process is gone, and any not written to for max_age_s (a run on another node of
    a shared file system). Returns the removed paths."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    removed, now, host = [], time.time(), socket.gethostname()
    for p in sorted(cache_dir.iterdir()):
        m = _TEMP_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        dead = m.group("host") in (None, host) and not _pid_alive(int(m.group("pid")))
        if dead or age > max_age_s:
            try:
                p.unlink()
            except FileNotFoundError:  # another process cleaned it first
                continue
            removed.append(p)
    return removed


def write_shard(path: Path, docs: Iterable[tuple[str, str]], tokenizer,
                empty_error: Optional[str] = None) -> int:
    """Tokenises docs into path (atomically: temporary name, fsync, rename). Returns the
    token count. With empty_error given, docs that give no token but eos raise UsageError
    (empty_error) and nothing is written."""
    dtype = token_dtype(tokenizer.vocab_size)
    eos = np.array([tokenizer.eos_token_id], dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    count = n_docs = 0
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
                n_docs += 1
            if empty_error is not None and count == n_docs:
                raise UsageError(empty_error)
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
                 stdlib_max_bytes: int = DEFAULT_MAX_BYTES, report: SourceReport | None = None) -> str:
    """A hash of everything the token stream depends on: document text and order, the
    tokenizer and the format version (paths are excluded: moved data is reused)."""
    h = hashlib.sha256(f"v{VERSION}|{tokenizer.fingerprint}|".encode())
    for _, text in iter_documents(sources, stdlib_max_bytes, report):
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _no_text_message(sources: list[str], report: SourceReport) -> str:
    what = "data source " + repr(sources[0]) if len(sources) == 1 else f"data sources {sources}"
    found = (f"{report.documents} empty document{'s' if report.documents != 1 else ''}"
             if report.documents else "no documents")
    if report.binary:
        found += f", {len(report.binary)} binary file{'s' if len(report.binary) > 1 else ''} skipped"
    return (f"{what} holds no text ({found}): give text files (UTF-8), a folder of them, "
            "or .jsonl with a 'text' field per line")


def build_shard(sources: Sequence[str | os.PathLike], tokenizer, cache_dir: str | os.PathLike,
                stdlib_max_bytes: int = DEFAULT_MAX_BYTES,
                log: Optional[Callable[[str], None]] = None) -> tuple[TokenShard, bool]:
    """Returns (shard, cache_hit): the cached shard for these sources and tokenizer,
    tokenising them first if no valid one exists.

    log receives one line per notice (files with undecodable bytes, binary files skipped,
    stale temporary shards removed); without it they are DataWarning warnings. Sources
    without any text raise UsageError before anything is cached, every run alike."""
    if log is None:
        def log(msg: str) -> None:
            warnings.warn(msg, DataWarning, stacklevel=3)
    sources = [str(s) for s in sources]
    stale = remove_stale_temp_shards(cache_dir)
    if stale:
        log(f"removed {len(stale)} stale temporary shard{'s' if len(stale) > 1 else ''} of an "
            f"interrupted run: {_named([p.name for p in stale])}")
    report = SourceReport()
    path = Path(cache_dir) / f"tokens-{sources_hash(sources, tokenizer, stdlib_max_bytes, report)}.bin"
    for msg in report.messages():
        log(msg)
    if not report.text_documents:
        raise UsageError(_no_text_message(sources, report))
    if path.exists():
        try:
            return open_shard(path, tokenizer), True
        except ShardError as e:  # e.g. truncated by a full disk: the sources can rebuild it
            log(f"warning: rebuilding the cached shard ({e})")
            path.unlink()
    write_shard(path, iter_documents(sources, stdlib_max_bytes), tokenizer,
                empty_error=_no_text_message(sources, report).replace("holds no text", "gives no tokens"))
    return open_shard(path, tokenizer), False


def heldout_problem(val_tokens, seq_len: int, val_fraction: float) -> Optional[str]:
    """Why no held-out evaluation can run on val_tokens (split_tokens' second half), as a
    message to print, or None when it can (or none was asked for: val_fraction 0)."""
    if val_fraction <= 0 or len(val_tokens) >= seq_len + 1:
        return None
    return (f"warning: the held-out set has {len(val_tokens)} tokens, fewer than seq_len + 1 = "
            f"{seq_len + 1}: evaluation is skipped (give more data, a larger --val-fraction "
            f"than {val_fraction}, or a shorter --seq-len)")


def split_tokens(tokens: np.ndarray, val_fraction: float, eos_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split: the last val_fraction of the stream, moved forward to a document
    start so no document is in both halves (unless one document is the whole stream)."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(tokens)
    cut = n - int(n * val_fraction)
    if val_fraction == 0.0:
        return tokens, tokens[n:]
    eos_after = np.flatnonzero(np.asarray(tokens[cut:]) == eos_token_id)
    if len(eos_after) and cut + eos_after[0] + 1 < n:
        cut = cut + int(eos_after[0]) + 1
    return tokens[:cut], tokens[cut:]
