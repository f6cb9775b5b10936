"""Writing images a person looks at: PNGs, depth colour maps, side-by-side panels."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from ovseg3d.atomic import write_bytes

# Turbo colour map, sampled at 9 points and interpolated (perceptual rainbow for depth)
_TURBO = np.array(
    [
        [0.190, 0.072, 0.232],
        [0.275, 0.421, 0.885],
        [0.156, 0.736, 0.923],
        [0.291, 0.953, 0.526],
        [0.644, 0.990, 0.234],
        [0.932, 0.812, 0.222],
        [0.991, 0.491, 0.139],
        [0.838, 0.182, 0.024],
        [0.480, 0.016, 0.011],
    ]
)


def to_uint8(img: Tensor | np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (``[H, W, C]``) -> uint8."""
    arr = img.detach().cpu().numpy() if isinstance(img, Tensor) else np.asarray(img)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``[H, W]`` scalars -> ``[H, W, 3]`` float turbo colours (``lo``/``hi`` default to 1st/99th percentiles)."""
    lo = float(np.percentile(values, 1)) if lo is None else lo
    hi = float(np.percentile(values, 99)) if hi is None else hi
    t = np.clip((values - lo) / max(hi - lo, 1e-8), 0.0, 1.0) * (len(_TURBO) - 1)
    i = np.minimum(t.astype(int), len(_TURBO) - 2)
    f = (t - i)[..., None]
    return _TURBO[i] * (1 - f) + _TURBO[i + 1] * f


def colorize_depth(depth: Tensor, opacity: Tensor) -> np.ndarray:
    """Depth ``[H, W]`` -> turbo colours, near = warm; pixels with little opacity go black."""
    d = depth.detach().cpu().numpy()
    o = opacity.detach().cpu().numpy()
    valid = o > 0.5
    inv = np.where(valid, 1.0 / np.maximum(d, 1e-6), 0.0)
    if not valid.any():
        return np.zeros((*d.shape, 3))
    lo, hi = np.percentile(inv[valid], [1, 99])
    return colorize(inv, lo, hi) * valid[..., None]


def save_png(path: Path, img: Tensor | np.ndarray) -> None:
    """Save a float ``[H, W, 3]`` image in [0, 1] (or uint8) as PNG, creating parent folders; whole or not at
    all (encoded in memory, written beside ``path`` and renamed over it)."""
    arr = img if isinstance(img, np.ndarray) and img.dtype == np.uint8 else to_uint8(img)
    write_bytes(Path(path), iio.imwrite("<bytes>", arr, extension=".png"))


def side_by_side(*images: np.ndarray | Tensor, gap: int = 2) -> np.ndarray:
    """Float images of one height ``[H, W, 3]`` joined left to right with white gaps."""
    arrs = [i.detach().cpu().numpy() if isinstance(i, Tensor) else np.asarray(i, dtype=np.float64) for i in images]
    h = arrs[0].shape[0]
    spacer = np.ones((h, gap, 3))
    parts: list[np.ndarray] = []
    for a in arrs:
        parts += [a, spacer]
    return np.concatenate(parts[:-1], axis=1)


def pca_rgb(features: Tensor) -> np.ndarray:
    """``[H, W, D]`` features -> ``[H, W, 3]`` colours from their first three principal components
    (each stretched to its 1st-99th percentile): similar features, similar colours."""
    x = features.reshape(-1, features.shape[-1]).float()
    x = x - x.mean(0)
    _, _, v = torch.pca_lowrank(x, q=min(3, x.shape[1]), center=False, niter=4)
    proj = (x @ v).numpy()
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    return rgb.reshape(*features.shape[:-1], 3)


def label_palette(n: int) -> np.ndarray:
    """``[n, 3]`` distinct float colours for class labels (golden-angle hues, fixed order)."""
    hues = (np.arange(n) * 0.618034) % 1.0
    h6 = hues[:, None] * 6.0
    rgb = np.clip(np.abs((h6 + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0, 1)  # HSV with S = V = 1
    return 0.25 + 0.7 * rgb


def colorize_labels(labels: Tensor | np.ndarray, n: int) -> np.ndarray:
    """``[H, W]`` class indices -> ``[H, W, 3]`` float colours; indices outside ``[0, n)`` are black."""
    lab = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    palette = np.concatenate([label_palette(n), np.zeros((1, 3))])
    return palette[np.where((lab >= 0) & (lab < n), lab, n)]


def resize_rgb(img: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize of a float ``[h, w, 3]`` image to ``height`` rows (width keeps the aspect)."""
    h, w = img.shape[:2]
    width = max(1, round(w * height / h))
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return img[rows[:, None], cols[None, :]]
