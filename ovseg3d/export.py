"""Labelled point clouds out of a trained run (``ovseg3d export RUN``).

Points come from the radiance field's surfaces: every (strided) training view is rendered, each solid pixel
whose ray stops crisply (its weight's middle half within ``max_spread`` of its depth, allowing more where the
ray meets the surface at a grazing angle) is lifted to its median depth and kept when the depth maps of other
views agree with it (multi-view consistency, as in MVS depth fusion), and the points are fused on a voxel grid.
A voxel is kept when at least ``min_views`` views put a point in it and it has an occupied neighbour. Each pixel
also renders the semantic field's latent (as ``ovseg3d render`` does); a point's latent is the mean over its
pixels, decoded into class probabilities over the scene's classes, the label and its confidence, LERF relevancy
for free-text queries and, if asked, the CLIP feature.

Files (world frame of the input poses, metres if the poses are)::

    RUN/export/points.ply    binary little-endian PLY: x y z red green blue label confidence views prob_<i> rel_*
    RUN/export/points.npz    everything: also the (optional) float16 features
    RUN/export/points.json   classes, label colours, queries, counts and how the points were made

The PLY holds what ``ovseg3d detect`` reads from the NPZ (per-class probabilities ``prob_<i>``, the voxel size
and the query texts in header comments), so both give the same boxes; only the features are the NPZ's alone.
The three files are written into a hidden sibling folder (``RUN/.export.tmp-PID``) that then takes the place
of ``RUN/export``: a failed or killed export leaves the previous one whole, never a mix of old and new files.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ovseg3d import __version__
from ovseg3d.data.cameras import Cameras, image_rays, project_points
from ovseg3d.data.scene import Scene
from ovseg3d.errors import MissingFileError, UsageError
from ovseg3d.field.space import step_scale
from ovseg3d.images import label_palette
from ovseg3d.losses import class_probabilities
from ovseg3d.render.renderer import render_median_depth
from ovseg3d.syncs import to_device
from ovseg3d.teachers.relevancy import query_slug

EXPORT_FORMAT = 1
MIN_INCIDENCE = 0.2
"""The smallest cosine a ray's spread is scaled by (78 deg from the surface's normal): at most a five-fold
allowance for a grazing surface."""
PROBE_RAYS = 1 << 14
"""Rays of the small render that :func:`auto_pixel_stride` reads the views' depth and the render's pace from."""
MAX_BUDGET_STRIDE = 8
"""The largest pixel stride that ``ExportOptions.max_seconds`` may choose."""
SEMANTIC_SHARE = 0.2
"""The semantic field's latents of the kept pixels, as a share of the depth maps' seconds (0.20 measured on a
generated orbit room, 32 views at 160x120 on 2 CPU cores; the agreement and the fusion cost 1-2 % more)."""
MAX_LEVEL = 8
"""The coarsest fusion grid for far points: the voxel times 2^8 (:func:`fuse_points`)."""
MAX_BEND = 0.2
"""The largest sine of the angle between the two steps from a pixel's point to its neighbours' along an image
axis for :func:`incidence_cosine` to read a surface there (11.5 deg)."""


@dataclass
class ExportOptions:
    spacing: float = 0.0015
    """Voxel size of the fusion, as a share of the scene box's diagonal (demo: 11 mm)."""
    min_views: int = 2
    """Keep a voxel only if at least this many views put a point in it."""
    min_opacity: float = 0.9
    """Pixels whose rendered opacity is below this give no point."""
    max_spread: float = 0.08
    """Pixels whose ray spreads the middle half of its weight over more than this share of its depth (fog, a
    smeared surface) give no point (0: keep all). The spread is first scaled by the cosine of the angle between
    the ray and the surface the depth map shows there (at least ``MIN_INCIDENCE``): a crisp floor seen at a
    grazing angle spreads its weight far along the ray without being fog. Beyond a contraction's region of
    interest the limit grows as the field's marching step does (``|x|^2``, the room around an unbounded
    capture's centre)."""
    min_agreeing: int = 3
    """Keep a pixel's point only if at least this many other views' depth maps agree with it."""
    depth_tolerance: float = 0.005
    """Relative depth difference under which another view agrees with a point. Beyond a contraction's region of
    interest it grows as the point's distance from the ROI's centre (in ROI radii): the field's steps, and so the
    depth error of a surface there, grow as its square."""
    relax_below: int = 1000
    """With fewer points than this at the thresholds above (a short run's faint field), the export is made
    again once with them relaxed from the run's own opacities (median-opacity pixels, depths at the middle of
    the weight each ray holds, no spread limit, 1 agreeing view and 1 view a voxel, a 4x depth tolerance), and
    says so in one line. 0: never."""
    view_stride: int = 1
    """Use every N-th training view."""
    pixel_stride: int = 0
    """Lift one pixel in N along each image axis: the views are rendered at 1/N of their size (N^2 fewer rays),
    each ray's colour the mean of its N x N pixels. 0: the largest N, up to 4, that still puts 2 pixels across a
    fusion voxel at the views' median depth (read from a 1/8-size render of 4 views); 1: every pixel."""
    max_seconds: float = 60.0
    """With --pixel-stride 0: render the views at a stride whose export is estimated to take at most about this
    long, from the pace of the small render that chooses the stride (a floor on it, at most 8; 0: no limit). On a
    CPU a 64-view capture at 640 px would otherwise take minutes: the export should not cost more than the field."""
    queries: list[str] = field(default_factory=list)
    """Free-text queries: one relevancy value per point each."""
    features: bool = False
    """Also store the 512-d CLIP feature of every point (float16) in the .npz."""
    chunk: int = 1 << 15
    """Points per batch through the semantic field."""


