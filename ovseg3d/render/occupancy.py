"""Occupancy grid for empty-space skipping, and ray marching through it (Instant-NGP / nerfacc style).

The grid covers the scene's aabb with ``R^3`` cells and keeps, per cell, an exponential moving
maximum of the opacity of one marching step (``sigma * step_size``) at random points in the cell.
Cells above a threshold are occupied; marching keeps only the samples that fall in them.

The buffers match nerfacc's ``OccGridEstimator`` (``binaries [1, R, R, R]`` indexed ``[x, y, z]``,
``aabbs [1, 6]``, flat ``occs``), so on CUDA nerfacc's ``traverse_grids`` marches the same grid;
elsewhere the pure-PyTorch marcher below does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ovseg3d import accel
from ovseg3d.field.space import MAX_RADIUS, check_contraction, from_unit, roi_center_half, to_unit
from ovseg3d.render.volume import RaySamples, mask_indices, ray_counts

VISIBILITY_DECAY = 0.5  # a cell unseen for ~10 updates (1e-3) is emptied
MARCH_CANDIDATES = 1 << 21  # candidate samples tested against the grid at a time


def ray_aabb(origins: Tensor, dirs: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test: ``[R]`` entry and exit distances of rays with a box (``t_far < t_near``: a miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (aabb[:3] - origins) * inv
    t1 = (aabb[3:] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


class OccupancyGrid(nn.Module):
    """A binary occupancy grid over ``aabb`` (``[6]``: min xyz, max xyz), ``resolution^3`` cells; with a
    ``contraction`` it covers the contracted world (:mod:`ovseg3d.field.space`), the ROI box in its middle half."""

    def __init__(self, aabb: Tensor, resolution: int = 64, contraction: str = "none"):
        super().__init__()
        self.resolution = resolution
        self.contraction = check_contraction(contraction)
        self.register_buffer("aabbs", aabb.float().reshape(1, 6).clone())
        self.register_buffer("occs", torch.zeros(resolution**3))
        self.register_buffer("binaries", torch.ones(1, resolution, resolution, resolution, dtype=torch.bool))
        # running max of the transmittance at which training rays reached each cell (1 = not yet known)
        self.register_buffer("visibility", torch.ones(resolution**3))

    @property
    def aabb(self) -> Tensor:
        return self.aabbs[0]

    def occupied_fraction(self) -> float:
        return float(self.binaries.float().mean())

    def _cell_coords(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """``[..., 3]`` world points -> ``[...]`` flat cell index (x-major) and ``[...]`` inside-grid mask."""
        shape = points.shape[:-1]
        unit, inside = to_unit(points.reshape(-1, 3), self.aabb, self.contraction)
        rel, inside = unit.view(*shape, 3) * self.resolution, inside.view(shape)
        if self.contraction == "none":
            inside = inside & (rel < self.resolution).all(-1)
        cell = rel.long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (cell[..., 0] * r + cell[..., 1]) * r + cell[..., 2], inside

    @torch.no_grad()
    def observe(self, points: Tensor, transmittance: Tensor) -> None:
        """Record that rays reached ``points`` ``[P, 3]`` with ``transmittance`` ``[P]``."""
        flat, inside = self._cell_coords(points)
        # points outside the grid count 0, which changes no cell (visibilities are >= 0): no mask to cut by
        self.visibility.scatter_reduce_(0, flat, torch.where(inside, transmittance, 0.0), reduce="amax")

    def query(self, points: Tensor) -> Tensor:
        """``[...]`` bool: the points lie in occupied cells."""
        flat, inside = self._cell_coords(points)
        return self.binaries.view(-1)[flat] & inside

    def _dilated(self) -> Tensor:
        """Flat ``[R^3]`` bool: the cell or one of its 26 neighbours is occupied (rebuilt when the grid changes)."""
        return self._derived(
            "dilated",
            self.binaries,
            lambda b: nn.functional.max_pool3d(b.float()[None], 3, stride=1, padding=1).bool().reshape(-1),
        )

    def group_size(self, step: float) -> int:
        """How many consecutive even steps of ``step`` one test of the dilated grid at their middle can stand for:
        every step's midpoint then lies at most one cell from the middle in grid coordinates (the sphere's
        contraction never stretches distances, the cube's max-norm one by less than 2), so its cell is the
        middle's or one of its neighbours."""
        world_per_cell = self._half_extent()[0] * (2.0 if self.contraction == "none" else 4.0) / self.resolution
        if self.contraction == "cube":
            world_per_cell /= 2.0
        return max(1, int(1.9 * world_per_cell / step) + 1)  # (group - 1) / 2 steps <= 0.95 cells

    def _occupied_steps(
        self, origins: Tensor, dirs: Tensor, start: Tensor, mid: Tensor, step: float, valid: Tensor
    ) -> Tensor:
        """``valid & query(points at mid)`` for intervals that start at ``start`` ``[r, K]`` (even steps of ``step``,
        the last ones possibly cut short) with midpoints ``mid`` ``[r, K]``; ``valid`` is true on a prefix of each
        row. The same answer as testing every midpoint, found by first testing groups of :meth:`group_size` steps
        at their middle against the dilated grid, then only the steps of the groups that pass: in a mostly empty
        grid a fraction of the tests."""
        n_rays, k = start.shape
        group = self.group_size(step)
        if group < 2 or k < 2 * group:
            return valid & self.query(origins[:, None, :] + mid[..., None] * dirs[:, None, :])
        centre = start[:, ::group] + 0.5 * group * step  # [r, groups]
        flat, _ = self._cell_coords(origins[:, None, :] + centre[..., None] * dirs[:, None, :])
        rows, groups = torch.nonzero(self._dilated()[flat] & valid[:, ::group], as_tuple=True)
        cols = groups[:, None] * group + torch.arange(group, device=start.device)  # [n, group]
        cols = cols.clamp(max=k - 1)  # the last group may be short: its last step repeats
        m = mid[rows[:, None], cols]
        occupied = self.query(origins[rows, None, :] + m[..., None] * dirs[rows, None, :])
        keep = torch.zeros_like(valid)
        keep[rows[:, None], cols] = occupied & valid[rows[:, None], cols]
        return keep

    @torch.no_grad()
    def update(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        chunk: int = 1 << 16,
        visibility_eps: float = 0.0,
        hold_occupied: bool = False,
    ) -> None:
        """Re-estimate occupancy. ``occ_eval_fn``: ``[P, 3]`` world points -> ``[P]`` step opacity.

        During warm-up every cell is visited; afterwards a quarter of the cells at random plus as
        many occupied ones (nerfacc's schedule). With ``visibility_eps > 0`` a cell is also emptied
        when no training ray has reached it with transmittance above that during the last updates
        (occluded space, space outside every view): the remembered visibility halves each update.
        ``hold_occupied``: the cells' opacities are updated but every cell stays occupied.
        """
        n_cells = self.occs.numel()
        device = self.occs.device
        if step < warmup_steps:
            cells = torch.arange(n_cells, device=device)
        else:
            uniform = torch.randint(n_cells, (n_cells // 4,), device=device)
            occupied = torch.nonzero(self.binaries.view(-1))[:, 0]
            if occupied.numel() > n_cells // 4:
                occupied = occupied[torch.randint(occupied.numel(), (n_cells // 4,), device=device)]
            cells = torch.cat([uniform, occupied])
        r = self.resolution
        coords = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        occ = torch.empty(cells.numel(), device=device)
        for s in range(0, cells.numel(), chunk):
            c = coords[s : s + chunk]
            x = from_unit((c + torch.rand_like(c)) / r, self.aabb, self.contraction)
            occ[s : s + chunk] = occ_eval_fn(x).reshape(-1)
        # a cell drawn twice (at random and as occupied) keeps the larger of its values: scatter's max does not
        # depend on the order of the writes, where `occs[cells] = ...` with repeated cells kept whichever write
        # landed last (training differed from run to run after the warm-up)
        self.occs[cells] = self.occs[cells] * ema_decay  # repeated cells write the same value
        self.occs.scatter_reduce_(0, cells, occ, reduce="amax")
        thre = torch.clamp(self.occs.mean(), max=occ_thre)
        binaries = self.occs > thre
        if hold_occupied:  # a field that starts as clear air: every cell stays marched until it has learnt
            binaries = torch.ones_like(binaries)
        if visibility_eps > 0:
            binaries &= self.visibility > visibility_eps
            self.visibility.mul_(VISIBILITY_DECAY)
        self.binaries = binaries.view(self.binaries.shape)

    @torch.no_grad()
    def march(
        self,
        origins: Tensor,
        dirs: Tensor,
        step_size: float,
        near: Tensor | None = None,
        far: Tensor | None = None,
        stratified: bool = False,
        max_per_ray: int = 0,
    ) -> RaySamples:
        """Samples every ``step_size`` along each ray inside the aabb, kept where the grid is occupied.

        Args:
            origins, dirs: ``[R, 3]`` rays (unit directions).
            near, far: optional ``[R]`` limits on ``t``.
            stratified: jitter each ray's first sample by ``U[0, step_size)``.
            max_per_ray: if > 0, a ray with more occupied steps keeps every k-th of them
                (k = ceil(n / max_per_ray), random phase when stratified) with k-times longer
                intervals: coarse marching while the grid is still mostly occupied.
        """
        if self.contraction != "none":
            samples = self._march_contracted(origins, dirs, step_size, near, far, stratified)
            return thin_samples(samples, max_per_ray, stratified) if max_per_ray > 0 else samples
        t_min, t_max = ray_aabb(origins, dirs, self.aabb)
        if near is not None:
            t_min = torch.maximum(t_min, near)
        if far is not None:
            t_max = torch.minimum(t_max, far)
        if stratified:
            t_min = t_min + torch.rand_like(t_min) * step_size
        nerfacc = accel.nerfacc(origins.device)
        if nerfacc is not None:
            samples = self._march_nerfacc(nerfacc, origins, dirs, t_min, t_max, step_size)
        else:
            samples = self._march_torch(origins, dirs, t_min, t_max, step_size)
        return thin_samples(samples, max_per_ray, stratified) if max_per_ray > 0 else samples

    def _march_torch(self, origins: Tensor, dirs: Tensor, t_min: Tensor, t_max: Tensor, step: float) -> RaySamples:
        n_rays = origins.shape[0]
        span = (t_max - t_min).clamp(min=0.0)
        n_max = int(torch.ceil(span.max() / step).item()) if n_rays else 0
        if n_max == 0:
            empty = torch.zeros(0, device=origins.device)
            return RaySamples(empty.long(), empty, empty, n_rays)
        rows, starts = [], []
        # chunk over rays so that the [rays, steps, 3] candidate tensor stays small
        chunk = max(1, MARCH_CANDIDATES // n_max)
        ks = torch.arange(n_max, device=origins.device, dtype=torch.float32) * step
        for s in range(0, n_rays, chunk):
            sl = slice(s, s + chunk)
            t_start = t_min[sl, None] + ks  # [r, K]
            mid = t_start + 0.5 * step
            keep = self._occupied_steps(origins[sl], dirs[sl], t_start, mid, step, mid < t_max[sl, None])
            r_idx, k_idx = torch.nonzero(keep, as_tuple=True)
            rows.append(r_idx + s)
            starts.append(t_start[r_idx, k_idx])
        ray_indices = torch.cat(rows)
        t_starts = torch.cat(starts)
        return RaySamples(ray_indices, t_starts, t_starts + step, n_rays)

    def far_distance(self) -> float:
        """World distance beyond which a contracted grid models nothing (:data:`MAX_RADIUS`)."""
        return self._half_extent()[1] / (2.0 - MAX_RADIUS)

    def outer_steps(self, step: float) -> int:
        """Samples per ray beyond the ROI: as many as steps of ``step`` fit in the contracted shell."""
        return max(8, int(round((MAX_RADIUS - 1.0) * self._half_extent()[0] / step)))

    def _half_extent(self) -> tuple[float, float]:
        """The smallest and largest half side of the region of interest, read from the device once per box
        (every march asks; a read is a synchronisation on a GPU)."""

        def extent(aabbs: Tensor) -> tuple[float, float]:
            _, half = roi_center_half(aabbs[0])
            return float(half.min()), float(half.max())

        return self._derived("half_extent", self.aabbs, extent)

    def _derived(self, name: str, source: Tensor, compute: Callable[[Tensor], Any]) -> Any:
        """``compute(source)``, cached until ``source`` is replaced or changed in place. Keyed by the tensor
        itself, not its id(): update() replaces ``binaries``, and a new tensor can get a freed one's id (and
        version), which made the march use the previous grid's dilation now and then."""
        cache: dict[str, tuple[Tensor, int, Any]] = self.__dict__.setdefault("_derived_cache", {})
        held = cache.get(name)
        if held is None or held[0] is not source or held[1] != source._version:
            held = cache[name] = (source, source._version, compute(source))
        return held[2]

    def _march_contracted(
        self, origins: Tensor, dirs: Tensor, step: float, near: Tensor | None, far: Tensor | None, stratified: bool
    ) -> RaySamples:
        """March a contracted grid: steps of ``step`` from the ray's start until it leaves the ROI box, then
        :meth:`outer_steps` intervals spaced evenly in disparity (``1 / t``) out to :meth:`far_distance`
        (about even in contracted space, as nerfacto's piecewise sampler). Kept where the grid is occupied."""
        n_rays, device = origins.shape[0], origins.device
        t_far = torch.full((n_rays,), self.far_distance(), device=device)
        if far is not None:
            t_far = torch.minimum(t_far, far)
        t0 = near.clone() if near is not None else torch.zeros(n_rays, device=device)
        _, t_exit = ray_aabb(origins, dirs, self.aabb)
        t_split = torch.minimum(torch.maximum(t_exit, t0), t_far)  # end of the even steps
        if stratified:
            t0 = t0 + torch.rand_like(t0) * step
        n_in = int(torch.ceil(((t_split - t0).clamp(min=0.0)).max() / step).item()) if n_rays else 0
        n_out = self.outer_steps(step)
        phase = torch.rand(n_rays, device=device) if stratified else torch.zeros(n_rays, device=device)
        rows, starts, ends = [], [], []
        chunk = max(1, MARCH_CANDIDATES // (n_in + n_out))
        k_in = torch.arange(n_in, device=device, dtype=torch.float32)
        k_out = torch.arange(n_out, device=device, dtype=torch.float32)
        for s in range(0, n_rays, chunk):
            sl = slice(s, s + chunk)
            a, b, f = t0[sl, None], t_split[sl, None], t_far[sl, None]
            in_start = a + k_in * step
            in_end = torch.minimum(in_start + step, b)
            disp0, disp1 = 1.0 / b.clamp(min=1e-6), 1.0 / f.clamp(min=1e-6)
            frac = ((k_out + phase[sl, None]) / n_out).clamp(max=1.0)
            out_start = torch.where(k_out == 0, b, 1.0 / (disp0 + frac * (disp1 - disp0)))
            out_end = 1.0 / (disp0 + ((k_out + 1 + phase[sl, None]) / n_out).clamp(max=1.0) * (disp1 - disp0))
            start, end = torch.cat([in_start, out_start], 1), torch.cat([in_end, out_end], 1)
            valid = (end > start) & (start < f)
            o, d = origins[sl], dirs[sl]
            keep_in = self._occupied_steps(o, d, in_start, 0.5 * (in_start + in_end), step, valid[:, :n_in])
            mid = 0.5 * (out_start + out_end)  # the far steps are uneven: each tested
            keep_out = valid[:, n_in:] & self.query(o[:, None, :] + mid[..., None] * d[:, None, :])
            keep = torch.cat([keep_in, keep_out], 1)
            r_idx, k_idx = torch.nonzero(keep, as_tuple=True)
            rows.append(r_idx + s)
            starts.append(start[r_idx, k_idx])
            ends.append(torch.minimum(end[r_idx, k_idx], t_far[r_idx + s]))
        if not rows:
            empty = torch.zeros(0, device=device)
            return RaySamples(empty.long(), empty, empty, n_rays)
        return RaySamples(torch.cat(rows), torch.cat(starts), torch.cat(ends), n_rays)

    def _march_nerfacc(self, nerfacc, origins, dirs, t_min, t_max, step: float) -> RaySamples:  # noqa: ANN001
        from nerfacc.grid import traverse_grids

        intervals, samples, _ = traverse_grids(
            origins,
            dirs,
            self.binaries,
            self.aabbs,
            near_planes=t_min,
            far_planes=t_max,
            step_size=step,
            cone_angle=0.0,
        )
        t_starts = intervals.vals[intervals.is_left]
        t_ends = intervals.vals[intervals.is_right]
        return RaySamples(samples.ray_indices.long(), t_starts, t_ends, origins.shape[0])


def thin_samples(samples: RaySamples, max_per_ray: int, stratified: bool) -> RaySamples:
    """Keep at most about ``max_per_ray`` samples per ray: every k-th sample, its interval k times longer.

    ``k = ceil(n_ray / max_per_ray)`` per ray; the phase is random per ray when ``stratified``.
    """
    n_rays = samples.n_rays
    if len(samples) == 0:
        return samples
    counts = ray_counts(samples.ray_indices, n_rays)
    stride = torch.clamp(torch.ceil(counts / max_per_ray), min=1).long()  # [R]
    if int(stride.max()) == 1:
        return samples
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(samples), device=counts.device) - first[samples.ray_indices]
    phase = (torch.rand(n_rays, device=counts.device) * stride).long() if stratified else torch.zeros_like(stride)
    k = stride[samples.ray_indices]
    keep = mask_indices((rank % k) == phase[samples.ray_indices])
    deltas = samples.t_ends - samples.t_starts
    if bool((deltas - deltas[0]).abs().max() <= 1e-6 * deltas[0].abs().clamp(min=1e-12)):
        length = deltas[keep] * k[keep]  # even steps: the k steps of the group
    else:  # uneven steps (contracted space): from the group's first start to the end of its k-th interval
        index = torch.arange(len(samples), device=counts.device)
        last = torch.minimum(index + k - 1, (first + counts - 1)[samples.ray_indices])
        length = (samples.t_ends[last] - samples.t_starts)[keep]
    t_starts = samples.t_starts[keep]
    return RaySamples(samples.ray_indices[keep], t_starts, t_starts + length, n_rays)
