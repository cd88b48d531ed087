"""The toolkit's user errors: one base class, so ``runtime.run_cli`` can tell a user's mistake (one line,
the exit status of docs/failures.md) from a bug (Python's own ``ValueError``, ``KeyError`` ...: a
traceback, kept for whoever fixes it).

Below every other module (it imports nothing), so any file can raise these without an upward import.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix (a flag, a file, a setting): ``run_cli`` prints ``error: <message>``
    and exits 1 (the work could not be done). A ValueError, so callers that catch ValueError keep working."""


class UsageError(UserError):
    """A flag or argument the script cannot run with: exit status 2, like argparse's own errors."""
