"""Which way is up: ImOV3D's rotation correction from the normals of horizontal surfaces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ovseg3d.errors import UsageError


@dataclass
class LocalPlanes:
    """Planes fitted to the points of each voxel that holds enough of them."""

    normals: np.ndarray  # [V, 3] unit, sign arbitrary
    planarity: np.ndarray  # [V] in [0, 1], 1 = flat
    counts: np.ndarray  # [V] points in the voxel
    point_voxel: np.ndarray  # [N] index of each point's voxel in the arrays above, -1 if its voxel was too sparse


def voxel_normals(xyz: np.ndarray, cell: float, min_points: int = 8) -> LocalPlanes:
    """Local planes on a voxel grid of edge ``cell``: the smallest principal axis of each voxel's points."""
    keys = np.floor(xyz / cell).astype(np.int64)
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    p = xyz - xyz.mean(0)
    n_vox = len(counts)
    s1 = np.stack([np.bincount(inv, p[:, i], n_vox) for i in range(3)], 1)
    s2 = np.stack([np.bincount(inv, p[:, i] * p[:, j], n_vox) for i in range(3) for j in range(3)], 1)
    keep = counts >= min_points
    mean = s1[keep] / counts[keep, None]
    cov = s2[keep].reshape(-1, 3, 3) / counts[keep, None, None] - mean[:, :, None] * mean[:, None, :]
    evals, evecs = np.linalg.eigh(cov)
    planarity = np.clip(1.0 - evals[:, 0] / np.maximum(evals[:, 1], 1e-12), 0.0, 1.0)
    remap = np.full(n_vox, -1)
    remap[keep] = np.arange(int(keep.sum()))
    return LocalPlanes(evecs[:, :, 0], planarity, counts[keep], remap[inv])


class NoFlatSurface(UsageError):
    """The cloud has too few flat patches to tell up from, or (with a hint) none near the hint. ``reason`` says
    which, without the remedy (``--up X Y Z``) the message adds: a caller with the cameras' up falls back on it."""

    def __init__(self, reason: str):
        super().__init__(f"{reason}: give the up direction (--up X Y Z)")
        self.reason = reason


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit ``a`` onto unit ``b`` (Rodrigues: ``I + [v]x + [v]x^2 (1-c)/s^2``)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    s2 = float(v @ v)
    if s2 < 1e-18:
        if c > 0:
            return np.eye(3)
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)  # half turn about an axis normal to a
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1 - c) / s2


def estimate_up(
    xyz: np.ndarray,
    cell: float,
    hint: np.ndarray | None = None,
    hint_deg: float = 35.0,
    inlier_deg: float = 10.0,
    ground: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
    level: np.ndarray | None = None,
) -> np.ndarray:
    """The unit up vector of a scene: the direction shared by the most area of flat surfaces (floors, table
    tops), refined by a mean shift over their normals with a shrinking window. ``hint`` (e.g. the cameras' up,
    :func:`~ovseg3d.data.loader.camera_up`) keeps only directions within ``hint_deg`` of it and picks the sign; without it the sign puts the support plane
    below the rest of the points. ``ground`` (``[N]`` bool, e.g. the points labelled floor) names the plane
    to level: without it the plane is the one where most flat points lie, which in a sparse cloud can be a
    book's top. A labelled floor whose plane leans more than ``inlier_deg`` from the flat surfaces' mode (floor
    labels spilling onto a wall's foot) is not used, and a result more than ``hint_deg`` from the hint is said
    in one line through ``log``. ``level`` (``[N, 3]``, the cameras' right vectors): photos are taken nearly
    level, so up is also nearly at right angles to every one of them; the flat surfaces' up is moved to agree
    (:func:`level_with_cameras`). :class:`NoFlatSurface` when the cloud has too few flat patches, or none within
    ``hint_deg`` of the hint (a caller with the cameras' up may take that instead, as ``ovseg3d detect`` does).

    With a ``hint`` the work is done in a frame fixed to the cameras (:func:`camera_frame`): the voxel grid of
    the local planes turns with the world, so the result does not depend on the world frame the cloud comes in
    (a COLMAP model's is arbitrary)."""
    if hint is not None:
        hint = np.asarray(hint, np.float64)
        frame = camera_frame(hint, level, xyz)
        up = _estimate_up(
            xyz @ frame.T,
            cell,
            frame @ hint,
            hint_deg,
            inlier_deg,
            ground,
            log,
            None if level is None else level @ frame.T,
        )
        return frame.T @ up
    return _estimate_up(xyz, cell, hint, hint_deg, inlier_deg, ground, log, level)


