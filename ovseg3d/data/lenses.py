"""Camera lens models: distortion, projection and unprojection in normalised image coordinates.

Conventions (REFERENCE.md §8):

* Normalised coordinates use OpenCV axes: ``x = (u - cx) / fx`` grows right, ``y = (v - cy) / fy`` grows
  down; camera-space directions are ``[x, y, z]`` with ``z`` forward.
* A lens is a kind (long) and 8 float coefficients. ``kind`` ``[...]`` and ``coeffs`` ``[..., 8]`` broadcast
  against the points, so one camera (``kind`` ``[]``, ``coeffs`` ``[8]``) serves a whole image and per-point
  values mix cameras of different kinds in one batch.

Models, with ``r² = x² + y²``:

* ``LENS_PINHOLE``: no distortion; coefficients ignored.
* ``LENS_OPENCV``: radial-tangential with the rational radial term, coefficients ``[k1, k2, p1, p2, k3, k4,
  k5, k6]`` (the order of OpenCV's ``distCoeffs`` and COLMAP's FULL_OPENCV; ``k4..k6 = 0`` is OpenCV's
  5-coefficient model, COLMAP OPENCV also has ``k3 = 0``)::

      radial = (1 + k1 r² + k2 r⁴ + k3 r⁶) / (1 + k4 r² + k5 r⁴ + k6 r⁶)
      x_d = x radial + 2 p1 x y + p2 (r² + 2 x²)
      y_d = y radial + p1 (r² + 2 y²) + 2 p2 x y

* ``LENS_FISHEYE``: OpenCV fisheye / Kannala-Brandt, coefficients ``[k1, k2, k3, k4, 0, 0, 0, 0]``. For a
  direction ``[x, y, z]`` at angle ``θ = atan2(√(x² + y²), z)`` from the axis::

      θ_d = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸),   (x_d, y_d) = θ_d (x, y) / √(x² + y²)

  so it sees beyond 90° (``z <= 0``).

A model is only invertible while its radial map grows: :func:`invertible_limit` finds, per camera, the
undistorted radius (OpenCV) or angle (fisheye) where the derivative first reaches zero. Points beyond it are
folded back into the image by the polynomial and are flagged invalid by :func:`project` and :func:`unproject`.
Undistortion has no closed form: :func:`unproject` runs safeguarded Newton iterations (2-D with the analytic
Jacobian for OpenCV, 1-D on ``θ`` for fisheye), all points at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ovseg3d.errors import UsageError

LENS_PINHOLE, LENS_OPENCV, LENS_FISHEYE = 0, 1, 2
LENS_KINDS = (LENS_PINHOLE, LENS_OPENCV, LENS_FISHEYE)
N_COEFFS = 8

_OPENCV_R_MAX = 20.0  # normalised radius (87° off-axis) beyond which an OpenCV lens is not searched for a fold
_LIMIT_GRID = 1024  # samples of the radial derivative per camera before bisection
_DEDUP_ROWS = 1  # more coefficient rows than this: compute limits once per distinct row (rays share cameras)

_Model = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, ...]]


# ----------------------------------------------------------------------------------------------- public API


def distort(xy: Tensor, kind: Tensor, coeffs: Tensor) -> Tensor:
    """Undistorted -> distorted normalised coordinates.

    Args:
        xy: ``[..., 2]`` undistorted normalised coordinates; for a fisheye lens the direction's ``x/z, y/z``
            (``z > 0``).
        kind: ``[...]`` long lens kind, broadcast against ``xy``.
        coeffs: ``[..., 8]`` float coefficients, broadcast against ``xy``.

    Returns:
        ``[..., 2]`` distorted normalised coordinates; pinhole rows are ``xy`` exactly.
    """
    kind, coeffs = _prepare(xy, kind, coeffs)
    limit = torch.zeros((), dtype=xy.dtype, device=xy.device)  # distort() reports no validity
    models: dict[int, _Model] = {
        LENS_PINHOLE: lambda p, c, lim: (p.clone(),),
        LENS_OPENCV: lambda p, c, lim: (_distort_opencv(p, c),),
        LENS_FISHEYE: lambda p, c, lim: (_distort_fisheye(p, c),),
    }
    return _dispatch(models, xy, kind, coeffs, limit)[0]


def project(dirs: Tensor, kind: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """Camera-space directions -> distorted normalised coordinates.

    Args:
        dirs: ``[..., 3]`` directions or points in camera space (OpenCV axes, ``z`` forward), any length.
        kind: ``[...]`` long lens kind; coeffs: ``[..., 8]`` (both broadcast against ``dirs``).

    Returns:
        ``xy_d`` ``[..., 2]`` and ``valid`` ``[...]`` bool: ``z > 0`` for pinhole; ``z > 0`` and inside the
        invertible radius for OpenCV; ``θ`` below the invertible angle (at most ``π``) for fisheye. Rows that
        are not valid hold finite values without meaning.
    """
    kind, coeffs = _prepare(dirs, kind, coeffs)
    limit = invertible_limit(kind, coeffs).to(dirs.dtype)
    models: dict[int, _Model] = {
        LENS_PINHOLE: _project_pinhole,
        LENS_OPENCV: _project_opencv,
        LENS_FISHEYE: _project_fisheye,
    }
    xy_d, valid = _dispatch(models, dirs, kind, coeffs, limit)
    return xy_d, valid


def unproject(xy_d: Tensor, kind: Tensor, coeffs: Tensor, iters: int = 10) -> tuple[Tensor, Tensor]:
    """Distorted normalised coordinates -> unit camera-space directions (the inverse of :func:`project`).

    Args:
        xy_d: ``[..., 2]`` distorted normalised coordinates, e.g. ``((u - cx) / fx, (v - cy) / fy)``.
        kind: ``[...]`` long lens kind; coeffs: ``[..., 8]`` (both broadcast against ``xy_d``).
        iters: most Newton iterations (the loop stops once every point has converged).

    Returns:
        ``dirs`` ``[..., 3]`` unit directions (OpenCV axes; a fisheye ray past 90° has ``z <= 0``) and
        ``valid`` ``[...]`` bool: Newton reached ``|distort(x) - xy_d| <= ~1e-6 (1 + |xy_d|)`` inside the
        lens's invertible region. Pinhole rows are always valid.
    """
    kind, coeffs = _prepare(xy_d, kind, coeffs)
    limit = invertible_limit(kind, coeffs).to(xy_d.dtype)
    models: dict[int, _Model] = {
        LENS_PINHOLE: lambda p, c, lim: (_to_unit(p), torch.ones(p.shape[:-1], dtype=torch.bool, device=p.device)),
        LENS_OPENCV: lambda p, c, lim: _unproject_opencv(p, c, lim, iters),
        LENS_FISHEYE: lambda p, c, lim: _unproject_fisheye(p, c, lim, iters),
    }
    dirs, valid = _dispatch(models, xy_d, kind, coeffs, limit)
    return dirs, valid


def invertible_limit(kind: Tensor, coeffs: Tensor) -> Tensor:
    """Per camera, where the lens stops being invertible (its radial map stops growing).

    Args:
        kind: ``[...]`` long lens kind; coeffs: ``[..., 8]``.

    Returns:
        ``[...]`` (the broadcast shape) float64: for OpenCV the largest undistorted radius ``√(x² + y²)``
        (``x/z, y/z``) before ``d r_d / d r`` or the rational denominator reaches 0, ``inf`` when that does not
        happen up to radius 20; for fisheye the largest ``θ`` before ``d θ_d / d θ`` reaches 0, at most ``π``;
        ``inf`` for pinhole. Found on a grid of 1024 samples, then by bisection.
    """
    kind = torch.as_tensor(kind, dtype=torch.long, device=coeffs.device)
    batch = torch.broadcast_shapes(kind.shape, coeffs.shape[:-1])
    out = torch.full(batch, math.inf, dtype=torch.float64, device=coeffs.device)
    for k, limit_fn in ((LENS_OPENCV, _opencv_limit), (LENS_FISHEYE, _fisheye_limit)):
        is_k = kind == k
        if bool(is_k.any()):
            out = torch.where(is_k, _per_distinct_row(limit_fn, coeffs), out)
    return out


# ------------------------------------------------------------------------------------------------ dispatch


def _prepare(points: Tensor, kind: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """Kind as a long tensor and coefficients in the points' dtype, both on the points' device; checks them."""
    if not points.is_floating_point():
        raise TypeError(f"points must be floating point, got {points.dtype}")
    coeffs = torch.as_tensor(coeffs, dtype=points.dtype, device=points.device)
    if coeffs.shape[-1:] != (N_COEFFS,):
        raise UsageError(f"coeffs must have shape [..., {N_COEFFS}], got {tuple(coeffs.shape)}")
    kind = torch.as_tensor(kind, dtype=torch.long, device=points.device)
    if kind.numel() and bool(((kind < LENS_PINHOLE) | (kind > LENS_FISHEYE)).any()):
        raise UsageError(f"unknown lens kind in {torch.unique(kind).tolist()}; known: {LENS_KINDS}")
    return kind, coeffs


def _dispatch(models: dict[int, _Model], points: Tensor, kind: Tensor, coeffs: Tensor, limit: Tensor):
    """Run each kind's model on its rows only and gather the results into the broadcast batch shape.

    ``points`` ``[..., P]``, ``kind`` ``[...]``, ``coeffs`` ``[..., 8]`` and ``limit`` ``[...]`` broadcast
    together. One kind in the whole batch (one camera, or many of the same kind) runs without any indexing.
    """
    batch = torch.broadcast_shapes(points.shape[:-1], kind.shape, coeffs.shape[:-1], limit.shape)
    points = points.expand(*batch, points.shape[-1])
    if kind.numel() == 0 or bool(kind.min() == kind.max()):
        return models[int(kind.reshape(-1)[0]) if kind.numel() else LENS_PINHOLE](points, coeffs, limit)
    kind = kind.expand(batch)
    coeffs = coeffs.expand(*batch, N_COEFFS)
    limit = limit.expand(batch)
    outs: list[Tensor] | None = None
    for k in LENS_KINDS:
        rows = kind == k
        if not bool(rows.any()):
            continue
        results = models[k](points[rows], coeffs[rows], limit[rows])
        if outs is None:
            outs = [r.new_zeros(*batch, *r.shape[1:]) for r in results]
        for out, r in zip(outs, results):
            out[rows] = r
    assert outs is not None
    return tuple(outs)


def _per_distinct_row(fn: Callable[[Tensor], Tensor], coeffs: Tensor) -> Tensor:
    """``fn`` over ``[M, 8]`` float64 rows -> ``[M]``, applied to ``coeffs`` ``[..., 8]`` -> ``[...]``; with
    many rows (per-point coefficients) it runs once per distinct row."""
    rows = coeffs.reshape(-1, N_COEFFS).double()
    if rows.shape[0] > _DEDUP_ROWS:
        distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
        return _cached(fn, distinct)[inverse].reshape(coeffs.shape[:-1])
    return _cached(fn, rows).reshape(coeffs.shape[:-1])


_LIMITS: dict[tuple, Tensor] = {}  # (function, device, coefficient bytes) -> limits: cameras keep their lenses


def _cached(fn: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """``fn(rows)``, remembered for rows seen before (a training run asks for the same cameras every step)."""
    key = (fn.__name__, str(rows.device), rows.cpu().numpy().tobytes())
    if key not in _LIMITS:
        if len(_LIMITS) > 256:
            _LIMITS.clear()
        _LIMITS[key] = fn(rows)
    return _LIMITS[key]


def _first_fold(bad: Callable[[Tensor, Tensor], Tensor], coeffs: Tensor, grid: Tensor, default: float) -> Tensor:
    """Per row of ``coeffs`` ``[M, 8]``, the last good value before ``bad(t, coeffs)`` first holds on ``grid``
    ``[G]`` (``grid[0]`` good), refined by bisection; ``default`` where ``bad`` never holds. ``[M]``."""
    c = coeffs[:, None, :]
    is_bad = bad(grid[None, :], c)  # [M, G]
    found = is_bad.any(dim=-1)
    first = is_bad.to(torch.uint8).argmax(dim=-1).clamp(min=1)
    lo, hi = grid[first - 1], grid[first]
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        mid_bad = bad(mid[:, None], c)[:, 0]
        lo, hi = torch.where(mid_bad, lo, mid), torch.where(mid_bad, mid, hi)
    return torch.where(found, lo, torch.full_like(lo, default))


# ------------------------------------------------------------------------------------------- OpenCV model


def _rational(s: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Numerator, denominator of the radial term and their derivatives in ``s = r²``."""
    k1, k2, k3, k4, k5, k6 = c[..., 0], c[..., 1], c[..., 4], c[..., 5], c[..., 6], c[..., 7]
    num = 1 + s * (k1 + s * (k2 + s * k3))
    den = 1 + s * (k4 + s * (k5 + s * k6))
    d_num = k1 + s * (2 * k2 + s * (3 * k3))
    d_den = k4 + s * (2 * k5 + s * (3 * k6))
    return num, den, d_num, d_den


