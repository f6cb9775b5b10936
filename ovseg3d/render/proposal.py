"""Proposal sampling for unbounded scenes (mip-NeRF 360, nerfacto; nerfacc's ``PropNetEstimator``).

An occupancy grid skips empty space, but in an unbounded scene (ground to the horizon, sky, buildings) little of
the contracted world is empty, and a CPU's budget of samples per ray spreads thinly over the whole ray. Proposal
networks instead learn *where along each ray* the field's weight is, and put the field's few samples there.

Along a ray, distances ``t`` are mapped to a normalised distance ``s`` in ``[0, 1]`` (:class:`Spacing`): linear
from the ray's start to where it leaves the region of interest (the first half of ``s``), then linear in
disparity ``1 / t`` out to the farthest modelled distance (the second half), as nerfacto's
``UniformLinDispPiecewiseSampler`` spaces them. Then:

1. ``samples[0]`` intervals evenly spaced in ``s`` (jittered while training);
2. each proposal network, a small hash-grid density field, gives their weights (volume rendering of its density);
   the next round's intervals are drawn from that histogram by inverse transform sampling in ``s``;
3. the last histogram gives the radiance field's ``field_samples`` intervals.

Each proposal network learns from the field through mip-NeRF 360's interlevel loss (:func:`interlevel_loss`): its
histogram must bound the field's from above, so the field's weight is never where no sample will be drawn.
Everything is dense ``[rays, samples]`` tensor work (``cumsum``, ``searchsorted``), the same on a CPU and a GPU.
On CUDA with nerfacc installed, its kernels (``importance_sampling``, ``searchsorted``: what its
``PropNetEstimator`` is built on) do the inverse transform sampling and the interlevel loss's bounds instead
(``backend="auto"``); ``backend="torch"`` keeps the dense code everywhere. Both give the same samples and loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ovseg3d import accel
from ovseg3d.field.hashgrid import HashGridConfig, make_hash_grid
from ovseg3d.field.radiance import trunc_exp
from ovseg3d.field.space import MAX_RADIUS, check_contraction, roi_center_half, to_unit_scaled
from ovseg3d.render.occupancy import ray_aabb
from ovseg3d.render.volume import RaySamples

BACKENDS = ("auto", "torch")
INSIDE_SHARE = 0.5  # the share of s spent between the ray's start and its exit from the region of interest
HISTOGRAM_PADDING = 0.01  # added to each proposal weight before sampling (nerfacto's histogram_padding)


@dataclass(frozen=True)
class ProposalConfig:
    """Samples per ray of each round and the proposal networks' size."""

    samples: tuple[int, ...] = (64, 32)
    """Intervals per ray evaluated by each proposal network, in order."""
    field_samples: int = 24
    """Intervals per ray evaluated by the radiance field."""
    n_levels: int = 5
    features_per_level: int = 2
    log2_hashmap_size: int = 16
    base_resolution: int = 16
    max_resolutions: tuple[int, ...] = (128, 256)
    """Finest grid resolution of each proposal network (the last one is used for any network beyond)."""
    hidden_dim: int = 16


class ProposalDensity(nn.Module):
    """A small density field: hash grid -> one hidden layer -> density, in the same contracted space and with the
    same density convention as :class:`~ovseg3d.field.radiance.RadianceField`."""

    def __init__(self, cfg: ProposalConfig, max_resolution: int, device: torch.device | str, grid_impl: str):
        super().__init__()
        scale = (max_resolution / cfg.base_resolution) ** (1.0 / max(1, cfg.n_levels - 1))
        grid_cfg = HashGridConfig(
            cfg.n_levels, cfg.features_per_level, cfg.log2_hashmap_size, cfg.base_resolution, scale
        )
        self.grid = make_hash_grid(grid_cfg, device, grid_impl)
        self.mlp = nn.Sequential(
            nn.Linear(grid_cfg.output_dim, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 1)
        )
        self.to(device)

    def forward(self, x: Tensor, aabb: Tensor, contraction: str) -> Tensor:
        """``[P, 3]`` world points -> ``[P]`` density."""
        xn, inside, scale = to_unit_scaled(x, aabb, contraction)
        sigma = trunc_exp(self.mlp(self.grid(xn).float())[:, 0])
        return sigma * inside if scale is None else sigma / scale


