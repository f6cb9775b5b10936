"""Occupancy grid for empty-space skipping, and ray marching through it (Instant-NGP / nerfacc style).

The grid covers the scene's aabb with ``R^3`` cells and keeps, per cell, an exponential moving
maximum of the opacity of one marching step (``sigma * step_size``) at random points in the cell.
Cells above a threshold are occupied; marching keeps only the samples that fall in them.

The buffers match nerfacc's ``OccGridEstimator`` (``binaries [1, R, R, R]`` indexed ``[x, y, z]``,
``aabbs [1, 6]``, flat ``occs``), so on CUDA nerfacc's ``traverse_grids`` marches the same grid;
elsewhere the pure-PyTorch marcher below does.

As nerfacc's ``mark_invisible_cells``, :meth:`OccupancyGrid.mark_invisible` drops for good the cells that lie
outside every training camera's view (flat bool buffer ``seen``; their ``occs`` are -1): no update samples them
or makes them occupied again. Nothing else empties a cell for good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ovseg3d import accel
from ovseg3d.data.cameras import Cameras
from ovseg3d.data.lenses import LENS_PINHOLE, unproject
from ovseg3d.errors import UsageError
from ovseg3d.field.space import MAX_RADIUS, check_contraction, from_unit, roi_center_half, to_unit
from ovseg3d.render.volume import RaySamples, mask_indices, ray_counts

VISIBILITY_DECAY = 0.5  # a cell unseen for ~10 updates (1e-3) is emptied
MARCH_CANDIDATES = 1 << 21  # candidate samples tested against the grid at a time
LENS_BORDER_SAMPLES = 256  # points per image side unprojected to bound a lens camera's view


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
        # false: the cell lies outside every training camera's view (mark_invisible), empty for good
        self.register_buffer("seen", torch.ones(resolution**3, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):  # noqa: ANN001
        """A checkpoint from before ``seen`` existed loads too: the cells keep the marks they have now (all seen
        unless :meth:`mark_invisible` ran before the load); the loaded grid then drops the unseen cells."""
        if prefix + "seen" not in state_dict:
            state_dict[prefix + "seen"] = self.seen.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)
        if self.seen.shape == self.occs.shape and self.seen.numel() == self.binaries.numel():
            self._drop_unseen()

    def _drop_unseen(self) -> None:
        with torch.no_grad():
            self.occs.masked_fill_(~self.seen, -1.0)
            self.binaries &= self.seen.view(self.binaries.shape)

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
        reprobe: bool = False,
    ) -> None:
        """Re-estimate occupancy. ``occ_eval_fn``: ``[P, 3]`` world points -> ``[P]`` step opacity.

        During warm-up every cell is visited; afterwards a quarter of the cells at random plus as
        many occupied ones (nerfacc's schedule). With ``visibility_eps > 0`` a cell is also emptied
        when no training ray has reached it with transmittance above that during the last updates
        (occluded space, space outside every view): the remembered visibility halves each update. With
        ``reprobe`` (the caller's schedule), the cells so emptied that the field has density in are marched
        again for two updates (their visibility set to 4 ``visibility_eps``), and stay if a ray reaches them
        meanwhile: the record empties a cell while it is hidden, never for good.
        ``hold_occupied``: the cells' opacities are updated but every cell stays occupied.

        Cells that :meth:`mark_invisible` dropped (``seen`` false) are never sampled, never count in the
        threshold's mean (nerfacc's ``occs >= 0``) and never become occupied, whatever the field says there.
        """
        n_cells = self.occs.numel()
        device = self.occs.device
        seen = self.seen
        all_seen = self._derived("all_seen", seen, lambda s: bool(s.all()))
        if step < warmup_steps:
            cells = torch.arange(n_cells, device=device)
        else:
            uniform = torch.randint(n_cells, (n_cells // 4,), device=device)
            occupied = torch.nonzero(self.binaries.view(-1))[:, 0]
            if occupied.numel() > n_cells // 4:
                occupied = occupied[torch.randint(occupied.numel(), (n_cells // 4,), device=device)]
            cells = torch.cat([uniform, occupied])
        if not all_seen:
            cells = cells[seen[cells]]
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
        mean = self.occs.mean() if all_seen else self.occs[seen].mean()
        thre = torch.clamp(mean, max=occ_thre)
        binaries = self.occs > thre
        if hold_occupied:  # a field that starts as clear air: every cell stays marched until it has learnt
            binaries = torch.ones_like(binaries)
        if visibility_eps > 0:
            if reprobe:
                lapsed = binaries & (self.visibility <= visibility_eps)
                self.visibility.masked_fill_(lapsed, 4.0 * visibility_eps)
            binaries &= self.visibility > visibility_eps
            self.visibility.mul_(VISIBILITY_DECAY)
        self.binaries = (binaries & seen).view(self.binaries.shape)

    @torch.no_grad()
    def mark_invisible(self, cameras: Cameras, near_plane: float | Tensor = 0.0, chunk: int = 1 << 17) -> int:
        """Drop for good the cells that no training ray can reach: cells outside every camera's view frustum
        (nerfacc's ``mark_invisible_cells``; run it once, before training). Their ``seen`` turns false, their
        ``occs`` -1, and :meth:`update` never samples them nor makes them occupied again.

        A cell is kept when any part of it may lie in some camera's view beyond ``near_plane``: conservative,
        a cell that the frustum's side or corner only grazes is kept (nerfacc tests one point per cell). The
        test is on the whole cell, not on sample points: the four side planes of the camera's frustum (its
        image ``[0, W] x [0, H]`` plus half a pixel) against the cell's box, exactly for the bounded grid and
        the affine middle of a contracted one; in the contracted shell, where a cell's world points are
        ``c * g(|c|)`` for ``c`` in its contracted box, by interval bounds on ``g`` (far cells, mapped to very
        distant points, are tested the same way). A cell wholly within ``near_plane`` of a camera counts as
        out of that camera's view. A camera with a lens is bounded by the pinhole frustum around its
        unprojected image border (plus 1%); a lens that sees to 90 degrees or past counts as seeing every
        direction. Cells are tested from the whole grid down, octree style, refined only where a camera's
        view boundary crosses them and no camera sees them whole.

        Unlike nerfacc, a cell nearer than ``near_plane`` to some camera stays when another camera sees it.

        Args:
            cameras: the training cameras (:class:`~ovseg3d.data.cameras.Cameras`, any lens).
            near_plane: world distance from each camera's centre where its rays start (a float, or ``[N]`` per
                camera; a z-depth bound works too, being no larger than the distance).
            chunk: (block, camera) pairs tested at a time (under a kilobyte each).

        Returns:
            The number of cells outside every camera's view (all of them now dropped; a cell dropped by an
            earlier call stays dropped).
        """
        device, r = self.occs.device, self.resolution
        n_cams = len(cameras)
        if n_cams == 0:
            raise UsageError("mark_invisible needs the training cameras, got none")
        origin, scale = self._local_frame()
        planes = _frustum_planes(cameras).to(device)  # [N, 4, 4] float64, world
        local = torch.cat(
            [planes[..., :3] * scale, (planes[..., :3] * origin).sum(-1, keepdim=True) + planes[..., 3:]], -1
        )
        centres = cameras.c2w[:, :, 3].to(device, torch.float64)
        near = torch.as_tensor(near_plane, dtype=torch.float64, device=device).expand(n_cams).clamp(min=0.0)
        frame = (origin, scale, local, centres, near)
        depth = max(0, (r - 1).bit_length())
        size_root = 1 << depth  # the grid padded to a power of two; blocks beyond it are left out
        flags = [torch.zeros(8**level, dtype=torch.bool, device=device) for level in range(depth + 1)]
        offsets = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=device)
        stack = [(0, torch.zeros(n_cams, 3, dtype=torch.long, device=device), torch.arange(n_cams, device=device))]
        while stack:
            level, idx, cam = stack.pop()
            if len(cam) > chunk:
                stack.extend((level, idx[s : s + chunk], cam[s : s + chunk]) for s in range(0, len(cam), chunk))
                continue
            size, n = size_root >> level, 1 << level
            key = (idx[:, 0] * n + idx[:, 1]) * n + idx[:, 2]
            flag = flags[level]
            if size == 1:  # all that matters is whether some camera may see the cell: the cell's first camera
                first = torch.ones(len(key), dtype=torch.bool, device=device)  # tests it, then the others where
                first[1:] = key[1:] != key[:-1]  # that one did not (the pairs come sorted by cell)
                for part in (first, ~first):
                    part &= ~flag[key]
                    status = _block_status(*self._local_blocks(idx[part], idx[part] + 1), *frame, cam[part])
                    flag[key[part][status >= 0]] = True
                continue
            lo = idx * size
            status = _block_status(*self._local_blocks(lo, (lo + size).clamp(max=r)), *frame, cam)
            flag[key[status > 0]] = True  # a camera sees the whole block
            keep = (status == 0) & ~flag[key]
            idx, cam = idx[keep], cam[keep]
            child = (idx[:, None, :] * 2 + offsets).reshape(-1, 3)
            cam = cam[:, None].expand(-1, 8).reshape(-1)
            inside = (child * (size // 2) < r).all(-1)
            child, cam = child[inside], cam[inside]
            # a block's cameras side by side, so that a chunk holds them all: one that sees the block whole
            # spares the others' tests below it
            order = torch.argsort(((child[:, 0] * 2 * n + child[:, 1]) * 2 * n + child[:, 2]) * n_cams + cam)
            if len(order):
                stack.append((level + 1, child[order], cam[order]))
        visible = torch.zeros(size_root, size_root, size_root, dtype=torch.bool, device=device)
        for level, flag in enumerate(flags):
            n, size = 1 << level, size_root >> level
            visible |= flag.view(n, 1, n, 1, n, 1).expand(n, size, n, size, n, size).reshape(visible.shape)
        visible = visible[:r, :r, :r].reshape(-1)
        self.seen &= visible
        self._drop_unseen()
        return int((~visible).sum())

    def _local_frame(self) -> tuple[Tensor, Tensor]:
        """``origin, scale`` ``[3]`` float64: world points are ``origin + scale * c * g(c)`` with ``c`` the cell
        coordinates of :meth:`_local_blocks` (``g = 1`` without a contraction)."""
        aabb = self.aabb.to(torch.float64)
        if self.contraction == "none":
            return aabb[:3], aabb[3:] - aabb[:3]
        return roi_center_half(aabb)

    def _local_blocks(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The blocks of cells ``[lo, hi)`` ``[P, 3]`` in local coordinates ``c`` (:meth:`_local_frame`): boxes
        ``[a, b]`` ``[P, 3]`` each and bounds ``g_min, g_max`` ``[P, 1]`` of ``g`` over them (float64).

        Unbounded grids: ``c`` is the contracted point, ``g`` the inverse contraction's radial scale (1 inside the
        ROI, ``1 / (r (2 - r))`` beyond, radius clamped as :func:`~ovseg3d.field.space.uncontract` does), which
        lies between its values at the box's nearest and farthest radii and at :data:`MAX_RADIUS`."""
        a, b = lo.to(torch.float64) / self.resolution, hi.to(torch.float64) / self.resolution
        if self.contraction == "none":
            one = torch.ones_like(a[:, :1])
            return a, b, one, one
        a, b = a * 4.0 - 2.0, b * 4.0 - 2.0
        order = 2 if self.contraction == "sphere" else float("inf")
        r_min = torch.linalg.vector_norm(torch.minimum(torch.maximum(torch.zeros_like(a), a), b), ord=order, dim=-1)
        r_max = torch.linalg.vector_norm(torch.maximum(a.abs(), b.abs()), ord=order, dim=-1)

        def radial(radius: Tensor) -> Tensor:
            rc = radius.clamp(min=1e-12)
            return torch.where(radius <= 1.0, torch.ones_like(rc), 1.0 / (rc * (2.0 - rc.clamp(max=MAX_RADIUS))))

        g_min = torch.minimum(radial(r_min), radial(r_max))
        g_max = radial(torch.minimum(torch.maximum(torch.full_like(r_min, MAX_RADIUS), r_min), r_max))
        return a, b, g_min[:, None], g_max[:, None]

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


