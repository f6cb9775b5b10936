"""The failures a user can fix: the ``ovseg3d`` command prints them as one line (no traceback).

Anything else that escapes a command is a bug of ovseg3d (or of a library under it) and is shown with its
traceback. Raise :class:`UsageError` (or a subclass) for bad input, bad options and unusable files, with a
message that names the file or option and says what to do.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input, options or files: one line naming what is wrong and what to do."""


class MissingFileError(UsageError, FileNotFoundError):
    """An input file or folder that is not there (also a ``FileNotFoundError``)."""