@dataclass
class Spacing:
    """Per-ray map between distance ``t`` and normalised distance ``s`` (see the module's docstring).

    ``t0``: the ray's start, ``t_split``: where it leaves the region of interest (``t0`` when it never enters
    it), ``t_far``: its end; ``share``: the share of ``s`` before ``t_split`` (0 for a ray that misses the box).
    All ``[R, 1]``. The map's per-ray factors are computed once (:meth:`to_t` runs once a proposal round)."""

    t0: Tensor
    t_split: Tensor
    t_far: Tensor
    share: Tensor

    def __post_init__(self) -> None:
        self._inside = (self.t_split - self.t0) / self.share.clamp(min=1e-6)  # dt / ds before the split
        # ds -> the share of the disparity's range beyond the split; a ray that ends in the box (share 1) has none,
        # and its last edge (s = 1) maps to t_split from either side
        self._outside = 1.0 / (1.0 - self.share).clamp(min=1e-6)
        self._d0 = 1.0 / self.t_split.clamp(min=1e-6)  # disparity at the split
        self._dd = 1.0 / self.t_far.clamp(min=1e-6) - self._d0  # and its change to the ray's end

    def to_t(self, s: Tensor) -> Tensor:
        """``[R, K]`` normalised distances -> distances along the ray."""
        inside = self.t0 + self._inside * s
        frac = ((s - self.share) * self._outside).clamp(0.0, 1.0)
        outside = 1.0 / (self._d0 + frac * self._dd)
        return torch.where(s < self.share, inside, outside)


def make_spacing(
    origins: Tensor, dirs: Tensor, aabb: Tensor, t_far_max: float, near: Tensor | None, far: Tensor | None
) -> Spacing:
    """The :class:`Spacing` of rays ``[R, 3]`` for a region of interest ``aabb`` and farthest distance
    ``t_far_max``; ``near``, ``far``: optional ``[R]`` limits."""
    n = origins.shape[0]
    t0 = near.clone() if near is not None else origins.new_zeros(n)
    t_far = origins.new_full((n,), t_far_max)
    if far is not None:
        t_far = torch.minimum(t_far, far)
    t0 = torch.minimum(t0, t_far * 0.999)
    _, t_exit = ray_aabb(origins, dirs, aabb)
    t_split = torch.minimum(torch.maximum(t_exit, t0), t_far)
    share = torch.where(t_split > t0 * (1 + 1e-4) + 1e-6, INSIDE_SHARE, 0.0)
    share = torch.where(t_split >= t_far * 0.999, 1.0, share)  # ends inside the box (a far bound): linear only
    return Spacing(t0[:, None], t_split[:, None], t_far[:, None], share[:, None])


def uniform_edges(n_rays: int, n: int, stratified: bool, device: torch.device) -> Tensor:
    """``[R, n + 1]`` interval edges in ``s``: ``n`` even intervals over ``[0, 1]``, shifted by one random offset per
    ray (less than an interval) while training, the edges clamped to ``[0, 1]``."""
    edges = torch.linspace(0.0, 1.0, n + 1, device=device).expand(n_rays, n + 1)
    if stratified:
        edges = (edges + (torch.rand(n_rays, 1, device=device) - 0.5) / n).clamp(0.0, 1.0)
    return edges.contiguous()


