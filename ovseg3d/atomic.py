"""Outputs that appear whole or not at all.

A file is written beside its final name in the same folder (``.NAME.tmp-PID``) and renamed over it with
:func:`os.replace` once complete, so a reader sees the old file or the new one, never a part; a folder of
files that belong together (an export) is filled as a hidden sibling (``.NAME.tmp-PID``) and swapped in
with two renames. On any failure, ``KeyboardInterrupt`` included, the temporary file or folder is removed;
what a killed process (``SIGKILL``, power loss) leaves behind is tidied by the next write of the same name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _temp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextmanager
def replacing(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """An open file that becomes ``path`` when the block ends without an error (flushed to disk first);
    on an error the partial file is removed and ``path`` is left as it was. Creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path, "wb") as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    with replacing(path, "w") as f:
        f.write(text)


def write_json(path: Path, obj: Any, indent: int = 2) -> None:
    """``obj`` as JSON (and a final newline), whole or not at all."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # no safe probe: leave the folder alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[tuple[Path, int]]:
    """``.NAME.KIND-PID`` siblings of ``target`` whose process is gone, with their pid."""
    out = []
    prefix = f".{target.name}.{kind}-"
    if not target.parent.is_dir():
        return out
    for p in target.parent.iterdir():
        if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit():
            pid = int(p.name[len(prefix) :])
            if not _pid_alive(pid):
                out.append((p, pid))
    return out


def remove_dead_files(folder: Path) -> list[Path]:
    """Remove the temporary files (``.NAME.tmp-PID``, ``.NAME.old-PID``) in ``folder`` whose process is gone,
    whatever their name: a file written under a name that is never written again (a checkpoint's carries its
    step) is not tidied by :func:`replacing`. Returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        name, _, pid = p.name.rpartition("-")
        if p.name.startswith(".") and name.endswith((".tmp", ".old")) and pid.isdigit() and p.is_file():
            if not _pid_alive(int(pid)):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def recover_folder(target: Path) -> None:
    """Tidy what a killed :func:`swapped_folder` left beside ``target``: a half-written new folder is removed;
    an old folder moved aside is put back if ``target`` is missing (the kill fell between the two renames),
    else removed."""
    for tmp, _ in _leftovers(target, "tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    for old, _ in _leftovers(target, "old"):
        if not target.exists():
            os.rename(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def swapped_folder(target: Path) -> Iterator[Path]:
    """A fresh, empty hidden sibling folder of ``target`` to fill; when the block ends without an error it
    replaces ``target`` (the old one renamed away, the new one renamed in, the old one deleted), else it is
    deleted and ``target`` is left as it was."""
    target = Path(os.path.abspath(target))  # "." has no name of its own to put a sibling beside
    if target.is_symlink():
        target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    tmp, old = _temp_name(target), _temp_name(target, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
