"""How far multi-view fusion of the 2D teacher can go on a generated scene with perfect geometry. Folds
``scripts/fusion_ceiling.py``.

For every annotated view of an ``ovseg3d synth`` scene, each pixel's true surface point (its ray cast against the
scene's analytic ``scene.json``) is projected into every training view that sees it (its true depth there agrees
within :data:`TOLERANCE`); the teacher's relevancy at those pixels is averaged over the views and the argmax is the
pixel's class. The relevancy is reduced over the crop scales as the teacher's own segmentation does (``mean``), or
taken at one scale alone (``scale0``, the coarsest crop, ...). This is what a 3D field with exact geometry gets from
the teacher by averaging alone, before FDA's DINO-guided sharpening: it separates what the geometry costs a run from
what the teacher's consistent blur costs it.

Scored as ``ovseg3d eval`` scores runs (3D-OVS protocol), the fused labels and the teacher's own alike, on the pixels
whose surface point some training view sees. Figures per reduction R: ``fused_miou_R``, ``teacher_miou_R``,
``fused_accuracy_R``, ``teacher_accuracy_R``, per class ``fused_iou_R_CLASS`` and ``teacher_iou_R_CLASS``; and
``unseen_pixels``, the annotated pixels no training view sees. The teacher's feature cache is made (or reused) by
the ``teachers`` stage, with the simulated teacher unless ``--set teachers.kind=...`` says otherwise.

    ovseg3d bench run ceiling                                    # the generated orbit room
    ovseg3d bench run ceiling --scenes orbit tilt10 --set teachers.syn_errors=per-view
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovseg3d.bench.harness import Benchmark, Case

TOLERANCE = 0.01
"""A view sees a point when its true depth there is within this share of the point's depth."""


def observations(points: np.ndarray, cams: Any, views: list[int], scene: Any) -> list[tuple[int, np.ndarray, Any]]:
    """For each of ``views``: the view, the indices of the ``points`` it sees (in its frame, and its own ray reaches
    them first) and their pixel coordinates ``[K, 2]``."""
    from ovseg3d.synth import cast_rays

    uv, z = cams.project(points)  # [N, P, 2], [N, P]
    seen_by = []
    for v in views:
        u, w = uv[v, :, 0], uv[v, :, 1]
        idx = np.nonzero((z[v] > 0) & (u >= 0) & (u < cams.width) & (w >= 0) & (w < cams.height))[0]
        if len(idx):
            d = points[idx] - cams.c2w[v, :, 3]
            dist = np.linalg.norm(d, axis=1)
            t, _ = cast_rays(scene, np.broadcast_to(cams.c2w[v, :, 3], d.shape).copy(), d / dist[:, None])
            idx = idx[np.abs(t - dist) <= TOLERANCE * dist]
            seen_by.append((v, idx, uv[v, idx]))
    return seen_by


def fuse(seen_by: list, maps: dict[int, np.ndarray], n_points: int, width: int, height: int) -> np.ndarray:
    """``[P]`` argmax over classes of the ``maps`` (``[h, w, C]`` per view, of an image ``width x height``)
    averaged over the views that see each point (``-1`` where none does)."""
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


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.data.loader import load_scene
    from ovseg3d.metrics import segmentation_metrics
    from ovseg3d.pipeline import teachers_only
    from ovseg3d.synth import SynthCameras, camera_rays, cast_rays, scene_from_json
    from ovseg3d.teachers.cache import open_features
    from ovseg3d.teachers.extract import cache_path

    cfg = case.config()
    teachers = cfg.teachers if cfg.teachers.kind != "auto" else dataclasses.replace(cfg.teachers, kind="synthetic")
    teachers_only(dataclasses.replace(cfg, scene=case.folder, teachers=teachers, device=case.device))
    scene_json = json.loads((case.folder / "scene.json").read_text())
    synth, cams = scene_from_json(scene_json), SynthCameras.from_json(scene_json["cameras"])
    scene = load_scene(case.folder)
    features = open_features(cache_path(scene, teachers))
    relevancy = [features.view_relevancy(v).float() for v in range(len(scene))]  # [S, h, w, C] per view
    reduced = {"mean": [r.mean(0) for r in relevancy]}  # as the teacher's own segmentation, or one scale alone
    reduced |= {f"scale{s}": [r[s] for r in relevancy] for s in range(relevancy[0].shape[0])}
    fused: dict[str, dict] = {name: {} for name in reduced}
    teacher: dict[str, dict] = {name: {} for name in reduced}
    masks, unseen_pixels = {}, 0
    for v in sorted(scene.segmentations):
        origins, dirs = camera_rays(cams, v, 1)
        points = origins + cast_rays(synth, origins, dirs)[0][:, None] * dirs  # each pixel's true surface point
        seen_by = observations(points, cams, list(scene.train_ids), synth)
        for name, maps in reduced.items():
            labels = fuse(seen_by, {u: m.numpy() for u, m in enumerate(maps)}, len(points), cams.width, cams.height)
            fused[name][v] = torch.from_numpy(labels).clamp(min=0).view(cams.height, cams.width)
            up = F.interpolate(maps[v].permute(2, 0, 1)[None], size=(scene.height, scene.width), mode="bilinear")
            teacher[name][v] = up[0].argmax(0)
        unseen = np.ones(len(points), dtype=bool)
        for _, idx, _ in seen_by:
            unseen[idx] = False
        unseen_pixels += int(unseen.sum())
        masks[v] = scene.segmentations[v] & ~torch.from_numpy(unseen).view(cams.height, cams.width)
    figures = {"unseen_pixels": float(unseen_pixels)}
    for kind, labels in (("fused", fused), ("teacher", teacher)):
        for name, per_view in labels.items():
            m = segmentation_metrics(per_view, masks, scene.classes)
            figures[f"{kind}_miou_{name}"], figures[f"{kind}_accuracy_{name}"] = m["miou"], m["accuracy"]
            figures |= {f"{kind}_iou_{name}_{c}": iou for c, iou in m["per_class_iou"].items() if iou is not None}
    return figures


BENCHMARK = Benchmark(
    name="ceiling",
    doc="the 2D teacher fused over the views at a generated scene's true surfaces: mIoU beside the teacher's own",
    measure=measure,
    figures=("fused_miou_mean", "teacher_miou_mean"),
    scenes=("orbit",),
    teacher={"kind": "synthetic"},
)
