"""Volume rendering of packed samples (REFERENCE.md §7).

Samples of many rays are stored flat ("packed") and sorted by ray: ``ray_indices[M]`` says which
ray each sample belongs to. For a ray with samples ``i`` (interval length ``delta_i``)::

    alpha_i = 1 - exp(-sigma_i * delta_i)
    T_i     = exp(-sum_{j<i} sigma_j * delta_j)
    w_i     = T_i * alpha_i
    C       = sum_i w_i * c_i

The exclusive per-ray sum is a global cumulative sum minus its value at the ray's first sample,
done in float64 so that long packed arrays keep their precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RaySamples:
    """Packed samples, sorted by ray.

    Attributes:
        ray_indices: ``[M]`` long.
        t_starts, t_ends: ``[M]`` float32 interval bounds (world distance along the unit ray).
        n_rays: number of rays the samples belong to.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int

    def __len__(self) -> int:
        return int(self.ray_indices.shape[0])

    @property
    def t_mid(self) -> Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    @property
    def deltas(self) -> Tensor:
        return self.t_ends - self.t_starts

    def positions(self, origins: Tensor, dirs: Tensor) -> Tensor:
        """``[M, 3]`` world positions of the interval midpoints."""
        return origins[self.ray_indices] + self.t_mid[:, None] * dirs[self.ray_indices]

    def select(self, keep: Tensor) -> RaySamples:
        """The samples at ``keep``: a bool mask ``[M]`` or sample indices (see :func:`mask_indices`)."""
        index = mask_indices(keep) if keep.dtype == torch.bool else keep
        return RaySamples(self.ray_indices[index], self.t_starts[index], self.t_ends[index], self.n_rays)


def mask_indices(mask: Tensor) -> Tensor:
    """``[K]`` long: where ``mask`` is true. Cutting several arrays with these indices costs one read back from a
    GPU (the count); cutting each with the mask costs one read per array."""
    return torch.nonzero(mask).squeeze(1)


def ray_counts(ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[n_rays]`` long: how many samples each ray has. ``bincount`` on a CPU (the fastest there); on a GPU a
    scatter into ``n_rays`` zeros, because CUDA's ``bincount`` reads the largest index back to the host first
    (a synchronisation every call)."""
    if ray_indices.device.type == "cpu":
        return torch.bincount(ray_indices, minlength=n_rays)
    return torch.zeros(n_rays, dtype=torch.long, device=ray_indices.device).index_add_(
        0, ray_indices, torch.ones_like(ray_indices)
    )


def ray_first_sample(ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[n_rays]`` index of each ray's first sample in the packed array (sorted ``ray_indices``)."""
    counts = ray_counts(ray_indices, n_rays)
    return torch.cumsum(counts, 0) - counts


def exclusive_cumsum(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[M]`` per-ray sum of the ray's earlier samples, ``sum_{j<i} values_j`` (float64 scan)."""
    if values.numel() == 0:
        return values
    v = values.double()
    excl = torch.cumsum(v, 0) - v
    return (excl - excl[ray_first_sample(ray_indices, n_rays)[ray_indices]]).to(values.dtype)


def transmittance_and_alpha(sigmas: Tensor, deltas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Per-sample transmittance ``T_i`` and opacity ``alpha_i``. Shapes ``[M]``, differentiable."""
    tau = sigmas * deltas
    if tau.numel() == 0:
        return tau, tau
    trans = torch.exp(-exclusive_cumsum(tau, ray_indices, n_rays))
    alpha = 1.0 - torch.exp(-tau)
    return trans, alpha


def render_weights(sigmas: Tensor, deltas: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[M]`` compositing weights ``w_i = T_i * alpha_i``."""
    trans, alpha = transmittance_and_alpha(sigmas, deltas, ray_indices, n_rays)
    return trans * alpha


def visibility_mask(
    sigmas: Tensor, deltas: Tensor, ray_indices: Tensor, n_rays: int, early_stop_eps: float, alpha_thre: float
) -> Tensor:
    """``[M]`` bool: samples still seen (``T >= early_stop_eps``) and not empty (``alpha >= alpha_thre``)."""
    trans, alpha = transmittance_and_alpha(sigmas, deltas, ray_indices, n_rays)
    keep = trans >= early_stop_eps
    if alpha_thre > 0:
        keep &= alpha >= alpha_thre
    return keep


def accumulate(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Sum ``weights * values`` per ray. ``values`` ``[M, C]`` (or None: sums the weights) -> ``[n_rays, C]``."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def distortion_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """mip-NeRF 360's distortion loss per ray, ``[n_rays]``, in O(M) for packed samples.

    With interval midpoints ``m_i`` and lengths ``d_i`` of one ray (sorted by ``t``)::

        L = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 d_i
          = 2 sum_i w_i (m_i W_{<i} - S_{<i}) + 1/3 sum_i w_i^2 d_i

    where ``W_{<i}`` and ``S_{<i}`` are the ray's exclusive sums of ``w`` and ``w m``. It is small
    when a ray's weight sits in one short stretch (a surface) and large for fog spread along it.
    """
    if weights.numel() == 0:
        return weights.new_zeros(n_rays)
    mid = 0.5 * (t_starts + t_ends)
    w_before = exclusive_cumsum(weights, ray_indices, n_rays)
    wm_before = exclusive_cumsum(weights * mid, ray_indices, n_rays)
    per_sample = 2.0 * weights * (mid * w_before - wm_before) + weights.square() * (t_ends - t_starts) / 3.0
    return accumulate(per_sample, None, ray_indices, n_rays)[:, 0]
