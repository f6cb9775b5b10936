"""Writing images a person looks at: PNGs, depth colour maps, side-by-side panels."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from torch import Tensor

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
    """Save a float ``[H, W, 3]`` image in [0, 1] (or uint8) as PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img if isinstance(img, np.ndarray) and img.dtype == np.uint8 else to_uint8(img)
    iio.imwrite(path, arr)


def side_by_side(*images: np.ndarray | Tensor, gap: int = 2) -> np.ndarray:
    """Float images of one height ``[H, W, 3]`` joined left to right with white gaps."""
    arrs = [i.detach().cpu().numpy() if isinstance(i, Tensor) else np.asarray(i, dtype=np.float64) for i in images]
    h = arrs[0].shape[0]
    spacer = np.ones((h, gap, 3))
    parts: list[np.ndarray] = []
    for a in arrs:
        parts += [a, spacer]
    return np.concatenate(parts[:-1], axis=1)

