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

    def select(self, mask: Tensor) -> RaySamples:
        return RaySamples(self.ray_indices[mask], self.t_starts[mask], self.t_ends[mask], self.n_rays)


def ray_first_sample(ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[n_rays]`` index of each ray's first sample in the packed array (sorted ``ray_indices``)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts


def transmittance_and_alpha(sigmas: Tensor, deltas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Per-sample transmittance ``T_i`` and opacity ``alpha_i``. Shapes ``[M]``, differentiable."""
    tau = sigmas * deltas
    if tau.numel() == 0:
        return tau, tau
    cum = torch.cumsum(tau.double(), 0)
    excl = cum - tau.double()
    base = excl[ray_first_sample(ray_indices, n_rays)[ray_indices]]
    trans = torch.exp(-(excl - base)).float()
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