def _nerfacc_for(t: Tensor, backend: str):  # noqa: ANN202 - the nerfacc module or None
    """nerfacc when ``backend`` allows it and its CUDA ops run on ``t``'s device, else ``None``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown proposal backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return accel.nerfacc(t.device) if backend == "auto" else None


def sample_from_histogram(edges: Tensor, weights: Tensor, n: int, stratified: bool, backend: str = "auto") -> Tensor:
    """Inverse transform sampling: ``[R, n + 1]`` new edges in ``s`` drawn from the piecewise-constant density
    whose bins are ``edges`` ``[R, K + 1]`` and whose masses are ``weights`` ``[R, K]`` (padded by
    :data:`HISTOGRAM_PADDING`, so that no bin is never sampled). The new edges sit at evenly spaced quantiles
    (jittered by one random offset per ray while training), so the new intervals are short where the mass is."""
    w = weights.detach().clamp(min=0.0) + HISTOGRAM_PADDING
    cdf = torch.cumsum(w, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf / cdf[:, -1:]], -1)  # [R, K + 1], 0 .. 1
    if _nerfacc_for(edges, backend) is not None:
        from nerfacc.data_specs import RayIntervals
        from nerfacc.pdf import importance_sampling

        # n + 1 samples at the quantiles (i + 0.5) / (n + 1), one jitter per ray: the edges below
        _, drawn = importance_sampling(
            RayIntervals(vals=edges.float().contiguous()), cdf.float().contiguous(), n + 1, stratified
        )
        return drawn.vals.detach()
    r = edges.shape[0]
    if stratified:
        u = (torch.arange(n + 1, device=edges.device) + torch.rand(r, 1, device=edges.device)) / (n + 1)
    else:
        u = ((torch.arange(n + 1, device=edges.device) + 0.5) / (n + 1)).expand(r, n + 1)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[1] - 1)
    c0, c1 = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    e0, e1 = edges.gather(1, idx - 1), edges.gather(1, idx)
    frac = ((u - c0) / (c1 - c0).clamp(min=1e-12)).clamp(0.0, 1.0)
    return (e0 + frac * (e1 - e0)).detach()


def dense_weights(sigma: Tensor, t_edges: Tensor) -> Tensor:
    """``[R, K]`` volume-rendering weights of densities ``[R, K]`` at intervals with edges ``t_edges`` ``[R, K + 1]``."""
    tau = sigma * (t_edges[:, 1:] - t_edges[:, :-1])
    alpha = 1.0 - torch.exp(-tau)
    trans = torch.exp(-(torch.cumsum(tau, -1) - tau))
    return trans * alpha


def outer_bound(edges: Tensor, env_edges: Tensor, env_weights: Tensor, backend: str = "auto") -> Tensor:
    """``[R, K]`` for each interval ``[edges_i, edges_i+1]`` the total of ``env_weights`` ``[R, J]`` over the
    intervals of ``env_edges`` ``[R, J + 1]`` that overlap it: the most weight the coarser histogram puts there."""
    cum = torch.cat([torch.zeros_like(env_weights[:, :1]), torch.cumsum(env_weights, -1)], -1)  # [R, J + 1]
    j = env_weights.shape[1]
    if _nerfacc_for(edges, backend) is not None:
        from nerfacc.data_specs import RayIntervals
        from nerfacc.pdf import searchsorted

        # env[left] <= value < env[right], clipped to the envelope's range (as nerfacc's own _pdf_loss uses it)
        left, right = searchsorted(RayIntervals(vals=env_edges.contiguous()), RayIntervals(vals=edges.contiguous()))
        return cum.gather(1, right[:, 1:]) - cum.gather(1, left[:, :-1])
    # the first envelope interval overlapping [a, b) starts at or before a; the last one starts before b
    lo = (torch.searchsorted(env_edges.contiguous(), edges[:, :-1].contiguous(), right=True) - 1).clamp(0, j - 1)
    hi = torch.searchsorted(env_edges.contiguous(), edges[:, 1:].contiguous(), right=False).clamp(1, j)
    return cum.gather(1, hi) - cum.gather(1, lo)


def interlevel_loss(
    field_edges: Tensor,
    field_weights: Tensor,
    proposals: list[tuple[Tensor, Tensor]],
    eps: float = 1e-7,
    backend: str = "auto",
) -> Tensor:
    """mip-NeRF 360's proposal loss: for each proposal histogram ``(edges [R, J + 1], weights [R, J])``, the
    field's weight ``w`` (``[R, K]`` on ``field_edges`` ``[R, K + 1]``, both held fixed) above the proposal's bound
    over the same stretch, ``sum max(0, w - bound)^2 / w`` per ray, averaged over rays and summed over proposals.
    Only the proposals learn from it."""
    w = field_weights.detach()
    total = w.new_zeros(())
    for edges, weights in proposals:
        bound = outer_bound(field_edges.detach(), edges.detach(), weights, backend)
        total = total + ((w - bound).clamp(min=0.0).square() / (w + eps)).sum(-1).mean()
    return total


@dataclass
class ProposalRound:
    """One proposal network's histogram of a batch of rays: edges in ``s`` ``[R, K + 1]`` and weights ``[R, K]``."""

    edges: Tensor
    weights: Tensor