@dataclass
class LabelledCloud:
    """Per point: ``xyz [P, 3]`` float32, ``rgb [P, 3]`` uint8, ``views [P]`` int32 (views that saw it),
    ``label [P]`` int32 and ``confidence [P]`` float32 (-1 and 0 without classes), ``probs [P, C]`` float16,
    ``relevancy``: query -> ``[P]`` float32, ``feature [P, D]`` float16 or None; ``voxel_size``: the fusion's
    voxel edge (world units)."""

    xyz: np.ndarray
    rgb: np.ndarray
    views: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    probs: np.ndarray
    relevancy: dict[str, np.ndarray]
    feature: np.ndarray | None
    classes: list[str]
    voxel_size: float = 0.0
    relaxed: dict[str, float] = field(default_factory=dict)
    """The export options relaxed for a faint field (``ExportOptions.relax_below``), with the values used."""

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def subset(self, idx: np.ndarray) -> LabelledCloud:
        """The points ``idx`` (indices or a mask)."""
        return LabelledCloud(
            xyz=self.xyz[idx],
            rgb=self.rgb[idx],
            views=self.views[idx],
            label=self.label[idx],
            confidence=self.confidence[idx],
            probs=self.probs[idx],
            relevancy={q: v[idx] for q, v in self.relevancy.items()},
            feature=self.feature[idx] if self.feature is not None else None,
            classes=self.classes,
            voxel_size=self.voxel_size,
            relaxed=self.relaxed,
        )


# -- surface points --------------------------------------------------------------------------------------


