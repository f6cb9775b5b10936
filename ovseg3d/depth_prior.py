"""Sparse depth from the capture's own structure-from-motion points (DS-NeRF, URF, nerfstudio's depth-nerfacto).

Where a scene comes from a COLMAP model, each keypoint ``(u, v)`` of a training image that observes a 3D point ``X``
says that the ray from the camera centre ``C`` through that pixel ends at ``X``, at the distance ``|X - C|`` along
the unit ray (whatever the lens: ``X`` lies on the ray through its observed pixel up to the reprojection error).
:func:`depth_prior` gathers these observations once per scene (:class:`DepthPrior`, flat over the training
views); a training step draws some (:func:`sample`), renders their rays (:func:`prior_rays`) as the colour rays
are rendered, with samples across each point's band (:func:`band_samples`), and adds :func:`prior_loss` (the
weighted mean of :func:`termination_loss` and :func:`empty_space_loss` on the packed samples). A model in another
frame than the scene's poses is aligned onto the scene's cameras first (:func:`depth_prior`).

Which observations are kept: points seen by at least ``min_track`` images (two views triangulate a point weakly)
with a mean reprojection error of at most ``max_error`` pixels, observed inside the training image, on a pixel that
the scene's masks let training use, in front of the camera, and not so weakly triangulated that the depth's
uncertainty exceeds ``max_sigma`` of the depth.

Uncertainty ``sigma`` (world units, along the ray). A point's reprojection error ``e`` pixels (at least
``ERROR_FLOOR_PX``, the keypoints' own localisation noise) is an angular error ``e / f`` of each of its rays
(``f``: the observing camera's focal length in the model's pixels). Two rays ``alpha`` apart that meet at depth
``d`` fix the point along one of them to about ``d (e / f) / sin(alpha)`` (the triangulation error; e.g. Hartley &
Zisserman §12.6). ``alpha`` is the track's spread: ``2 arccos |mean of the unit vectors from X to its cameras|``
(exact for two views, the spread of the directions for more), over every image of the model that sees the point.
So ``sigma = d * max(sigma_floor, (e / f) / sin(min(alpha, 90°)))`` with a floor of 1 % of the depth.

Weight in (0, 1]: ``min(track_length, FULL_TRACK) / FULL_TRACK / (1 + e)``: more views make a point surer, a larger
reprojection error less (DS-NeRF weighs its points by their reprojection error, URF by their track).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ovseg3d.data import colmap
from ovseg3d.data.cameras import Cameras, pixel_rays
from ovseg3d.data.scene import Scene, SceneError
from ovseg3d.metrics import similarity_alignment
from ovseg3d.render.volume import RaySamples

MIN_TRACK = 3
MAX_ERROR_PX = 2.0
ERROR_FLOOR_PX = 0.5
SIGMA_FLOOR = 0.01
MAX_SIGMA = 0.2
FULL_TRACK = 10
EMPTY_SIGMAS = 3.0
"""The empty-space term counts the weight in front of ``depth - EMPTY_SIGMAS * sigma``."""
TRANSPARENT_FLOOR = 0.05
"""``eps`` of :func:`termination_loss`: a transparent ray costs ``log(21)``, about 3; the loss's gradient is at most
``1 / eps``."""
MAX_ALIGN_SHARE = 0.01
"""A model in another frame than the scene's is used when its camera centres land within this share of their
extent of the scene's (RMS, after the best similarity) ..."""
MAX_ALIGN_DEG = 1.0
"""... and its cameras' viewing directions within this many degrees of the scene's (median)."""
BAND_SIGMAS = 2.0
""":func:`band_samples` covers the point's depth to this many sigmas on either side."""


