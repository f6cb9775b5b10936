"""nerfstudio / instant-ngp / Blender scenes: ``transforms.json`` (OpenGL camera-to-world per frame;
REFERENCE.md §8 has both dialects).

Intrinsics come from the top level or per frame (a frame's keys win): ``fl_x fl_y cx cy w h``, or
Blender's ``camera_angle_x`` with ``fx = fy = 0.5 w / tan(0.5 camera_angle_x)``. Missing ``cx, cy``
default to the image centre and missing ``w, h`` to the image size. The lens: ``camera_model``
(``OPENCV``, the default when coefficients are given, ``OPENCV_FISHEYE``, ``PINHOLE``, ``SIMPLE_PINHOLE``;
instant-ngp's ``is_fisheye``) with ``k1 k2 k3 k4 p1 p2``. An optional top-level
``"aabb": [[xmin, ymin, zmin], [xmax, ymax, zmax]]`` (an ovseg3d extension) gives the scene box;
A frame's ``mask_path`` (0 = ignore the pixel) is read by :mod:`.masks`. ``aabb_scale`` (instant-ngp),
``applied_transform`` (nerfstudio; already in the poses), ``sharpness`` and ``depth_file_path`` are read and
checked but not used. Frames whose image file is missing
are skipped with one warning; fewer than :data:`MIN_VIEWS` remaining is an error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovseg3d.data.cameras import Cameras
from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE
from ovseg3d.data.scene import SceneError
from ovseg3d.errors import UsageError

log = logging.getLogger("ovseg3d")

TRANSFORMS_FILE = "transforms.json"
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x")
LENS_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
CAMERA_MODELS = {"OPENCV": LENS_OPENCV, "OPENCV_FISHEYE": LENS_FISHEYE, "PINHOLE": LENS_PINHOLE}
CAMERA_MODELS["SIMPLE_PINHOLE"] = LENS_PINHOLE
MIN_VIEWS = 2


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error becomes ``SceneError("<file>:<line>:<col>: malformed JSON ...")``."""
    if not path.is_file():
        raise SceneError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SceneError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None


def as_number(value: Any, where: str) -> float:
    """A finite JSON number, else ``SceneError`` naming ``where`` (file and key)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SceneError(f"{where}: expected a finite number, got {json.dumps(value)[:40]}")
    return float(value)


def as_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A finite float64 array of the given shape from nested JSON lists, else ``SceneError``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != shape or not np.isfinite(arr).all():
        dims = " x ".join(map(str, shape))
        raise SceneError(f"{where}: expected a {dims} array of finite numbers")
    return arr


def _pose(value: Any, where: str) -> np.ndarray:
    """``[3, 4]`` camera-to-world from a 4 x 4 (or 3 x 4) JSON matrix."""
    rows = value if isinstance(value, list) else []
    return as_array(value, (3, 4) if len(rows) == 3 else (4, 4), where)[:3]


@dataclass
class FrameIntrinsics:
    """Intrinsics of one frame as written; ``None`` = not given (derived from the image)."""

    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    w: float | None = None
    h: float | None = None
    camera_angle_x: float | None = None
    lens: int = LENS_PINHOLE
    coeffs: tuple[float, ...] = (0.0,) * 8  # OpenCV k1 k2 p1 p2 k3 k4 k5 k6, or fisheye k1 k2 k3 k4

    def resolve(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` for an image of ``width x height``.

        Values written for another size ``(w, h)`` are scaled by ``width / w`` and ``height / h``.
        """
        w = self.w if self.w is not None else float(width)
        h = self.h if self.h is not None else float(height)
        if self.fx is not None:
            fx = self.fx
            fy = self.fy if self.fy is not None else self.fx
        else:
            assert self.camera_angle_x is not None  # checked by read_transforms
            fx = fy = 0.5 * w / math.tan(0.5 * self.camera_angle_x)
        cx = self.cx if self.cx is not None else w / 2.0
        cy = self.cy if self.cy is not None else h / 2.0
        sx, sy = width / w, height / h
        return fx * sx, fy * sy, cx * sx, cy * sy