def camera_frame(hint: np.ndarray, level: np.ndarray | None = None, xyz: np.ndarray | None = None) -> np.ndarray:
    """``[3, 3]`` rotation into a frame fixed to the scene: +z along ``hint``, +x along the cameras' mean right
    vector (``level``, ``[N, 3]``) made normal to it, or without cameras the main axis of the points ``xyz`` across
    ``hint`` (signed by their skew); else the world axis furthest from ``hint``. These turn with the world, so a
    cloud expressed in this frame is the same in every world frame."""
    z = hint / np.linalg.norm(hint)
    x = np.zeros(3)
    if level is not None and len(level):
        r = np.asarray(level, np.float64)
        x = (r / np.linalg.norm(r, axis=1, keepdims=True)).mean(0)
        x = x - (x @ z) * z
    elif xyz is not None and len(xyz) >= 3:
        flat = xyz - xyz.mean(0)
        flat = flat - np.outer(flat @ z, z)
        x = np.linalg.eigh(flat.T @ flat)[1][:, 2]
        skew = float(np.mean((flat @ x) ** 3))
        x = x if skew >= 0 else -x
    if np.linalg.norm(x) < 1e-6:
        x = np.eye(3)[int(np.argmin(np.abs(z)))]
        x = x - (x @ z) * z
    x = x / np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def _estimate_up(
    xyz: np.ndarray,
    cell: float,
    hint: np.ndarray | None,
    hint_deg: float,
    inlier_deg: float,
    ground: np.ndarray | None,
    log: Callable[[str], None] | None,
    level: np.ndarray | None,
) -> np.ndarray:
    """:func:`estimate_up` in the frame it was given."""
    planes = voxel_normals(xyz, cell)
    flat = planes.planarity > 0.9
    if flat.sum() < 3:
        raise NoFlatSurface("no flat surfaces found to estimate gravity from")
    n, w = planes.normals[flat], planes.counts[flat].astype(np.float64)
    cands = n
    if hint is not None:
        hint = np.asarray(hint, np.float64) / np.linalg.norm(hint)
        near = np.abs(n @ hint) > np.cos(np.radians(hint_deg))
        if not near.any():
            nearest = float(np.degrees(np.arccos(min(1.0, float(np.abs(n @ hint).max())))))
            raise NoFlatSurface(
                f"no flat surface within {hint_deg:.0f} deg of the cameras' up (the nearest is {nearest:.0f} deg off)"
            )
        cands = n[near]
    rng = np.random.default_rng(0)
    cands = cands[rng.choice(len(cands), min(256, len(cands)), replace=False)]
    cos_in = np.cos(np.radians(inlier_deg))
    support = (np.abs(cands @ n.T) > cos_in).astype(np.float64) @ w
    up = cands[int(np.argmax(support))]
    inl = np.abs(n @ up) > cos_in
    for deg in (inlier_deg, inlier_deg / 2, inlier_deg / 4, inlier_deg / 4):  # shrinking mean shift to the mode
        window = np.abs(n @ up) > np.cos(np.radians(deg))
        aligned = n[window] * np.sign(n[window] @ up)[:, None]
        mean = (aligned * w[window, None]).sum(0)
        if not window.any() or np.linalg.norm(mean) < 1e-12:
            break  # a narrower window holds no normal: keep the mode of the last one
        inl, up = window, mean / np.linalg.norm(mean)
    on_plane = np.isin(planes.point_voxel, np.flatnonzero(flat)[inl])
    mode, up = up, None
    levelled_by_ground = False
    facing = _facing(planes, mode, inlier_deg)
    if ground is not None and ground.sum() >= 30:
        # the labelled floor, whatever its share of the flat area: the plane at the height where most of its points
        # lie (a label that spills onto the feet of objects and walls leaves that height's band alone)
        floor = settle_plane_normal(
            xyz[ground], mode, np.ones(int(ground.sum()), bool), facing[ground], cell, inlier_deg
        )
        if abs(float(floor @ mode)) >= cos_in:
            up, levelled_by_ground = floor, True
        elif log is not None:
            log(
                f"the points labelled floor lie on no level plane (theirs leans {_degrees(floor, mode):.0f} deg from "
                "the flat surfaces'): levelled by the flat surfaces"
            )
    if up is None:
        up = settle_plane_normal(xyz, mode, on_plane, facing, cell, inlier_deg)
    if level is not None:
        up = level_with_cameras(up, level, log=log)
    if hint is not None:
        up = up if up @ hint >= 0 else -up
        if log is not None and _degrees(up, hint) > hint_deg:
            log(f"up is {_degrees(up, hint):.0f} deg from the cameras' up: check it, or give --up X Y Z")
        return up
    height = xyz @ up
    if levelled_by_ground and ground is not None and (~ground).sum() >= 30:
        # the labelled floor is the support: what is not floor (objects, walls) stands above it
        return up if np.median(height[~ground]) >= np.median(height[ground]) else -up
    lo, hi = np.percentile(height, [2, 98])
    # the support plane (most flat area) is the floor or a table top: more of the scene lies above it
    plane_h = float(np.median(height[on_plane]))
    return up if (plane_h - lo) <= (hi - plane_h) else -up


