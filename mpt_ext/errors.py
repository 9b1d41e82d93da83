"""The one exception type for a user's mistake (a bad path, option, file or config).

The command-line tools (mpt-train, mpt-generate, mpt-bench) print a UsageError as one line,
`<prog>: error: <message>`, and exit 2; any other exception is a bug and keeps its traceback.
It subclasses ValueError so callers of the Python API can catch it as one.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Something the user gave (an option, a path, a file's contents) cannot be used."""
