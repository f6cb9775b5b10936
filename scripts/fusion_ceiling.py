#!/usr/bin/env python
"""How far can multi-view fusion of the 2D teacher go on a generated scene, with perfect geometry?

For every annotated view of an ``ovseg3d synth`` scene, each pixel's true surface point (ray cast against the
scene's analytic ``scene.json``) is projected into every training view that sees it (its true depth there
agrees within ``--tolerance``); the teacher's relevancy at those pixels is averaged over the views and the argmax is
the pixel's class. The relevancy is reduced over the crop scales as the teacher's own segmentation does
(the mean), or taken at one scale alone (``scale0`` is the coarsest): one column each. This is what a 3D field with
exact geometry gets from the teacher by averaging alone, before FDA's DINO-guided sharpening: it separates
what the geometry costs a run from what the teacher's consistent blur costs it.

Scored as ``ovseg3d eval`` scores runs (3D-OVS protocol), fused and teacher alike on the pixels whose surface
point some training view sees (the others are counted in the JSON). Prints a table and writes JSON.

    python scripts/fusion_ceiling.py bench/scenes/orbit          # needs the scene's teacher cache (extract)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from ovseg3d.data.loader import load_scene
from ovseg3d.metrics import segmentation_metrics
from ovseg3d.synth import SynthCameras, camera_rays, cast_rays, scene_from_json
from ovseg3d.teachers.cache import open_features


@dataclass
class Args:
    scene: tyro.conf.Positional[Path]
    """A scene made by ``ovseg3d synth`` (it has ``scene.json``) whose teacher cache exists."""
    cache: Path | None = None
    """The teacher cache (default ``SCENE/features/synthetic``)."""
    tolerance: float = 0.01
    """A view sees a point when its true depth there is within this share of the point's depth."""
    out: Path | None = None
    """JSON output (default ``SCENE/fusion_ceiling.json``)."""


def true_points(cams: SynthCameras, view: int, scene) -> np.ndarray:
    """``[H*W, 3]`` true surface point of every pixel centre of ``view`` (row-major)."""
    origins, dirs = camera_rays(cams, view, 1)
    t, _ = cast_rays(scene, origins, dirs)
    return origins + t[:, None] * dirs


def observations(
    points: np.ndarray, cams: SynthCameras, views: list[int], scene, tol: float
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """For each of ``views``: the view, the indices of the ``points`` it sees (in its frame, and its own ray
    reaches them first) and their pixel coordinates ``[K, 2]``."""
    uv, z = cams.project(points)  # [N, P, 2], [N, P]
    seen_by = []
    for v in views:
        u, w = uv[v, :, 0], uv[v, :, 1]
        idx = np.nonzero((z[v] > 0) & (u >= 0) & (u < cams.width) & (w >= 0) & (w < cams.height))[0]
        if len(idx) == 0:
            continue
        origin = cams.c2w[v, :, 3]
        d = points[idx] - origin
        dist = np.linalg.norm(d, axis=1)
        t, _ = cast_rays(scene, np.broadcast_to(origin, d.shape).copy(), d / dist[:, None])
        idx = idx[np.abs(t - dist) <= tol * dist]
        seen_by.append((v, idx, uv[v, idx]))
    return seen_by


def fuse(seen_by: list, maps: dict[int, np.ndarray], n_points: int, width: int, height: int) -> np.ndarray:
    """``[P]`` argmax over classes of the ``maps`` (``[h, w, C]`` per view) averaged over the views that see
    each point (``-1`` where none does)."""
    total = np.zeros((n_points, next(iter(maps.values())).shape[-1]))
    count = np.zeros(n_points)
    for v, idx, uv in seen_by:
        h, w = maps[v].shape[:2]
        col = np.clip((uv[:, 0] / width * w).astype(int), 0, w - 1)
        row = np.clip((uv[:, 1] / height * h).astype(int), 0, h - 1)
        total[idx] += maps[v][row, col]
        count[idx] += 1
    labels = total.argmax(1)
    labels[count == 0] = -1
    return labels


def print_table(result: dict, classes: list[str], variants: list[str]) -> None:
    """Rows: classes, mIoU, accuracy; columns: ``teacher / fused`` per variant."""

    def value(metrics: dict, row: str) -> float:
        if row == "mIoU":
            return metrics["miou"]
        if row == "accuracy":
            return metrics["accuracy"]
        return metrics["per_class_iou"].get(row, float("nan"))

    print(f"{'IoU (teacher / fused)':<22} " + " ".join(f"{k:>15}" for k in variants))
    for row in [*classes, "mIoU", "accuracy"]:
        cells = [f"{value(result['teacher'][k], row):>6.1f} / {value(result['fused'][k], row):>6.1f}" for k in variants]
        print(f"{row:<22} " + " ".join(f"{c:>15}" for c in cells))


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    scene_json = json.loads((args.scene / "scene.json").read_text())
    synth, cams = scene_from_json(scene_json), SynthCameras.from_json(scene_json["cameras"])
    scene = load_scene(args.scene)
    features = open_features(args.cache or args.scene / "features" / "synthetic")
    relevancy = [features.view_relevancy(v).float() for v in range(len(scene))]  # [S, h, w, C] per view
    # the teacher's relevancy reduced over scales as its own segmentation does (mean), or one scale alone
    reduced = {"mean": [r.mean(0) for r in relevancy]}
    reduced |= {f"scale{s}": [r[s] for r in relevancy] for s in range(relevancy[0].shape[0])}
    maps = {name: {v: r.numpy() for v, r in enumerate(rs)} for name, rs in reduced.items()}
    views = sorted(scene.segmentations)
    fused = {name: {} for name in reduced}
    teacher = {name: {} for name in reduced}
    masks, counts = {}, []
    for v in views:
        points = true_points(cams, v, synth)
        seen_by = observations(points, cams, scene.train_ids, synth, args.tolerance)
        for name, rs in reduced.items():
            labels = torch.from_numpy(fuse(seen_by, maps[name], len(points), cams.width, cams.height))
            fused[name][v] = labels.clamp(min=0).view(cams.height, cams.width)
            up = F.interpolate(rs[v].permute(2, 0, 1)[None], size=(scene.height, scene.width), mode="bilinear")
            teacher[name][v] = up[0].argmax(0)
        unseen = np.ones(len(points), dtype=bool)
        for _, idx, _ in seen_by:
            unseen[idx] = False
        unseen = torch.from_numpy(unseen).view(cams.height, cams.width)
        counts.append(int(unseen.sum()))
        masks[v] = scene.segmentations[v] & ~unseen  # both are scored on the pixels some training view sees
    result = {
        "scene": str(args.scene),
        "views": views,
        "scales": "scale0 is the coarsest crop (min(W, H) // 5 with the default --clip-scales)",
        "pixels_seen_by_no_training_view": counts,
        "teacher": {k: segmentation_metrics(p, masks, scene.classes) for k, p in teacher.items()},
        "fused": {k: segmentation_metrics(p, masks, scene.classes) for k, p in fused.items()},
    }
    print_table(result, scene.classes, list(reduced))
    out = args.out or args.scene / "fusion_ceiling.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
