"""Pixel masks of a capture: which pixels of each photo the training may use.

A mask is a single image per photo, ``0`` = ignore the pixel, anything else = use it: a person who walked
through, the photographer's shadow, a tripod leg, the black border of a cropped fisheye (REFERENCE.md §8).
Where they come from, the first found:

* ``transforms.json``: a frame's ``mask_path`` (nerfstudio's ``ns-process-data`` writes them), relative to
  the file;
* any format: ``masks/<image name>.png`` beside ``images/`` (COLMAP's ``--ImageReader.mask_path`` naming:
  ``IMG_01.jpg`` -> ``IMG_01.jpg.png``, subfolders kept) or ``masks/<image stem>.png``;
* instant-ngp's ``dynamic_mask_<image stem>.png`` beside the image (``colmap2nerf.py --mask_categories``
  writes them), with the opposite meaning: non-zero = masked away (instant-ngp's ``nerf_loader.cu``). Only for
  formats that list their images (transforms.json, COLMAP): in an LLFF ``images/`` it would count as a photo.

A colour mask counts a pixel as non-zero when any channel is.

Photos without a mask use every pixel. A mask has its photo's size (after the photo's EXIF orientation); at
a smaller training size a pixel is used only where every photo pixel under it is (a box filter that keeps
the full value only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ovseg3d.data.scene import SceneError

MASKS_DIR = "masks"
DYNAMIC_PREFIX = "dynamic_mask_"
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def folder_mask(root: Path, image: Path) -> Path | None:
    """The ``masks/`` file of ``image`` (COLMAP's ``<name>.png``, else ``<stem>.png``), ``None`` when none."""
    folder = root / MASKS_DIR
    if not folder.is_dir():
        return None
    try:
        name = image.relative_to(root / "images")
    except ValueError:
        name = Path(image.name)
    for candidate in (folder / name.parent / f"{name.name}.png", folder / name.with_suffix(".png")):
        if candidate.is_file():
            return candidate
    return None


def dynamic_mask(image: Path) -> Path | None:
    """instant-ngp's ``dynamic_mask_<stem>.png`` beside ``image`` (non-zero = masked away), ``None`` when none."""
    path = image.parent / f"{DYNAMIC_PREFIX}{image.stem}.png"
    return path if path.is_file() else None


def mask_files(root: Path, images: list[Path], listed: list[Path | None] | None = None) -> dict[int, Path]:
    """view index -> mask file: ``listed[i]`` (a frame's ``mask_path``, which must exist), else the ``masks/``
    folder's file for the image, else its instant-ngp dynamic mask."""
    out: dict[int, Path] = {}
    for i, image in enumerate(images):
        given = listed[i] if listed is not None else None
        if given is not None:
            if not given.is_file():
                raise SceneError(f"{given}: mask_path of {image.name} not found")
            out[i] = given
            continue
        found = folder_mask(root, image) or dynamic_mask(image)
        if found is not None:
            out[i] = found
    return out


def read_mask(path: Path, image: Path, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool (True = use) of a mask that must be ``size`` ``(width, height)``, its photo's size: its
    non-zero pixels, or for an instant-ngp dynamic mask its zero ones."""
    try:
        with Image.open(path) as im:
            im.load()
            values = np.asarray(im) if im.mode in _WIDE_MODES else np.asarray(im.convert("RGB")).max(-1)
            used = values == 0 if path.name.startswith(DYNAMIC_PREFIX) else values != 0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SceneError(f"{path}: cannot read mask ({_one_line(exc)})") from None
    if (used.shape[1], used.shape[0]) != tuple(size):
        raise SceneError(
            f"{path}: mask size {used.shape[1]}x{used.shape[0]} differs from its image {image.name} "
            f"({size[0]}x{size[1]})"
        )
    return used


def shrink_mask(used: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[H, W]`` bool -> ``[height, width]``: a pixel is used where every source pixel under it is."""
    if used.shape == (height, width):
        return used
    box = Image.fromarray(used.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BOX)
    return np.asarray(box) == 255


def read_masks(
    files: dict[int, Path], images: list[Path], sizes: list[tuple[int, int]], width: int, height: int
) -> dict[int, np.ndarray]:
    """view index -> ``[height, width]`` bool at the training size; photo ``i`` is ``sizes[i]``. A scene whose
    masks leave no pixel at all is an error."""
    out = {i: shrink_mask(read_mask(path, images[i], sizes[i]), width, height) for i, path in files.items()}
    if out and len(out) == len(images) and not any(m.any() for m in out.values()):
        first = files[min(files)]
        raise SceneError(f"{first.parent}: every mask is all zero (0 = ignore the pixel): no pixel left to train on")
    return out
