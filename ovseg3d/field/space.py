"""Where the grids live: the region of interest (ROI) box, and the scene contraction beyond it
(mip-NeRF 360; REFERENCE.md §8).

Every grid of ovseg3d (the radiance and semantic hash grids, the occupancy grid) reads positions in the
unit cube ``[0, 1]^3``. :func:`to_unit` maps world points there, :func:`from_unit` maps back.

* ``"none"``: the ROI box ``aabb`` is the unit cube, per axis; points outside it are outside the field
  (zero density). For closed scenes whose box is known (LLFF depth bounds, a transforms.json ``"aabb"``).
* ``"sphere"`` (mip-NeRF 360) and ``"cube"`` (nerfacto's L-infinity variant): ROI-normalised points
  ``xn = (x - centre) / half`` (the ROI is ``[-1, 1]^3``) are contracted by
  ``contract(xn) = xn`` for ``|xn| <= 1``, else ``(2 - 1 / |xn|) xn / |xn|``, with the L2 (sphere) or
  L-infinity (cube) norm, into the ball / cube of radius 2, and ``u = (contract(xn) + 2) / 4``. The whole
  world lands in the grids: backgrounds and sky are modelled instead of becoming floaters in the box.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ovseg3d.errors import UsageError

CONTRACTIONS = ("none", "sphere", "cube")
MAX_RADIUS = 2.0 - 1e-3  # contracted radius of the farthest modelled point (1000 ROI half-sizes away)


def check_contraction(kind: str) -> str:
    if kind not in CONTRACTIONS:
        raise UsageError(f"contraction must be one of {', '.join(CONTRACTIONS)}, got {kind!r}")
    return kind


def _norm(x: Tensor, kind: str) -> Tensor:
    return x.norm(dim=-1, keepdim=True) if kind == "sphere" else x.abs().amax(dim=-1, keepdim=True)


def contract(xn: Tensor, kind: str) -> Tensor:
    """``[..., 3]`` ROI-normalised points -> contracted points in the radius-2 ball (sphere) or cube."""
    if kind == "none":
        return xn
    return _contract(xn, _norm(xn, kind))


def _contract(xn: Tensor, r: Tensor) -> Tensor:
    """:func:`contract` of points ``xn`` whose norm ``r`` ``[..., 1]`` is known."""
    r = r.clamp(min=1e-12)
    return torch.where(r <= 1.0, xn, (2.0 - 1.0 / r) * xn / r)


def uncontract(c: Tensor, kind: str) -> Tensor:
    """Inverse of :func:`contract` for ``|c| < 2`` (radii clamped to :data:`MAX_RADIUS`)."""
    if kind == "none":
        return c
    r = _norm(c, kind).clamp(min=1e-12)
    rc = r.clamp(max=MAX_RADIUS)
    return torch.where(r <= 1.0, c, c / r / (2.0 - rc))


def roi_center_half(aabb: Tensor) -> tuple[Tensor, Tensor]:
    """``[6]`` box -> its centre ``[3]`` and half sizes ``[3]``."""
    return 0.5 * (aabb[:3] + aabb[3:]), 0.5 * (aabb[3:] - aabb[:3])


def to_unit(x: Tensor, aabb: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """``[P, 3]`` world points -> ``[P, 3]`` grid coordinates in ``[0, 1]`` (clamped) and ``[P]`` inside mask
    (always true with a contraction)."""
    if kind == "none":
        lo, hi = aabb[:3], aabb[3:]
        u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(-1)
        return u.clamp(0.0, 1.0), inside
    center, half = roi_center_half(aabb)
    c = contract((x - center) / half, kind)
    return ((c + 2.0) * 0.25).clamp(0.0, 1.0), torch.ones_like(x[:, 0], dtype=torch.bool)


def to_unit_scaled(x: Tensor, aabb: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`to_unit` and :func:`step_scale` of the same points ``[P, 3]`` together, the ROI-normalised points and
    their norm computed once (a training step calls both for the field and each proposal network); the scale is
    ``None`` without a contraction."""
    if kind == "none":
        u, inside = to_unit(x, aabb, kind)
        return u, inside, None
    center, half = roi_center_half(aabb)
    xn = (x - center) / half
    r = _norm(xn, kind)
    u = ((_contract(xn, r) + 2.0) * 0.25).clamp(0.0, 1.0)
    return u, torch.ones_like(x[:, 0], dtype=torch.bool), r[:, 0].square().clamp(min=1.0)


def from_unit(u: Tensor, aabb: Tensor, kind: str) -> Tensor:
    """Inverse of :func:`to_unit`: ``[P, 3]`` grid coordinates -> world points."""
    if kind == "none":
        return aabb[:3] + u * (aabb[3:] - aabb[:3])
    center, half = roi_center_half(aabb)
    return center + half * uncontract(u * 4.0 - 2.0, kind)


def step_scale(x: Tensor, aabb: Tensor, kind: str) -> Tensor:
    """``[P]`` how many times longer than inside the ROI a marching step is at world points ``x``: 1 inside,
    ``|xn|^2`` beyond (the contraction's radial shrink ``d contract / d r = 1 / r^2``), so that steps are about
    even in contracted space."""
    if kind == "none":
        return torch.ones_like(x[:, 0])
    center, half = roi_center_half(aabb)
    r = _norm((x - center) / half, kind)[:, 0]
    return r.square().clamp(min=1.0)