SURFACE_DEG = 2.0
"""How far the flat surfaces' up may lie from the truth, in degrees (a sparse or partial floor)."""
MIN_ROLL_DEG = 0.5
"""The least roll noise assumed of the cameras, in degrees (even where they agree better)."""
INDEPENDENT_CAMERAS = 10
"""The cameras' rolls count as at most this many independent measurements: a photographer's rolls are not
independent (a tripod slightly off level rolls every photo alike)."""
UNLEVEL_DEG = 15.0
"""Cameras whose right vectors lie further than this (RMS) from level under the flat surfaces' up were not held
level (portrait photos stored unrotated, a nadir drone survey): they say nothing about up."""


def level_with_cameras(
    up: np.ndarray,
    rights: np.ndarray,
    surface_deg: float = SURFACE_DEG,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """``up`` (from flat surfaces) moved to agree with level cameras: the unit ``u`` that minimises
    ``w sum_i (r_i . u)^2 / sin^2(roll) + |u - up|^2 / sin^2(surface)`` over the right vectors ``r_i``, the
    least-squares combination of the two cues at their errors (to first order in the angles). ``roll`` is the
    cameras' own: the RMS of ``r_i . n`` about the level plane that fits them best (``n``, the smallest
    eigenvector of their outer products), at least ``MIN_ROLL_DEG``; ``w`` counts the cameras as at most
    ``INDEPENDENT_CAMERAS``.

    Cameras facing one way (a forward-facing capture) share one right vector: mostly the roll of ``up`` about
    the view direction is corrected, its pitch stays the surfaces'. Cameras turned about the vertical (an orbit,
    a walk) have right vectors spanning the level plane and fix up nearly alone. ``up`` is returned unchanged
    when the cameras lie more than ``UNLEVEL_DEG`` (RMS) from level under it."""
    r = np.asarray(rights, np.float64)
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    if not len(r):
        return up
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    rms = float(np.degrees(np.arcsin(min(1.0, np.sqrt(np.mean((r @ up) ** 2))))))
    if rms > UNLEVEL_DEG:
        if log is not None:
            log(
                f"the cameras are {rms:.0f} deg (RMS) from level under the flat surfaces' up: up from the surfaces alone"
            )
        return up
    outer = r.T @ r
    best = np.linalg.eigh(outer)[1][:, 0]
    roll = max(float(np.sqrt(np.mean((r @ best) ** 2))), np.sin(np.radians(MIN_ROLL_DEG)))
    a = outer * min(1.0, INDEPENDENT_CAMERAS / len(r)) / roll**2
    lam = 1.0 / np.sin(np.radians(surface_deg)) ** 2
    u = np.linalg.solve(a + lam * np.eye(3), lam * up)
    u = u / np.linalg.norm(u)
    return u if u @ up >= 0 else -u


def _degrees(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two directions, in degrees (sign ignored)."""
    cos = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(1.0, cos))))


def _facing(planes: LocalPlanes, up: np.ndarray, max_deg: float, min_planarity: float = 0.5) -> np.ndarray:
    """``[N]`` whether each point's local patch is roughly flat and faces ``up`` within ``2 * max_deg``: the
    points a level plane may hold (a wall's foot in the same height band does not)."""
    ok = (planes.planarity > min_planarity) & (np.abs(planes.normals @ up) > np.cos(np.radians(2 * max_deg)))
    return np.where(planes.point_voxel >= 0, ok[np.maximum(planes.point_voxel, 0)], False)


def refine_plane_normal(
    xyz: np.ndarray, up: np.ndarray, seeds: np.ndarray, cell: float, iters: int = 6, members: np.ndarray | None = None
) -> np.ndarray:
    """The normal of the largest plane facing ``up``: points within ``cell`` of the height where most
    ``seeds`` (points of flat voxels facing ``up``) lie, fitted by least squares with residuals beyond 2.5
    robust sigmas dropped at each pass. Local normals of fused points are noisy; the plane over the whole
    floor is not. ``members`` (``[N]`` bool): only these points may be fitted (e.g. :func:`_facing`)."""
    height = xyz @ up
    lo, hi = float(height[seeds].min()), float(height[seeds].max())
    if hi - lo < cell / 4:  # one level plane, exact to rounding: bins of a range that small have no width
        lo, hi = lo - cell / 2, hi + cell / 2
    hist, edges = np.histogram(height[seeds], bins=max(8, int((hi - lo) / (cell / 4)) + 1), range=(lo, hi))
    h0 = (edges[int(np.argmax(hist))] + edges[int(np.argmax(hist)) + 1]) / 2
    band = np.abs(height - h0) < cell
    if members is not None and (band & members).sum() >= 10:
        band &= members
    pts = xyz[band]
    tol = cell / 8
    inliers = largest_plane(pts, up, tol)
    normal = fit_plane_normal(pts[inliers], up, iters)
    for _ in range(2):  # the plane's points again, around the fitted plane rather than the 3 points' one
        centre = pts[inliers].mean(0)
        near = np.abs((pts - centre) @ normal) < 2 * tol
        if near.sum() < 10:
            break
        inliers = near
        normal = fit_plane_normal(pts[inliers], up, iters)
    return normal


def largest_plane(
    pts: np.ndarray, up: np.ndarray, tol: float, max_deg: float = 20.0, tries: int = 256, score_on: int = 20_000
) -> np.ndarray:
    """``[N]`` the inliers (within ``tol``) of the plane through 3 of ``pts`` that holds the most of them, among
    planes whose normal is within ``max_deg`` of ``up`` (RANSAC, a fixed seed: the same in every world frame). A
    height band can hold two level planes, a table top and, further off, a box top: a least-squares fit would
    tilt to pass through both. The planes are scored on ``score_on`` of the points drawn at random (the share
    of inliers, not their number, decides), the best one's inliers taken among all."""
    n = len(pts)
    if n < 10:
        return np.ones(n, bool)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n, size=(tries, 3))
    a, b, c = pts[idx[:, 0]], pts[idx[:, 1]], pts[idx[:, 2]]
    normals = np.cross(b - a, c - a)
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-12
    normals = normals[ok] / norm[ok, None]
    a = a[ok]
    level = np.abs(normals @ up) > np.cos(np.radians(max_deg))
    if not level.any():
        return np.ones(n, bool)
    normals, a = normals[level], a[level]
    scored = pts[rng.choice(n, score_on, replace=False)] if n > score_on else pts
    offsets = np.einsum("ij,ij->i", a, normals)
    counts = (np.abs(scored @ normals.T - offsets) < tol).sum(0)  # [M, planes] distances, one product
    best_k = int(np.argmax(counts))
    best = np.abs(pts @ normals[best_k] - offsets[best_k]) < tol
    return best if best.sum() >= 10 else np.ones(n, bool)


def settle_plane_normal(
    xyz: np.ndarray,
    mode: np.ndarray,
    seeds: np.ndarray,
    members: np.ndarray,
    cell: float,
    max_deg: float,
    rounds: int = 6,
) -> np.ndarray:
    """:func:`refine_plane_normal` repeated, each round's height band taken along the last round's normal,
    until the normal moves less than 0.05 deg: a fixed point of the fit, the same in every world frame (a band
    cut along a normal a few degrees off holds a slanted strip of the plane, and the voxel grid that gave the
    first normal is cut differently in each frame). A result more than ``max_deg`` from the flat surfaces'
    ``mode`` (a band that slid onto another structure) falls back to the first round's."""
    first = normal = refine_plane_normal(xyz, mode, seeds, cell, members=members)
    for _ in range(rounds):
        nxt = refine_plane_normal(xyz, normal, seeds, cell, members=members)
        moved = _degrees(nxt, normal)
        normal = nxt
        if moved < 0.05:
            break
    return normal if _degrees(normal, mode) <= max_deg else first


def fit_plane_normal(pts: np.ndarray, up: np.ndarray, iters: int = 6) -> np.ndarray:
    """The normal (on ``up``'s side) of a plane fitted to ``pts`` by least squares, residuals beyond 2.5
    robust sigmas dropped at each pass; ``up`` itself for fewer than 10 points."""
    if len(pts) < 10:
        return up
    normal = up
    keep = np.ones(len(pts), bool)
    for _ in range(iters):
        centre = pts[keep].mean(0)
        _, _, vt = np.linalg.svd(pts[keep] - centre, full_matrices=False)
        normal = vt[2] * np.sign(vt[2] @ up)
        res = np.abs((pts - centre) @ normal)
        sigma = 1.4826 * np.median(res[keep]) + 1e-12
        keep = res < 2.5 * sigma
        if keep.sum() < 10:
            break
    return normal / np.linalg.norm(normal)


def gravity_rotation(up: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation taking world coordinates to a frame whose +z is ``up``."""
    return rotation_between(np.asarray(up, np.float64), np.array([0.0, 0.0, 1.0]))