@dataclass
class TransformsViews:
    """The frames of a ``transforms.json`` in file order.

    Attributes:
        image_paths: ``N`` existing image files.
        c2w: ``[N, 3, 4]`` float64 OpenGL camera-to-world.
        intrinsics: ``N`` frame intrinsics.
        aabb: ``[6]`` float64 scene box from the top-level ``"aabb"``, or ``None``.
        masks: per frame, its ``mask_path`` (relative to the file's folder) or ``None``.
    """

    image_paths: list[Path]
    c2w: np.ndarray
    intrinsics: list[FrameIntrinsics]
    aabb: np.ndarray | None
    masks: list[Path | None] | None = None


def _frame_intrinsics(top: dict[str, Any], frame: dict[str, Any], where: str) -> FrameIntrinsics:
    merged = {k: frame.get(k, top.get(k)) for k in INTRINSIC_KEYS}
    vals = {k: (None if v is None else as_number(v, f"{where}: {k}")) for k, v in merged.items()}
    for k, v in vals.items():
        if v is not None and v <= 0 and k not in ("cx", "cy"):
            raise SceneError(f"{where}: {k} must be positive, got {v}")
    if vals["fl_x"] is None and vals["camera_angle_x"] is None:
        raise SceneError(f"{where}: missing intrinsics (need fl_x/fl_y or camera_angle_x)")
    if vals["camera_angle_x"] is not None and vals["camera_angle_x"] >= math.pi:
        raise SceneError(f"{where}: camera_angle_x must be below pi radians")
    lens, coeffs = _frame_lens(top, frame, where)
    return FrameIntrinsics(
        vals["fl_x"], vals["fl_y"], vals["cx"], vals["cy"], vals["w"], vals["h"], vals["camera_angle_x"], lens, coeffs
    )


def _frame_lens(top: dict[str, Any], frame: dict[str, Any], where: str) -> tuple[int, tuple[float, ...]]:
    """Lens kind and the 8 coefficients of :mod:`.lenses` from ``camera_model`` and ``k1 k2 k3 k4 p1 p2``."""
    k = {key: as_number(frame.get(key, top.get(key, 0.0)), f"{where}: {key}") for key in LENS_KEYS}
    model = frame.get("camera_model", top.get("camera_model"))
    if model is None:
        fisheye = frame.get("is_fisheye", top.get("is_fisheye", False)) is True  # instant-ngp
        model = "OPENCV_FISHEYE" if fisheye else "OPENCV"
    if model not in CAMERA_MODELS:
        known = ", ".join(CAMERA_MODELS)
        raise SceneError(f"{where}: camera_model {model!r} is not supported (supported: {known})")
    lens = CAMERA_MODELS[model]
    if lens == LENS_FISHEYE:
        return lens, (k["k1"], k["k2"], k["k3"], k["k4"], 0.0, 0.0, 0.0, 0.0)
    coeffs = (k["k1"], k["k2"], k["p1"], k["p2"], k["k3"], 0.0, 0.0, 0.0)
    if lens == LENS_PINHOLE or not any(coeffs):
        return LENS_PINHOLE, (0.0,) * 8
    return lens, coeffs


def _frame_file(base: Path, file_path: Any, where: str) -> Path | None:
    """The frame's image file; ``None`` when it does not exist."""
    if not isinstance(file_path, str) or not file_path:
        raise SceneError(f"{where}: missing file_path")
    path = base / file_path
    if path.is_file():
        return path
    with_png = path.with_name(path.name + ".png")  # Blender writes paths without extension
    if with_png.is_file():
        return with_png
    return None


def warn_missing(listing: Path, missing: list[str], n_listed: int) -> None:
    """One warning line for listed images whose files are gone; an error when too few remain."""
    if not missing:
        return
    left = n_listed - len(missing)
    if left < MIN_VIEWS:
        raise SceneError(
            f"{listing}: {len(missing)} of {n_listed} listed images are missing (first: {missing[0]}); "
            f"{left} remain, need at least {MIN_VIEWS}"
        )
    log.warning(
        "%s: %d of %d listed images are missing (first: %s); going on with the %d that remain",
        listing,
        len(missing),
        n_listed,
        missing[0],
        left,
    )


def _read_aabb(meta: dict[str, Any], path: Path) -> np.ndarray | None:
    if "aabb" not in meta:
        return None
    box = as_array(meta["aabb"], (2, 3), f"{path}: aabb")
    if not (box[0] < box[1]).all():
        raise SceneError(f"{path}: aabb minimum must be below its maximum on every axis")
    return box.reshape(6)


