"""LERF-OVS labels in LangSplat's format, and LangSplat's two 2D scores of a query's relevancy map.

LangSplat's ``lerf_ovs`` download holds the scenes ``figurines``, ``ramen``, ``teatime`` and ``waldo_kitchen``, each a
COLMAP scene (``<scene>/images/``, ``<scene>/sparse/0/``), and their labels in ``label/<scene>/``: per labelled frame
``frame_XXXXX.json`` and the frame's image. A label file is::

    {"info": {"name": "frame_00041.jpg", "width": W, "height": H},
     "objects": [{"category": "rubber duck", "bbox": [x1, y1, x2, y2], "segmentation": [[x, y], ...]}, ...]}

``segmentation`` is one polygon in pixels of the ``W x H`` frame; a category may have several objects (their
masks are joined and each keeps its box). The frame is the image of the scene with the same file name stem.

The scores (LangSplat's ``eval/evaluate_iou_loc.py``, the 2D protocol; OpenGaussian's selection of 3D points is
another protocol), per labelled frame and category, the query being the category's text:

* localisation: the relevancy averaged over a 30 x 30 pixel box; a hit when a pixel where that average peaks lies
  inside one of the category's boxes (:func:`localisation_hit`);
* IoU: the relevancy averaged with its 30 x 30 box mean, stretched from its minimum .. maximum onto -1 .. 1 and
  clipped at 0, thresholded at 0.4, cleaned by a 7 x 7 majority vote, against the category's mask
  (:func:`relevancy_mask`, :func:`mask_iou`).

A scene's figures are the share of hits and the mean IoU over its (frame, category) pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ovseg3d.data.scene import SceneError

LABEL_DIR = "label"
SMOOTH_PX = 30
"""LangSplat's box filter (``cv2.filter2D`` with a 30 x 30 mean kernel) at the label's resolution."""
MASK_THRESHOLD = 0.4
"""LangSplat's ``--mask_thresh`` (its eval.sh)."""
VOTE_RADIUS = 3
"""LangSplat's ``smooth``: each pixel takes the majority of the (2r+1)^2 window around it (ties: background)."""


@dataclass
class FrameLabel:
    """One labelled frame: its image name and size, and per category its mask and boxes."""

    name: str
    """The frame's image file name (``info.name``)."""
    path: Path
    width: int
    height: int
    masks: dict[str, np.ndarray]
    """category -> ``[H, W]`` bool, the union of its objects' polygons."""
    boxes: dict[str, np.ndarray]
    """category -> ``[K, 4]`` float, one ``x1, y1, x2, y2`` box per object."""

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def polygon_mask(points: object, width: int, height: int) -> np.ndarray:
    """``[height, width]`` bool: the pixels a polygon of ``[x, y]`` points covers (its boundary included)."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    img = Image.new("L", (width, height), 0)
    if len(xy) >= 3:
        ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in xy], fill=1, outline=1)
    elif len(xy):
        ImageDraw.Draw(img).line([(float(x), float(y)) for x, y in xy], fill=1)
    return np.asarray(img, dtype=bool)


def read_frame_label(path: Path) -> FrameLabel:
    """One label file; :class:`SceneError` (one line naming it) when it is not of the format above."""
    try:
        data = json.loads(Path(path).read_text())
        info = data["info"]
        name, width, height = str(info["name"]), int(info["width"]), int(info["height"])
        masks: dict[str, np.ndarray] = {}
        boxes: dict[str, list[np.ndarray]] = {}
        for obj in data["objects"]:
            category = str(obj["category"])
            box = np.asarray(obj["bbox"], dtype=np.float64).reshape(4)
            mask = polygon_mask(obj["segmentation"], width, height)
            masks[category] = masks[category] | mask if category in masks else mask
            boxes.setdefault(category, []).append(box)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise SceneError(f"{path}: not a LangSplat LERF-OVS label file ({type(exc).__name__}: {reason})") from None
    if width < 1 or height < 1:
        raise SceneError(f"{path}: info.width and info.height must be positive")
    return FrameLabel(name, Path(path), width, height, masks, {k: np.stack(v) for k, v in boxes.items()})


def label_files(folder: Path) -> list[Path]:
    """The label files of a scene's label folder, by name."""
    return sorted(p for p in Path(folder).glob("*.json") if not p.name.startswith("."))


def read_labels(folder: Path) -> list[FrameLabel]:
    """Every labelled frame of ``label/<scene>/``, by file name."""
    return [read_frame_label(p) for p in label_files(folder)]


# ------------------------------------------------------------------------------------------------ writing


def mask_polygon(mask: np.ndarray) -> list[list[int]]:
    """A polygon covering ``mask`` row by row: down its left-most pixels, up its right-most. Exact for a mask
    whose every row is one run (a convex object seen whole), its row-wise hull otherwise; ``[]`` when empty."""
    rows = np.flatnonzero(mask.any(1))
    if not len(rows):
        return []
    left = [[int(np.flatnonzero(mask[y])[0]), int(y)] for y in rows]
    right = [[int(np.flatnonzero(mask[y])[-1]), int(y)] for y in rows[::-1]]
    return left + right


def objects_from_maps(
    instances: np.ndarray, labels: np.ndarray, classes: list[str], min_pixels: int = 20
) -> list[dict]:
    """LangSplat label objects of a frame with ground-truth maps: one per instance of at least ``min_pixels``
    pixels (``instances`` ``[H, W]`` ids, 0 none), its category the class most of its pixels have in ``labels``
    (indices into ``classes``, 255 none), its polygon :func:`mask_polygon`, its box the polygon's extent."""
    objects = []
    for inst in (int(i) for i in np.unique(instances) if i != 0):
        mask = instances == inst
        cls = labels[mask]
        cls = cls[cls < len(classes)]
        if mask.sum() < min_pixels or not len(cls):
            continue
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        category = classes[int(np.bincount(cls).argmax())]
        objects.append({"category": category, "bbox": box, "segmentation": mask_polygon(mask)})
    return objects


