"""Load a scene folder of either format into a :class:`~ovseg3d.data.scene.Scene`.

Formats (REFERENCE.md §1, §8): ``poses_bounds.npy`` + ``images/`` (3D-OVS / LLFF, :mod:`.llff`),
``transforms.json`` (nerfstudio / instant-ngp / Blender, :mod:`.nerfstudio`) or a COLMAP sparse model
(``sparse/0/`` or ``sparse/`` beside ``images/``, :mod:`.colmap`). Images are decoded straight to the
training size (JPEG draft mode), honour their EXIF orientation, and may differ in size when each matches its
own camera (they are resized to the most common size). Optional ground truth, in any format:

* ``segmentations/classes.txt`` and ``segmentations/<view index>/<class>.png`` (3D-OVS masks, >127 = class);
* ``labels/<image stem>.png``: uint8 class index into ``classes.txt``, 255 = none;
* ``instances/<image stem>.png``: 8- or 16-bit instance id, 0 = none;
* ``objects.json``: ``{"up": [x, y, z], "objects": [{"class", "instance", "center", "size", "yaw",
  "symmetric"}]}``.

Optional pixel masks, 0 = do not train on the pixel (:mod:`.masks`): a ``transforms.json`` frame's
``mask_path``, or ``masks/<image name>.png`` in any format.

Every problem with the input raises :class:`SceneError` with one line naming the file; nothing is
returned half loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ovseg3d.data import colmap
from ovseg3d.data.bounds import region_of_interest
from ovseg3d.data.cameras import Cameras
from ovseg3d.data.llff import (
    POSES_FILE,
    is_image_file,
    list_images,
    llff_cameras,
    read_llff,
)
from ovseg3d.data.masks import mask_files, read_masks
from ovseg3d.data.nerfstudio import (
    TRANSFORMS_FILE,
    as_array,
    as_number,
    read_json,
    read_transforms,
    transforms_cameras,
    warn_missing,
)
from ovseg3d.data.scene import GIVEN_BOUNDS, Scene, SceneError, SceneObject
from ovseg3d.errors import UsageError

_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------------- images


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


def _raw_size_and_orientation(path: Path) -> tuple[tuple[int, int], int]:
    try:
        with Image.open(path) as im:
            return im.size, int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except _IMAGE_ERRORS as exc:
        raise SceneError(f"{path}: cannot read image ({_one_line(exc)})") from None


def _applies(raw: tuple[int, int], orientation: int, expect: tuple[int, int] | None) -> bool:
    """Whether to apply an image's EXIF orientation: always, unless it swaps the sides and the size its pose file
    gives (``expect``) is that of the stored pixels."""
    return orientation != 1 and not (orientation in _TRANSPOSED and expect == raw)


def image_size(path: Path, expect: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels, after its EXIF orientation (unless
    ``expect``, the size its pose file gives, matches the stored pixels and not the oriented ones)."""
    (w, h), orientation = _raw_size_and_orientation(path)
    return (h, w) if orientation in _TRANSPOSED and _applies((w, h), orientation, expect) else (w, h)


def _decode(
    path: Path, size: tuple[int, int] | None = None, orient: bool = False, expect: tuple[int, int] | None = None
) -> Image.Image:
    """The image, opened once; ``size``: at least this ``(width, height)`` is needed (lets JPEG decode at 1/2, 1/4 or
    1/8 scale); ``orient``: apply the EXIF orientation as :func:`image_size` does with ``expect``."""
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1) if orient else 1
            apply = _applies(im.size, orientation, expect)
            if size is not None:
                im.draft("RGB", (size[1], size[0]) if apply and orientation in _TRANSPOSED else size)
            im.load()
            return ImageOps.exif_transpose(im) if apply else im.copy()
    except _IMAGE_ERRORS as exc:
        raise SceneError(f"{path}: cannot read image ({_one_line(exc)})") from None


