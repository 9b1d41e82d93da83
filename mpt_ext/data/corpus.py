"""The embedded default corpus: the Python standard library's own sources.

Every machine that runs this package has them (no download), they are real, varied text,
and sorting by path makes the corpus identical run to run on the same Python version.
A size cap keeps tokenising to a few seconds.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Iterator

#: default cap on the corpus size: ~4 MB is ~4M byte tokens, far more than the tiny
#: preset sees in its default run, and tokenises in well under a second.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

# Folders skipped: third-party packages, the huge test suite and bytecode; the rest is
# the library proper.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test"}


def stdlib_dir() -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    if not path.is_dir():
        raise FileNotFoundError(f"the Python standard library sources are not at {path}; "
                                "pass --data with your own text files instead")
    return path


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib's .py files in a fixed order (sorted relative POSIX path)."""
    root = root or stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]   # prune, don't descend
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return [root / rel for rel in sorted(found)]


def stdlib_documents(max_bytes: int = DEFAULT_MAX_BYTES, root: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yields (relative_path, text) until about max_bytes of UTF-8 have been produced.
    Files that are not valid UTF-8 are skipped (a handful of test fixtures)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    root = root or stdlib_dir()
    total = 0
    for path in stdlib_files(root):
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip():
            continue
        yield path.relative_to(root).as_posix(), text
        total += len(raw)
        if total >= max_bytes:
            return
