"""The one exception type for a user's mistake (a bad path, option, file or config).

The command-line tools (mpt-train, mpt-generate, mpt-bench) print a UsageError as one line,
`<prog>: error: <message>`, and exit 2; any other exception is a bug and keeps its traceback.
It subclasses ValueError so callers of the Python API can catch it as one.
"""
from __future__ import annotations

from typing import Optional


class UsageError(ValueError):
    """Something the user gave (an option, a path, a file's contents) cannot be used."""


def one_line(exc: BaseException, limit: Optional[int] = None) -> str:
    """exc's message on one line (whitespace runs collapsed; its class name if it has no
    message), cut to limit characters with "..." when limit is given."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."
