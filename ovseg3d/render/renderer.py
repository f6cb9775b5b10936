"""Render rays through a field: march the occupancy grid, drop hidden samples, composite."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ovseg3d.field.radiance import RadianceField
from ovseg3d.render.occupancy import OccupancyGrid
from ovseg3d.render.volume import (
    RaySamples,
    accumulate,
    distortion_loss,
    exclusive_cumsum,
    mask_indices,
    render_weights,
    transmittance_and_alpha,
)


@dataclass(frozen=True)
class RenderOptions:
    step_size: float  # marching step, world units
    early_stop_eps: float = 1e-4  # drop samples whose transmittance is below this (0: keep all)
    alpha_thre: float = 0.0  # drop samples whose step opacity is below this
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class RenderOutput:
    """Per-ray results. rgb ``[R, 3]``, depth ``[R]`` (expected t), opacity ``[R]``, n_samples (evaluated);
    distortion ``[R]`` (:func:`distortion_loss`, in world units) when asked for; weights ``[M]``: the compositing
    weight of each sample (when rendered with gradients)."""

    rgb: Tensor
    depth: Tensor
    opacity: Tensor
    n_samples: int
    distortion: Tensor | None = None
    weights: Tensor | None = None


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
    grad_scale_distance: float = 0.0,
    appearance: Tensor | None = None,
    distortion_scale: float = 0.0,
) -> RenderOutput:
    """Render ``[R, 3]`` rays. ``background``: optional ``[R, 3]`` colour behind each ray;
    ``samples``: already-marched samples of these rays (else they are marched here);
    ``observe``: report the samples' transmittance to the grid (:meth:`OccupancyGrid.observe`), from the
    no-gradient pass that drops hidden samples when ``opts`` asks for one, else from the rendering itself;
    ``distortion``: also return the per-ray distortion loss of the weights: over ``t`` (world units), or with
    ``distortion_scale > 0`` over ``s = t / (t + distortion_scale)`` (unbounded scenes, whose far intervals are
    long: mip-NeRF 360 measures it in such a normalised distance);
    ``appearance``: ``[R, A]`` per-ray appearance codes (default: the field's mean code);
    ``grad_scale_distance``: if > 0, the gradients of samples closer to the camera than this are scaled by
    ``(t / distance)^2`` ("Floaters No More", Philip & Deschaintre 2023): space right in front of a
    camera covers few pixels of it, and would otherwise learn floaters that only that view needs."""
    n_rays = origins.shape[0]
    if samples is None:
        samples = grid.march(origins, dirs, opts.step_size, near=near, far=far, stratified=stratified)
    prepass = opts.early_stop_eps > 0 or opts.alpha_thre > 0
    if not (torch.is_grad_enabled() or distortion or grad_scale_distance) and hasattr(field, "density_and_geometry"):
        return _render_no_grad(field, grid, origins, dirs, opts, samples, background, observe, appearance)
    if len(samples) and prepass:
        samples = cull_samples(field, grid, origins, dirs, samples, opts, observe)
    points = samples.positions(origins, dirs)
    if appearance is None:
        sigma, rgb = field(points, dirs[samples.ray_indices])
    else:
        sigma, rgb = field(points, dirs[samples.ray_indices], appearance[samples.ray_indices])
    if grad_scale_distance > 0:
        scale = (samples.t_mid / grad_scale_distance).square().clamp(max=1.0)
        sigma, rgb = scale_gradient(sigma, scale), scale_gradient(rgb, scale[:, None])
    trans, alpha = transmittance_and_alpha(sigma, samples.deltas, samples.ray_indices, n_rays)
    weights = trans * alpha
    if observe and not prepass:
        grid.observe(points, trans.detach())
    color, depth, opacity = composite(field, dirs, opts, samples, weights, rgb, background)
    dist = None
    if distortion:
        t0, t1 = samples.t_starts, samples.t_ends
        if distortion_scale > 0:  # unbounded: mip-NeRF 360's normalised distance, s = t / (t + scale) in [0, 1)
            t0, t1 = t0 / (t0 + distortion_scale), t1 / (t1 + distortion_scale)
        dist = distortion_loss(weights, t0, t1, samples.ray_indices, n_rays)
    return RenderOutput(color, depth, opacity, len(samples), dist, weights)


def _render_no_grad(
    field: RadianceField,
    grid: OccupancyGrid,
    origins: Tensor,
    dirs: Tensor,
    opts: RenderOptions,
    samples: RaySamples,
    background: Tensor | None,
    observe: bool,
    appearance: Tensor | None,
) -> RenderOutput:
    """:func:`render_rays` without gradients (images, evaluation): one hash-grid pass gives every sample's
    density and geometry features; the colour MLP then runs only on the samples that are visible (transmittance
    at least ``opts.early_stop_eps``) and not transparent (step opacity at least ``opts.alpha_thre``)."""
    n_rays = origins.shape[0]
    points = samples.positions(origins, dirs)
    sigma, geo = field.density_and_geometry(points)
    trans, alpha = transmittance_and_alpha(sigma, samples.deltas, samples.ray_indices, n_rays)
    if observe:
        grid.observe(points, trans)
    keep = mask_indices((trans >= opts.early_stop_eps) & (alpha >= opts.alpha_thre))
    samples, weights = samples.select(keep), (trans * alpha)[keep]
    codes = None if appearance is None else appearance[samples.ray_indices]
    rgb = field.color(geo[keep], dirs[samples.ray_indices], codes)
    color, depth, opacity = composite(field, dirs, opts, samples, weights, rgb, background)
    return RenderOutput(color, depth, opacity, len(samples))


def composite(
    field: RadianceField,
    dirs: Tensor,
    opts: RenderOptions,
    samples: RaySamples,
    weights: Tensor,
    rgb: Tensor,
    background: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-ray colour ``[R, 3]`` (over ``background``, else :func:`learned_background`), expected depth ``[R]`` and
    opacity ``[R]`` from the samples' weights ``[M]`` and colours ``[M, 3]``."""
    n_rays = dirs.shape[0]
    color = accumulate(weights, rgb, samples.ray_indices, n_rays)
    opacity = accumulate(weights, None, samples.ray_indices, n_rays)[:, 0]
    depth = accumulate(weights, samples.t_mid[:, None], samples.ray_indices, n_rays)[:, 0]
    if background is None:
        background = learned_background(field, dirs, opts)
    return color + (1.0 - opacity[:, None]) * background, depth, opacity


def learned_background(field: RadianceField, dirs: Tensor, opts: RenderOptions) -> Tensor:
    """``[R, 3]`` colour behind rays ``dirs``: the field's learned colour at infinity when it has one, else
    ``opts.background``."""
    learned = field.background_color(dirs) if hasattr(field, "background_color") else None
    if learned is not None:
        return learned
    return torch.tensor(opts.background, device=dirs.device).expand(len(dirs), 3)


def _density_pass(
    field: RadianceField, grid: OccupancyGrid, origins: Tensor, dirs: Tensor, samples: RaySamples, observe: bool
) -> tuple[Tensor, Tensor]:
    """The samples' transmittance and step opacity ``[M]`` from the field's density (call without gradients);
    ``observe`` reports the transmittance to the grid."""
    points = samples.positions(origins, dirs)
    trans, alpha = transmittance_and_alpha(field.density(points), samples.deltas, samples.ray_indices, samples.n_rays)
    if observe:
        grid.observe(points, trans)
    return trans, alpha


@torch.no_grad()
def cull_samples(
    field: RadianceField,
    grid: OccupancyGrid,
    origins: Tensor,
    dirs: Tensor,
    samples: RaySamples,
    opts: RenderOptions,
    observe: bool = False,
) -> RaySamples:
    """The samples a rendering needs, from one density pass without gradients (nerfacc's ``sigma_fn`` in its
    sampling): those still seen (transmittance at least ``opts.early_stop_eps``) and not empty (step opacity at
    least ``opts.alpha_thre``, capped at the occupancy grid's mean opacity, as nerfacc does, so that a field that
    starts as clear air keeps its samples). ``observe`` reports the transmittance to the grid."""
    if len(samples) == 0:
        return samples
    trans, alpha = _density_pass(field, grid, origins, dirs, samples, observe)
    keep = trans >= opts.early_stop_eps
    if opts.alpha_thre > 0:
        occs = getattr(grid, "occs", None)
        thre = opts.alpha_thre if occs is None else torch.clamp(occs.mean(), max=opts.alpha_thre)
        keep &= alpha >= thre
    return samples.select(mask_indices(keep))


def scale_gradient(x: Tensor, scale: Tensor) -> Tensor:
    """``x`` unchanged in value, its gradient multiplied by ``scale`` (broadcast to ``x``)."""
    return x * scale + (x * (1.0 - scale)).detach()


@torch.no_grad()
def refine_samples(
    field: RadianceField,
    grid: OccupancyGrid,
    origins: Tensor,
    dirs: Tensor,
    samples: RaySamples,
    opts: RenderOptions,
    budget: int,
    observe: bool = False,
) -> RaySamples:
    """Split the intervals of a coarse (thinned) march where the rendering weight is: importance sampling
    with the field itself as its own proposal.

    The density is evaluated once, without gradients, at the coarse samples. A sample of weight ``w``
    is cut into ``ceil(w * budget)`` equal sub-intervals (never shorter than ``opts.step_size``, the
    grid march's step), so each ray gains at most about ``budget`` samples, all near its surfaces,
    and the intervals still cover the ray without gaps. Samples behind ``opts.early_stop_eps`` of
    transmittance are dropped. ``observe`` reports the coarse transmittance to the grid.
    """
    if len(samples) == 0:
        return samples
    trans, alpha = _density_pass(field, grid, origins, dirs, samples, observe)
    keep = mask_indices(trans >= opts.early_stop_eps)
    samples, weights = samples.select(keep), (trans * alpha)[keep]
    deltas = samples.deltas
    max_parts = torch.clamp(torch.round(deltas / opts.step_size), min=1.0)
    parts = torch.minimum(torch.ceil(weights * budget).clamp(min=1.0), max_parts).long()
    if int(parts.max()) == 1:
        return samples
    parent = torch.repeat_interleave(torch.arange(len(samples), device=parts.device), parts)
    first = torch.cumsum(parts, 0) - parts
    k = (torch.arange(len(parent), device=parts.device) - first[parent]).to(deltas.dtype)
    length = deltas[parent] / parts[parent].to(deltas.dtype)
    t_starts = samples.t_starts[parent] + k * length
    return RaySamples(samples.ray_indices[parent], t_starts, t_starts + length, samples.n_rays)


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
    max_per_ray: int = 0,
) -> RenderOutput:
    """Render many rays in chunks without gradients (evaluation, images); ``near``/``far``: ``[R]``;
    ``max_per_ray`` > 0: march at most about that many samples per ray (:func:`thin_samples`), faster and
    slightly blurrier; 0 renders every step."""
    outs = []
    for s in range(0, len(origins), chunk):
        sl = slice(s, s + chunk)
        n = near[sl] if near is not None else None
        f = far[sl] if far is not None else None
        samples = grid.march(origins[sl], dirs[sl], opts.step_size, near=n, far=f, max_per_ray=max_per_ray)
        outs.append(render_rays(field, grid, origins[sl], dirs[sl], opts, samples=samples))
    return RenderOutput(
        torch.cat([o.rgb for o in outs]),
        torch.cat([o.depth for o in outs]),
        torch.cat([o.opacity for o in outs]),
        sum(o.n_samples for o in outs),
    )