class ProposalSampler(nn.Module):
    """Samples for the radiance field from proposal networks, with the interface of
    :class:`~ovseg3d.render.occupancy.OccupancyGrid` that rendering uses (:meth:`march`, :meth:`observe`)."""

    def __init__(
        self,
        aabb: Tensor,
        contraction: str,
        cfg: ProposalConfig | None = None,
        device: torch.device | str = "cpu",
        grid_impl: str = "auto",
        backend: str = "auto",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown proposal backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        """``auto``: nerfacc's sampling kernels on CUDA when installed, else dense torch; ``torch``: always torch."""
        self.cfg = cfg or ProposalConfig()
        self.contraction = check_contraction(contraction)
        self.register_buffer("aabbs", aabb.float().reshape(1, 6).clone())
        self._far: tuple[tuple[int, int] | None, float] = (None, 0.0)  # far_distance's, and the box it was read from
        resolutions = [
            self.cfg.max_resolutions[min(i, len(self.cfg.max_resolutions) - 1)] for i in range(len(self.cfg.samples))
        ]
        self.nets = nn.ModuleList(ProposalDensity(self.cfg, r, device, grid_impl) for r in resolutions)
        self.to(device)

    @property
    def aabb(self) -> Tensor:
        return self.aabbs[0]

    def far_distance(self) -> float:
        """World distance beyond which nothing is modelled: where the contracted radius reaches
        :data:`MAX_RADIUS` (a bounded scene: the far corner of its box, the rays' exit decides). Read from the
        box once and kept until the box changes (a value read back from a GPU waits for it: once a step would
        stall every step)."""
        if self.contraction == "none":
            return float("inf")
        key = (self.aabbs.data_ptr(), self.aabbs._version)
        if self._far[0] != key:
            _, half = roi_center_half(self.aabb)
            self._far = (key, float(half.max()) / (2.0 - MAX_RADIUS))
        return self._far[1]

    def spacing(self, origins: Tensor, dirs: Tensor, near: Tensor | None, far: Tensor | None) -> Spacing:
        t_far = self.far_distance()
        if self.contraction == "none":  # a bounded box: the ray ends where it leaves it
            _, t_exit = ray_aabb(origins, dirs, self.aabb)
            far = t_exit if far is None else torch.minimum(far, t_exit)
            t_far = float("inf")
        return make_spacing(origins, dirs, self.aabb, min(t_far, 1e30), near, far)

    def propose(
        self, origins: Tensor, dirs: Tensor, near: Tensor | None, far: Tensor | None, stratified: bool
    ) -> tuple[Spacing, Tensor, list[ProposalRound]]:
        """The field's interval edges in ``s`` ``[R, field_samples + 1]``, and each proposal round's histogram
        (differentiable in the proposal networks' parameters when gradients are on)."""
        spacing = self.spacing(origins, dirs, near, far)
        n_rays, device = origins.shape[0], origins.device
        edges = uniform_edges(n_rays, self.cfg.samples[0], stratified, device)
        rounds: list[ProposalRound] = []
        for i, net in enumerate(self.nets):
            if i > 0:
                edges = sample_from_histogram(edges, rounds[-1].weights, self.cfg.samples[i], stratified, self.backend)
            t = spacing.to_t(edges)
            mid = 0.5 * (t[:, 1:] + t[:, :-1])
            points = origins[:, None, :] + mid[..., None] * dirs[:, None, :]
            sigma = net(points.reshape(-1, 3), self.aabb, self.contraction).view(mid.shape)
            rounds.append(ProposalRound(edges, dense_weights(sigma, t)))
        field_edges = sample_from_histogram(edges, rounds[-1].weights, self.cfg.field_samples, stratified, self.backend)
        return spacing, field_edges, rounds

    def samples(self, spacing: Spacing, field_edges: Tensor) -> RaySamples:
        """The field's intervals as packed :class:`RaySamples` (every ray has ``field_samples`` of them)."""
        t = spacing.to_t(field_edges)
        n_rays, k = t.shape[0], t.shape[1] - 1
        ray_indices = torch.arange(n_rays, device=t.device).repeat_interleave(k)
        return RaySamples(ray_indices, t[:, :-1].reshape(-1), t[:, 1:].reshape(-1), n_rays)

    @torch.no_grad()
    def march(
        self,
        origins: Tensor,
        dirs: Tensor,
        step_size: float = 0.0,
        near: Tensor | None = None,
        far: Tensor | None = None,
        stratified: bool = False,
        max_per_ray: int = 0,
    ) -> RaySamples:
        """The field's samples of rays ``[R, 3]`` (``step_size`` and ``max_per_ray`` are the occupancy grid's
        settings: the proposal networks decide the samples here, ``field_samples`` per ray)."""
        spacing, field_edges, _ = self.propose(origins, dirs, near, far, stratified)
        return self.samples(spacing, field_edges)

    def observe(self, points: Tensor, transmittance: Tensor) -> None:
        """Nothing to record (the occupancy grid's visibility record has no counterpart here)."""

    def occupied_fraction(self) -> float:
        """No grid: every cell counts as occupied (the training log's ``occupied``)."""
        return 1.0
