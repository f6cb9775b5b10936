"""Upright oriented boxes fitted to an instance's points in a gravity-aligned frame (+z up), and the front of
objects that have one."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ovseg3d.detect.metrics import rot_z
from ovseg3d.errors import UsageError


@dataclass
class Box:
    """An upright box: ``center [3]``, ``size [3]`` = (L, W, H) with L along the box's local x, turned by
    ``yaw`` (radians) about +z. For an object with a front, local +x is the front."""

    center: np.ndarray
    size: np.ndarray
    yaw: float


def _extents(xy: np.ndarray, angles: np.ndarray, trim: float) -> tuple[np.ndarray, ...]:
    """Low and high ``trim`` quantiles of ``xy`` projected on the axes ``(cos a, sin a)`` and
    ``(-sin a, cos a)`` for each angle (min and max for ``trim`` 0)."""
    c, s = np.cos(angles), np.sin(angles)
    u = xy[:, :1] * c + xy[:, 1:] * s
    v = -xy[:, :1] * s + xy[:, 1:] * c
    if trim <= 0:
        return u.min(0), u.max(0), v.min(0), v.max(0)
    (u0, u1), (v0, v1) = np.quantile(u, [trim, 1 - trim], axis=0), np.quantile(v, [trim, 1 - trim], axis=0)
    return u0, u1, v0, v1


def min_area_yaw(xy: np.ndarray, steps: int = 90, trim: float = 0.01) -> float:
    """The yaw in [0, pi/2) of the least-area footprint rectangle: searched in ``steps``, refined tenfold."""
    xy = xy - xy.mean(0)
    angles = np.arange(steps) * (math.pi / 2 / steps)
    for _ in range(2):
        u0, u1, v0, v1 = _extents(xy, angles, trim)
        best = int(np.argmin((u1 - u0) * (v1 - v0)))
        step = angles[1] - angles[0]
        a = float(angles[best])
        angles = a + np.linspace(-step, step, 21)
    return a % (math.pi / 2)


def front_yaw(
    xyz: np.ndarray, steps: int = 72, quarter: float = 0.25, top: float = 0.95, trim: float = 0.0
) -> tuple[float, float]:
    """The direction an object faces, from its height profile: for each of ``steps`` horizontal directions,
    how much lower the top of its leading ``quarter`` (by extent) is than the top of its trailing one, as a
    fraction of its height. A mug's handle sits below its rim, a chair's seat below its backrest; elevated
    views see tops from every side, so unlike point counts this does not follow where the cameras were.
    Returns the middle of the best directions (scores smoothed over three steps) and that score."""
    if len(xyz) > 8000:
        xyz = xyz[np.random.default_rng(0).choice(len(xyz), 8000, replace=False)]
    xy = xyz[:, :2] - xyz[:, :2].mean(0)
    z = xyz[:, 2] - xyz[:, 2].min()
    height = max(float(z.max()), 1e-9)
    angles = np.arange(steps) * (2 * math.pi / steps)
    proj = xy @ np.stack([np.cos(angles), np.sin(angles)])  # [N, steps]
    lo, hi = np.quantile(proj, [trim, 1 - trim], axis=0)  # stray points do not set the extent
    cut = quarter * (hi - lo)
    lead = np.where(proj > hi - cut, z[:, None], np.nan)
    trail = np.where(proj < lo + cut, z[:, None], np.nan)
    score = (np.nanquantile(trail, top, axis=0) - np.nanquantile(lead, top, axis=0)) / height
    smooth = (np.roll(score, 1) + score + np.roll(score, -1)) / 3
    best = float(smooth.max())
    near = smooth >= best - 0.02
    # circular mean of the best directions
    yaw = math.atan2(float(np.sin(angles[near]).sum()), float(np.cos(angles[near]).sum()))
    return yaw, best


def fit_upright_box(xyz: np.ndarray, yaw: float | None = None, trim: float = 0.01) -> Box:
    """The upright box holding ``xyz [N, 3]`` (+z up) between the ``trim`` and ``1 - trim`` quantiles of
    every axis (fused points scatter about a surface), turned by ``yaw`` or, by default, by the yaw of least
    footprint area (:func:`min_area_yaw`, tighter than PCA's when only some sides were seen)."""
    if len(xyz) < 3:
        raise UsageError("a box needs at least 3 points")
    a = min_area_yaw(xyz[:, :2], trim=trim) if yaw is None else yaw
    mean = xyz[:, :2].mean(0)
    u0, u1, v0, v1 = (float(e[0]) for e in _extents(xyz[:, :2] - mean, np.array([a]), trim))
    mid = rot_z(a)[:2, :2] @ np.array([(u0 + u1) / 2, (v0 + v1) / 2]) + mean
    z0, z1 = np.quantile(xyz[:, 2], [trim, 1 - trim]) if trim > 0 else (xyz[:, 2].min(), xyz[:, 2].max())
    center = np.array([mid[0], mid[1], (z0 + z1) / 2])
    return Box(center, np.array([u1 - u0, v1 - v0, z1 - z0]), float(a))


def local_coords(xyz: np.ndarray, box: Box) -> np.ndarray:
    """``xyz`` in the box's frame (origin at its centre, axes along L, W, H)."""
    return (xyz - box.center) @ rot_z(box.yaw)


def footprint_anisotropy(xy: np.ndarray, steps: int = 18) -> float:
    """Largest over smallest area of the footprint's bounding rectangle over a quarter turn: about 1 for a
    round object (a mug, a ball), up to 2 for a square box seen square-on."""
    xy = xy - xy.mean(0)
    u0, u1, v0, v1 = _extents(xy, np.arange(steps) * (math.pi / 2 / steps), 0.0)
    areas = (u1 - u0) * (v1 - v0)
    return float(areas.max() / max(float(areas.min()), 1e-12))


def refine_front(xyz: np.ndarray, yaw: float, quarter: float = 0.25) -> float:
    """A front direction sharpened: from the centre of the object's top (its top tenth: a mug's rim) to the
    centre of its leading ``quarter`` along ``yaw`` (the handle)."""
    xy = xyz[:, :2]
    z = xyz[:, 2] - xyz[:, 2].min()
    proj = (xy - xy.mean(0)) @ np.array([math.cos(yaw), math.sin(yaw)])
    lead = xy[proj > proj.max() - quarter * np.ptp(proj)]
    top = xy[z > 0.9 * z.max()]
    v = lead.mean(0) - top.mean(0)
    return math.atan2(float(v[1]), float(v[0])) if np.linalg.norm(v) > 0 else yaw


def face(
    box: Box, yaw: float, xyz: np.ndarray, snap_deg: float = 20.0, agree_deg: float = 30.0, boxy: float = 1.2
) -> Box:
    """``box`` turned to face ``yaw`` (:func:`front_yaw`'s), sharpened by :func:`refine_front`.

    A boxy footprint (:func:`footprint_anisotropy` at least ``boxy``: a chair) takes the nearest of its four
    side directions, the better-measured axes, when ``yaw`` is within ``snap_deg`` of it and the refined
    front within ``agree_deg``. A mug seen from one side has a boxy footprint too (its half shell and
    handle), but its sides say nothing of where the handle points, and the two fronts disagree there.
    Otherwise the box is refitted along the refined front (on the benchmark's fused clouds it was the
    closer of the two wherever this happened).
    """
    refined = refine_front(xyz, yaw)
    if footprint_anisotropy(xyz[:, :2]) >= boxy:
        turns = [math.remainder(yaw - (box.yaw + k * math.pi / 2), 2 * math.pi) for k in range(4)]
        k = int(np.argmin(np.abs(turns)))
        side = math.remainder(box.yaw + k * math.pi / 2, 2 * math.pi)
        agree = abs(math.remainder(refined - side, 2 * math.pi))
        if abs(turns[k]) <= math.radians(snap_deg) and agree <= math.radians(agree_deg):
            size = box.size[[1, 0, 2]] if k % 2 else box.size.copy()
            return Box(box.center.copy(), size, side)
    return fit_upright_box(xyz, yaw=refined)


def fit_round(points: np.ndarray, centre: np.ndarray, radius: float, iters: int = 50) -> tuple[np.ndarray, float]:
    """The centre of the circle (``points [N, 2]``) or sphere (``[N, 3]``) of a given ``radius`` that the points
    lie on, from ``centre`` (on the shell's concave side: the box of a half-seen shell): Gauss-Newton on the
    points' distances to it, Huber weights at their median absolute residual, so that points floating in front
    of a surface, or a can's lid inside its rim, do not pull it. Returns the centre and that median residual
    over the radius."""
    c = np.asarray(centre, np.float64).copy()
    for _ in range(iters):
        d = points - c
        dist = np.maximum(np.linalg.norm(d, axis=1), 1e-12)
        res = dist - radius
        scale = 1.4826 * float(np.median(np.abs(res))) + 1e-12
        w = np.sqrt(np.minimum(1.0, scale / np.maximum(np.abs(res), 1e-12)))
        step = np.linalg.lstsq(-(d / dist[:, None]) * w[:, None], -res * w, rcond=None)[0]
        c += step
        if np.linalg.norm(step) < 1e-7 * radius:
            break
    return c, float(np.median(np.abs(np.linalg.norm(points - c, axis=1) - radius))) / radius


def complete_round(box: Box, xyz: np.ndarray, shape: str, max_spread: float = 0.15) -> Box:
    """The amodal box of a round object of which ``xyz`` (+z up) is the visible shell. Seen from one side, a
    shell spans its whole diameter across the view, so the radius is half the box's longest side (a ball's) or
    longer footprint side (a ``cylinder`` about +z: a vase at its widest), and only the centre is fitted to the
    shell (:func:`fit_round`): a ``sphere``'s box is that sphere's cube; a ``cylinder``'s footprint is the square
    around that circle, its height the box's. The box is kept where the shell is not round after all (median
    distance from the fitted shell over ``max_spread`` of the radius) or the centre lands more than a radius from
    the box's (a half shell's centre is at the box's back face). A shell seen over less than half a turn gives a
    radius too small.
    """
    if len(xyz) < 10:
        return box
    if shape == "sphere":
        radius = float(box.size.max()) / 2
        centre, spread = fit_round(xyz, box.center, radius)
        fitted = Box(centre, np.full(3, 2 * radius), box.yaw)
    else:
        radius = float(box.size[:2].max()) / 2
        c2, spread = fit_round(xyz[:, :2], box.center[:2], radius)
        centre = np.array([c2[0], c2[1], box.center[2]])
        fitted = Box(centre, np.array([2 * radius, 2 * radius, box.size[2]]), box.yaw)
    if spread > max_spread or np.linalg.norm(centre - box.center) > radius:
        return box
    return fitted
