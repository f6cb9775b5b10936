"""The on-disk teacher feature cache: float16 ``.npy`` files read memory-mapped, and a JSON sidecar.

Layout of a cache folder (default ``SCENE/features/<teacher>/``)::

    meta.json        how the features were made (teacher, models, sizes, scales, classes, input hashes)
                     and which views are done ("complete" once all are)
    clip.npy         [N, h, w, S, D]  float16  unit CLIP features per view, pixel, scale
    relevancy.npy    [N, hr, wr, S, C] float16 3D-OVS relevancy per view, pixel, scale, class
    dino.npy         [N, hd, wd, Dd]  float16  unit DINO features per view and patch
    text.npy         [C, D]           float32  class text embeddings
    preview/         PNGs: image | CLIP features (PCA) | teacher labels | DINO features (PCA)
    .lock            held shared by each run that reads the folder, exclusively by the one that writes it

Pixel-major layouts make a random batch of pixels a gather of contiguous rows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ovseg3d import __version__
from ovseg3d.atomic import write_json
from ovseg3d.teachers.config import TeacherError

CACHE_FORMAT = 5  # 2: DINO grid scaled up for small images; 3: positions as DINO's, FDA's DINO before its norm;
# 4: the persistent simulated teacher reads labelled pixels without an instance as one region per class;
# 5: dense CLIP's image-wide DINO pass resampled for FDA on frames wider than 4:3 (one DINO pass a view)
LATER_SETTINGS = {"clip_features": "crops", "class_relevancy": "minmax"}
"""Settings added to the sidecar after its format: a cache made before holds their value here."""
ARRAYS = ("clip", "relevancy", "dino")


class FolderLock:
    """An advisory ``flock`` on ``FOLDER/.lock``: shared while a run reads the cache, exclusive while one writes it,
    so that a run with other teacher settings cannot rewrite the arrays another run has memory-mapped. Where the
    lock file cannot be made (a read-only folder, which no run can write either), before the folder exists, or where
    ``flock`` does not exist, it holds nothing. Released when closed or dropped, and by the system when the process ends.

    A process holds one lock a folder (:meth:`of`), shared by all its readers and writers: the lock keeps other
    processes out, as before it a process rewrote a cache it still read only when asked to."""

    _held: weakref.WeakValueDictionary[str, FolderLock] = weakref.WeakValueDictionary()

    @classmethod
    def of(cls, folder: Path) -> FolderLock:
        """This process's lock on ``folder``: the one its readers hold, or a new one."""
        key = str(Path(folder).resolve())
        lock = cls._held.get(key)
        if lock is None:
            lock = cls._held[key] = cls(folder)
        return lock

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX
            fcntl = None  # type: ignore[assignment]
        self._fcntl = fcntl

    def _open(self) -> None:
        """The lock file, once the folder exists (a run that fails before writing leaves no folder behind)."""
        if self.fd is not None or self._fcntl is None or not self.folder.is_dir():
            return
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # flock needs no write permission
            try:
                self.fd = os.open(self.folder / ".lock", flags, 0o644)
                return
            except OSError:
                continue

    def _flock(self, op: int, wait: bool) -> bool:
        if self.fd is None:
            return True
        try:
            self._fcntl.flock(self.fd, op if wait else op | self._fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def shared(self, waiting: Callable[[], None] | None = None) -> None:
        """Hold the folder shared, waiting for a writer to finish (``waiting`` is called once if it must)."""
        self._open()
        if self.fd is not None and not self._flock(self._fcntl.LOCK_SH, wait=False):
            if waiting is not None:
                waiting()
            self._flock(self._fcntl.LOCK_SH, wait=True)

    def exclusive(self, attempts: int = 5) -> bool:
        """Hold the folder alone if no other run holds it (a few tries over about a second); ``False`` if one does."""
        self._open()
        for k in range(attempts):
            if self.fd is None or self._flock(self._fcntl.LOCK_EX, wait=False):
                return True
            time.sleep(0.05 * 2**k)
        return False

    def release(self) -> None:
        if self.fd is not None:
            self._flock(self._fcntl.LOCK_UN, wait=True)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


@dataclass
class TeacherFeatures:
    """A complete cache, arrays memory-mapped (see the module docstring for shapes)."""

    path: Path
    meta: dict[str, Any]
    clip: np.ndarray
    relevancy: np.ndarray
    dino: np.ndarray
    text: np.ndarray
    views: list[int] | None = None
    """The views whose maps the cache holds and the run uses (``--teacher-views``); ``None``: all of them."""
    lock: FolderLock | None = None
    """The shared hold on the folder while these arrays are read (released when they are dropped)."""

    def has(self, view: int) -> bool:
        """Whether the cache holds ``view``'s maps for this run."""
        return self.views is None or view in self.views

    def usable(self, views: list[int]) -> list[int]:
        """Those of ``views`` the cache holds maps of, in their order."""
        return [v for v in views if self.has(v)]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def n_scales(self) -> int:
        return int(self.clip.shape[3])

    def view_relevancy(self, view: int) -> Tensor:
        """``[S, h, w, C]`` float32 relevancy of one view."""
        return torch.from_numpy(np.asarray(self.relevancy[view], dtype=np.float32)).permute(2, 0, 1, 3)

    def view_clip(self, view: int) -> Tensor:
        """``[S, h, w, D]`` float32 CLIP features of one view."""
        return torch.from_numpy(np.asarray(self.clip[view], dtype=np.float32)).permute(2, 0, 1, 3)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*.npy"))


def read_meta(path: Path) -> dict[str, Any] | None:
    """The sidecar of a cache folder, or ``None`` if there is none or it is unreadable."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):  # JSONDecodeError, UnicodeDecodeError
        return None
    return meta if isinstance(meta, dict) else None


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """``meta.json``, whole or not at all (a kill leaves the previous sidecar, and no temporary file)."""
    write_json(path / "meta.json", meta, indent=1)


def stale_reason(stored: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """Why a stored sidecar does not describe the features ``expected`` asks for (``None``: it does)."""
    if stored.get("format") != expected["format"]:
        return f"cache format {stored.get('format')} (made by ovseg3d {stored.get('ovseg3d_version', '?')})"
    if stored.get("teacher") != expected["teacher"]:
        return f"teacher {stored.get('teacher')} != {expected['teacher']}"
    settings = {**LATER_SETTINGS, **stored.get("settings", {})}
    changed = [k for k, v in expected["settings"].items() if settings.get(k) != v]
    if changed:
        return "settings changed: " + ", ".join(changed)
    if stored.get("classes") != expected["classes"]:
        return "the scene's classes changed"
    if stored.get("source_size") != expected["source_size"]:
        return f"input size {stored.get('source_size')} != {expected['source_size']}"
    old, new = stored.get("inputs", []), expected["inputs"]
    if len(old) != len(new):
        return f"{len(old)} views cached, the scene has {len(new)}"
    diff = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    if diff:
        return f"{len(diff)} input image(s) changed (first: view {diff[0]})"
    return None


def create_arrays(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Fresh float16 memory-mapped arrays ``path/<name>.npy``."""
    return {
        name: np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape)
        for name, shape in shapes.items()
    }


