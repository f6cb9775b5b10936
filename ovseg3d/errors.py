"""The failures a user can fix: the ``ovseg3d`` command prints them as one line (no traceback).

Anything else that escapes a command is a bug of ovseg3d (or of a library under it) and is shown with its
traceback. Raise :class:`UsageError` (or a subclass) for bad input, bad options and unusable files, with a
message that names the file or option and says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path


class UsageError(ValueError):
    """Bad input, options or files: one line naming what is wrong and what to do."""


class MissingFileError(UsageError, FileNotFoundError):
    """An input file or folder that is not there (also a ``FileNotFoundError``)."""


def check_writable(path: Path, what: str, hint: str = "", beside: bool = False) -> None:
    """Raise :class:`UsageError` naming ``path`` unless a command could write there: ``path`` (a folder, made
    if missing) or else the nearest folder above it that exists must be writable; with ``beside`` (an output
    written as a hidden sibling first, then renamed into place) its parent folder too. Call it before the work,
    so that a read-only output folder fails in one line at once rather than after minutes. ``hint``: what to
    do instead (e.g. "write elsewhere with --output DIR")."""
    path = Path(path)
    for target in (path, path.absolute().parent) if beside else (path,):
        probe = target
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            where = "is a file" if probe == path else f"cannot be made: {probe} is a file"
            raise UsageError(f"{what} {path} {where}, not a folder" + (f"; {hint}" if hint else ""))
        if not os.access(probe, os.W_OK | os.X_OK):
            where = "" if probe == path else f" ({probe} is not)"
            raise UsageError(f"{what} {path} is not writable{where}: " + (hint or "fix its permissions"))