def _opencv_fold(r: Tensor, c: Tensor) -> Tensor:
    """Where ``d r_d / d r <= 0`` or the denominator ``<= 0`` (radial part, ``[M, 1, 8]`` coefficients)."""
    s = r * r
    num, den, d_num, d_den = _rational(s, c)
    slope = num * den + 2 * s * (d_num * den - num * d_den)  # d(r num / den)/dr, times den²
    return (slope <= 0) | (den <= 0) | ~torch.isfinite(slope)


def _opencv_limit(coeffs: Tensor) -> Tensor:
    t = torch.linspace(0.0, 1.0, _LIMIT_GRID, dtype=torch.float64, device=coeffs.device)
    return _first_fold(_opencv_fold, coeffs, _OPENCV_R_MAX * t * t, math.inf)


def _opencv_tangential(x: Tensor, y: Tensor, s: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    p1, p2 = c[..., 2], c[..., 3]
    xy2 = 2 * x * y
    return p1 * xy2 + p2 * (s + 2 * x * x), p1 * (s + 2 * y * y) + p2 * xy2


def _distort_opencv(xy: Tensor, c: Tensor) -> Tensor:
    x, y = xy[..., 0], xy[..., 1]
    s = x * x + y * y
    num, den, _, _ = _rational(s, c)
    radial = num / den
    tx, ty = _opencv_tangential(x, y, s, c)
    return torch.stack([x * radial + tx, y * radial + ty], dim=-1)


def _project_pinhole(dirs: Tensor, c: Tensor, limit: Tensor) -> tuple[Tensor, Tensor]:
    z = dirs[..., 2:]
    front = z > 0
    xy = dirs[..., :2] / torch.where(front, z, torch.ones_like(z))
    return xy, front[..., 0]


def _project_opencv(dirs: Tensor, c: Tensor, limit: Tensor) -> tuple[Tensor, Tensor]:
    xy, front = _project_pinhole(dirs, c, limit)
    inside = xy.square().sum(dim=-1) < limit.square()
    return _distort_opencv(xy, c), front & inside


def _radial_map(r: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The radial part of the OpenCV model, ``r_d = r radial(r²)``, and ``d r_d / d r``."""
    s = r * r
    num, den, d_num, d_den = _rational(s, c)
    slope = (num * den + 2 * s * (d_num * den - num * d_den)) / (den * den)
    return r * num / den, slope


def _unproject_opencv(xy_d: Tensor, c: Tensor, limit: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Two stages: the radial map inverted by :func:`_solve_monotone` (up to the invertible radius, searched
    up to radius 20) gives ``x = x_d r / r_d``; where ``p1`` or ``p2`` is set, :func:`_newton_tangential` then adds
    the tangential terms."""
    batch = xy_d.shape[:-1]
    xy_d, c, limit = _flatten(xy_d, c, limit)
    tol = _tolerance(xy_d)
    r_d = torch.linalg.vector_norm(xy_d, dim=-1)
    r, converged = _solve_monotone(_radial_map, r_d, limit.clamp(max=_OPENCV_R_MAX), tol, c, iters)
    shrink = torch.where(r_d > 0, r / torch.where(r_d > 0, r_d, torch.ones_like(r_d)), torch.ones_like(r_d))
    xy = xy_d * shrink[:, None]
    tangential = (c[:, 2:4] != 0).any(dim=-1).expand(len(xy))  # without p1, p2 the radial solution is the answer
    if bool(tangential.all()):
        xy, converged = _newton_tangential(xy, xy_d, c, limit * (1 - 1e-4), tol, iters)
    elif bool(tangential.any()):
        rows = tangential.nonzero().squeeze(1)
        xy_t, converged_t = _newton_tangential(
            xy[rows], xy_d[rows], _take(c, rows), _take(limit, rows) * (1 - 1e-4), tol[rows], iters
        )
        xy, converged = xy.index_put((rows,), xy_t), converged.index_put((rows,), converged_t)
    valid = converged & (xy.square().sum(dim=-1) < limit.square()) & torch.isfinite(xy).all(dim=-1)
    return _to_unit(xy).reshape(*batch, 3), valid.reshape(batch)


def _newton_tangential(
    xy: Tensor, xy_d: Tensor, c: Tensor, r_max: Tensor, tol: Tensor, iters: int
) -> tuple[Tensor, Tensor]:
    """Newton on ``distort(xy) = xy_d`` from ``xy`` with the analytic (symmetric) 2x2 Jacobian; a fixed-point
    step ``xy = (xy_d - tangential) / radial`` where the Jacobian is near singular; iterates kept inside the
    radius ``r_max``. Flat ``[N, 2]`` points, ``[N, 8]`` coefficients, ``[N]`` ``r_max`` and ``tol``.

    Returns the solution ``[N, 2]`` and ``max |distort(xy) - xy_d| <= tol`` ``[N]``."""

    def step(state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        x, y, xd, yd, c, r_max, tol = state
        p1, p2 = c[:, 2], c[:, 3]
        s = x * x + y * y
        num, den, d_num, d_den = _rational(s, c)
        radial = num / den
        d_radial = (d_num * den - num * d_den) / (den * den)  # d radial / d s
        tx, ty = _opencv_tangential(x, y, s, c)
        ex, ey = x * radial + tx - xd, y * radial + ty - yd
        converged = torch.maximum(ex.abs(), ey.abs()) <= tol
        a = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x  # the Jacobian [[a, b], [b, d]]
        b = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        d = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = a * d - b * b
        regular = det.abs() > 1e-6 * (a * a + b * b + d * d)
        det = torch.where(regular, det, torch.ones_like(det))
        radial = torch.where(radial.abs() > 1e-6, radial, torch.ones_like(radial))
        nx = torch.where(regular, x - (d * ex - b * ey) / det, (xd - tx) / radial)
        ny = torch.where(regular, y - (a * ey - b * ex) / det, (yd - ty) / radial)
        nr = torch.sqrt(nx * nx + ny * ny)
        shrink = torch.where(nr > r_max, r_max / nr.clamp(min=1e-30), torch.ones_like(nr))
        return converged, (nx * shrink, ny * shrink, *state[2:])

    state = (xy[:, 0], xy[:, 1], xy_d[:, 0], xy_d[:, 1], c, r_max, tol)
    (x, y), converged = _iterate(step, state, 2, iters)
    return torch.stack([x, y], dim=-1), converged


def _solve_monotone(
    fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    hi: Tensor,
    tol: Tensor,
    c: Tensor,
    iters: int,
) -> tuple[Tensor, Tensor]:
    """Solve ``fn(t, c) = target`` for ``t`` in ``[0, hi]``, where ``fn`` (value and slope) grows from
    ``fn(0) = 0``: Newton from ``t = target`` kept in a shrinking bracket, with a bisection step whenever
    Newton would leave the bracket or does not halve the previous step (``rtsafe`` of Numerical Recipes,
    which stops Newton cycling on the S-shaped curves of strong lenses). Flat ``[N]`` values, ``[N, 8]`` ``c``.

    Returns ``t`` and ``|fn(t, c) - target| <= tol``, both ``[N]``."""

    def step(state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        t, lo, hi, step_before, target, tol, c = state
        value, slope = fn(t, c)
        err = value - target
        converged = err.abs() <= tol
        lo = torch.where(err < 0, t, lo)
        hi = torch.where(err > 0, t, hi)
        newton = t - err / torch.where(slope > 0, slope, torch.ones_like(slope))
        fast = (slope > 0) & (newton > lo) & (newton < hi) & (2 * err.abs() <= step_before * slope.abs())
        new_t = torch.where(fast, newton, 0.5 * (lo + hi))
        return converged, (new_t, lo, hi, (new_t - t).abs(), target, tol, c)

    hi = hi.to(target.dtype).expand_as(target)
    t = torch.where(target < hi, target, 0.5 * hi)
    (t,), converged = _iterate(step, (t, torch.zeros_like(t), hi, hi.clone(), target, tol, c), 1, iters)
    return t, converged


_Step = Callable[[tuple[Tensor, ...]], tuple[Tensor, tuple[Tensor, ...]]]


def _iterate(step: _Step, state: tuple[Tensor, ...], n_out: int, iters: int) -> tuple[tuple[Tensor, ...], Tensor]:
    """Run an iterative solver on flat per-point state until every point has converged or after ``iters``
    updates; once at most half the points still move, only those are carried on (so the last stragglers,
    often points with no solution, cost little).

    Args:
        step: ``state -> (converged, next_state)``, ``converged`` ``[n]`` judged at ``state``.
        state: tensors ``[n, ...]``; the first ``n_out`` are the solution (frozen once converged), the rest
            whatever the step carries along (brackets, targets, coefficients), ``[n, ...]`` or ``[1, ...]``
            when shared by all points.

    Returns:
        the solution tensors ``[N, ...]`` and ``converged`` ``[N]``.
    """
    n = state[0].shape[0]
    rows = torch.arange(n, device=state[0].device)
    out = [s.clone() for s in state[:n_out]]
    out_converged = torch.zeros(n, dtype=torch.bool, device=state[0].device)
    converged = out_converged
    for it in range(iters + 1):
        converged, nxt = step(state)
        if it == iters or bool(converged.all()):
            break
        frozen = tuple(torch.where(_rows_like(converged, s), s, s_next) for s, s_next in zip(state, nxt[:n_out]))
        state = frozen + nxt[n_out:]
        if 2 * int(converged.sum()) >= converged.shape[0]:
            done = rows[converged]
            for o, s in zip(out, state[:n_out]):
                o[done] = s[converged]
            out_converged[done] = True
            keep = (~converged).nonzero().squeeze(1)
            rows, state = rows[keep], tuple(_take(s, keep) for s in state)
    for o, s in zip(out, state[:n_out]):
        o[rows] = s
    out_converged[rows] = converged
    return tuple(out), out_converged


def _take(t: Tensor, rows: Tensor) -> Tensor:
    """``t[rows]``, or ``t`` itself when it is one row shared by all points (``[1, ...]``)."""
    return t if t.shape[0] == 1 else t[rows]


def _rows_like(mask: Tensor, like: Tensor) -> Tensor:
    """``[n]`` mask viewed to broadcast against ``like`` ``[n, ...]``."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _flatten(points: Tensor, c: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Points ``[..., P]`` -> ``[N, P]``; coefficients and limits -> ``[N, 8]`` and ``[N]``, or ``[1, 8]`` and
    ``[1]`` when one lens serves every point (it then broadcasts, with no per-point copy)."""
    batch = points.shape[:-1]
    points = points.reshape(-1, points.shape[-1])
    if c[..., 0].numel() == 1 and limit.numel() == 1:
        return points, c.reshape(1, N_COEFFS), limit.reshape(1)
    return points, c.expand(*batch, N_COEFFS).reshape(-1, N_COEFFS), limit.expand(batch).reshape(-1)


# ------------------------------------------------------------------------------------------ fisheye model


def _theta_d(theta: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``θ_d(θ)`` and ``d θ_d / d θ`` of the Kannala-Brandt polynomial."""
    k1, k2, k3, k4 = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    slope = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * (9 * k4))))
    return theta_d, slope


def _fisheye_fold(theta: Tensor, c: Tensor) -> Tensor:
    slope = _theta_d(theta, c)[1]
    return (slope <= 0) | ~torch.isfinite(slope)


def _fisheye_limit(coeffs: Tensor) -> Tensor:
    grid = torch.linspace(0.0, math.pi, _LIMIT_GRID, dtype=torch.float64, device=coeffs.device)
    return _first_fold(_fisheye_fold, coeffs, grid, math.pi)


def _fisheye_scale(theta: Tensor, r: Tensor, c: Tensor, at_axis: Tensor | float) -> Tensor:
    """``θ_d / r``, with ``at_axis`` (its limit) where ``r = 0``."""
    has_r = r > 0
    scale = _theta_d(theta, c)[0] / torch.where(has_r, r, torch.ones_like(r))
    return torch.where(has_r, scale, at_axis)


def _distort_fisheye(xy: Tensor, c: Tensor) -> Tensor:
    r = torch.linalg.vector_norm(xy, dim=-1)
    return xy * _fisheye_scale(torch.atan(r), r, c, 1.0)[..., None]


def _project_fisheye(dirs: Tensor, c: Tensor, limit: Tensor) -> tuple[Tensor, Tensor]:
    r = torch.linalg.vector_norm(dirs[..., :2], dim=-1)
    z = dirs[..., 2]
    theta = torch.atan2(r, z)
    at_axis = 1 / torch.where(z > 0, z, torch.ones_like(z))  # θ / r -> 1 / z on the axis
    xy_d = dirs[..., :2] * _fisheye_scale(theta, r, c, at_axis)[..., None]
    return xy_d, (theta < limit) & ((r > 0) | (z > 0))


def _unproject_fisheye(xy_d: Tensor, c: Tensor, limit: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """``θ_d(θ) = |xy_d|`` solved by :func:`_solve_monotone` on ``[0, limit]``, where ``θ_d`` grows."""
    batch = xy_d.shape[:-1]
    xy_d, c, limit = _flatten(xy_d, c, limit)
    target = torch.linalg.vector_norm(xy_d, dim=-1)
    theta, converged = _solve_monotone(_theta_d, target, limit, _tolerance(xy_d), c, iters)
    has_r = target > 0
    scale = torch.where(has_r, torch.sin(theta) / torch.where(has_r, target, torch.ones_like(target)), 1.0)
    dirs = torch.cat([xy_d * scale[:, None], torch.cos(theta)[:, None]], dim=-1)
    return dirs.reshape(*batch, 3), (converged & (theta < limit)).reshape(batch)


# ----------------------------------------------------------------------------------------------- helpers


def _to_unit(xy: Tensor) -> Tensor:
    """``[..., 2]`` normalised coordinates -> ``[..., 3]`` unit directions ``(x, y, 1) / |(x, y, 1)|``."""
    d = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
    return d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)


def _tolerance(xy_d: Tensor) -> Tensor:
    """Newton's residual tolerance: ``~1e-6 (1 + |xy_d|)`` in float32, tighter in float64. ``[...]``."""
    eps = 8 * torch.finfo(xy_d.dtype).eps
    return max(eps, 1e-12) * (1 + torch.linalg.vector_norm(xy_d, dim=-1))