def open_arrays(path: Path, mode: str = "r") -> dict[str, np.ndarray]:
    try:
        return {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in ARRAYS}  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        raise TeacherError(f"{path}: unreadable feature file ({' '.join(str(exc).split())[:200]})") from None


def open_features(path: Path, views: list[int] | None = None) -> TeacherFeatures:
    """Open a cache folder (memory-mapped, read-only): a complete one, or one that holds ``views`` (a run's
    ``--teacher-views``)."""
    meta = read_meta(path)
    held = meta is not None and (meta.get("complete") or (views is not None and set(views) <= set(meta["done"])))
    if not held:
        raise TeacherError(f"{path} holds no complete teacher features: run ovseg3d extract SCENE")
    arrays = open_arrays(path)
    try:
        text = np.load(path / "text.npy")
    except (OSError, ValueError) as exc:
        raise TeacherError(f"{path / 'text.npy'}: unreadable ({exc})") from None
    chosen = sorted(views) if views is not None else None
    return TeacherFeatures(path, meta, arrays["clip"], arrays["relevancy"], arrays["dino"], text, chosen)


def clear(path: Path) -> None:
    """Remove what a cache folder holds (only the files a cache writes)."""
    for name in (*ARRAYS, "text"):
        (path / f"{name}.npy").unlink(missing_ok=True)
    for name in ("meta.json", "meta.json.tmp"):  # meta.json.tmp: what writers before ovseg3d.atomic left
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "preview", ignore_errors=True)


def new_meta(expected: dict[str, Any]) -> dict[str, Any]:
    return {"ovseg3d_version": __version__, **expected, "complete": False, "done": []}