def depth_map(  # noqa: ANN001
    trainer,
    cams: Cameras,
    view: int,
    min_opacity: float,
    max_spread: float = 0.0,
    relative: bool = False,
    out_relative: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``[H*W]`` median depth of the rays of camera ``view`` of ``cams`` (the scene's, on the trainer's device,
    or those scaled to another image size) (:func:`render_median_depth`, ``relative`` and ``out_relative`` passed
    on), ``nan`` where not solid or, with ``max_spread``, where the ray's weight spreads more than that; how many
    solid pixels the spread took out (a device scalar: read once for all views); and ``[H*W]`` the rays'
    opacity."""
    scene = trainer.scene
    origins, dirs = image_rays(cams, view)
    cam = torch.full((len(dirs),), view, dtype=torch.long, device=trainer.device)
    near, far = trainer.ray_limits(cams, scene.near_far, cam, dirs)
    trainer.field.eval()
    depth, opacity, spread = render_median_depth(
        trainer.field,
        trainer.grid,
        origins,
        dirs,
        trainer.opts,
        near,
        far,
        trainer.cfg.render_chunk(trainer.device.type),
        relative,
        out_relative,
    )
    solid = opacity >= min_opacity
    if max_spread > 0:
        cosine = incidence_cosine(origins, dirs, depth, cams.height, cams.width).clamp_min(MIN_INCIDENCE)
        limit = spread_limit(origins + depth[:, None] * dirs, trainer.field.aabb, trainer.field.contraction, max_spread)
        crisp = spread * cosine <= limit
    else:
        crisp = torch.ones_like(solid)
    kept = torch.where(solid & crisp, depth, torch.full_like(depth, float("nan")))
    return kept, (solid & ~crisp).sum(), opacity


def spread_limit(points: Tensor, aabb: Tensor, contraction: str, max_spread: float) -> Tensor:
    """``[P]`` the largest spread of a crisp surface at ``points``: ``max_spread`` inside the region of interest;
    beyond it (with a contraction) the field's marching steps, and so the thinnest surface it can put there, grow
    as ``|x|^2`` (:func:`~ovseg3d.field.space.step_scale`), and the limit with them: the room around an unbounded
    capture's centre is not fog for being far."""
    return max_spread * step_scale(points, aabb, contraction)


TOLERANCE_POWER = 0.5
"""How the agreement tolerance grows with the field's step scale beyond the region of interest
(:func:`agreement_tolerance`)."""


def agreement_tolerance(points: Tensor, aabb: Tensor, contraction: str, tolerance: float) -> Tensor:
    """``[P]`` the relative depth difference under which another view agrees with ``points``: ``tolerance``
    inside the region of interest; beyond it (with a contraction) the field's steps, and so the depth error of the
    surface it puts there, grow as ``|x|^2`` while the point's distance from a camera inside grows about as
    ``|x|``, so the relative tolerance grows as ``|x|`` (the square root of
    :func:`~ovseg3d.field.space.step_scale`)."""
    return tolerance * step_scale(points, aabb, contraction).pow(TOLERANCE_POWER)


def incidence_cosine(origins: Tensor, dirs: Tensor, depth: Tensor, height: int, width: int) -> Tensor:
    """``[H*W]`` |cos| of the angle between each pixel's ray and the surface its depth map shows there, the
    normal from the pixel's neighbours along each image axis. Only where the surface is smooth: the three points
    along each axis lie on a line to within ``MAX_BEND`` (a plane's points along an image row or column do,
    however grazing; a depth edge's or a noisy, hazy depth map's do not), and 1 (no allowance) elsewhere, where a
    neighbour is missing (``nan`` depth), at the border and for a single row or column. Row-major ``[H*W]``
    rays and depths (along ``dirs``), as :func:`~ovseg3d.data.cameras.image_rays` gives them."""
    if height < 3 or width < 3:
        return torch.ones_like(depth)
    p = (origins + depth[:, None] * dirs).reshape(height, width, 3)
    centre = p[1:-1, 1:-1]

    def tangent(before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
        a, b = centre - before, after - centre
        bend = torch.linalg.cross(a, b).norm(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        return a + b, bend <= MAX_BEND  # nan (a missing point, a repeated one) compares False

    tx, straight_x = tangent(p[1:-1, :-2], p[1:-1, 2:])
    ty, straight_y = tangent(p[:-2, 1:-1], p[2:, 1:-1])
    normal = F.normalize(torch.linalg.cross(tx, ty), dim=-1)
    ray = F.normalize(dirs.reshape(height, width, 3)[1:-1, 1:-1], dim=-1)
    inner = torch.nan_to_num((normal * ray).sum(-1).abs(), nan=1.0)
    cosine = torch.ones((height, width), dtype=depth.dtype, device=depth.device)
    cosine[1:-1, 1:-1] = torch.where(straight_x & straight_y, inner, 1.0)
    return cosine.reshape(-1)


def auto_pixel_stride(  # noqa: ANN001
    trainer, cams: Cameras, views: list[int], voxel: float, min_opacity: float, max_seconds: float = 0.0, log=print
) -> int:
    """The largest pixel stride, up to 4, whose pixels are still at most half a fusion ``voxel`` wide at the
    median depth of the views' solid pixels, read from a small render of 4 of ``views`` (about ``PROBE_RAYS``
    rays; 1 if none is solid). With ``max_seconds``, the render's pace also sets a floor: the stride whose depth
    maps of every view are estimated to take at most that long (up to ``MAX_BUDGET_STRIDE``; one line says so)."""
    scale = min(1.0, max(1 / 8, math.sqrt(PROBE_RAYS / (4 * cams.width * cams.height))))
    probe = cams.scaled(scale)
    picks = views[:: max(1, len(views) // 4)][:4]
    start = time.perf_counter()
    depth = torch.cat([depth_map(trainer, probe, v, min_opacity)[0] for v in picks])
    per_ray = _lap(start, trainer.device) / (len(picks) * probe.width * probe.height)
    depth = depth[torch.isfinite(depth)]
    stride = 1
    if len(depth):
        pixel = float(depth.median()) / float(cams.fx[picks].mean())  # a full-size pixel's width there
        stride = max(1, min(4, int(voxel / (2 * pixel))))
    if max_seconds > 0:
        estimate = per_ray * len(views) * cams.width * cams.height * (1.0 + SEMANTIC_SHARE)
        needed = math.ceil(math.sqrt(estimate / max_seconds))
        if needed > stride:
            stride = min(needed, MAX_BUDGET_STRIDE)
            size = f"{round(cams.width / stride)}x{round(cams.height / stride)}"
            log(
                f"export: {len(views)} views at {cams.width}x{cams.height} would take about {estimate:.0f} s here "
                f"({per_ray * 1e6:.0f} us a ray): rendered at {size}, one pixel in {stride} along each axis, to keep "
                f"to --max-seconds {max_seconds:g} (--pixel-stride 1: every pixel; --max-seconds 0: no limit)"
            )
    return stride


def view_colours(image: Tensor, cams: Cameras) -> Tensor:
    """``[h*w, 3]`` float colours of an ``[H, W, 3]`` uint8 image at the size of ``cams`` (area mean)."""
    if image.shape[:2] == (cams.height, cams.width):
        return image.reshape(-1, 3).float()
    small = F.interpolate(image.permute(2, 0, 1)[None].float(), size=(cams.height, cams.width), mode="area")
    return small[0].permute(1, 2, 0).reshape(-1, 3)


def agreeing_views(
    points: Tensor, depths: dict[int, Tensor], cameras: Cameras, skip: int, tol: float | Tensor, batch: int = 0
) -> Tensor:
    """``[P]`` how many views (other than ``skip``) see a surface where ``points`` are: projected into the view,
    its depth map there is within ``tol`` (relative; a float or ``[P]``) of the point's distance. A view that sees something
    nearer (an occluder) or nothing gives no support.

    The views are taken in groups of about ``batch`` point-view pairs (0: 2^24 on a GPU; 2^22 on a CPU, whose
    temporaries then stay below the 32 MB that :func:`~ovseg3d.accel.configure_cpu_allocator` keeps in the
    heap), and no op has a data-dependent size: on a GPU a group is about 44 ops queued without
    a wait (the loop over single views with a mask each made the host wait for each of the V^2 pairs)."""
    support = torch.zeros(len(points), dtype=torch.long, device=points.device)
    others = [j for j in depths if j != skip]
    if not others or not len(points):
        return support
    ids = to_device(torch.tensor(others), points.device)
    group = max(1, (batch or (1 << 24 if points.is_cuda else 1 << 22)) // len(points))
    for s in range(0, len(others), group):
        cams = ids[s : s + group]
        u, v, front = project_points(cameras, cams, points)  # [G, P]
        col, row = torch.floor(u).long(), torch.floor(v).long()
        inside = front & (col >= 0) & (col < cameras.width) & (row >= 0) & (row < cameras.height)
        pixel = row.clamp(0, cameras.height - 1) * cameras.width + col.clamp(0, cameras.width - 1)
        seen = torch.stack([depths[j] for j in others[s : s + group]]).gather(1, pixel)  # [G, P]
        dist = (points[None] - cameras.c2w[cams.to(cameras.c2w.device), :, 3].to(points.device)[:, None]).norm(dim=-1)
        agree = (seen - dist).abs() <= tol * dist  # nan (no surface there) compares False
        support += (agree & inside).sum(0)
    return support


def fuse_points(
    points: Tensor,
    values: Tensor,
    view_ids: Tensor,
    origin: Tensor,
    voxel: float,
    min_views: int,
    footprint: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse points on a voxel grid: per voxel the mean position, the mean of ``values [N, K]`` and the number of
    distinct views.

    Voxels with fewer than ``min_views`` views, or without an occupied voxel among their 26 neighbours,
    are dropped. Returns ``xyz [V, 3]``, ``values [V, K]`` (float64), ``views [V]``.

    ``footprint`` (``[N]``, world units): the width of each point's pixel at its depth. A point dropped on the
    grid whose pixel is wider than half a voxel is fused again on grids of ``voxel * 2^k``, up to the one with
    two of its pixels across a cell, with the other points dropped at that level: a far wall's or a room's far
    side's pixels land one to a voxel with empty voxels between them, so no neighbour and no second view meet
    there on the fine grid, and the cloud would keep only the scene's centre. Near points are fused as before.
    """
    xyz, vals, views, kept = _fuse(points, values, view_ids, origin, voxel, min_views)
    if footprint is None or not len(points):
        return xyz, vals, views
    cap = torch.ceil(torch.log2((2 * footprint / voxel).clamp_min(1.0))).long().clamp(0, MAX_LEVEL)
    rest = ~kept & (cap > 0)
    parts = [(xyz, vals, views)]
    for k in range(1, int(cap.max()) + 1):
        at = torch.nonzero(rest & (cap >= k))[:, 0]
        if not len(at):
            break
        x, v, n, ok = _fuse(points[at], values[at], view_ids[at], origin, voxel * 2**k, min_views)
        parts.append((x, v, n))
        rest[at[ok]] = False
    return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]


def _fuse(
    points: Tensor, values: Tensor, view_ids: Tensor, origin: Tensor, voxel: float, min_views: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`fuse_points` on one grid, and ``[N]`` whether each point's voxel was kept."""
    if len(points) == 0:
        empty = torch.zeros(0, dtype=torch.bool, device=points.device)
        return points.new_zeros(0, 3), values.new_zeros(0, values.shape[1]).double(), view_ids.new_zeros(0), empty
    cell = torch.floor((points - origin) / voxel).long()
    cell -= cell.min(0).values - 1  # >= 1, so neighbours are >= 0
    dims = cell.max(0).values + 2
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    keys, inverse = torch.unique(key, return_inverse=True)
    n = len(keys)
    count = torch.bincount(inverse, minlength=n).double()[:, None]
    zeros = torch.zeros(n, 3 + values.shape[1], dtype=torch.float64, device=points.device)
    sums = zeros.index_add_(0, inverse, torch.cat([points, values.to(points.dtype)], 1).double()) / count
    n_views_total = int(view_ids.max()) + 1
    pairs = torch.unique(inverse * n_views_total + view_ids)
    views = torch.bincount(pairs // n_views_total, minlength=n)
    keep = views >= min_views
    # an occupied neighbour among the 26 around each kept voxel
    kept = keys[keep]
    grid = torch.meshgrid(*(torch.arange(-1, 2, device=points.device),) * 3, indexing="ij")
    offsets = torch.stack(grid, -1).reshape(-1, 3)
    offsets = offsets[(offsets != 0).any(-1)]
    shift = (offsets[:, 0] * dims[1] + offsets[:, 1]) * dims[2] + offsets[:, 2]
    probe = kept[:, None] + shift[None]
    pos = torch.searchsorted(kept, probe).clamp(max=max(len(kept) - 1, 0))
    has_neighbour = (kept[pos] == probe).any(1) if len(kept) else torch.zeros(0, dtype=torch.bool)
    idx = torch.nonzero(keep)[:, 0][has_neighbour]
    voxel_kept = torch.zeros(n, dtype=torch.bool, device=points.device)
    voxel_kept[idx] = True
    return sums[idx, :3].float(), sums[idx, 3:], views[idx], voxel_kept[inverse]


def view_used(scene: Scene, view: int, cams: Cameras) -> Tensor | None:
    """``[h*w]`` bool at the size of ``cams``: the pixels of ``view`` its mask keeps (a pixel of a smaller size
    where every pixel under it is kept), on the cameras' device; ``None`` without a mask."""
    mask = scene.masks.get(view)
    if mask is None:
        return None
    mask = mask.to(cams.c2w.device)
    if mask.shape != (cams.height, cams.width):
        share = F.interpolate(mask[None, None].float(), size=(cams.height, cams.width), mode="area")[0, 0]
        mask = share >= 1.0 - 1e-6
    return mask.reshape(-1)


def relaxed_options(opts: ExportOptions, opacity: Tensor) -> ExportOptions:
    """The thresholds of the second try of a faint field's export (see ``ExportOptions.relax_below``): the
    opacity of the median pixel of the views (at most ``opts.min_opacity``, at least 0.05), no spread limit,
    one agreeing view (which makes a point seen by two views: the fusion's voxels then need only one), four times
    the depth tolerance."""
    median = float(opacity.float().quantile(0.5)) if len(opacity) else opts.min_opacity
    return replace(
        opts,
        min_opacity=round(min(opts.min_opacity, max(0.05, median)), 3),
        max_spread=0.0,
        min_agreeing=min(opts.min_agreeing, 1),
        min_views=1,
        depth_tolerance=4 * opts.depth_tolerance,
        relax_below=0,
    )


def surface_points(
    trainer,
    opts: ExportOptions,
    distiller=None,
    log=print,  # noqa: ANN001
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, dict[str, float]]:
    """Fused surface points of the run's training views: ``xyz``, ``rgb`` (uint8), ``views``, with a
    ``distiller`` the mean rendered semantic latent of each point's pixels, and the options that were relaxed
    (name -> value used; empty when none was).

    Each solid pixel is lifted to its median depth and kept if at least ``opts.min_agreeing`` other views'
    depth maps agree (:func:`agreeing_views`); the kept points are fused by :func:`fuse_points` on a voxel
    grid of ``opts.spacing`` times the scene box diagonal. A pixel its view's mask leaves out is not lifted (its
    colour is the occluder's), though its depth still counts in the agreement (it is the field's). With fewer
    than ``opts.relax_below`` points, once more with :func:`relaxed_options` (one line says so).
    """
    views = trainer.scene.train_ids[:: max(1, opts.view_stride)]
    cams = trainer.scene.cameras.to(trainer.device)
    voxel = opts.spacing * trainer.diag
    stride = opts.pixel_stride or auto_pixel_stride(
        trainer, cams, views, voxel, opts.min_opacity, opts.max_seconds, log
    )
    if stride > 1:
        cams = cams.scaled(1 / stride)
    maps: dict[int, tuple[Tensor, Tensor]] | None = {} if opts.relax_below > 0 else None
    xyz, values, n_views, opacity = _lift_views(trainer, opts, cams, views, stride, distiller, log, keep=maps)
    changed: dict[str, float] = {}
    if len(xyz) < opts.relax_below:
        relaxed = relaxed_options(opts, opacity)
        log(
            f"{len(xyz)} points at the export's thresholds (a faint field: a short run?): made again with them "
            f"relaxed from this run's opacities: --min-opacity {opts.min_opacity:g} -> {relaxed.min_opacity:g} "
            f"(the views' median pixel), depth at the middle of the weight each ray holds, --max-spread "
            f"{opts.max_spread:g} -> 0, --min-agreeing {opts.min_agreeing} -> {relaxed.min_agreeing}, "
            f"--min-views {opts.min_views} -> 1, --depth-tolerance {opts.depth_tolerance:g} -> "
            f"{relaxed.depth_tolerance:g} (--relax-below 0: never)"
        )
        xyz, values, n_views, _ = _lift_views(trainer, relaxed, cams, views, stride, distiller, log, reuse=maps)
        changed = {k: v for k, v in vars(relaxed).items() if k != "relax_below" and v != getattr(opts, k)}
        changed["relative_depth"] = True
    rgb = values[:, :3].round().clamp(0, 255).to(torch.uint8)
    latent = values[:, 3:].float() if distiller is not None else None
    return xyz, rgb, n_views, latent, changed


def _lift_views(  # noqa: ANN001
    trainer,
    opts: ExportOptions,
    cams: Cameras,
    views: list[int],
    stride: int,
    distiller,
    log,
    keep: dict[int, tuple[Tensor, Tensor]] | None = None,
    reuse: dict[int, tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The body of :func:`surface_points` at one set of thresholds: fused ``xyz``, ``values`` (colour, then the
    latent), ``views``, and the opacity of every pixel rendered (for :func:`relaxed_options`). ``keep``: filled
    with each view's relative median depth and opacity (:func:`render_median_depth`); ``reuse``: such maps, read
    at ``opts``' opacity instead of rendering again (the relaxed pass, whose spread is not limited)."""
    scene = trainer.scene
    voxel = opts.spacing * trainer.diag
    depths, spread = {}, torch.zeros((), dtype=torch.long, device=trainer.device)
    opacities = []
    clock = {"depth": time.perf_counter()}
    for v in tqdm(views, desc="depth", unit="view", leave=False, disable=reuse is not None):
        if reuse is not None:
            relative_depth, opacity = reuse[v]
            depths[v] = torch.where(opacity >= opts.min_opacity, relative_depth, relative_depth.new_tensor(math.nan))
            opacities.append(opacity)
            continue
        chunks: list[Tensor] = []
        depths[v], dropped, opacity = depth_map(
            trainer, cams, v, opts.min_opacity, opts.max_spread, out_relative=chunks if keep is not None else None
        )
        if keep is not None:
            keep[v] = (torch.cat(chunks), opacity)
        spread += dropped
        opacities.append(opacity)
    pts, vals, ids, wide, pixels = [], [], [], [], torch.zeros((), dtype=torch.long, device=trainer.device)
    clock["agreement"], clock["semantics"] = 0.0, 0.0
    clock["depth"] = _lap(clock["depth"], trainer.device)
    for v in tqdm(views, desc="fuse", unit="view", leave=False):
        start = time.perf_counter()
        origins, dirs = image_rays(cams, v)
        solid = torch.isfinite(depths[v])
        used = view_used(scene, v, cams)
        if used is not None:
            solid = solid & used
        pixels += solid.sum()
        p = origins[solid] + depths[v][solid, None] * dirs[solid]
        tol = agreement_tolerance(p, trainer.field.aabb, trainer.field.contraction, opts.depth_tolerance)
        agree = agreeing_views(p, depths, cams, v, tol) >= opts.min_agreeing
        rays = torch.nonzero(solid)[:, 0][agree]
        value = view_colours(scene.images[v].to(trainer.device), cams)[rays]
        clock["agreement"] += _lap(start, trainer.device)
        start = time.perf_counter()
        if distiller is not None:
            value = torch.cat([value, pixel_latents(distiller, cams, v, origins[rays], dirs[rays], scene.near_far)], 1)
            clock["semantics"] += _lap(start, trainer.device)
        pts.append(p[agree])
        wide.append(depths[v][rays] / cams.fx[v])
        vals.append(value)
        ids.append(torch.full((len(rays),), v, dtype=torch.long, device=trainer.device))
    points = torch.cat(pts)
    origin = scene.aabb[:3].to(points.device)
    start = time.perf_counter()
    xyz, values, n_views = fuse_points(
        points, torch.cat(vals), torch.cat(ids), origin, voxel, opts.min_views, torch.cat(wide)
    )
    clock["fusion"] = _lap(start, trainer.device)
    n_pixels, n_spread = int(pixels), int(spread)
    size = f"{cams.width}x{cams.height}" + (f", one pixel in {stride} along each axis" if stride > 1 else "")
    log(
        f"{n_pixels} solid pixels of {len(views)} views at {size} ({n_spread} more spread their weight over more than "
        f"{opts.max_spread:g} of their depth), {len(points)} seen alike by {opts.min_agreeing}+ other views -> "
        f"{len(xyz)} points on a {voxel * 1000:.1f} mm grid"
    )
    if n_spread > n_pixels:
        log("most solid pixels were left out for their spread: the field is blurry; --max-spread 0 keeps them")
    n_rays = len(views) * cams.width * cams.height
    pace = (
        "the first pass's, read again"
        if reuse is not None
        else f"{n_rays / max(clock['depth'], 1e-9) / 1e3:.0f}k rays/s"
    )
    log(
        f"export's seconds: depth maps {clock['depth']:.1f} ({pace}), "
        f"agreement {clock['agreement']:.1f}, semantic field {clock['semantics']:.1f}, fusion {clock['fusion']:.1f}"
    )
    return xyz, values, n_views, torch.cat(opacities)


def _lap(start: float, device: torch.device) -> float:
    """Seconds since ``start`` once the device's queued work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def pixel_latents(distiller, cams: Cameras, view: int, origins: Tensor, dirs: Tensor, near_far) -> Tensor:  # noqa: ANN001
    """``[R, L]`` rendered semantic latents of rays of camera ``view`` (as ``ovseg3d render`` renders them)."""
    chunk = distiller.cfg.render_chunk(origins.device.type)
    out = [origins.new_zeros(0, distiller.cfg.latent_dim)]
    for s in range(0, len(origins), chunk):
        o, d = origins[s : s + chunk], dirs[s : s + chunk]
        cam = torch.full((len(o),), view, dtype=torch.long, device=o.device)
        out.append(distiller.render_latent(cams, cam, o, d, near_far).float())
    return torch.cat(out)


# -- semantics -------------------------------------------------------------------------------------------


@torch.no_grad()
def point_semantics(
    distiller,
    latent: Tensor,
    queries: list[str],
    text_encoder,
    keep_features: bool,
    chunk: int,  # noqa: ANN001
    text: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """Class probabilities ``[P, C]``, relevancy per query ``[P]`` and (optionally) unit CLIP features ``[P, D]``
    decoded from the points' semantic latents ``[P, L]``. ``text``: ``[C, D]`` the classes' embeddings (default:
    the scene's, from the teachers' cache)."""
    from ovseg3d.teachers.relevancy import CANONICAL_NEGATIVES, query_relevancy

    distiller.field.eval()
    text = distiller.space.text if text is None else text
    temperature = distiller.cfg.rda_field_temperature
    q_emb = neg = None
    if queries:
        q_emb = text_encoder.encode_text(queries).float().to(latent.device)
        neg = text_encoder.encode_text(list(CANONICAL_NEGATIVES)).float().to(latent.device)
    probs, rel, feats = [], {q: [] for q in queries}, []
    for s in range(0, len(latent), chunk):
        clip = F.normalize(distiller.field.decode(latent[s : s + chunk]).clip, dim=-1)
        probs.append(class_probabilities(clip, text, temperature) if len(text) else clip.new_zeros(len(clip), 0))
        for q, e in zip(queries, q_emb if q_emb is not None else []):
            rel[q].append(query_relevancy(clip, e, neg))
        if keep_features:
            feats.append(clip.half())
    empty = latent.new_zeros(0)
    return (
        torch.cat(probs) if probs else latent.new_zeros(0, len(text)),
        {q: torch.cat(v) if v else empty for q, v in rel.items()},
        (torch.cat(feats) if feats else latent.new_zeros(0, text.shape[-1]).half()) if keep_features else None,
    )


def extract_cloud(
    run: Path,
    opts: ExportOptions,
    device_name: str = "auto",
    log=print,  # noqa: ANN001
    classes: Sequence[str] = (),
) -> LabelledCloud:
    """The labelled point cloud of a run with a semantic field (see the module docstring). ``classes``: names to
    label it with, read from its CLIP feature field, for a run trained without any."""
    from ovseg3d.lift import load_semantics
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.teachers.extract import text_encoder
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, device_name)
    distiller = load_semantics(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    from ovseg3d.data.loader import parse_classes

    names, given = list(trainer.scene.classes), parse_classes(classes)
    if distiller is None:
        if opts.queries or opts.features or given:
            raise UsageError(
                f"{run} has no semantic field (trained with --teacher none): --query, --features and --classes need "
                "one (train with --teacher synthetic|clip); without them the cloud has positions and colours only"
            )
        log(f"{run} has no semantic field (trained with --teacher none): the cloud has positions and colours only")
        names = []
    if names and given and given != names:
        raise UsageError(
            f"{run} was trained with the classes {', '.join(names)}; --classes gives {', '.join(given)}: drop "
            "--classes (or train with them)"
        )
    named_here = bool(given) and not names  # classes read from the feature field: their text embeddings are needed
    if named_here:
        names = given
    xyz, rgb, n_views, latent, relaxed = surface_points(trainer, opts, distiller, log)
    if len(xyz) == 0:
        raise UsageError(
            f"{run}: the point cloud is empty (no pixel reached opacity {opts.min_opacity} and was seen alike by "
            f"{opts.min_agreeing}+ other views in {opts.min_views}+ views); lower --min-opacity, --min-agreeing or "
            "--min-views, or train longer"
        )
    encoder = text_encoder(trainer.cfg.teachers, trainer.device) if opts.queries or named_here else None
    text = encoder.encode_text(names).float().to(trainer.device) if named_here else None
    if distiller is None:
        probs, rel, feats = torch.zeros(len(xyz), 0), {}, None
    else:
        probs, rel, feats = point_semantics(distiller, latent, opts.queries, encoder, opts.features, opts.chunk, text)
    if probs.shape[1]:
        confidence, label = probs.max(-1)
    else:
        confidence, label = torch.zeros(len(xyz)), torch.full((len(xyz),), -1)
    return LabelledCloud(
        xyz=xyz.cpu().numpy().astype(np.float32),
        rgb=rgb.cpu().numpy(),
        views=n_views.cpu().numpy().astype(np.int32),
        label=label.cpu().numpy().astype(np.int32),
        confidence=confidence.cpu().numpy().astype(np.float32),
        probs=probs.cpu().numpy().astype(np.float16),
        relevancy={q: v.cpu().numpy().astype(np.float32) for q, v in rel.items()},
        feature=feats.cpu().numpy() if feats is not None else None,
        classes=names,
        voxel_size=opts.spacing * trainer.diag,
        relaxed=relaxed,
    )


# -- files -----------------------------------------------------------------------------------------------


EXPORT_FILES = ("points.ply", "points.npz", "points.json")
_OLD_STRAYS = ("points.tmp",)  # what the writers before the folder swap left behind on a failure


def _ply_probs(cloud: LabelledCloud) -> bool:
    """Whether the PLY gets one ``prob_<i>`` column per class (it does whenever the cloud has them)."""
    return cloud.probs.ndim == 2 and cloud.probs.shape[1] == len(cloud.classes) > 0


def ply_dtype(cloud: LabelledCloud) -> np.dtype:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    fields += [("label", "<i4"), ("confidence", "<f4"), ("views", "<i4")]
    if _ply_probs(cloud):
        fields += [(f"prob_{i}", "<f4") for i in range(len(cloud.classes))]
    fields += [(f"rel_{query_slug(q)}", "<f4") for q in cloud.relevancy]
    return np.dtype(fields)


_PLY_TYPES = {"<f4": "float", "u1": "uchar", "<i4": "int", "|u1": "uchar"}


def _header_text(text: str) -> str:
    """``text`` safe on one ASCII header line: backslashes, line breaks and non-ASCII characters escaped
    (:func:`_unescape` undoes it)."""
    return text.encode("unicode_escape").decode("ascii")


def _unescape(text: str) -> str:
    return text.encode("latin-1", "replace").decode("unicode_escape") if "\\" in text else text


def write_ply(path: Path, cloud: LabelledCloud) -> None:
    """Binary little-endian PLY with one ``vertex`` element (Open3D, MeshLab, CloudCompare read it), whole or
    not at all (written beside ``path``, then renamed over it).

    Besides ``x y z red green blue label confidence views`` and the ``rel_<query>`` columns it carries what
    :func:`read_ply` needs to give ``ovseg3d detect`` the same cloud as ``points.npz``: the per-class
    probabilities (``prob_<i>``, class ``i`` of the ``comment class i NAME`` lines; float16 values stored as
    float), the fusion's voxel edge (``comment voxel_size``) and the query texts (``comment query SLUG TEXT``).
    Only the CLIP features are left to the ``.npz``."""
    from ovseg3d.atomic import replacing

    dtype = ply_dtype(cloud)
    data = np.empty(len(cloud), dtype=dtype)
    data["x"], data["y"], data["z"] = cloud.xyz.T
    data["red"], data["green"], data["blue"] = cloud.rgb.T
    data["label"], data["confidence"], data["views"] = cloud.label, cloud.confidence, cloud.views
    if _ply_probs(cloud):
        for i in range(len(cloud.classes)):
            data[f"prob_{i}"] = cloud.probs[:, i]
    for q, values in cloud.relevancy.items():
        data[f"rel_{query_slug(q)}"] = values
    header = ["ply", "format binary_little_endian 1.0", f"comment ovseg3d {__version__}"]
    header += [f"comment class {i} {_header_text(name)}" for i, name in enumerate(cloud.classes)]
    header += [f"comment query {query_slug(q)} {_header_text(q)}" for q in cloud.relevancy]
    if cloud.voxel_size > 0:
        header += [f"comment voxel_size {float(cloud.voxel_size)!r}"]
    header += [f"element vertex {len(cloud)}"]
    header += [f"property {_PLY_TYPES[dtype.fields[n][0].str]} {n}" for n in dtype.names]
    header += ["end_header"]
    with replacing(path) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())


_PLY_NUMPY = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def _label_probs(label: np.ndarray, conf: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class probabilities of a PLY without ``prob_<i>`` columns (another tool's, or an export made before
    the PLY carried them): the label's confidence, the rest spread evenly over the other classes (the most
    even distribution with that label and confidence, so a weak label is not read as background)."""
    probs = np.zeros((len(label), n_classes), np.float32)
    ok = (label >= 0) & (label < n_classes)
    if n_classes > 1:
        probs[ok] = ((1.0 - conf[ok]) / (n_classes - 1)).clip(0, 1)[:, None]
    probs[np.flatnonzero(ok), label[ok]] = conf[ok]
    return probs.astype(np.float16)


def read_ply(path: Path) -> LabelledCloud:
    """Any PLY point cloud (binary little-endian or ascii; the ``vertex`` element first): ``x y z``, and
    ``red green blue``, ``label`` (class names from ``comment class I NAME`` lines, as :func:`write_ply`
    writes them), ``confidence``, ``prob_<i>``, ``rel_<query>`` and ``comment voxel_size`` where present.
    Missing colours are grey, missing labels -1; without ``prob_<i>`` columns the probabilities are made up
    from the label and its confidence (:func:`_label_probs`)."""
    try:
        with open(path, "rb") as f:
            if f.readline().strip() != b"ply":
                raise UsageError("no 'ply' magic line")
            fmt, count, props, classes, in_vertex, first = "", -1, [], {}, False, True
            queries: dict[str, str] = {}
            voxel_size = 0.0
            while (line := f.readline().decode("ascii", "replace").strip()) != "end_header":
                if not line and f.peek(1) == b"":
                    raise UsageError("no end_header")
                words = line.split()
                if words[:1] == ["format"]:
                    fmt = words[1]
                elif words[:1] == ["comment"] and words[1:2] == ["class"] and len(words) >= 4:
                    classes[int(words[2])] = _unescape(line.split(maxsplit=3)[3])
                elif words[:1] == ["comment"] and words[1:2] == ["query"] and len(words) >= 4:
                    queries[words[2]] = _unescape(line.split(maxsplit=3)[3])
                elif words[:1] == ["comment"] and words[1:2] == ["voxel_size"] and len(words) == 3:
                    voxel_size = float(words[2])
                elif words[:1] == ["element"]:
                    in_vertex = words[1] == "vertex" and first
                    if in_vertex:
                        count = int(words[2])
                    elif first:
                        raise UsageError("the first element is not 'vertex'")
                    first = False
                elif words[:1] == ["property"] and in_vertex:
                    if words[1] == "list":
                        raise UsageError("list properties on vertices")
                    props.append((words[2], "<" + _PLY_NUMPY[words[1]]))
            if count < 0 or not {"x", "y", "z"} <= {n for n, _ in props}:
                raise UsageError("no vertex element with x, y, z")
            dtype = np.dtype(props)
            if fmt == "binary_little_endian":
                data = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype, count=count)
            elif fmt == "ascii":
                rows = np.loadtxt(f, max_rows=count, ndmin=2)
                data = np.empty(count, dtype)
                for i, name in enumerate(dtype.names):
                    data[name] = rows[:, i]
            else:
                raise UsageError(f"unsupported format {fmt!r} (binary_little_endian or ascii)")
    except UsageError as exc:
        raise UsageError(f"{path}: not a readable PLY point cloud ({exc})") from None
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(f"{path}: not a readable PLY point cloud ({reason}); write it again") from None
    names = set(dtype.names)
    n = len(data)
    rgb = (
        np.stack([data[c] for c in ("red", "green", "blue")], 1).astype(np.uint8)
        if {"red", "green", "blue"} <= names
        else np.full((n, 3), 128, np.uint8)
    )
    label = data["label"].astype(np.int32) if "label" in names else np.full(n, -1, np.int32)
    n_prob = 0
    while f"prob_{n_prob}" in names:
        n_prob += 1
    n_classes = max(max(classes, default=-1) + 1, n_prob)
    names_list = [classes.get(i, f"class {i}") for i in range(n_classes)]
    if n_classes == 0 and (label >= 0).any():
        names_list = [f"class {i}" for i in range(int(label.max()) + 1)]
    conf = data["confidence"].astype(np.float32) if "confidence" in names else (label >= 0).astype(np.float32)
    if n_prob and n_prob == len(names_list):
        probs = np.stack([data[f"prob_{i}"] for i in range(n_prob)], 1).astype(np.float16)
    else:
        probs = _label_probs(label, conf, len(names_list))
    relevancy = {
        queries.get(name[4:], name[4:]): data[name].astype(np.float32) for name in dtype.names if name[:4] == "rel_"
    }
    return LabelledCloud(
        xyz=np.stack([data["x"], data["y"], data["z"]], 1).astype(np.float32),
        rgb=rgb,
        views=data["views"].astype(np.int32) if "views" in names else np.zeros(n, np.int32),
        label=label,
        confidence=conf,
        probs=probs,
        relevancy=relevancy,
        feature=None,
        classes=names_list,
        voxel_size=voxel_size,
    )


def _carried_over(out_dir: Path) -> list[Path]:
    """The files of an existing ``out_dir`` that are not the export's own (a ``detections.json``, notes): they
    are carried into the new export folder. A folder with sub-folders is not an export and is refused, so
    that ``--output`` pointed at the wrong place replaces nothing."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is a file, not a folder; give --output a new or empty folder")
    extra = []
    for p in sorted(out_dir.iterdir()):
        if p.name in EXPORT_FILES or p.name in _OLD_STRAYS:
            continue
        if p.is_dir() or not p.is_file():
            raise UsageError(f"{out_dir}: holds {p.name}/, which no export writes; give --output a new or empty folder")
        extra.append(p)
    return extra


def write_export(cloud: LabelledCloud, out_dir: Path, run: Path, opts: ExportOptions) -> list[Path]:
    """Write ``points.ply``, ``points.npz`` and ``points.json`` to ``out_dir``, together: they are written into
    a hidden sibling folder (``.export.tmp-PID``) that then takes the place of ``out_dir``
    (:func:`ovseg3d.atomic.swapped_folder`), so a kill or a full disk leaves the previous export whole, or
    none, and no temporary file. Other files of an existing ``out_dir`` are carried over."""
    from ovseg3d.atomic import swapped_folder

    out_dir = Path(out_dir)
    extra = _carried_over(out_dir)
    names = dict(zip(("ply", "npz", "json"), EXPORT_FILES))
    with swapped_folder(out_dir) as tmp:
        for p in extra:
            shutil.copy2(p, tmp / p.name)
        write_ply(tmp / names["ply"], cloud)
        arrays = {
            "xyz": cloud.xyz,
            "rgb": cloud.rgb,
            "views": cloud.views,
            "label": cloud.label,
            "confidence": cloud.confidence,
            "probs": cloud.probs,
            "classes": np.array(cloud.classes, dtype=str),
            "voxel_size": np.float64(cloud.voxel_size),
            "queries": np.array(list(cloud.relevancy), dtype=str),
        }
        if cloud.relevancy:
            arrays["relevancy"] = np.stack(list(cloud.relevancy.values()), 1)
        if cloud.feature is not None:
            arrays["feature"] = cloud.feature
        with open(tmp / names["npz"], "wb") as f:
            # stored, not deflated: float16 CLIP features do not compress (a phone video's 10k points: 9 % smaller
            # in 0.53 s against 0.015 s stored; the GPU's 47k points would spend 2.4 s of a 15 s export on it)
            np.savez(f, **arrays)
        palette = (np.asarray(label_palette(len(cloud.classes))) * 255).round().astype(int).tolist()
        info = {
            "ovseg3d_version": __version__,
            "export_format": EXPORT_FORMAT,
            "run": str(run.resolve()),
            "frame": "world frame of the input poses",
            "n_points": len(cloud),
            "classes": cloud.classes,
            "label_colors": palette,
            "queries": {q: f"rel_{query_slug(q)}" for q in cloud.relevancy},
            "voxel_size": cloud.voxel_size,
            "options": {k: v for k, v in vars(opts).items() if k != "chunk"},
            "relaxed": cloud.relaxed,
            "files": {"ply": names["ply"], "npz": names["npz"]},
            "label_counts": {
                name: int((cloud.label == i).sum()) for i, name in enumerate(cloud.classes) if (cloud.label == i).any()
            },
        }
        (tmp / names["json"]).write_text(json.dumps(info, indent=2) + "\n")
    return [out_dir / name for name in EXPORT_FILES]


def recorded_options(out_dir: Path) -> ExportOptions:
    """The options an export folder's ``points.json`` says it was made with (the defaults for what it does not
    record, or for a folder without a readable record), so that it can be made again alike (the viewer's
    features on request)."""
    try:
        info = json.loads((Path(out_dir) / EXPORT_FILES[2]).read_text())
    except (OSError, ValueError):
        return ExportOptions()
    given = info.get("options") if isinstance(info, dict) else None
    if not isinstance(given, dict):
        return ExportOptions()
    known = {f.name for f in fields(ExportOptions)}
    return ExportOptions(**{k: v for k, v in given.items() if k in known})


_PER_POINT = ("rgb", "views", "label", "confidence", "probs", "relevancy", "feature")


def load_export(path: Path) -> LabelledCloud:
    """Read back ``points.npz`` (or the export folder holding it). A damaged or truncated file is one line."""
    npz = path / "points.npz" if path.is_dir() else path
    if not npz.exists():
        raise MissingFileError(f"{npz}: no exported point cloud here (run: ovseg3d export RUN)")
    again = "export it again (ovseg3d export RUN)"
    try:
        with np.load(npz) as d:
            arrays = {k: d[k] for k in d.files}
        queries = [str(q) for q in arrays["queries"]]
        cloud = LabelledCloud(
            xyz=arrays["xyz"],
            rgb=arrays["rgb"],
            views=arrays["views"],
            label=arrays["label"],
            confidence=arrays["confidence"],
            probs=arrays["probs"],
            relevancy={q: arrays["relevancy"][:, i] for i, q in enumerate(queries)} if queries else {},
            feature=arrays.get("feature"),
            classes=[str(c) for c in arrays["classes"]],
            voxel_size=float(arrays["voxel_size"]),
        )
    except KeyError as exc:
        raise UsageError(f"{npz}: not an ovseg3d point cloud (no {exc} array); {again}") from None
    except (OSError, ValueError, EOFError, IndexError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UsageError(f"{npz}: unreadable, truncated or damaged ({reason}); {again}") from None
    n = len(cloud.xyz)
    short = [k for k in _PER_POINT if k in arrays and len(arrays[k]) != n]
    if cloud.xyz.ndim != 2 or cloud.xyz.shape[1] != 3 or short:
        what = f"{short[0]} has {len(arrays[short[0]])} rows for {n} points" if short else "xyz is not [P, 3]"
        raise UsageError(f"{npz}: damaged ({what}); {again}")
    return cloud