@dataclass
class DepthPrior:
    """Observations of structure-from-motion points by the training views, flat over all of them.

    Attributes:
        cam: ``[M]`` long, the training view (position in ``scene.train_ids``, as the trainer's cameras).
        u, v: ``[M]`` float32 continuous pixel coordinates at the training resolution, as
            :func:`~ovseg3d.data.cameras.project_points` gives them (the top-left pixel's centre is ``(0.5, 0.5)``;
            :func:`~ovseg3d.data.cameras.pixel_rays` takes ``u - 0.5, v - 0.5``: :func:`prior_rays`).
        depth: ``[M]`` float32 distance along the unit ray from the camera centre to the point (world units of
            ``scene.cameras``).
        sigma: ``[M]`` float32 uncertainty of ``depth`` (world units, see the module's docstring).
        weight: ``[M]`` float32 in (0, 1].
        xyz: ``[M, 3]`` float32 the observed point (e.g. to drop those outside a bounded field's box).
    """

    cam: Tensor
    u: Tensor
    v: Tensor
    depth: Tensor
    sigma: Tensor
    weight: Tensor
    xyz: Tensor

    def __len__(self) -> int:
        return int(self.cam.shape[0])

    def to(self, device: torch.device | str) -> DepthPrior:
        return DepthPrior(*(getattr(self, f.name).to(device) for f in fields(self)))

    def select(self, keep: Tensor) -> DepthPrior:
        """The observations at ``keep`` (a bool mask ``[M]`` or indices)."""
        return DepthPrior(*(getattr(self, f.name)[keep] for f in fields(self)))


def _model_poses(images: list[colmap.ColmapImage]) -> tuple[np.ndarray, np.ndarray]:
    """``[I, 3, 3]`` world-to-camera rotations (OpenCV axes) and ``[I, 3]`` camera centres ``-Rᵀ t``, float64."""
    rot = colmap.qvec_to_rotmat(np.stack([im.qvec for im in images]))
    tvec = np.stack([im.tvec for im in images])
    return rot, -np.einsum("nji,nj->ni", rot, tvec)


def _image_names(scene: Scene) -> list[str]:
    """The COLMAP name (path under ``images/``, ``/``-separated) of each view of the scene."""
    folder = scene.root / "images"
    names = []
    for path in scene.image_paths:
        try:
            names.append(Path(path).relative_to(folder).as_posix())
        except ValueError:
            names.append(Path(path).name)
    return names