def write_frame_label(path: Path, name: str, width: int, height: int, objects: list[dict]) -> Path:
    """Write one label file of the format :func:`read_frame_label` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"info": {"name": name, "width": int(width), "height": int(height)}, "objects": objects}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ scores


def box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """The ``k x k`` box mean of a ``[H, W]`` map, the window reaching ``k // 2`` before a pixel and the rest after
    it (OpenCV's anchor), edges mirrored (OpenCV's default border); ``k`` 1 or less: ``x`` itself."""
    if k <= 1:
        return x.astype(np.float64)
    before, after = k // 2, k - 1 - k // 2
    h, w = x.shape
    # mirrored without repeating the edge pixel; a map smaller than the window is mirrored again
    rows, cols = _fold(np.arange(-before, h + after), h), _fold(np.arange(-before, w + after), w)
    padded = x.astype(np.float64)[np.ix_(rows, cols)]
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    total = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
    return total / (k * k)


def _fold(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into ``0 .. n-1`` (reflect-101, as often as needed)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def peak_pixels(relevancy: np.ndarray, smooth_px: int = SMOOTH_PX) -> np.ndarray:
    """``[P, 2]`` ``x, y`` of every pixel where the box-averaged relevancy is largest."""
    smoothed = box_mean(relevancy, smooth_px)
    ys, xs = np.nonzero(smoothed == smoothed.max())
    return np.stack([xs, ys], 1)


def localisation_hit(relevancy: np.ndarray, boxes: np.ndarray, smooth_px: int = SMOOTH_PX) -> bool:
    """Whether a peak of the box-averaged ``relevancy`` (``[H, W]``, pixels of the label's frame) lies inside
    (edges included) one of ``boxes`` (``[K, 4]`` ``x1, y1, x2, y2`` in either corner order)."""
    peaks = peak_pixels(relevancy, smooth_px).astype(np.float64)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        inside = (
            (peaks[:, 0] >= min(x1, x2))
            & (peaks[:, 0] <= max(x1, x2))
            & (peaks[:, 1] >= min(y1, y2))
            & (peaks[:, 1] <= max(y1, y2))
        )
        if inside.any():
            return True
    return False


def majority_vote(mask: np.ndarray, radius: int = VOTE_RADIUS) -> np.ndarray:
    """Each pixel set where more than half of the pixels of the ``(2r+1)^2`` window around it (cut at the edges)
    are set: LangSplat's clean-up of a thresholded mask."""
    if radius < 1:
        return mask.astype(bool)
    h, w = mask.shape

    def window_sums(x: np.ndarray) -> np.ndarray:
        integral = np.zeros((h + 1, w + 1))
        integral[1:, 1:] = x.cumsum(0).cumsum(1)
        y0, y1 = np.clip(np.arange(h) - radius, 0, h), np.clip(np.arange(h) + radius + 1, 0, h)
        x0, x1 = np.clip(np.arange(w) - radius, 0, w), np.clip(np.arange(w) + radius + 1, 0, w)
        return integral[np.ix_(y1, x1)] - integral[np.ix_(y0, x1)] - integral[np.ix_(y1, x0)] + integral[np.ix_(y0, x0)]

    ones = window_sums(mask.astype(np.float64))
    count = window_sums(np.ones((h, w)))
    return ones * 2 > count


def relevancy_mask(
    relevancy: np.ndarray,
    threshold: float = MASK_THRESHOLD,
    smooth_px: int = SMOOTH_PX,
    vote_radius: int = VOTE_RADIUS,
) -> np.ndarray:
    """``[H, W]`` bool: LangSplat's mask of a relevancy map (the module's docstring)."""
    rel = relevancy.astype(np.float64)
    rel = 0.5 * (box_mean(rel, smooth_px) + rel)
    rel = rel - rel.min()
    rel = rel / (rel.max() + 1e-9)
    rel = np.clip(2.0 * rel - 1.0, 0.0, 1.0)
    return majority_vote(rel > threshold, vote_radius)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 0.0


def frame_scores(
    relevancy: dict[str, np.ndarray],
    label: FrameLabel,
    threshold: float = MASK_THRESHOLD,
    smooth_px: int = SMOOTH_PX,
) -> dict[str, dict[str, float | bool]]:
    """category -> ``{"hit", "iou"}`` of a frame, from each category's relevancy (``[H, W]`` at the label's size)."""
    out: dict[str, dict[str, float | bool]] = {}
    for category, mask in label.masks.items():
        rel = relevancy[category]
        if rel.shape != mask.shape:
            raise ValueError(f"relevancy of {category!r} is {rel.shape}, the label's frame {mask.shape}")
        out[category] = {
            "hit": localisation_hit(rel, label.boxes[category], smooth_px),
            "iou": mask_iou(relevancy_mask(rel, threshold, smooth_px), mask),
        }
    return out


def summarise(frames: dict[str, dict[str, dict[str, float | bool]]]) -> dict[str, float | int]:
    """A scene's figures from its frames' :func:`frame_scores`: localisation accuracy and mean IoU in percent over
    the (frame, category) pairs, and how many there were."""
    pairs = [s for scores in frames.values() for s in scores.values()]
    if not pairs:
        return {"localisation": float("nan"), "miou": float("nan"), "n_queries": 0}
    return {
        "localisation": round(100.0 * sum(bool(p["hit"]) for p in pairs) / len(pairs), 2),
        "miou": round(100.0 * sum(float(p["iou"]) for p in pairs) / len(pairs), 2),
        "n_queries": len(pairs),
    }
