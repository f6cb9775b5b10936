#!/usr/bin/env python
"""How far can multi-view fusion of the 2D teacher go on a generated scene, with perfect geometry?

For every annotated view of an ``ovseg3d synth`` scene, each pixel's true surface point (ray cast against the
scene's analytic ``scene.json``) is projected into every training view that sees it (its true depth there
agrees within ``--tolerance``); the teacher's relevancy at those pixels (mean over scales, as the teacher's own
segmentation) is averaged over the views and the argmax is the pixel's class. This is what a 3D field with
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
import tyro

from ovseg3d.data.loader import load_scene
from ovseg3d.data.synth import SynthCameras, camera_rays, cast_rays, scene_from_json
from ovseg3d.evaluate import segmentation_metrics
from ovseg3d.teachers.cache import open_features
from ovseg3d.teachers.extract import teacher_labels


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


def fused_labels(
    points: np.ndarray, cams: SynthCameras, views: list[int], relevancy: dict[int, torch.Tensor], scene, tol: float
) -> np.ndarray:
    """``[P]`` class of each point: argmax of the teacher's mean-over-scales relevancy averaged over the views
    that see it (``-1`` where none does)."""
    uv, z = cams.project(points)  # [N, P, 2], [N, P]
    n_classes = next(iter(relevancy.values())).shape[-1]
    total = np.zeros((len(points), n_classes))
    count = np.zeros(len(points))
    for v in views:
        u, w = uv[v, :, 0], uv[v, :, 1]
        inside = (z[v] > 0) & (u >= 0) & (u < cams.width) & (w >= 0) & (w < cams.height)
        idx = np.nonzero(inside)[0]
        if len(idx) == 0:
            continue
        # the view's own ray to the point: does it reach the point first?
        origin = cams.c2w[v, :, 3]
        d = points[idx] - origin
        dist = np.linalg.norm(d, axis=1)
        t, _ = cast_rays(scene, np.broadcast_to(origin, d.shape).copy(), d / dist[:, None])
        seen = np.abs(t - dist) <= tol * dist
        idx = idx[seen]
        rel = relevancy[v].float().mean(0).numpy()  # [h, w, C]
        h, w = rel.shape[:2]
        col = np.clip((u[idx] / cams.width * w).astype(int), 0, w - 1)
        row = np.clip((uv[v, idx, 1] / cams.height * h).astype(int), 0, h - 1)
        total[idx] += rel[row, col]
        count[idx] += 1
    labels = total.argmax(1)
    labels[count == 0] = -1
    return labels


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    scene_json = json.loads((args.scene / "scene.json").read_text())
    synth, cams = scene_from_json(scene_json), SynthCameras.from_json(scene_json["cameras"])
    scene = load_scene(args.scene)
    features = open_features(args.cache or args.scene / "features" / "synthetic")
    relevancy = {v: features.view_relevancy(v) for v in range(len(scene))}  # [S, h, w, C]
    views = sorted(scene.segmentations)
    fused, teacher, masks, counts = {}, {}, {}, []
    for v in views:
        points = true_points(cams, v, synth)
        labels = torch.from_numpy(fused_labels(points, cams, scene.train_ids, relevancy, synth, args.tolerance))
        unseen = (labels < 0).view(cams.height, cams.width)
        counts.append(int(unseen.sum()))
        fused[v] = labels.clamp(min=0).view(cams.height, cams.width)
        teacher[v] = teacher_labels(features, v, scene.width, scene.height)
        masks[v] = scene.segmentations[v] & ~unseen  # both are scored on the pixels some training view sees
    result = {
        "scene": str(args.scene),
        "views": views,
        "pixels_seen_by_no_training_view": counts,
        "fused": segmentation_metrics(fused, masks, scene.classes),
        "teacher": segmentation_metrics(teacher, masks, scene.classes),
    }
    print(f"{'class':<14} {'teacher IoU':>12} {'fused IoU':>10}")
    for c in scene.classes:
        t, f = (result[k]["per_class_iou"].get(c, float("nan")) for k in ("teacher", "fused"))
        print(f"{c:<14} {t:>12.1f} {f:>10.1f}")
    print(f"{'mIoU':<14} {result['teacher']['miou']:>12.1f} {result['fused']['miou']:>10.1f}")
    print(f"{'accuracy':<14} {result['teacher']['accuracy']:>12.1f} {result['fused']['accuracy']:>10.1f}")
    out = args.out or args.scene / "fusion_ceiling.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