def depth_reaching(cum: Tensor, samples: RaySamples, n_rays: int, q: float, held: Tensor | None = None) -> Tensor:
    """``[R]`` the middle of each ray's first interval whose accumulated weight ``cum`` ``[M]`` reaches ``q`` (of
    ``held`` ``[M]``, each sample's ray's total, when given); ``nan`` where it never does. ``torch.where`` rather
    than a mask, whose data-dependent size would make a GPU wait."""
    index = torch.arange(len(samples), device=cum.device)
    ok = cum >= q if held is None else (cum >= q * held) & (held > 0)
    reached = torch.where(ok, index, len(samples))  # len(samples): none, t = nan
    first = torch.full((n_rays,), len(samples), dtype=torch.long, device=cum.device)
    first = first.scatter_reduce(0, samples.ray_indices, reached, reduce="amin")
    return torch.cat([samples.t_mid, samples.t_mid.new_full((1,), float("nan"))])[first]


@torch.no_grad()
def render_median_depth(
    field: RadianceField,
    grid: OccupancyGrid,
    origins: Tensor,
    dirs: Tensor,
    opts: RenderOptions,
    near: Tensor | None = None,
    far: Tensor | None = None,
    chunk: int = 8192,
    relative: bool = False,
    out_relative: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``[R]`` median depth, ``[R]`` opacity and ``[R]`` spread of each ray.

    The median depth is the middle of the first interval at which the ray's accumulated weight reaches
    0.5: a point on the first surface, where the expected depth of a ray grazing an edge would float
    between the object and the background. The spread is the depth between the weight's quartiles over the
    median depth: a few hundredths for a ray stopped by a crisp surface, more where it crosses fog or a
    smeared one. ``nan`` where the opacity stays below 0.5 (0.25 for the first quartile). ``relative``: the
    quartiles of the weight the ray holds (0.5 of its opacity for the median), so that a faint field (a short
    run's) has depths too; ``nan`` only where the ray holds no weight. ``out_relative``: a list that gets, chunk
    by chunk, the relative median depths as well (the same samples: a second pass of a faint field need not
    render again).
    """
    depths, opacities, spreads = [], [], []
    for s in range(0, len(origins), chunk):
        o, d = origins[s : s + chunk], dirs[s : s + chunk]
        n = near[s : s + chunk] if near is not None else None
        f = far[s : s + chunk] if far is not None else None
        samples = grid.march(o, d, opts.step_size, near=n, far=f)
        sigma = field.density(samples.positions(o, d))
        w = render_weights(sigma, samples.deltas, samples.ray_indices, len(o))
        cum = exclusive_cumsum(w, samples.ray_indices, len(o)) + w
        opacity = accumulate(w, None, samples.ray_indices, len(o))[:, 0]
        held = opacity[samples.ray_indices] if relative else torch.ones_like(cum)
        quartiles = [depth_reaching(cum, samples, len(o), q, held) for q in (0.25, 0.5, 0.75)]
        depths.append(quartiles[1])
        spreads.append((quartiles[2] - quartiles[0]) / quartiles[1])
        opacities.append(opacity)
        if out_relative is not None:
            out_relative.append(
                quartiles[1] if relative else depth_reaching(cum, samples, len(o), 0.5, opacity[samples.ray_indices])
            )
    return torch.cat(depths), torch.cat(opacities), torch.cat(spreads)
