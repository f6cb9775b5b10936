"""COLMAP sparse models (``cameras``, ``images``, ``points3D``; binary ``.bin`` or text ``.txt``).

A reader and writer in numpy + ``struct`` only (pycolmap is a test dependency, never a runtime one). The
layouts are in ``REFERENCE.md`` §8. Poses are world-to-camera, ``x_cam = R(q) x_world + t`` with OpenCV
camera axes; :func:`c2w_opengl` turns one into the OpenGL camera-to-world that the rest of ovseg3d uses,
and :func:`lens_of` turns a camera model into ``(fx, fy, cx, cy, lens_kind, coeffs)``.

Every problem with the files (missing, truncated, unknown model, wrong parameter count, an image whose
camera is missing, a malformed text line) raises :class:`SceneError` with one line naming the file.
The tracks of points are skipped on reading (their lengths and the points' ids are kept) and written empty.
The images' 2D observations are skipped too unless asked for (``read_model(folder, observations=True)`` or
:func:`read_observations`: per image its keypoints ``xys [K, 2]`` in COLMAP pixels, whose top-left pixel's centre
is ``(0.5, 0.5)`` as ovseg3d's, and the ``point3D_ids [K]`` they observe, -1 for none); they are written empty.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE
from ovseg3d.data.scene import SceneError
from ovseg3d.errors import UsageError

# COLMAP model id -> (name, number of params). 0-10 are the classic models; 11-17 are newer COLMAP's (as in
# pycolmap 4.2.1): read and written so that a model using them loads, refused by lens_of.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
    14: ("SIMPLE_FISHEYE", 3),
    15: ("FISHEYE", 4),
    16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
MODEL_IDS: dict[str, int] = {name: mid for mid, (name, _) in CAMERA_MODELS.items()}

# model name -> lens kind and, per entry of the 8 coefficients [k1 k2 p1 p2 k3 k4 k5 k6] (OpenCV) or
# [k1 k2 k3 k4 0 0 0 0] (fisheye), the index of the COLMAP param that fills it.
_LENS_LAYOUT: dict[str, tuple[int, tuple[int, ...]]] = {
    "SIMPLE_PINHOLE": (LENS_PINHOLE, ()),
    "PINHOLE": (LENS_PINHOLE, ()),
    "SIMPLE_RADIAL": (LENS_OPENCV, (3,)),
    "RADIAL": (LENS_OPENCV, (3, 4)),
    "OPENCV": (LENS_OPENCV, (4, 5, 6, 7)),
    "FULL_OPENCV": (LENS_OPENCV, (4, 5, 6, 7, 8, 9, 10, 11)),
    "OPENCV_FISHEYE": (LENS_FISHEYE, (4, 5, 6, 7)),
    "SIMPLE_RADIAL_FISHEYE": (LENS_FISHEYE, (3,)),
    "RADIAL_FISHEYE": (LENS_FISHEYE, (3, 4)),
}
_ONE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"}
MODEL_FILES = ("cameras", "images", "points3D")
MODEL_CANDIDATES = ("sparse/0", "sparse", "colmap/sparse/0", "distorted/sparse/0")

_U64 = struct.Struct("<Q")
_CAMERA_HEAD = struct.Struct("<IiQQ")  # id, model, width, height
_IMAGE_HEAD = struct.Struct("<I4d3dI")  # id, qw qx qy qz, tx ty tz, camera id
_POINT_HEAD = 43  # u64 id, f64 xyz[3], u8 rgb[3], f64 error
_POINT_DTYPE = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"), ("len", "<u8")])
_OBSERVATION_DTYPE = np.dtype([("xy", "<f8", 2), ("id", "<i8")])  # one 2D point of images.bin (-1: no 3D point)
_EXACT_INT = 2**53  # ids of text files are parsed as float64: exact below this


@dataclass
class ColmapCamera:
    """One camera (intrinsics) of ``cameras.bin/.txt``.

    Attributes:
        params: ``[k]`` float64 in COLMAP's order for ``model`` (e.g. OPENCV: fx fy cx cy k1 k2 p1 p2).
        source: the file it was read from (named by errors), ``None`` when built in code.
    """

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray
    source: Path | None = field(default=None, compare=False, repr=False)


@dataclass
class ColmapImage:
    """One registered image of ``images.bin/.txt``; its 2D observations only when read with them.

    Attributes:
        qvec: ``[4]`` float64 ``w x y z`` rotation world-to-camera.
        tvec: ``[3]`` float64 translation world-to-camera (``x_cam = R(q) x_world + t``).
        name: path relative to the images folder, may contain subfolders.
        xys: ``[K, 2]`` float64 keypoints in the camera's pixels (COLMAP's: the top-left pixel's centre is
            ``(0.5, 0.5)``), or ``None`` when the observations were not read.
        point3D_ids: ``[K]`` int64 id of the 3D point each keypoint observes, -1 for none; or ``None``.
    """

    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray | None = field(default=None, compare=False, repr=False)
    point3D_ids: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class ColmapModel:
    """A sparse model. Dicts keep file order.

    Attributes:
        points: ``[P, 3]`` float64 world positions.
        colors: ``[P, 3]`` uint8 RGB.
        errors: ``[P]`` float64 mean reprojection error in pixels (COLMAP writes -1 for an empty track).
        track_lengths: ``[P]`` int64 number of observations of each point.
        point_ids: ``[P]`` int64 ids of the points (what the images' ``point3D_ids`` refer to); ``None`` for a
            model built in code (the writer numbers the points 1..P).
    """

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray
    colors: np.ndarray
    errors: np.ndarray
    track_lengths: np.ndarray
    point_ids: np.ndarray | None = None


_Points = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # xyz, rgb, errors, lengths, ids


def _empty_points() -> _Points:
    return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Rotations and poses


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` quaternions ``w x y z`` (normalised here) -> ``[..., 3, 3]`` rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` rotation matrices -> ``[..., 4]`` unit quaternions ``w x y z`` with ``w >= 0``.

    The eigenvector of Bar-Itzhack's symmetric 4x4 matrix (as COLMAP's ``read_write_model.py``), so a
    slightly non-orthonormal matrix gives the nearest rotation's quaternion.
    """
    R = np.asarray(R, dtype=np.float64)
    r = {f"{'xyz'[i]}{'xyz'[j]}": R[..., i, j] for i in range(3) for j in range(3)}
    K = np.zeros((*R.shape[:-2], 4, 4))
    K[..., 0, 0] = r["xx"] - r["yy"] - r["zz"]
    K[..., 1, 0] = r["xy"] + r["yx"]
    K[..., 1, 1] = r["yy"] - r["xx"] - r["zz"]
    K[..., 2, 0] = r["xz"] + r["zx"]
    K[..., 2, 1] = r["yz"] + r["zy"]
    K[..., 2, 2] = r["zz"] - r["xx"] - r["yy"]
    K[..., 3, 0] = r["zy"] - r["yz"]
    K[..., 3, 1] = r["xz"] - r["zx"]
    K[..., 3, 2] = r["yx"] - r["xy"]
    K[..., 3, 3] = r["xx"] + r["yy"] + r["zz"]
    _, vecs = np.linalg.eigh(K / 3.0)  # lower triangle; eigenvalues ascending
    q = vecs[..., [3, 0, 1, 2], -1]  # (x y z w) -> (w x y z)
    return q * np.where(q[..., :1] < 0, -1.0, 1.0)


def c2w_opengl(image: ColmapImage) -> np.ndarray:
    """``[3, 4]`` float64 camera-to-world in OpenGL axes (x right, y up, z back).

    ``c2w_cv = [Rᵀ | -Rᵀ t]`` with ``R = R(q)``; OpenGL flips the camera's y and z: ``R_gl = Rᵀ diag(1, -1, -1)``.
    """
    return c2w_opengl_from_w2c(qvec_to_rotmat(image.qvec), np.asarray(image.tvec, dtype=np.float64))


def c2w_opengl_from_w2c(rot: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """``[3, 4]`` OpenGL camera-to-world of a COLMAP (OpenCV) world-to-camera rotation ``rot`` and translation."""
    c2w = np.empty((3, 4))
    c2w[:, :3] = rot.T * np.array([1.0, -1.0, -1.0])
    c2w[:, 3] = -rot.T @ tvec
    return c2w


def lens_of(camera: ColmapCamera) -> tuple[float, float, float, float, int, np.ndarray]:
    """``(fx, fy, cx, cy, lens_kind, coeffs)`` of a camera; ``coeffs`` is ``[8]`` float64.

    ``lens_kind``: 0 pinhole (no distortion; also any OpenCV-family model whose coefficients are all zero),
    1 OpenCV radial-tangential / rational with ``[k1 k2 p1 p2 k3 k4 k5 k6]``, 2 fisheye (Kannala-Brandt,
    ``θ_d = θ(1 + k1θ² + k2θ⁴ + k3θ⁶ + k4θ⁸)``) with ``[k1 k2 k3 k4 0 0 0 0]``. See ``REFERENCE.md`` §8.
    Other models (FOV, THIN_PRISM_FISHEYE, ...) raise :class:`SceneError`.
    """
    where = f"{camera.source}: camera {camera.camera_id}" if camera.source else f"camera {camera.camera_id}"
    if camera.model not in _LENS_LAYOUT:
        supported = ", ".join(_LENS_LAYOUT)
        raise SceneError(f"{where}: camera model {camera.model} is not supported (supported: {supported})")
    kind, layout = _LENS_LAYOUT[camera.model]
    p = np.asarray(camera.params, dtype=np.float64).reshape(-1)
    expected = CAMERA_MODELS[MODEL_IDS[camera.model]][1]
    if p.size != expected:
        raise SceneError(f"{where}: {camera.model} needs {expected} params, got {p.size}")
    if camera.model in _ONE_FOCAL:  # f cx cy ...
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    else:  # fx fy cx cy ...
        fx, fy, cx, cy = p[:4]
    coeffs = np.zeros(8)
    coeffs[: len(layout)] = p[list(layout)]
    if kind == LENS_OPENCV and not coeffs.any():
        kind = LENS_PINHOLE
    return float(fx), float(fy), float(cx), float(cy), kind, coeffs


# ---------------------------------------------------------------------------------------------------------------
# Finding and reading a model


def _model_ext(folder: Path) -> str | None:
    """``".bin"`` or ``".txt"``: the format whose cameras and images both exist in ``folder`` (binary first)."""
    for ext in (".bin", ".txt"):
        if (folder / f"cameras{ext}").is_file() and (folder / f"images{ext}").is_file():
            return ext
    return None


def find_model(root: Path) -> Path | None:
    """The first of ``root/sparse/0``, ``root/sparse``, ``root/colmap/sparse/0``, ``root/distorted/sparse/0``
    that holds ``cameras`` and ``images`` (``.bin`` or ``.txt``), else ``None``."""
    for rel in MODEL_CANDIDATES:
        folder = Path(root) / rel
        if _model_ext(folder) is not None:
            return folder
    return None


def _model_paths(folder: Path) -> tuple[str, dict[str, Path]]:
    ext = _model_ext(folder)
    if ext is None:
        raise SceneError(f"{folder}: no COLMAP model (need cameras and images, both .bin or both .txt)")
    return ext, {name: folder / f"{name}{ext}" for name in MODEL_FILES}


def read_model(folder: Path, observations: bool = False) -> ColmapModel:
    """Read the sparse model in ``folder``: ``.bin`` files when ``cameras.bin`` and ``images.bin`` exist, else
    ``.txt``. ``points3D`` is optional (empty arrays if absent). ``observations``: also each image's 2D points
    (:attr:`ColmapImage.xys`, :attr:`ColmapImage.point3D_ids`)."""
    folder = Path(folder)
    ext, paths = _model_paths(folder)
    if ext == ".bin":
        cameras = _read_cameras_bin(paths["cameras"])
        images = _read_images_bin(paths["images"], observations)
        read_points = _read_points_bin
    else:
        cameras = _read_cameras_txt(paths["cameras"])
        images = _read_images_txt(paths["images"], observations)
        read_points = _read_points_txt
    for image in images.values():
        if image.camera_id not in cameras:
            raise SceneError(
                f"{paths['images']}: image {image.image_id} ({image.name}) uses camera {image.camera_id}, "
                f"which is not in {paths['cameras'].name}"
            )
    points = read_points(paths["points3D"]) if paths["points3D"].is_file() else _empty_points()
    return ColmapModel(cameras, images, *points)


def read_observations(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image name -> ``(xys [K, 2] float64, point3D_ids [K] int64)``: the 2D observations of the model's images
    (only ``images.bin/.txt`` is read; the points' ids are :attr:`ColmapModel.point_ids` of :func:`read_model`).
    ``xys`` are COLMAP pixels of the image's camera (the top-left pixel's centre is ``(0.5, 0.5)``); a
    ``point3D_id`` of -1 marks a keypoint without a 3D point."""
    folder = Path(folder)
    ext, paths = _model_paths(folder)
    read = _read_images_bin if ext == ".bin" else _read_images_txt
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for image in read(paths["images"], True).values():
        if image.name in out:
            raise SceneError(f"{paths['images']}: two images are named {image.name!r}")
        assert image.xys is not None and image.point3D_ids is not None
        out[image.name] = (image.xys, image.point3D_ids)
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SceneError(f"{path}: file not found") from None
    except OSError as exc:
        raise SceneError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None


def _read_lines(path: Path) -> list[str]:
    data = _read_bytes(path)
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SceneError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _make_camera(
    cid: int, model_id: int, size: tuple[int, int], params: np.ndarray, path: Path, where: str
) -> ColmapCamera:
    if size[0] <= 0 or size[1] <= 0:
        raise SceneError(f"{where}: camera {cid} has size {size[0]} x {size[1]}")
    if not np.isfinite(params).all():
        raise SceneError(f"{where}: camera {cid} has non-finite params")
    return ColmapCamera(cid, CAMERA_MODELS[model_id][0], size[0], size[1], params, source=path)


def _make_image(
    iid: int, q: tuple, t: tuple, cid: int, name: str, where: str, obs: tuple[np.ndarray, np.ndarray] | None = None
) -> ColmapImage:
    qvec, tvec = np.array(q, dtype=np.float64), np.array(t, dtype=np.float64)
    if not (np.isfinite(qvec).all() and np.isfinite(tvec).all()) or np.linalg.norm(qvec) < 1e-12:
        raise SceneError(f"{where}: image {iid} ({name}) has an invalid pose")
    if not name:
        raise SceneError(f"{where}: image {iid} has an empty name")
    if obs is not None and not np.isfinite(obs[0]).all():
        raise SceneError(f"{where}: image {iid} ({name}) has a non-finite 2D point")
    xys, ids = (None, None) if obs is None else obs
    return ColmapImage(iid, qvec, tvec, cid, name, xys, ids)


class _Bytes:
    """A cursor over a binary file's bytes; running past the end raises ``SceneError("<file>: truncated")``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = _read_bytes(path)
        self.pos = 0

    def unpack(self, fmt: struct.Struct) -> tuple:
        if self.pos + fmt.size > len(self.data):
            self.truncated()
        out = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return out

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            self.truncated()
        self.pos += n

    def name(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            self.truncated()
        raw, start, self.pos = self.data[self.pos : end], self.pos, end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SceneError(f"{self.path}: image name at byte {start} is not UTF-8") from None

    def count(self, what: str, min_size: int) -> int:
        (n,) = self.unpack(_U64)
        if n * min_size > len(self.data) - self.pos:
            raise SceneError(f"{self.path}: truncated (header says {n} {what}, the file is too short for them)")
        return n

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SceneError(f"{self.path}: {len(self.data) - self.pos} unexpected bytes after the last record")

    def truncated(self) -> None:
        raise SceneError(f"{self.path}: truncated at byte {len(self.data)} (binary COLMAP file cut short)")


def _check_new(ids: dict, key: int, what: str, where: str) -> None:
    if key in ids:
        raise SceneError(f"{where}: duplicate {what} id {key}")


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    buf = _Bytes(path)
    cameras: dict[int, ColmapCamera] = {}
    for _ in range(buf.count("cameras", _CAMERA_HEAD.size)):
        cid, model_id, width, height = buf.unpack(_CAMERA_HEAD)
        if model_id not in CAMERA_MODELS:
            raise SceneError(f"{path}: camera {cid} has unknown model id {model_id}")
        k = CAMERA_MODELS[model_id][1]
        params = np.array(buf.unpack(struct.Struct(f"<{k}d")), dtype=np.float64)
        _check_new(cameras, cid, "camera", str(path))
        cameras[cid] = _make_camera(cid, model_id, (width, height), params, path, str(path))
    buf.done()
    return cameras


def _read_images_bin(path: Path, observations: bool = False) -> dict[int, ColmapImage]:
    """A Python loop over the images; each image's observations (f64 x, f64 y, i64 point3D id) are one numpy
    view of its bytes."""
    buf = _Bytes(path)
    images: dict[int, ColmapImage] = {}
    for _ in range(buf.count("images", _IMAGE_HEAD.size + 9)):
        iid, qw, qx, qy, qz, tx, ty, tz, cid = buf.unpack(_IMAGE_HEAD)
        name = buf.name()
        (m,) = buf.unpack(_U64)
        start = buf.pos
        buf.skip(_OBSERVATION_DTYPE.itemsize * m)
        obs = None
        if observations:
            table = np.frombuffer(buf.data, dtype=_OBSERVATION_DTYPE, count=m, offset=start)
            obs = (table["xy"].astype(np.float64), table["id"].astype(np.int64))
        _check_new(images, iid, "image", str(path))
        images[iid] = _make_image(iid, (qw, qx, qy, qz), (tx, ty, tz), cid, name, str(path), obs)
    buf.done()
    return images


def _read_points_bin(path: Path) -> _Points:
    """Points of a ``points3D.bin``: a Python scan for the record offsets (tracks have variable length), then
    numpy drops the track bytes and views the fixed 51-byte records as a structured array."""
    buf = _Bytes(path)
    data, rec = buf.data, _POINT_DTYPE.itemsize
    n = buf.count("points", rec)
    starts = np.empty(n, dtype=np.int64)  # byte offset of each record
    lens = np.empty(n, dtype=np.int64)
    unpack, pos = _U64.unpack_from, buf.pos
    try:
        for i in range(n):
            starts[i] = pos
            (m,) = unpack(data, pos + _POINT_HEAD)
            lens[i] = m
            pos += rec + 8 * m
    except (struct.error, OverflowError):
        buf.truncated()
    if pos > len(data):
        buf.truncated()
    buf.pos = pos
    buf.done()
    # keep = every byte outside the tracks: +1 where a track starts, -1 where it ends, cumsum = "inside a track"
    # (positions are distinct: a track's first byte lies inside it, its end is the next record or the file end)
    tracked = lens > 0
    inside = np.zeros(len(data) + 1, dtype=np.int8)
    inside[starts[tracked] + rec] = 1
    inside[starts[tracked] + rec + 8 * lens[tracked]] = -1
    keep = np.cumsum(inside[:-1], dtype=np.int8) == 0
    keep[:8] = False  # the count
    raw = np.frombuffer(data, dtype=np.uint8)[keep]
    points = raw.view(_POINT_DTYPE)
    xyz, errors = points["xyz"].astype(np.float64), points["error"].astype(np.float64)
    if not (np.isfinite(xyz).all() and np.isfinite(errors).all()):
        raise SceneError(f"{path}: non-finite point position or error")
    return xyz, points["rgb"].copy(), errors, lens, points["id"].astype(np.int64)


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """``(1-based line number, stripped text)`` of the lines that are neither empty nor ``#`` comments."""
    out = []
    for i, line in enumerate(_read_lines(path), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((i, s))
    return out


def _numbers(tokens: list[str], kind: type, where: str, what: str) -> list:
    try:
        return [kind(t) for t in tokens]
    except ValueError:
        raise SceneError(f"{where}: malformed {what} (expected numbers, got {' '.join(tokens)[:60]!r})") from None


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in _data_lines(path):
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) < 4:
            raise SceneError(f"{where}: malformed camera line (expected ID MODEL WIDTH HEIGHT PARAMS...)")
        cid, width, height = _numbers([parts[0], parts[2], parts[3]], int, where, "camera id / size")
        if parts[1] not in MODEL_IDS:
            raise SceneError(f"{where}: unknown camera model {parts[1]!r}")
        model_id = MODEL_IDS[parts[1]]
        k = CAMERA_MODELS[model_id][1]
        if len(parts) - 4 != k:
            raise SceneError(f"{where}: {parts[1]} needs {k} params, got {len(parts) - 4}")
        params = np.array(_numbers(parts[4:], float, where, "camera params"), dtype=np.float64)
        _check_new(cameras, cid, "camera", where)
        cameras[cid] = _make_camera(cid, model_id, (width, height), params, path, where)
    return cameras


def _read_images_txt(path: Path, observations: bool = False) -> dict[int, ColmapImage]:
    """Two lines per image (as COLMAP reads them): a pose line, then the 2D points line, which may be empty."""
    lines = _read_lines(path)
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        line, lineno = lines[i].strip(), i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        parts = line.split(maxsplit=9)
        if len(parts) < 10:
            raise SceneError(f"{where}: malformed image line (expected ID QW QX QY QZ TX TY TZ CAMERA_ID NAME)")
        iid, cid = _numbers([parts[0], parts[8]], int, where, "image / camera id")
        pose = _numbers(parts[1:8], float, where, "image pose")
        tokens = lines[i].split() if i < len(lines) else []
        if len(tokens) % 3:
            raise SceneError(f"{path}:{i + 1}: malformed 2D points line (expected X Y POINT3D_ID triples)")
        obs = _observations_txt(tokens, f"{path}:{i + 1}") if observations else None
        i += 1  # the 2D points
        _check_new(images, iid, "image", where)
        images[iid] = _make_image(iid, pose[:4], pose[4:], cid, parts[9].strip(), where, obs)
    return images


def _observations_txt(tokens: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(xys [K, 2], point3D_ids [K])`` of a 2D points line's ``X Y POINT3D_ID`` tokens."""
    try:
        table = np.array(tokens, dtype=np.float64).reshape(-1, 3)
    except ValueError:
        raise SceneError(f"{where}: malformed 2D points line (expected X Y POINT3D_ID numbers)") from None
    ids = table[:, 2]
    if (ids != np.round(ids)).any() or (np.abs(ids) >= _EXACT_INT).any():
        raise SceneError(f"{where}: malformed 2D points line (a POINT3D_ID is not an integer below 2^53)")
    return table[:, :2].copy(), ids.astype(np.int64)


def _read_points_txt(path: Path) -> _Points:
    """Points of a ``points3D.txt``: vectorised over the bytes in chunks of whole lines; when a chunk does not
    parse, the per-line reader finds the bad line and names it."""
    data = _read_bytes(path)
    chunks, begin = [], 0
    while begin < len(data):
        end = data.find(b"\n", min(begin + _TEXT_CHUNK, len(data)))
        end = len(data) if end < 0 else end + 1
        parsed = _points_txt_chunk(data[begin:end])
        if parsed is None:
            return _read_points_txt_lines(path)
        chunks.append(parsed)
        begin = end
    if not chunks:
        return _empty_points()
    table = np.concatenate([c[0] for c in chunks])
    lens = np.concatenate([c[1] for c in chunks])
    ids, rgb = table[:, 0], table[:, 4:7]
    bad = ~np.isfinite(table).all(axis=1) | ((rgb < 0) | (rgb > 255) | (rgb != np.round(rgb))).any(axis=1)
    bad |= (ids != np.round(ids)) | (np.abs(ids) >= _EXACT_INT)
    if bad.any():
        return _read_points_txt_lines(path)
    return table[:, 1:4].copy(), rgb.astype(np.uint8), table[:, 7].copy(), lens, ids.astype(np.int64)


_TEXT_CHUNK = 1 << 25  # bytes of points3D.txt parsed at once (bounds the index arrays to a few hundred MB)


def _points_txt_chunk(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """``([P, 8] float64 ID X Y Z R G B ERROR, [P] int64 track lengths)`` of whole lines, ``None`` if malformed.

    Tokens are found on the bytes (whitespace = bytes <= 32); comment lines are those whose first token starts
    with ``#``; tokens 1-8 of each data line are cut out and handed to numpy's C parser.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    blank = np.ones(raw.size + 2, dtype=bool)  # blank[i + 1]: raw[i] is whitespace; padded both ends
    blank[1:-1] = raw <= 32
    starts = np.flatnonzero(blank[:-2] & ~blank[1:-1])  # first byte of each token
    ends = np.flatnonzero(~blank[1:-1] & blank[2:]) + 1  # one past its last byte
    line = np.searchsorted(np.flatnonzero(raw == 10), starts)  # line of each token
    first = np.flatnonzero(np.diff(line, prepend=-1) != 0)  # index of each line's first token
    counts = np.diff(first, append=len(starts))
    data_line = raw[starts[first]] != ord("#")
    first, counts = first[data_line], counts[data_line]
    if not len(first):
        return np.zeros((0, 8)), np.zeros(0, np.int64)
    if (counts < 8).any() or ((counts - 8) % 2).any():
        return None
    # keep bytes [line's first token, end of its 8th token] with a newline written at that end
    buf = np.append(raw, np.uint8(10))
    cut = ends[first + 7]
    buf[cut] = 10
    inside = np.zeros(buf.size + 1, dtype=np.int8)
    np.add.at(inside, starts[first], 1)
    np.add.at(inside, cut + 1, -1)  # (may be the next line's first byte)
    heads = buf[np.cumsum(inside[:-1], dtype=np.int8).astype(bool)].tobytes().decode("latin-1")
    try:
        table = np.loadtxt(io.StringIO(heads), dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        return None
    if table.shape != (len(first), 8):
        return None
    return table, (counts - 8) // 2


def _read_points_txt_lines(path: Path) -> _Points:
    """The slow reader: one line at a time, so that a problem is reported with its line number."""
    heads: list[list[str]] = []
    lens: list[int] = []
    ids: list[int] = []
    for lineno, line in _data_lines(path):
        where = f"{path}:{lineno}"
        parts = line.split()
        extra = len(parts) - 8
        if extra < 0 or extra % 2:
            raise SceneError(f"{where}: malformed point line (expected ID X Y Z R G B ERROR, then pairs)")
        (pid,) = _numbers(parts[:1], int, where, "point id")
        head = _numbers(parts[:8], float, where, "point line")
        rgb = head[4:7]
        if not all(np.isfinite(head)) or any(c < 0 or c > 255 or c != round(c) for c in rgb):
            raise SceneError(f"{where}: malformed point line (non-finite value or colour outside 0-255)")
        heads.append(head)
        lens.append(extra // 2)
        ids.append(pid)
    if not heads:
        return _empty_points()
    table = np.array(heads, dtype=np.float64)
    rgb = table[:, 4:7].astype(np.uint8)
    return table[:, 1:4].copy(), rgb, table[:, 7].copy(), np.array(lens, np.int64), np.array(ids, np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _check_model(model: ColmapModel, binary: bool) -> None:
    """``ValueError`` for a model that COLMAP could not read back (checked before any file is written)."""
    for cid, cam in model.cameras.items():
        if cid != cam.camera_id:
            raise UsageError(f"camera {cid}: its key and camera_id {cam.camera_id} differ")
        if cam.model not in MODEL_IDS:
            raise UsageError(f"camera {cid}: unknown model {cam.model!r}")
        k = CAMERA_MODELS[MODEL_IDS[cam.model]][1]
        if np.asarray(cam.params).reshape(-1).size != k:
            raise UsageError(f"camera {cid}: {cam.model} needs {k} params, got {np.asarray(cam.params).size}")
    for iid, image in model.images.items():
        if image.camera_id not in model.cameras:
            raise UsageError(f"image {iid}: camera {image.camera_id} is not in the model's cameras")
        if iid != image.image_id:
            raise UsageError(f"image {iid}: its key and image_id {image.image_id} differ")
        if not image.name or "\0" in image.name:
            raise UsageError(f"image {iid}: name {image.name!r} cannot be written")
        if not binary and len(image.name.split()) != 1:
            raise UsageError(f"image {iid}: name {image.name!r} has whitespace, which COLMAP's text format cannot hold")
    p = len(model.points)
    shapes = [np.shape(model.points), np.shape(model.colors), np.shape(model.errors)]
    if shapes != [(p, 3), (p, 3), (p,)]:
        raise UsageError(f"points, colors, errors must be [P, 3], [P, 3], [P]; got {shapes}")


def write_model(folder: Path, model: ColmapModel, binary: bool = True) -> None:
    """Write ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``) into ``folder``.

    Images are written with zero 2D observations and points with empty tracks (``track_lengths`` is not
    stored); point ids are 1..P. Each file is written beside and renamed into place once all are written.
    The other format's files and COLMAP 4's ``rigs``/``frames`` files in ``folder`` are removed, so that a
    reader (ours prefers ``.bin``; COLMAP 4 prefers its rigs and frames) finds exactly this model.
    """
    _check_model(model, binary)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext, other = (".bin", ".txt") if binary else (".txt", ".bin")
    if binary:
        contents = [_cameras_bin(model), _images_bin(model), _points_bin(model)]
    else:
        contents = [s.encode("utf-8") for s in (_cameras_txt(model), _images_txt(model), _points_txt(model))]
    tmp = [folder / f".{name}{ext}.tmp" for name in MODEL_FILES]
    for path, data in zip(tmp, contents):
        path.write_bytes(data)
    for name in (*[f"{n}{other}" for n in MODEL_FILES], "rigs.bin", "rigs.txt", "frames.bin", "frames.txt"):
        (folder / name).unlink(missing_ok=True)
    for path, name in zip(tmp, MODEL_FILES):
        os.replace(path, folder / f"{name}{ext}")


def _cameras_bin(model: ColmapModel) -> bytes:
    out = [_U64.pack(len(model.cameras))]
    for cam in model.cameras.values():
        out.append(_CAMERA_HEAD.pack(cam.camera_id, MODEL_IDS[cam.model], cam.width, cam.height))
        out.append(np.asarray(cam.params, dtype="<f8").reshape(-1).tobytes())
    return b"".join(out)


def _images_bin(model: ColmapModel) -> bytes:
    out = [_U64.pack(len(model.images))]
    for im in model.images.values():
        pose = np.concatenate([np.asarray(im.qvec, np.float64).reshape(4), np.asarray(im.tvec, np.float64).reshape(3)])
        out.append(_IMAGE_HEAD.pack(im.image_id, *pose.tolist(), im.camera_id))
        out.append(im.name.encode("utf-8") + b"\0" + _U64.pack(0))
    return b"".join(out)


def _points_bin(model: ColmapModel) -> bytes:
    table = np.zeros(len(model.points), dtype=_POINT_DTYPE)
    table["id"] = np.arange(1, len(table) + 1)
    table["xyz"] = model.points
    table["rgb"] = model.colors
    table["error"] = model.errors
    return _U64.pack(len(table)) + table.tobytes()


def _fmt(values: np.ndarray) -> str:
    """Shortest round-trip decimal of each float64."""
    return " ".join(repr(v) for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist())


def _cameras_txt(model: ColmapModel) -> str:
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(model.cameras)}",
    ]
    for c in model.cameras.values():
        lines.append(f"{c.camera_id} {c.model} {c.width} {c.height} {_fmt(c.params)}")
    return "\n".join(lines) + "\n"


def _images_txt(model: ColmapModel) -> str:
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(model.images)}, mean observations per image: 0",
    ]
    for im in model.images.values():
        lines.append(f"{im.image_id} {_fmt(im.qvec)} {_fmt(im.tvec)} {im.camera_id} {im.name}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _points_txt(model: ColmapModel) -> str:
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(model.points)}, mean track length: 0",
    ]
    xyz = np.asarray(model.points, np.float64).tolist()
    rgb = np.asarray(model.colors, np.uint8).tolist()
    err = np.asarray(model.errors, np.float64).tolist()
    for i, (p, c, e) in enumerate(zip(xyz, rgb, err), 1):
        lines.append(f"{i} {p[0]!r} {p[1]!r} {p[2]!r} {c[0]} {c[1]} {c[2]} {e!r}")
    return "\n".join(lines) + "\n"
