"""3D-OVS / LLFF scenes: ``images/`` + ``poses_bounds.npy`` (REFERENCE.md §1).

``poses_bounds.npy`` is ``N x 17``: per view a 3x5 matrix flattened row-major whose columns are
``[down, right, back, position, (H, W, focal)]``, then ``near, far``. Poses are converted to the OpenGL
convention of :mod:`ovseg3d.data.cameras` on read and back on write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ovseg3d.data.cameras import Cameras, llff_to_opengl, opengl_to_llff
from ovseg3d.data.scene import SceneError
from ovseg3d.errors import UsageError

POSES_FILE = "poses_bounds.npy"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
            f.seek(0)
            arr = np.load(f, allow_pickle=False) if is_npy else None
    except (OSError, ValueError, EOFError) as exc:
        raise SceneError(f"{path}: cannot read as a .npy array ({_one_line(exc)})") from None
    if arr is None:
        raise SceneError(f"{path}: not a .npy file")
    return arr


def read_poses_bounds(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``poses_bounds.npy``.

    Returns:
        c2w_gl ``[N, 3, 4]`` float64 OpenGL camera-to-world, hwf ``[N, 3]`` (H, W, focal) and
        near_far ``[N, 2]``.

    Raises:
        SceneError: missing or unreadable file, shape other than ``[N, 17]``, non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path}: file not found")
    arr = _load_npy(path)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != 17 or arr.dtype.kind not in "fiu":
        raise SceneError(f"{path}: expected a numeric N x 17 array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise SceneError(f"{path}: non-finite values in row {int(bad[0])}")
    mats = arr[:, :15].reshape(-1, 3, 5)
    bad = np.flatnonzero((mats[:, :, 4] <= 0).any(axis=1))
    if bad.size:
        raise SceneError(f"{path}: row {int(bad[0])}: H, W and focal must be positive")
    c2w = np.concatenate([llff_to_opengl(mats[:, :, :3]), mats[:, :, 3:4]], axis=-1)
    return c2w, mats[:, :, 4].copy(), arr[:, 15:17].copy()


def write_poses_bounds(
    path: str | Path,
    c2w_gl: np.ndarray,
    hwf: np.ndarray | tuple[float, float, float],
    near_far: np.ndarray,
) -> None:
    """Write ``poses_bounds.npy``; the exact inverse of :func:`read_poses_bounds`.

    Args:
        c2w_gl: ``[N, 3, 4]`` OpenGL camera-to-world.
        hwf: ``[N, 3]`` or one ``(H, W, focal)`` shared by every view.
        near_far: ``[N, 2]`` depth bounds.
    """
    c2w = np.asarray(c2w_gl, dtype=np.float64)
    n = c2w.shape[0]
    if c2w.shape != (n, 3, 4):
        raise UsageError(f"c2w_gl must be [N, 3, 4], got {c2w.shape}")
    hwf_arr = np.broadcast_to(np.asarray(hwf, dtype=np.float64), (n, 3))
    bounds = np.broadcast_to(np.asarray(near_far, dtype=np.float64), (n, 2))
    mats = np.concatenate([opengl_to_llff(c2w[:, :, :3]), c2w[:, :, 3:4], hwf_arr[:, :, None]], axis=-1)
    out = np.concatenate([mats.reshape(n, 15), bounds], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.save(str) would append ".npy" to other names
        np.save(f, out)


def list_images(folder: Path) -> list[Path]:
    """Image files (png / jpg / jpeg, any case; hidden files skipped) of ``folder`` sorted by file name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def is_image_file(path: Path) -> bool:
    """A visible png / jpg / jpeg file (``._x.jpg`` metadata files that macOS leaves behind are not)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


@dataclass
class LLFFViews:
    """The views of an LLFF scene as stored: image paths and poses in file order.

    Attributes:
        image_paths: ``N`` images of ``images/`` sorted by name.
        c2w: ``[N, 3, 4]`` float64 OpenGL camera-to-world.
        hwf: ``[N, 3]`` (H, W, focal) of the pose file.
        near_far: ``[N, 2]`` depth bounds.
    """

    image_paths: list[Path]
    c2w: np.ndarray
    hwf: np.ndarray
    near_far: np.ndarray


def read_llff(root: Path) -> LLFFViews:
    """Read ``root/images/`` and ``root/poses_bounds.npy``; their counts must agree."""
    image_dir = root / "images"
    pose_path = root / POSES_FILE
    if not image_dir.is_dir():
        raise SceneError(f"{image_dir}: image folder not found (an LLFF scene needs images/ beside {POSES_FILE})")
    paths = list_images(image_dir)
    if not paths:
        raise SceneError(f"{image_dir}: no .png/.jpg/.jpeg images")
    c2w, hwf, near_far = read_poses_bounds(pose_path)
    if len(paths) != len(c2w):
        raise SceneError(f"{image_dir}: {len(paths)} images but {pose_path} has {len(c2w)} poses")
    return LLFFViews(paths, c2w, hwf, near_far)


def llff_cameras(c2w: np.ndarray, hwf: np.ndarray, width: int, height: int) -> Cameras:
    """Cameras for images of ``width x height``.

    The focal of the pose file is scaled by ``width / W_hwf`` when the images were resized;
    the principal point is the image centre. Shapes: c2w ``[N, 3, 4]``, hwf ``[N, 3]``.
    """
    focal = hwf[:, 2] * (width / hwf[:, 1])
    n = len(c2w)
    return Cameras(
        c2w=torch.as_tensor(c2w, dtype=torch.float32),
        fx=torch.as_tensor(focal, dtype=torch.float32),
        fy=torch.as_tensor(focal, dtype=torch.float32),
        cx=torch.full((n,), width / 2.0, dtype=torch.float32),
        cy=torch.full((n,), height / 2.0, dtype=torch.float32),
        width=int(width),
        height=int(height),
    )
