"""Render rays through a field: march the occupancy grid, drop hidden samples, composite."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ovseg3d.field.radiance import RadianceField
from ovseg3d.render.occupancy import OccupancyGrid
from ovseg3d.render.volume import RaySamples, accumulate, distortion_loss, render_weights, transmittance_and_alpha


@dataclass(frozen=True)
class RenderOptions:
    step_size: float  # marching step, world units
    early_stop_eps: float = 1e-4  # drop samples whose transmittance is below this (0: keep all)
    alpha_thre: float = 0.0  # drop samples whose step opacity is below this
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class RenderOutput:
    """Per-ray results. rgb ``[R, 3]``, depth ``[R]`` (expected t), opacity ``[R]``, n_samples (evaluated);
    distortion ``[R]`` (:func:`distortion_loss`, in world units) when asked for."""

    rgb: Tensor
    depth: Tensor
    opacity: Tensor
    n_samples: int
    distortion: Tensor | None = None


def render_rays(
    field: RadianceField,
    grid: OccupancyGrid,
    origins: Tensor,
    dirs: Tensor,
    opts: RenderOptions,
    stratified: bool = False,
    near: Tensor | None = None,
    far: Tensor | None = None,
    background: Tensor | None = None,
    samples: RaySamples | None = None,
    observe: bool = False,
    distortion: bool = False,
) -> RenderOutput:
    """Render ``[R, 3]`` rays. ``background``: optional ``[R, 3]`` colour behind each ray;
    ``samples``: already-marched samples of these rays (else they are marched here);
    ``observe``: report the samples' transmittance to the grid (:meth:`OccupancyGrid.observe`);
    ``distortion``: also return the per-ray distortion loss of the weights."""
    n_rays = origins.shape[0]
    if samples is None:
        samples = grid.march(origins, dirs, opts.step_size, near=near, far=far, stratified=stratified)
    if len(samples) and (opts.early_stop_eps > 0 or opts.alpha_thre > 0):
        with torch.no_grad():
            points = samples.positions(origins, dirs)
            sigma = field.density(points)
            trans, alpha = transmittance_and_alpha(sigma, samples.deltas, samples.ray_indices, n_rays)
            if observe:
                grid.observe(points, trans)
            keep = trans >= opts.early_stop_eps
            if opts.alpha_thre > 0:
                keep &= alpha >= opts.alpha_thre
        samples = samples.select(keep)
    sigma, rgb = field(samples.positions(origins, dirs), dirs[samples.ray_indices])
    weights = render_weights(sigma, samples.deltas, samples.ray_indices, n_rays)
    color = accumulate(weights, rgb, samples.ray_indices, n_rays)
    opacity = accumulate(weights, None, samples.ray_indices, n_rays)[:, 0]
    depth = accumulate(weights, samples.t_mid[:, None], samples.ray_indices, n_rays)[:, 0]
    if background is None:
        background = torch.tensor(opts.background, device=origins.device).expand(n_rays, 3)
    color = color + (1.0 - opacity[:, None]) * background
    dist = None
    if distortion:
        dist = distortion_loss(weights, samples.t_starts, samples.t_ends, samples.ray_indices, n_rays)
    return RenderOutput(color, depth, opacity, len(samples), dist)


@torch.no_grad()
def render_image_rays(
    field: RadianceField,
    grid: OccupancyGrid,
    origins: Tensor,
    dirs: Tensor,
    opts: RenderOptions,
    chunk: int = 8192,
    near: Tensor | None = None,
    far: Tensor | None = None,
) -> RenderOutput:
    """Render many rays in chunks without gradients (evaluation, images); ``near``/``far``: ``[R]``."""
    outs = []
    for s in range(0, len(origins), chunk):
        sl = slice(s, s + chunk)
        n = near[sl] if near is not None else None
        f = far[sl] if far is not None else None
        outs.append(render_rays(field, grid, origins[sl], dirs[sl], opts, near=n, far=f))
    return RenderOutput(
        torch.cat([o.rgb for o in outs]),
        torch.cat([o.depth for o in outs]),
        torch.cat([o.opacity for o in outs]),
        sum(o.n_samples for o in outs),
    )
