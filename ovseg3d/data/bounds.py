"""The region of interest (ROI) of a scene whose box is not given (REFERENCE.md §8).

Real captures come in arbitrary units with a background that runs to the horizon; the box grown from
camera positions alone misses the subject, which stands where the cameras look. When the cameras converge
the ROI is a cube centred on the point nearest all optical axes, of half the median camera distance to it
(``subject_share``): the cameras stand outside it, in the contracted space, and the grids spend their
resolution on the subject (a box that held the cameras, as in mip-NeRF 360's normalisation, gave the fox a
quarter of the cells). When they do not converge (a forward-facing capture) the box holds the cameras and
the central mass of the sparse points. Beyond it, the field models the world through a contraction
(:mod:`ovseg3d.field.space`).
"""

from __future__ import annotations

import numpy as np


def look_at_point(c2w: np.ndarray, min_spread: float = 0.02, min_front: float = 0.75) -> np.ndarray | None:
    """The point nearest all optical axes (least squares), or ``None`` when the axes are about parallel
    (a forward-facing capture) or the point is not in front of most cameras.

    With unit viewing directions ``d_i`` (``-z`` of the OpenGL ``[N, 3, 4]`` c2w) and centres ``c_i`` the point
    solves ``sum_i (I - d_i d_i^T) p = sum_i (I - d_i d_i^T) c_i``; the axes are parallel when the smallest
    eigenvalue of the sum, over ``N``, is below ``min_spread``.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    dirs = -c2w[:, :, 2] / np.linalg.norm(c2w[:, :, 2], axis=-1, keepdims=True)
    centers = c2w[:, :, 3]
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # [N, 3, 3]
    a = proj.sum(0)
    if np.linalg.eigvalsh(a)[0] / len(c2w) < min_spread:
        return None
    point = np.linalg.solve(a, np.einsum("nij,nj->i", proj, centers))
    front = ((point - centers) * dirs).sum(-1) > 0
    return point if front.mean() >= min_front else None


def region_of_interest(
    c2w: np.ndarray,
    points: np.ndarray | None = None,
    subject_share: float = 0.5,
    margin: float = 1.1,
    min_ratio: float = 0.25,
) -> tuple[np.ndarray, str]:
    """``[6]`` box (min xyz, max xyz) of a scene's region of interest, and where it came from.

    Converging cameras: a cube about :func:`look_at_point` of half size ``subject_share`` times the median camera
    distance to it. Otherwise: centred on the median of ``points`` ``[P, 3]`` (sparse structure), else on a point
    ahead of the cameras, with half sizes per axis reaching the farthest camera and the 5-95 % box of the points,
    times ``margin``, no side shorter than ``min_ratio`` of the longest.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    centers = c2w[:, :, 3]
    has_points = points is not None and len(points) >= 10
    center = look_at_point(c2w)
    if center is not None:
        radius = subject_share * float(np.median(np.linalg.norm(centers - center, axis=-1)))
        return np.concatenate([center - radius, center + radius]), "a cube about where the cameras look"
    if has_points:
        center, how = np.median(points, axis=0), "the sparse points and the cameras"
    else:  # forward-facing without structure: a guess ahead of the cameras
        spread = float(np.linalg.norm(centers.max(0) - centers.min(0))) or 1.0
        forward = -c2w[:, :, 2].mean(0)
        center = centers.mean(0) + 2.0 * spread * forward / max(np.linalg.norm(forward), 1e-9)
        how = "a guess ahead of forward-facing cameras (no sparse points)"
    half = np.abs(centers - center).max(0)
    if has_points:
        lo, hi = np.percentile(points, [5.0, 95.0], axis=0)
        half = np.maximum(half, np.maximum(np.abs(lo - center), np.abs(hi - center)))
    half = half * margin
    half = np.maximum(np.maximum(half, min_ratio * half.max()), 1e-6)
    return np.concatenate([center - half, center + half]), how