def read_rgb(path: Path, size: tuple[int, int] | None = None, expect: tuple[int, int] | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8; transparent images are composited on white, grayscale repeated. ``size``: resize to this
    ``(width, height)`` (box filter), decoding a JPEG straight at the nearest larger power-of-two scale; EXIF
    orientation as :func:`image_size` with ``expect``."""
    im = _decode(path, size, orient=True, expect=expect)
    if im.mode.startswith("I"):  # 16/32-bit grayscale
        gray = np.clip(np.asarray(im, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    elif "A" in im.mode or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[:, :, 3:]
        rgb = (rgba[:, :, :3] * alpha + (1.0 - alpha)) * 255.0
        rgb = rgb.round().astype(np.uint8)
    else:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
        rgb = resize_box(rgb, size[0], size[1])
    return rgb


def common_size(paths: list[Path]) -> tuple[int, int]:
    """The ``(width, height)`` shared by all images; the first one that differs is an error."""
    width, height = image_size(paths[0])
    for path in paths[1:]:
        w, h = image_size(path)
        if (w, h) != (width, height):
            raise SceneError(f"{path}: image size {w}x{h} differs from {width}x{height} of {paths[0]}")
    return width, height


def usual_size(
    paths: list[Path], expect: list[tuple[int, int] | None]
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Each image's size and the most common one. An image whose size differs from the most common one must have
    the size its own camera gives (``expect``), else it is an error naming both."""
    sizes = [image_size(p, e) for p, e in zip(paths, expect)]
    values, counts = np.unique(np.array(sizes), axis=0, return_counts=True)
    usual = tuple(int(x) for x in values[int(np.argmax(counts))])
    first = sizes.index(usual)  # type: ignore[arg-type]
    for path, size, exp in zip(paths, sizes, expect):
        if size != usual and size != exp:
            raise SceneError(
                f"{path}: image size {size[0]}x{size[1]} differs from {usual[0]}x{usual[1]} of {paths[first]}"
                + (f" and from its camera's {exp[0]}x{exp[1]}" if exp is not None else "")
            )
    return sizes, usual  # type: ignore[return-value]


def resize_box(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[height, width, 3]`` with PIL's box (area) filter."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def resize_nearest(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes: ``[..., H, W]`` -> ``[..., height, width]``."""
    h_in, w_in = arr.shape[-2:]
    rows = np.minimum(((np.arange(height) + 0.5) * h_in / height).astype(np.int64), h_in - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w_in / width).astype(np.int64), w_in - 1)
    return arr[..., rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------------------------- views


def detect_format(root: Path) -> str:
    """``"llff"`` if ``poses_bounds.npy`` exists, else ``"transforms"`` if ``transforms.json`` does, else
    ``"colmap"`` if a COLMAP sparse model does (:func:`.colmap.find_model`)."""
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder not found")
    if (root / POSES_FILE).is_file():
        return "llff"
    if (root / TRANSFORMS_FILE).is_file():
        return "transforms"
    if colmap.find_model(root) is not None:
        return "colmap"
    raise SceneError(
        f"{root}: not a scene folder: expected {POSES_FILE} (LLFF / 3D-OVS), {TRANSFORMS_FILE} (nerfstudio, "
        "instant-ngp) or a COLMAP model in sparse/0/ or sparse/ (cameras, images, points3D .bin or .txt)"
    )


@dataclass
class _Views:
    """Image paths and full-resolution cameras of a scene, with what its format adds."""

    image_paths: list[Path]
    cameras: Cameras
    sizes: list[tuple[int, int]]  # each image's own (width, height); cameras are at the most common one
    near_far: np.ndarray | None  # [N, 2]
    aabb: np.ndarray | None  # [6] from the file
    points: np.ndarray | None = None  # [P, 3] sparse structure (COLMAP)
    masks: list[Path | None] | None = None  # per image, the mask its pose file names (transforms.json mask_path)


def _read_views(root: Path, fmt: str, model_dir: Path | None = None) -> _Views:
    if fmt == "llff":
        llff = read_llff(root)
        width, height = common_size(llff.image_paths)
        cameras = llff_cameras(llff.c2w, llff.hwf, width, height)
        return _Views(llff.image_paths, cameras, [(width, height)] * len(cameras), llff.near_far, None)
    if fmt == "colmap":
        return _colmap_views(root, model_dir)
    tf = read_transforms(root / TRANSFORMS_FILE)
    declared = [_declared(f.w, f.h) for f in tf.intrinsics]
    sizes, (width, height) = usual_size(tf.image_paths, declared)
    own = [transforms_cameras(tf, w, h).subset([i]) for i, (w, h) in enumerate(sizes)]
    return _Views(tf.image_paths, _at_size(own, width, height), sizes, None, tf.aabb, masks=tf.masks)


def _declared(w: float | None, h: float | None) -> tuple[int, int] | None:
    return None if w is None or h is None else (int(round(w)), int(round(h)))


def _at_size(cameras: list[Cameras], width: int, height: int) -> Cameras:
    """One :class:`Cameras` of single cameras, each scaled from its own image size to ``width x height``."""
    scaled = [c.scaled((width / c.width, height / c.height)) for c in cameras]
    lens = [c.lens if c.lens is not None else torch.zeros(1, dtype=torch.long) for c in scaled]
    coeffs = [c.coeffs if c.coeffs is not None else torch.zeros(1, 8) for c in scaled]
    return Cameras(
        c2w=torch.cat([c.c2w for c in scaled]),
        fx=torch.cat([c.fx for c in scaled]),
        fy=torch.cat([c.fy for c in scaled]),
        cx=torch.cat([c.cx for c in scaled]),
        cy=torch.cat([c.cy for c in scaled]),
        width=width,
        height=height,
        lens=torch.cat(lens),
        coeffs=torch.cat(coeffs),
    )


def _colmap_views(root: Path, model_dir: Path | None) -> _Views:
    """A COLMAP model's registered images (sorted by name) found under ``root/images/``."""
    folder = model_dir if model_dir is not None else colmap.find_model(root)
    assert folder is not None  # detect_format found it
    model = colmap.read_model(folder)
    image_dir = root / "images"
    listed = sorted(model.images.values(), key=lambda im: im.name)
    if not listed:
        raise SceneError(f"{folder}: the model has no registered images")
    present = [im for im in listed if (image_dir / im.name).is_file()]
    warn_missing(folder, [im.name for im in listed if im not in present], len(listed))
    paths = [image_dir / im.name for im in present]
    cams = []
    for im in present:
        cam = model.cameras[im.camera_id]
        fx, fy, cx, cy, lens, coeffs = colmap.lens_of(cam)
        cams.append(
            Cameras(
                c2w=torch.as_tensor(colmap.c2w_opengl(im), dtype=torch.float32)[None],
                fx=torch.tensor([fx], dtype=torch.float32),
                fy=torch.tensor([fy], dtype=torch.float32),
                cx=torch.tensor([cx], dtype=torch.float32),
                cy=torch.tensor([cy], dtype=torch.float32),
                width=int(cam.width),
                height=int(cam.height),
                lens=torch.tensor([lens], dtype=torch.long),
                coeffs=torch.as_tensor(coeffs, dtype=torch.float32)[None],
            )
        )
    sizes, (width, height) = usual_size(paths, [(c.width, c.height) for c in cams])
    own = [c.scaled((w / c.width, h / c.height)) for c, (w, h) in zip(cams, sizes)]  # images resized since
    points = model.points if len(model.points) else None
    return _Views(paths, _at_size(own, width, height), sizes, None, None, points)


def read_cameras(root: str | Path) -> Cameras:
    """The cameras of a scene folder, at its images' full size, without reading the images."""
    root = Path(root)
    return _read_views(root, detect_format(root)).cameras


def downscale_factor(width: int, height: int, downscale: int = 0, max_long_side: int = 0) -> int:
    """``downscale`` when given (>= 1), else the smallest integer factor that brings the long side within
    ``max_long_side`` (1 when that is 0)."""
    if downscale >= 1:
        return downscale
    if max_long_side <= 0:
        return 1
    return max(1, -(-max(width, height) // max_long_side))


def _downscaled_files(root: Path, fmt: str, paths: list[Path], k: int) -> list[Path] | None:
    """Pre-resized images: LLFF ``images_k/`` (same count), others ``<folder>_k/<same name>``."""
    if fmt == "llff":
        folder = root / f"images_{k}"
        files = list_images(folder) if folder.is_dir() else []
        return files if len(files) == len(paths) else None
    if fmt == "colmap":
        files = [root / f"images_{k}" / p.relative_to(root / "images") for p in paths]
    else:
        files = [p.parent.parent / f"{p.parent.name}_{k}" / p.name for p in paths]
    return files if all(f.is_file() for f in files) else None


def _load_images(root: Path, fmt: str, views: _Views, k: int) -> tuple[np.ndarray, Cameras]:
    """``[N, H/k, W/k, 3]`` uint8 images and their cameras (``Cameras.scaled``), decoded straight to that size."""
    cams = views.cameras
    if k == 1:
        size = (cams.width, cams.height)
        return np.stack([read_rgb(p, size, e) for p, e in zip(views.image_paths, views.sizes)]), cams
    scaled = cams.scaled(1.0 / k)
    size = (scaled.width, scaled.height)
    small = _downscaled_files(root, fmt, views.image_paths, k)
    if small is not None and len(set(views.sizes)) == 1:
        if image_size(small[0]) == size:
            return np.stack([read_rgb(p, size) for p in small]), scaled
    return np.stack([read_rgb(p, size, e) for p, e in zip(views.image_paths, views.sizes)]), scaled


# ---------------------------------------------------------------------------------------- ground truth


def parse_classes(given: Sequence[str]) -> list[str]:
    """Class names as a user gives them (``--classes "chair, table" plant``): split at commas, stripped, empty and
    repeated names dropped, in order."""
    names: list[str] = []
    for item in given:
        for name in item.split(","):
            name = " ".join(name.split())
            if name and name not in names:
                names.append(name)
    return names


def scene_classes(root: Path, given: Sequence[str]) -> list[str]:
    """The classes of the scene at ``root``: its ``segmentations/classes.txt``, or ``given`` (``--classes``) where it
    has none. Both, naming different classes, are a :class:`SceneError` (the file's masks are indexed by its list)."""
    listed, names = read_classes(root), parse_classes(given)
    if listed and names and names != listed:
        raise SceneError(
            f"{root / 'segmentations' / 'classes.txt'} names the classes {', '.join(listed)}; --classes gives "
            f"{', '.join(names)}: drop --classes (or edit the file)"
        )
    return listed or names


def read_classes(root: Path) -> list[str]:
    """Lines of ``segmentations/classes.txt`` (stripped, empty lines skipped); ``[]`` if absent."""
    path = root / "segmentations" / "classes.txt"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"{path}: cannot read ({_one_line(exc)})") from None
    classes = [line.strip() for line in lines if line.strip()]
    for i, name in enumerate(classes):
        if name in classes[:i]:
            raise SceneError(f"{path}: class {name!r} is listed twice")
    return classes


def _segmentation_files(root: Path, classes: list[str], n_views: int) -> dict[int, dict[int, Path]]:
    """view index -> {class index: mask file} from ``segmentations/<view index>/<class>.png``."""
    seg_dir = root / "segmentations"
    if not seg_dir.is_dir():
        return {}
    out: dict[int, dict[int, Path]] = {}
    for folder in sorted(p for p in seg_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder.name.isascii() and folder.name.isdigit()):
            raise SceneError(f"{folder}: a segmentation folder must be named by its integer view index")
        view = int(folder.name)
        if view >= n_views:
            raise SceneError(f"{folder}: view index {view} is out of range (the scene has {n_views} images)")
        if view in out:
            raise SceneError(f"{folder}: a second segmentation folder for view {view}")
        masks: dict[int, Path] = {}
        for file in sorted(p for p in folder.iterdir() if is_image_file(p)):
            if file.stem not in classes:
                raise SceneError(f"{file}: class {file.stem!r} is not in {seg_dir / 'classes.txt'}")
            masks[classes.index(file.stem)] = file
        if masks:
            out[view] = masks
    return out


def _check_size(path: Path, shape: tuple[int, ...], image: Path, width: int, height: int) -> None:
    if tuple(shape[:2]) != (height, width):
        raise SceneError(f"{path}: size {shape[1]}x{shape[0]} differs from its image {image.name} ({width}x{height})")


def _read_masks(files: dict[int, Path], n_classes: int, image: Path, width: int, height: int) -> np.ndarray:
    """``[C, H, W]`` bool; classes without a mask file are all False."""
    masks = np.zeros((n_classes, height, width), dtype=bool)
    for c, path in files.items():
        mask = np.asarray(_decode(path).convert("L")) > 127
        _check_size(path, mask.shape, image, width, height)
        masks[c] = mask
    return masks


def _index_map_files(folder: Path, paths: list[Path]) -> dict[int, Path]:
    """view index -> ``<folder>/<image stem>.png``; a file that matches no image is an error."""
    if not folder.is_dir():
        return {}
    view_of = {}
    for i, p in enumerate(paths):
        view_of.setdefault(p.stem, i)
    out = {}
    for file in sorted(p for p in folder.iterdir() if is_image_file(p) and p.suffix.lower() == ".png"):
        if file.stem not in view_of:
            raise SceneError(f"{file}: matches no image of the scene (expected <image stem>.png)")
        out[view_of[file.stem]] = file
    return out


def _read_index_map(path: Path, max_bits: int) -> np.ndarray:
    """``[H, W]`` integer map from a single-channel PNG of at most ``max_bits`` bits."""
    im = _decode(path)
    allowed = ("L", "P") if max_bits == 8 else ("L", "P", "I;16", "I;16B", "I;16L", "I")
    if im.mode not in allowed:
        raise SceneError(f"{path}: expected a single-channel {max_bits}-bit PNG, got mode {im.mode}")
    arr = np.asarray(im).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**max_bits):
        raise SceneError(f"{path}: values outside 0..{2**max_bits - 1}")
    return arr


def _read_labels(
    files: dict[int, Path], classes: list[str], paths: list[Path], width: int, height: int
) -> dict[int, np.ndarray]:
    out = {}
    for view, path in files.items():
        labels = _read_index_map(path, 8)
        _check_size(path, labels.shape, paths[view], width, height)
        bad = (labels != 255) & (labels >= len(classes)) if classes else np.zeros(1, dtype=bool)
        if bad.any():
            raise SceneError(
                f"{path}: label {int(labels[bad][0])} is not a class index (0..{len(classes) - 1}, 255 = none)"
            )
        out[view] = labels.astype(np.uint8)
    return out


def _read_instances(files: dict[int, Path], paths: list[Path], width: int, height: int) -> dict[int, np.ndarray]:
    out = {}
    for view, path in files.items():
        ids = _read_index_map(path, 16)
        _check_size(path, ids.shape, paths[view], width, height)
        out[view] = ids.astype(np.int32)
    return out


def _required(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise SceneError(f'{where}: missing "{key}"')
    return obj[key]


def _parse_object(obj: Any, classes: list[str], where: str, classes_file: Path) -> SceneObject:
    if not isinstance(obj, dict):
        raise SceneError(f"{where}: expected a JSON object")
    cls = _required(obj, "class", where)
    if not isinstance(cls, str) or not cls:
        raise SceneError(f'{where}: "class" must be a non-empty string')
    if classes and cls not in classes:
        raise SceneError(f"{where}: class {cls!r} is not in {classes_file}")
    instance = _required(obj, "instance", where)
    if isinstance(instance, bool) or not isinstance(instance, int):
        raise SceneError(f'{where}: "instance" must be an integer')
    center = as_array(_required(obj, "center", where), (3,), f"{where}: center")
    size = as_array(_required(obj, "size", where), (3,), f"{where}: size")
    if (size <= 0).any():
        raise SceneError(f"{where}: size must be positive")
    yaw = as_number(_required(obj, "yaw", where), f"{where}: yaw")
    symmetric = obj.get("symmetric", False)
    if not isinstance(symmetric, bool):
        raise SceneError(f'{where}: "symmetric" must be true or false')
    return SceneObject(cls, instance, tuple(center.tolist()), tuple(size.tolist()), yaw, symmetric)


def read_objects(root: Path, classes: list[str]) -> tuple[list[SceneObject], np.ndarray | None]:
    """Objects and the unit up vector of ``objects.json`` (``[], None`` without the file)."""
    path = root / "objects.json"
    if not path.exists():
        return [], None
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise SceneError(f"{path}: expected a JSON object at the top level")
    up = None
    if "up" in meta:
        up = as_array(meta["up"], (3,), f"{path}: up")
        if np.linalg.norm(up) < 1e-12:
            raise SceneError(f"{path}: up must not be the zero vector")
        up = up / np.linalg.norm(up)
    objects = meta.get("objects", [])
    if not isinstance(objects, list):
        raise SceneError(f'{path}: "objects" must be a list')
    classes_file = root / "segmentations" / "classes.txt"
    parsed = [_parse_object(o, classes, f"{path}: object {i}", classes_file) for i, o in enumerate(objects)]
    return parsed, up


# ------------------------------------------------------------------------------------ geometry, splits


LEVEL_SPREAD = 0.05
"""The second eigenvalue of the cameras' mean right-vector outer product above which their right vectors span a
plane (cameras turned about up: an orbit, a walk) rather than a line (a forward-facing capture)."""


def camera_up(c2w: Tensor | np.ndarray) -> np.ndarray:
    """Which way is up, from the cameras alone (``[N, 3, 4]`` c2w, columns right, up, back), in any world frame.

    Photos are taken nearly level: each camera's right vector (column 0) is nearly horizontal, whatever its
    pitch. Where the right vectors span a plane (cameras turned about the vertical), up is the normal of that
    plane (the smallest eigenvector of their outer products, as nerfstudio's "vertical" orientation), signed by
    the cameras' mean up; else (all cameras face one way) the mean up vector made orthogonal to their common
    right vector, which still carries the cameras' mean pitch (a forward-facing room tilted down by 20 deg is
    20 deg off: the flat surfaces settle it, :func:`~ovseg3d.detect.gravity.estimate_up`). +z if the cameras
    give nothing."""
    c2w = np.asarray(c2w, dtype=np.float64)
    mean_up = c2w[:, :, 1].mean(axis=0)
    right = c2w[:, :, 0] / np.linalg.norm(c2w[:, :, 0], axis=1, keepdims=True)
    evals, evecs = np.linalg.eigh(right.T @ right / len(right))
    if evals[1] > LEVEL_SPREAD:
        up = evecs[:, 0]
    else:
        axis = evecs[:, 2]
        up = mean_up - (mean_up @ axis) * axis
    if np.linalg.norm(mean_up) < 1e-9:
        return np.array([0.0, 0.0, 1.0])
    if np.linalg.norm(up) < 1e-9:
        return mean_up / np.linalg.norm(mean_up)
    up = up / np.linalg.norm(up)
    return up if up @ mean_up >= 0 else -up


def frustum_corners(cameras: Cameras, depths: np.ndarray) -> np.ndarray:
    """Image-corner points of each camera at depths along its viewing axis.

    The corner of pixel edge ``(u, v)`` at depth ``d`` is ``c + d R ((u - cx)/fx, -(v - cy)/fy, -1)``
    for ``u in {0, W}``, ``v in {0, H}``. depths ``[N, D]`` -> ``[N, D, 4, 3]`` float64.
    """
    c2w = cameras.c2w.double().numpy()
    u = np.array([0.0, cameras.width, 0.0, cameras.width])
    v = np.array([0.0, 0.0, cameras.height, cameras.height])
    fx, fy, cx, cy = (t.double().numpy()[:, None] for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
    d_cam = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones((len(c2w), 4))], axis=-1)  # [N, 4, 3]
    d_world = np.einsum("nij,nkj->nki", c2w[:, :, :3], d_cam)
    return c2w[:, None, None, :, 3] + depths[:, :, None, None] * d_world[:, None]


def llff_aabb(cameras: Cameras, near_far: np.ndarray) -> np.ndarray:
    """``[6]`` box of every camera's frustum corners at its near and far depth, and of its centre."""
    pts = np.concatenate([frustum_corners(cameras, near_far).reshape(-1, 3), cameras.centers.double().numpy()])
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def split_views(
    n_views: int, annotated: list[int], train_on_annotated: bool = False, holdout_every: int = 8
) -> tuple[list[int], list[int]]:
    """``(train_ids, eval_ids)``.

    eval = the annotated views, or without any every ``holdout_every``-th view (``i % holdout_every == 0``);
    train = the other views, or all views with ``train_on_annotated``; never empty (falls back to all views).
    """
    if holdout_every < 1:
        raise UsageError(f"holdout_every must be >= 1, got {holdout_every}")
    eval_ids = sorted(annotated) if annotated else [i for i in range(n_views) if i % holdout_every == 0]
    held = set(eval_ids)
    train_ids = [i for i in range(n_views) if train_on_annotated or i not in held]
    return train_ids or list(range(n_views)), eval_ids


# ------------------------------------------------------------------------------------------ the loader


def scene_box(views: _Views, cameras: Cameras) -> tuple[np.ndarray, str]:
    """``[6]`` box and where it came from: LLFF depth bounds or a transforms.json ``"aabb"`` (the whole
    scene), else the region of interest of :func:`.bounds.region_of_interest`."""
    if views.near_far is not None:
        return llff_aabb(cameras, views.near_far), GIVEN_BOUNDS[0]
    if views.aabb is not None:
        return views.aabb, GIVEN_BOUNDS[1]
    box, how = region_of_interest(cameras.c2w.double().numpy(), views.points)
    return box, f"the region of interest ({how})"


def load_scene(
    root: str | Path,
    downscale: int = 1,
    train_on_annotated: bool = False,
    holdout_every: int = 8,
    max_long_side: int = 0,
    colmap_model: str | Path | None = None,
    classes: Sequence[str] = (),
) -> Scene:
    """Load a scene folder (format detected from its files).

    Args:
        root: folder holding ``poses_bounds.npy`` + ``images/``, ``transforms.json``, or ``images/`` + a COLMAP
            model (``sparse/0/``, ``sparse/``, or ``colmap_model``).
        downscale: integer factor k (0: from ``max_long_side``); uses ``images_k/`` when it matches, else decodes
            and box-filters to that size.
        train_on_annotated: also train on the evaluation views.
        holdout_every: without 3D-OVS masks, hold out views with ``i % holdout_every == 0``.
        max_long_side: with ``downscale`` 0, the longest image side in pixels (0 = full size).
        colmap_model: a COLMAP model folder to use instead of the one found under ``root``.
        classes: class names for a scene without ``segmentations/classes.txt`` (:func:`scene_classes`).

    Raises:
        SceneError: any problem with the input (one line naming the file).
    """
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 0:
        raise UsageError(f"downscale must be an integer >= 0 (0 = from max_long_side), got {downscale!r}")
    if holdout_every < 1:
        raise UsageError(f"holdout_every must be >= 1, got {holdout_every}")
    root = Path(root)
    if colmap_model is not None:
        model_dir, fmt = Path(colmap_model), "colmap"
        if not model_dir.is_dir():
            raise SceneError(f"{model_dir}: COLMAP model folder not found")
    else:
        model_dir, fmt = None, detect_format(root)
    views = _read_views(root, fmt, model_dir)
    paths, width, height = views.image_paths, views.cameras.width, views.cameras.height

    classes = scene_classes(root, classes)
    seg_files = _segmentation_files(root, classes, len(paths))
    segs = {v: _read_masks(f, len(classes), paths[v], width, height) for v, f in seg_files.items()}
    labels = _read_labels(_index_map_files(root / "labels", paths), classes, paths, width, height)
    instances = _read_instances(_index_map_files(root / "instances", paths), paths, width, height)
    objects, up = read_objects(root, classes)

    k = downscale_factor(width, height, downscale, max_long_side)
    images, cameras = _load_images(root, fmt, views, k)
    w, h = cameras.width, cameras.height
    masks = read_masks(mask_files(root, paths, views.masks), paths, views.sizes, w, h)
    aabb, bounds = scene_box(views, cameras)
    train_ids, eval_ids = split_views(len(paths), list(segs), train_on_annotated, holdout_every)
    return Scene(
        root=root,
        format=fmt,
        image_paths=paths,
        images=torch.from_numpy(images),
        cameras=cameras,
        near_far=None if views.near_far is None else torch.as_tensor(views.near_far, dtype=torch.float32),
        aabb=torch.as_tensor(aabb, dtype=torch.float32),
        train_ids=train_ids,
        eval_ids=eval_ids,
        classes=classes,
        segmentations={v: torch.from_numpy(resize_nearest(m, w, h)) for v, m in segs.items()},
        labels={v: torch.from_numpy(resize_nearest(m, w, h)) for v, m in labels.items()},
        instances={v: torch.from_numpy(resize_nearest(m, w, h)) for v, m in instances.items()},
        masks={v: torch.from_numpy(m) for v, m in masks.items()},
        objects=objects,
        up=up if up is not None else camera_up(views.cameras.c2w.numpy()),
        bounds=bounds,
    )