def read_transforms(path: Path) -> TransformsViews:
    """Read a ``transforms.json`` and check every frame (pose, intrinsics, image file)."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise SceneError(f"{path}: expected a JSON object at the top level")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise SceneError(f'{path}: no frames (expected a non-empty "frames" list)')
    _check_extras(meta, path)
    paths, c2ws, intrinsics, masks, missing = [], [], [], [], []
    for i, frame in enumerate(frames):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict):
            raise SceneError(f"{where}: expected a JSON object")
        if "transform_matrix" not in frame:
            raise SceneError(f"{where}: missing transform_matrix")
        pose = _pose(frame["transform_matrix"], f"{where}: transform_matrix")
        intr = _frame_intrinsics(meta, frame, where)
        for key in ("mask_path", "depth_file_path"):
            if key in frame and not isinstance(frame[key], str):
                raise SceneError(f"{where}: {key} must be a string")
        file = _frame_file(path.parent, frame.get("file_path"), where)
        if file is None:
            missing.append(str(frame["file_path"]))
            continue
        paths.append(file)
        c2ws.append(pose)
        intrinsics.append(intr)
        masks.append(path.parent / frame["mask_path"] if frame.get("mask_path") else None)
    warn_missing(path, missing, len(frames))
    return TransformsViews(paths, np.stack(c2ws), intrinsics, _read_aabb(meta, path), masks)


def _check_extras(meta: dict[str, Any], path: Path) -> None:
    """The top-level keys ovseg3d reads but does not use must still be well formed."""
    if "aabb_scale" in meta and as_number(meta["aabb_scale"], f"{path}: aabb_scale") <= 0:
        raise SceneError(f"{path}: aabb_scale must be positive")
    if "applied_transform" in meta:
        rows = meta["applied_transform"] if isinstance(meta["applied_transform"], list) else []
        shape = (3, 4) if len(rows) == 3 else (4, 4)
        as_array(meta["applied_transform"], shape, f"{path}: applied_transform")


def transforms_cameras(views: TransformsViews, width: int, height: int) -> Cameras:
    """Cameras for the frames of ``views`` whose images are ``width x height``."""
    k = torch.tensor([f.resolve(width, height) for f in views.intrinsics], dtype=torch.float32)  # [N, 4]
    return Cameras(
        c2w=torch.as_tensor(views.c2w, dtype=torch.float32),
        fx=k[:, 0].contiguous(),
        fy=k[:, 1].contiguous(),
        cx=k[:, 2].contiguous(),
        cy=k[:, 3].contiguous(),
        width=int(width),
        height=int(height),
        lens=torch.tensor([f.lens for f in views.intrinsics], dtype=torch.long),
        coeffs=torch.tensor([f.coeffs for f in views.intrinsics], dtype=torch.float32),
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_transforms_json(
    path: str | Path,
    c2w_gl: np.ndarray,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    w: int,
    h: int,
    file_paths: list[str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a nerfstudio ``transforms.json`` with shared intrinsics.

    Args:
        c2w_gl: ``[N, 3, 4]`` (or ``[N, 4, 4]``) OpenGL camera-to-world.
        file_paths: ``N`` image paths relative to the json's folder.
        extra: top-level keys merged into the file (e.g. ``{"aabb": [[...], [...]]}``).
    """
    c2w = np.asarray(c2w_gl, dtype=np.float64)[:, :3, :4]
    if c2w.shape[1:] != (3, 4) or len(file_paths) != len(c2w):
        raise UsageError(f"need [N, 3, 4] poses and N file paths, got {c2w.shape} and {len(file_paths)}")
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (len(c2w), 1, 4))
    mats = np.concatenate([c2w, bottom], axis=1)
    meta: dict[str, Any] = {
        "camera_model": "OPENCV",
        "fl_x": float(fx),
        "fl_y": float(fy),
        "cx": float(cx),
        "cy": float(cy),
        "w": int(w),
        "h": int(h),
    }
    meta.update(extra or {})
    meta["frames"] = [{"file_path": p, "transform_matrix": m.tolist()} for p, m in zip(file_paths, mats)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2, default=_json_default) + "\n", encoding="utf-8")