def _frustum_planes(cameras: Cameras) -> Tensor:
    """``[N, 4, 4]`` float64: per camera the four side planes of its view frustum in world space, rows
    ``(n, d)`` with ``n . p + d >= 0`` on the inside (unit normals). The image ``[0, W] x [0, H]`` plus half a pixel
    (pinhole); a lens camera's frustum bounds its unprojected image border, and one that sees to 90 degrees or
    past gets planes every point passes (``n = 0, d = 1``)."""
    n_cams = len(cameras)
    f64 = {"dtype": torch.float64, "device": "cpu"}
    fx, fy, cx, cy = (t.to(**f64) for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
    w, h = float(cameras.width), float(cameras.height)
    x_lo, x_hi = (-0.5 - cx) / fx, (w + 0.5 - cx) / fx  # normalised image coordinates (OpenCV axes)
    y_lo, y_hi = (-0.5 - cy) / fy, (h + 0.5 - cy) / fy
    wide = torch.zeros(n_cams, dtype=torch.bool)
    if cameras.lens is not None:
        lensed = torch.nonzero(cameras.lens.cpu() != LENS_PINHOLE)[:, 0]
        t = torch.linspace(0.0, 1.0, LENS_BORDER_SAMPLES, **f64)
        u = torch.cat([t * w, t * w, torch.zeros_like(t), torch.full_like(t, w)])
        v = torch.cat([torch.zeros_like(t), torch.full_like(t, h), t * h, t * h])
        xy_d = torch.stack([(u - cx[lensed, None]) / fx[lensed, None], (v - cy[lensed, None]) / fy[lensed, None]], -1)
        kind = cameras.lens.cpu()[lensed, None]
        coeffs = cameras.coeffs.cpu()[lensed, None].to(torch.float64)  # type: ignore[union-attr]
        dirs, valid = unproject(xy_d, kind, coeffs)  # [L, 4S, 3] unit, OpenCV axes
        wide[lensed] = ~valid.all(-1) | (dirs[..., 2] <= 1e-6).any(-1)
        xy = dirs[..., :2] / dirs[..., 2:].clamp(min=1e-6)
        lo, hi = xy.amin(1), xy.amax(1)
        margin = 0.01 * (hi - lo)
        x_lo[lensed], y_lo[lensed] = (lo - margin).unbind(-1)
        x_hi[lensed], y_hi[lensed] = (hi + margin).unbind(-1)
    rot = cameras.c2w[:, :, :3].to(**f64)
    ex, ey, ez = rot[:, :, 0], -rot[:, :, 1], -rot[:, :, 2]  # world directions of the OpenCV camera axes
    normals = torch.stack(
        [ex - x_lo[:, None] * ez, x_hi[:, None] * ez - ex, ey - y_lo[:, None] * ez, y_hi[:, None] * ez - ey], 1
    )
    normals = normals / torch.linalg.vector_norm(normals, dim=-1, keepdim=True)
    offsets = -(normals * cameras.c2w[:, None, :, 3].to(**f64)).sum(-1)
    planes = torch.cat([normals, offsets[..., None]], -1)
    planes[wide] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    return planes


def _block_status(
    a: Tensor,
    b: Tensor,
    g_min: Tensor,
    g_max: Tensor,
    origin: Tensor,
    scale: Tensor,
    planes: Tensor,
    centres: Tensor,
    near: Tensor,
    cam: Tensor,
) -> Tensor:
    """``[P]`` long: -1 no point of the block in the camera's view, 1 all of it, 0 perhaps part (a block its
    frustum's sides or near ball cut, or one outside the frustum near an edge, which plane-by-plane tests miss).

    Blocks: world points ``origin + scale * c * g`` for ``c`` in the boxes ``[a, b]`` ``[P, 3]`` and ``g`` in
    ``[g_min, g_max]`` ``[P, 1]`` (:meth:`OccupancyGrid._local_blocks`), against cameras ``cam`` ``[P]`` of:
    ``planes`` ``[N, 4, 4]``, the frustums' sides in those local coordinates (``n . c g + d >= 0`` inside),
    ``centres`` ``[N, 3]`` and ``near`` ``[N]``, the cameras' world positions and the distances where their rays
    start."""
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    plane = planes[cam]
    normals = plane[..., :3]
    along = torch.bmm(normals, mid[:, :, None])[..., 0]  # [P, 4]: n . c over the box is along +- reach
    reach = torch.bmm(normals.abs(), half[:, :, None])[..., 0]
    lo, hi = along - reach, along + reach
    lowest = torch.where(lo >= 0, lo * g_min, lo * g_max) + plane[..., 3]  # g > 0: the bounds of n . c g
    highest = torch.where(hi >= 0, hi * g_max, hi * g_min) + plane[..., 3]
    out, whole = (highest < 0).any(-1), (lowest >= 0).all(-1)
    near2 = near[cam] ** 2
    if bool((near2 > 0).any()):  # the world box around the block against the ball where rays do not reach
        box_lo = origin + scale * torch.minimum(a * g_min, a * g_max)
        box_hi = origin + scale * torch.maximum(b * g_min, b * g_max)
        box_half = 0.5 * (box_hi - box_lo)
        gap = (0.5 * (box_lo + box_hi) - centres[cam]).abs()
        out |= ((gap + box_half) ** 2).sum(-1) < near2  # the farthest point is nearer than near
        whole &= ((gap - box_half).clamp(min=0.0) ** 2).sum(-1) >= near2  # the nearest point is not
    return torch.where(out, -1, torch.where(whole, 1, 0))


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
