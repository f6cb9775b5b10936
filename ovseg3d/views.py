"""The teachers' views: the training views that cover the scene's surfaces, chosen once the field exists (issue 68).

A video's frames are neighbours: most of what frame 31 shows, frames 30 and 32 show too, and the 2D teachers cost
seconds a frame on a CPU. ``--teacher-views K`` runs them on K views only, chosen by greedy coverage:

1. each training view's surfaces are read off the trained field: its rays at a coarse size (``long_side`` pixels on
   the long side) marched as lifting marches them, each ray's surface the mean of its samples by their sharpened
   weights, those of the rays whose opacity reaches ``min_opacity`` put into cells of a grid of
   ``resolution`` cells a side over the field's space (:func:`~ovseg3d.field.space.to_unit`: the box, or its
   contraction for an unbounded scene) — :func:`surface_cells`. The cells are coarser than the rays are dense on
   a surface the view spans (20 cells a side against 40 rays): finer ones would be hit one in two, and a view a
   few centimetres from another would hit the cells between its rays and count as new;
2. the views are taken one at a time, each time the one that adds the most cells seen fewer than ``depth`` times by
   the views taken so far (greedy maximum coverage, the usual ``1 - 1/e`` approximation of the best K;
   ``depth`` 2 asks for a second look at each surface before a first look at nothing new, so that one view's
   mistakes are not the only word on a cell) — :func:`choose_views`.

The cells counted are those at least two training views see (:func:`seen_by`): one view's alone are mostly
floaters. The coverage of a choice is the share of those cells that the chosen views see (:func:`coverage`). Ties go to the view whose centre is furthest from the views already taken, so that a scene seen
equally from everywhere gets views spread round it, not neighbours.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ovseg3d.data.cameras import image_rays
from ovseg3d.distill import semantic_samples
from ovseg3d.field.space import to_unit
from ovseg3d.render.volume import accumulate
from ovseg3d.teachers.extract import ensure_features
from ovseg3d.train import Trainer, Training


@dataclass
class ViewChoice:
    """The views chosen, in the order taken, and what they cover."""

    views: list[int]
    coverage: float
    """Share of the cells seen by all the candidate views that the chosen views see."""
    covered_twice: float
    """Share of those cells that at least two chosen views see (1 view: 0)."""
    cells: int
    """Cells seen by all the candidate views."""
    seconds: float = 0.0

    def line(self, candidates: int) -> str:
        return (
            f"teacher views: {len(self.views)} of {candidates} training views, chosen by coverage of the field's "
            f"surfaces ({self.cells} cells that two views or more see): {100 * self.coverage:.1f} % seen, "
            f"{100 * self.covered_twice:.1f} % seen twice, in {self.seconds:.1f} s"
        )


@torch.no_grad()
def surface_cells(
    trainer: Trainer,
    views: list[int],
    long_side: int = 40,
    resolution: int = 20,
    min_opacity: float = 0.5,
) -> list[Tensor]:
    """For each of ``views``: the cells (``[k]`` long keys, unique, sorted) holding the surfaces its coarse depth
    map sees (see the module docstring)."""
    scene = trainer.scene
    factor = min(1.0, long_side / max(scene.width, scene.height))
    device = trainer.device
    cameras = scene.cameras.scaled(factor).to(device)
    near_far = scene.near_far.to(device) if scene.near_far is not None else None
    aabb, kind = trainer.field.aabb, trainer.field.contraction
    rays = [image_rays(cameras, view) for view in views]
    origins, dirs = torch.cat([o for o, _ in rays]), torch.cat([d for _, d in rays])
    cam = torch.cat([torch.full((len(d),), v, dtype=torch.long, device=device) for v, (_, d) in zip(views, rays)])
    keys = torch.empty(len(dirs), dtype=torch.long, device=device)
    chunk = trainer.cfg.render_chunk(device.type)
    for s in range(0, len(dirs), chunk):  # every view's rays together: a march per chunk, not per view
        o, d, c = origins[s : s + chunk], dirs[s : s + chunk], cam[s : s + chunk]
        points, share, ray, opacity = semantic_samples(trainer, cameras, c, o, d, near_far, True)
        # each ray's surface: its samples' mean, by their sharpened weights (which sum to 1 a ray)
        unit, inside = to_unit(accumulate(share, points, ray, len(d)), aabb, kind)
        cell = (unit * resolution).long().clamp(0, resolution - 1)
        key = (cell[:, 0] * resolution + cell[:, 1]) * resolution + cell[:, 2]
        keys[s : s + chunk] = torch.where((opacity >= min_opacity) & inside, key, -1)
    return [torch.unique(k[k >= 0]).cpu() for k in torch.split(keys, [len(d) for _, d in rays])]


def _compact(cells: list[Tensor]) -> tuple[list[Tensor], int]:
    """The cells renumbered 0..n-1 over all views; ``n``."""
    if not cells or sum(len(c) for c in cells) == 0:
        return [c.new_zeros(0) for c in cells], 0
    every, inverse = torch.unique(torch.cat(cells), return_inverse=True)
    return list(torch.split(inverse, [len(c) for c in cells])), len(every)


def _view_counts(ids: list[Tensor], n: int, views: list[int] | range) -> Tensor:
    """``[n]`` how many of ``views`` see each cell (``ids``: :func:`_compact`'s renumbered cells)."""
    counts = torch.zeros(max(n, 1), dtype=torch.long)
    for v in views:
        counts[ids[v]] += 1  # a view's cells are unique: one count each
    return counts


def seen_by(cells: list[Tensor], times: int) -> list[Tensor]:
    """Each view's cells cut to those at least ``times`` of the views see: the surfaces several views agree on.
    A cell one view alone sees is mostly a floater, or far background beyond the region of interest (on a phone
    video of 52 frames, 38 % of the cells, where a surface there is seen by a median of 2 frames)."""
    if times <= 1:
        return cells
    ids, n = _compact(cells)
    counts = _view_counts(ids, n, range(len(cells)))
    return [c[counts[i] >= times] for c, i in zip(cells, ids)]


def coverage(cells: list[Tensor], chosen: list[int], times: int = 1) -> float:
    """Share of the cells seen by any of ``cells``' views that at least ``times`` of the ``chosen`` views see (1.0
    when no view sees anything)."""
    ids, n = _compact(cells)
    if n == 0:
        return 1.0
    return float((_view_counts(ids, n, chosen) >= times).float().mean())


def choose_views(cells: list[Tensor], k: int, depth: int = 2, centres: Tensor | None = None) -> list[int]:
    """Greedy maximum coverage: ``k`` positions in ``cells`` (one entry a view), each time the one adding the most
    cells seen fewer than ``depth`` times so far; ties to the centre (``[V, 3]``, optional) furthest from those
    taken, then to the lower position. All the views when ``k`` is at least their number."""
    n_views = len(cells)
    if k >= n_views:
        return list(range(n_views))
    ids, n = _compact(cells)
    counts = torch.zeros(max(n, 1), dtype=torch.long)
    taken: list[int] = []
    left = torch.ones(n_views, dtype=torch.bool)
    for _ in range(k):
        gains = torch.tensor([int((counts[i] < depth).sum()) if left[j] else -1 for j, i in enumerate(ids)])
        best = gains == gains.max()
        if centres is not None and taken and int(best.sum()) > 1:
            far = torch.cdist(centres.float(), centres[taken].float()).min(1).values
            far[~best] = -1.0
            pick = int(torch.argmax(far))
        else:
            pick = int(torch.nonzero(best)[0])
        taken.append(pick)
        left[pick] = False
        counts[ids[pick]] += 1
    return taken


def choose_teacher_views(trainer: Trainer, k: int, depth: int = 2, long_side: int = 40) -> ViewChoice:
    """``k`` of ``trainer``'s training views by coverage of its field's surfaces (:func:`surface_cells`,
    :func:`choose_views`), sorted."""
    start = time.perf_counter()
    train = list(trainer.scene.train_ids)
    cells = seen_by(surface_cells(trainer, train, long_side=long_side), 2)
    centres = trainer.scene.cameras.centers[train]
    picked = choose_views(cells, k, depth, centres)
    return ViewChoice(
        views=sorted(train[p] for p in picked),
        coverage=coverage(cells, picked, 1),
        covered_twice=coverage(cells, picked, 2),
        cells=_compact(cells)[1],
        seconds=time.perf_counter() - start,
    )


def teachers_after_geometry(t: Training) -> None:
    """``--teacher-views K``: choose the K training views that cover the trained field's surfaces
    (:mod:`ovseg3d.views`) and run the teachers on those (the cache keeps them); ``t.features`` then reads them
    alone. Nothing to do when the features are there already."""
    if t.features is not None or t.teachers is None:
        return
    cfg = t.trainer.cfg
    choice = choose_teacher_views(t.trainer, cfg.teacher_views, cfg.teacher_view_depth)
    tqdm.write(choice.line(len(t.trainer.scene.train_ids)))
    t.features = ensure_features(
        t.trainer.scene, cfg.teachers, t.trainer.device, views=choice.views, teachers=t.teachers
    )
    t.teachers = None  # the models' memory back: the features are all the semantic stage reads
    with open(t.run / "log.jsonl", "a") as log:
        record = {"stage": "teacher_views", "views": choice.views, "coverage": round(choice.coverage, 4)}
        log.write(json.dumps({**record, "covered_twice": round(choice.covered_twice, 4), "cells": choice.cells}) + "\n")