def _alignment(
    folder: Path, rot: np.ndarray, centres: np.ndarray, cams: Cameras, views: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """The similarity ``(s, R, t)`` from the model's frame to the scene's, fitted on the camera centres of the views
    both have (``rot``: their world-to-camera rotations, ``centres``: their centres, in the model's frame;
    ``views``: their scene views); ``None`` when the frames are already the same."""
    scene_c = cams.centers.double().numpy()[views]
    if np.abs(scene_c - centres).max() <= 1e-4 * (1.0 + np.abs(centres).max()):
        return None  # the scene was loaded from this model
    extent = float(np.linalg.norm(scene_c.max(0) - scene_c.min(0)))
    s, r, t = similarity_alignment(centres, scene_c)
    moved = s * centres @ r.T + t
    share = float(np.sqrt(((moved - scene_c) ** 2).sum(1).mean())) / max(extent, 1e-12)
    forward = -cams.c2w[views][:, :3, 2].double().numpy()  # the scene's viewing axes (OpenGL -z) in its world
    turned = rot[:, 2] @ r.T  # the model's, turned into the scene's frame
    cos = (forward * turned).sum(1) / np.maximum(np.linalg.norm(forward, axis=1), 1e-12)
    angle = float(np.degrees(np.median(np.arccos(np.clip(cos, -1.0, 1.0)))))
    if extent <= 0 or share > MAX_ALIGN_SHARE or angle > MAX_ALIGN_DEG:
        raise SceneError(
            f"{folder}: the scene's cameras are not this model's (after the best similarity their centres are "
            f"{100 * share:.1f} % of their extent apart and their views {angle:.1f} deg): give the model these poses "
            "came from"
        )
    return s, r, t


def depth_prior(
    scene: Scene,
    model_dir: str | Path | None = None,
    min_track: int = MIN_TRACK,
    max_error: float = MAX_ERROR_PX,
    sigma_floor: float = SIGMA_FLOOR,
    max_sigma: float = MAX_SIGMA,
) -> DepthPrior | None:
    """The depth prior of a scene from a COLMAP model's points, on the CPU; ``None`` when no model is found, it has
    no points, it shares fewer than 3 images with the scene, or no observation passes the filters (module
    docstring).

    The model may be in another frame than the scene's poses: a ``transforms.json`` written from it (instant-ngp's
    ``colmap2nerf.py``, nerfstudio's ``ns-process-data``, which keeps it in ``colmap/sparse/0``), or LLFF's
    ``poses_bounds.npy`` re-centred and scaled. Its points are then brought into the scene's frame by the similarity
    that best maps its camera centres onto the scene's, over the images both name (Umeyama); the cameras must agree
    after it (:data:`MAX_ALIGN_SHARE` of their extent, :data:`MAX_ALIGN_DEG` of viewing direction).

    Args:
        scene: from :func:`~ovseg3d.data.loader.load_scene`.
        model_dir: the model to read (the one the scene was loaded from, ``load_scene(colmap_model=...)``, or one
            for a scene in another format); else the one :func:`~ovseg3d.data.colmap.find_model` finds under
            ``scene.root``.

    Raises:
        SceneError: the model's cameras are not the scene's (another capture, or poses moved since it was made).
    """
    folder = Path(model_dir) if model_dir is not None else colmap.find_model(scene.root)
    if folder is None:
        return None
    model = colmap.read_model(folder, observations=True)
    if not len(model.points):
        return None
    images = list(model.images.values())
    assert model.point_ids is not None

    # the scene's training views among the model's images
    view_of = {name: i for i, name in enumerate(_image_names(scene))}
    train_pos = {view: j for j, view in enumerate(scene.train_ids)}
    image_view = np.array([view_of.get(im.name, view_of.get(Path(im.name).name, -1)) for im in images])
    image_train = np.array([train_pos.get(int(v), -1) for v in image_view])
    cams = scene.cameras
    rot, centres = _model_poses(images)
    points = model.points
    seen = image_view >= 0
    if seen.sum() < 3:
        return None
    sim = _alignment(folder, rot[seen], centres[seen], cams, image_view[seen])
    if sim is not None:  # into the scene's frame: X' = s R X + t, world-to-camera rotations R_c Rᵀ
        s, r, t = sim
        points = s * points @ r.T + t
        centres = s * centres @ r.T + t
        rot = rot @ r.T

    # every observation of a point in the model: image (row of `images`), keypoint, point (row of model.points)
    counts = np.array([len(im.point3D_ids) for im in images])  # type: ignore[arg-type]
    obs_image = np.repeat(np.arange(len(images)), counts)
    xys = np.concatenate([im.xys for im in images]).reshape(-1, 2)  # type: ignore[misc]
    pids = np.concatenate([im.point3D_ids for im in images])  # type: ignore[misc]
    order = np.argsort(model.point_ids, kind="stable")
    sorted_ids = model.point_ids[order]
    at = np.minimum(np.searchsorted(sorted_ids, pids), len(sorted_ids) - 1)
    found = (pids >= 0) & (sorted_ids[at] == pids)
    obs_image, xys, point = obs_image[found], xys[found], order[at[found]]

    # geometry in the scene's frame, float64
    to_point = points[point] - centres[obs_image]  # [K, 3] from the camera to the point
    depth = np.linalg.norm(to_point, axis=1)
    ray = -to_point / np.maximum(depth, 1e-300)[:, None]  # from the point to its camera
    n_pts = len(points)
    mean = np.stack([np.bincount(point, ray[:, k], n_pts) for k in range(3)], axis=1)
    mean /= np.maximum(np.bincount(point, minlength=n_pts), 1)[:, None]
    spread = 2.0 * np.arccos(np.clip(np.linalg.norm(mean, axis=1), 0.0, 1.0))  # [P] triangulation angle
    sin_spread = np.sin(np.minimum(spread, 0.5 * math.pi))

    # intrinsics of each model image: its camera in the model's pixels, the scene's view at training size
    fx_m = np.zeros(len(images))
    fy_m = np.zeros(len(images))
    for i, im in enumerate(images):
        fx_m[i], fy_m[i] = colmap.lens_of(model.cameras[im.camera_id])[:2]
    safe_view = np.maximum(image_view, 0)
    sx = cams.fx.double().numpy()[safe_view] / fx_m  # the loader's scale, model pixels -> training pixels
    sy = cams.fy.double().numpy()[safe_view] / fy_m
    u = xys[:, 0] * sx[obs_image]
    v = xys[:, 1] * sy[obs_image]

    err = model.errors[point]
    track = model.track_lengths[point]
    focal = 0.5 * (fx_m + fy_m)[obs_image]
    share = np.maximum(np.maximum(err, ERROR_FLOOR_PX) / focal / np.maximum(sin_spread[point], 1e-12), sigma_floor)
    ahead = np.einsum("ki,ki->k", rot[obs_image, 2], to_point)  # along the camera's viewing axis (OpenCV +z)

    keep = (image_train[obs_image] >= 0) & (track >= min_track) & (err >= 0) & (err <= max_error)
    keep &= (u >= 0) & (u < cams.width) & (v >= 0) & (v < cams.height)
    keep &= (ahead > 0) & (depth > 0) & (share <= max_sigma)
    view = image_view[obs_image]
    for vw, mask in scene.masks.items():  # pixels the scene's masks leave out of training
        here = np.flatnonzero(keep & (view == vw))
        if len(here):
            row = np.minimum(v[here].astype(np.int64), cams.height - 1)
            col = np.minimum(u[here].astype(np.int64), cams.width - 1)
            keep[here] = mask.numpy()[row, col]
    if not keep.any():
        return None
    idx = np.flatnonzero(keep)
    d = depth[idx]

    def f32(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    return DepthPrior(
        cam=torch.from_numpy(image_train[obs_image[idx]].astype(np.int64)),
        u=f32(u[idx]),
        v=f32(v[idx]),
        depth=f32(d),
        sigma=f32(d * share[idx]),
        weight=f32(np.minimum(track[idx], FULL_TRACK) / FULL_TRACK / (1.0 + err[idx])),
        xyz=f32(points[point[idx]]),
    )


def sample(prior: DepthPrior, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``[n]`` long indices of observations drawn uniformly (with replacement) on the prior's device; the
    observations' weights enter the loss (:func:`prior_loss`), not the draw."""
    return torch.randint(0, len(prior), (n,), device=prior.cam.device, generator=generator)


def prior_rays(prior: DepthPrior, cameras: Cameras, index: Tensor) -> tuple[Tensor, Tensor]:
    """Origins and unit directions ``[n, 3]`` of the rays through observations ``index``. ``cameras``: the training
    views in ``scene.train_ids`` order (the trainer's ``scene.cameras.subset(scene.train_ids)``)."""
    return pixel_rays(cameras, prior.cam[index], prior.u[index] - 0.5, prior.v[index] - 0.5)


def _per_ray(ray_indices: Tensor, n_rays: int, depth: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each sample's ray (0 for samples of rays ``>= n_rays``), whether it counts, and its ray's depth and sigma."""
    counts = ray_indices < n_rays
    rays = torch.where(counts, ray_indices, torch.zeros_like(ray_indices))
    return rays, counts, depth[rays], sigma[rays]


def termination_loss(
    weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, depth: Tensor, sigma: Tensor
) -> Tensor:
    """``[R]`` per ray: how little of its compositing weight lies at the observed depth, 0 when all of it lies
    within ``sigma`` of it.

    With ``z_i = gap_i / sigma`` (``gap_i``: distance from sample ``i``'s interval ``[t_start, t_end]`` to the
    depth ``d``, 0 when the interval holds ``d``, so intervals longer than ``sigma`` still can be on the point), the
    weight at the point is ``m = sum_i w_i k(z_i)`` with ``k(z) = exp(-max(z - 1, 0)^2 / 2)`` (1 in the band, a
    Gaussian edge outside it), and::

        L = log((1 + eps) / (m + eps)),   eps = TRANSPARENT_FLOOR

    a cross-entropy towards all the weight at the point, as DS-NeRF's. The weight may leave the point only by lying
    elsewhere, and a transparent ray (``m = 0``, the most it can cost: ``log((1 + eps) / eps)``) is no better than
    one that stops far from its point. A loss that charged weight off the point by its distance, with a bounded
    charge for missing weight, preferred transparency to a blurred surface: on mip-NeRF 360's bonsai it emptied
    the occupancy grid along a fifth of the keypoints' rays (docs/benchmarks.md). Samples of rays ``>= R``
    (``R = len(depth)``: the colour rays after the prior's in one batch) are left out. O(S), differentiable in
    ``weights``.
    """
    n = depth.shape[0]
    if n == 0:
        return weights.new_zeros(0)
    rays, counts, d, s = _per_ray(ray_indices, n, depth, sigma)
    gap = torch.clamp(torch.maximum(t_starts - d, d - t_ends), min=0.0)
    z = gap / s
    at = weights * counts * torch.exp(-0.5 * torch.relu(z - 1.0).square())
    mass = weights.new_zeros(n).index_add(0, rays, at)
    eps = TRANSPARENT_FLOOR
    return torch.log((1.0 + eps) / (mass.clamp(max=1.0) + eps))


def band_samples(samples: RaySamples, depth: Tensor, sigma: Tensor, n: int) -> RaySamples:
    """``samples`` with the band around each prior ray's point sampled for sure: the first ``len(depth)`` rays'
    samples that overlap ``[d - BAND_SIGMAS * sigma, d + BAND_SIGMAS * sigma]`` are replaced by ``n`` equal
    intervals across it (sorted by ray, then distance, as packed samples are). Without them a ray whose point
    lies in cells the occupancy grid has skipped has no sample there, and its loss cannot draw density to the
    point; ``n = 0`` leaves ``samples`` as they are."""
    k = depth.shape[0]
    if n <= 0 or k == 0:
        return samples
    lo = depth - BAND_SIGMAS * sigma
    hi = depth + BAND_SIGMAS * sigma
    ri = samples.ray_indices
    prior = ri < k
    r = torch.where(prior, ri, torch.zeros_like(ri))
    overlaps = prior & (samples.t_ends > lo[r]) & (samples.t_starts < hi[r])
    kept = samples.select(~overlaps)
    edges = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0.0, 1.0, n + 1, device=depth.device)
    new_rays = torch.arange(k, device=depth.device).repeat_interleave(n)
    rays = torch.cat([kept.ray_indices, new_rays])
    starts = torch.cat([kept.t_starts, edges[:, :-1].reshape(-1)])
    ends = torch.cat([kept.t_ends, edges[:, 1:].reshape(-1)])
    order = torch.argsort(starts, stable=True)
    order = order[torch.argsort(rays[order], stable=True)]
    return RaySamples(rays[order], starts[order], ends[order], samples.n_rays)


def empty_space_loss(
    weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, depth: Tensor, sigma: Tensor
) -> Tensor:
    """``[R]`` per ray: the weight of its samples wholly in front of ``depth - EMPTY_SIGMAS * sigma``, the space the
    camera saw the point through (URF's line-of-sight free-space term, linear in the weights so that faint floaters
    are pushed as hard as dense ones). Samples of rays ``>= R`` are left out; O(S), differentiable in ``weights``."""
    n = depth.shape[0]
    if n == 0:
        return weights.new_zeros(0)
    rays, counts, d, s = _per_ray(ray_indices, n, depth, sigma)
    front = weights * (counts & (t_ends <= d - EMPTY_SIGMAS * s))
    return weights.new_zeros(n).index_add(0, rays, front)


def prior_loss(
    weights: Tensor,
    samples: RaySamples,
    depth: Tensor,
    sigma: Tensor,
    weight: Tensor | None = None,
    empty_weight: float = 1.0,
) -> Tensor:
    """Scalar: the ``weight``-weighted mean over the first ``len(depth)`` rays of ``samples`` of
    ``termination_loss + empty_weight * empty_space_loss``; ``weights``: the samples' compositing weights
    (``RenderOutput.weights`` of a render of exactly ``samples``)."""
    args = (weights, samples.t_starts, samples.t_ends, samples.ray_indices, depth, sigma)
    per_ray = termination_loss(*args)
    if empty_weight:
        per_ray = per_ray + empty_weight * empty_space_loss(*args)
    if weight is None:
        return per_ray.mean()
    return (weight * per_ray).sum() / weight.sum().clamp(min=1e-12)
