"""Ray casting and shading: analytic ray-primitive hits, Lambertian shading with shadow rays, the sky of an
outdoor scene, and rendering a view (:func:`render_view`: colour, depth, labels, instances)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovseg3d.errors import UsageError
from ovseg3d.synth.cameras import SynthCameras
from ovseg3d.synth.scene import Primitive, SynthScene, _local
from ovseg3d.synth.textures import _MATERIALS, _lerp

SKY_ZENITH = (0.27, 0.47, 0.85)  # outdoor: sky colour straight up
SKY_HORIZON = (0.8, 0.86, 0.92)  # outdoor: sky colour at (and below) the horizon
_EPS = 1e-7  # smallest accepted ray distance (m)
_SHADOW_OFFSET = 1e-4  # shadow rays start this far off the surface along its normal (m)
_CHUNK = 1 << 16  # rays per batch, keeps temporaries small


@dataclass
class SynthView:
    """One rendered view: ``rgb [H, W, 3]`` float32 in [0, 1] (supersampled), and from the pixel-centre
    ray ``depth [H, W]`` z-depth (m, along the viewing axis; negative beyond 90 degrees of a fisheye),
    ``label [H, W]`` uint8 class index (255 = none), ``instance [H, W]`` int32 (0 = none) and ``distance
    [H, W]`` float64 hit distance along the unit ray (``inf`` = miss)."""

    rgb: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    distance: np.ndarray | None = None


def _hit_sphere(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    r = half[0]
    b = np.einsum("ij,ij->i", o, d)
    disc = b * b - (np.einsum("ij,ij->i", o, o) - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _hit_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Slab test; rays starting inside the box miss (renders never start inside objects)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    t_near = np.max(np.minimum(t1, t2), axis=1)
    t_far = np.min(np.maximum(t1, t2), axis=1)
    return np.where((t_far >= t_near) & (t_near > _EPS), t_near, np.inf)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    r, hh = half[0], half[2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    disc = b * b - a * (o[:, 0] ** 2 + o[:, 1] ** 2 - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        ok = (disc >= 0) & (a > 1e-12) & (t_side > _EPS) & (np.abs(o[:, 2] + t_side * d[:, 2]) <= hh)
        best = np.where(ok, t_side, np.inf)
        for z_cap in (hh, -hh):
            t_cap = (z_cap - o[:, 2]) / d[:, 2]
            rho2 = (o[:, 0] + t_cap * d[:, 0]) ** 2 + (o[:, 1] + t_cap * d[:, 1]) ** 2
            ok = (t_cap > _EPS) & (rho2 <= r * r)
            best = np.where(ok, np.minimum(best, t_cap), best)
    return best


def _hit_plane(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """One-sided rectangle ``|x| <= a, |y| <= b`` in local z = 0, hit only from its +z side."""
    with np.errstate(divide="ignore", invalid="ignore"):  # rays parallel to the plane (outdoors: the horizon)
        t = -o[:, 2] / d[:, 2]
        x = o[:, 0] + t * d[:, 0]
        y = o[:, 1] + t * d[:, 1]
    tol = 1e-6
    ok = (d[:, 2] < 0) & (t > _EPS) & (np.abs(x) <= half[0] + tol) & (np.abs(y) <= half[1] + tol)
    return np.where(ok, t, np.inf)


_HIT = {"sphere": _hit_sphere, "box": _hit_box, "cylinder": _hit_cylinder, "plane": _hit_plane}


def _local_normal(prim: Primitive, p: np.ndarray) -> np.ndarray:
    """Outward unit normals ``[M, 3]`` in the local frame at local surface points ``p [M, 3]``."""
    half = prim.half_size
    n = np.zeros_like(p)
    if prim.kind == "plane":
        n[:, 2] = 1.0
    elif prim.kind == "sphere":
        n = p / np.linalg.norm(p, axis=1, keepdims=True)
    elif prim.kind == "box":
        q = p / half
        axis = np.argmax(np.abs(q), axis=1)
        rows = np.arange(len(p))
        n[rows, axis] = np.sign(q[rows, axis])
    elif prim.kind == "cylinder":
        rho = np.maximum(np.hypot(p[:, 0], p[:, 1]), 1e-12)
        cap = (half[2] - np.abs(p[:, 2])) < (half[0] - rho)
        n[:, 0] = np.where(cap, 0.0, p[:, 0] / rho)
        n[:, 1] = np.where(cap, 0.0, p[:, 1] / rho)
        n[:, 2] = np.where(cap, np.sign(p[:, 2]), 0.0)
    else:
        raise UsageError(f"unknown primitive type {prim.kind!r}")
    return n


def cast_rays(
    scene: SynthScene, origins: np.ndarray, dirs: np.ndarray, objects_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit along each ray (in batches of ``_CHUNK`` rays).

    Args:
        origins, dirs: ``[R, 3]`` world rays; ``dirs`` must be unit length.
        objects_only: ignore the room's faces (shadow rays).

    Returns:
        t ``[R]`` hit distance (``inf`` = miss) and prim ``[R]`` index into ``scene.primitives`` (-1 = miss).
    """
    hits = [
        _cast_batch(scene, origins[a : a + _CHUNK], dirs[a : a + _CHUNK], objects_only)
        for a in range(0, len(origins), _CHUNK)
    ]
    if not hits:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate([h[0] for h in hits]), np.concatenate([h[1] for h in hits])


def _cast_batch(
    scene: SynthScene, origins: np.ndarray, dirs: np.ndarray, objects_only: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cast_rays` for one batch: test every primitive of each group whose bounding sphere is hit."""
    t_best = np.full(len(origins), np.inf)
    idx = np.full(len(origins), -1, dtype=np.int64)
    for center, radius, ids in scene.groups():
        if center is None:
            if objects_only:
                continue
            rows = np.arange(len(origins))
        else:
            oc = origins - center
            b = np.einsum("ij,ij->i", oc, dirs)
            disc = b * b - (np.einsum("ij,ij->i", oc, oc) - radius * radius)
            rows = np.nonzero((disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0.0)) > 0))[0]
            if len(rows) == 0:
                continue
        for i in ids:
            prim = scene.primitives[i]
            o = (origins[rows] - prim.center) @ prim.rotation
            t = _HIT[prim.kind](o, dirs[rows] @ prim.rotation, prim.half_size)
            better = t < t_best[rows]
            t_best[rows[better]] = t[better]
            idx[rows[better]] = i
    return t_best, idx


def shade(scene: SynthScene, points: np.ndarray, prim_idx: np.ndarray, texture_scale: float = 1.0) -> np.ndarray:
    """Lambertian colour ``[R, 3]`` of surface points ``[R, 3]`` lying on primitives ``prim_idx [R]``."""
    albedo = np.zeros_like(points)
    normal = np.zeros_like(points)
    for i in np.unique(prim_idx[prim_idx >= 0]):
        prim = scene.primitives[i]
        rows = np.nonzero(prim_idx == i)[0]
        p = _local(prim, points[rows])
        n = _local_normal(prim, p)
        normal[rows] = n @ prim.rotation.T
        albedo[rows] = _MATERIALS[prim.material](p, n, prim, texture_scale)
    n_dot_l = normal @ scene.light_dir
    lit = np.nonzero(n_dot_l > 0)[0]
    visible = np.zeros(len(points))
    if len(lit):
        origins = points[lit] + _SHADOW_OFFSET * normal[lit]
        t, _ = cast_rays(scene, origins, np.broadcast_to(scene.light_dir, origins.shape), objects_only=True)
        visible[lit] = np.isinf(t)
    light = scene.ambient + scene.diffuse * np.maximum(n_dot_l, 0.0) * visible
    return np.clip(albedo * light[:, None], 0.0, 1.0)


def camera_rays(cams: SynthCameras, view: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World rays of one view, ``s x s`` per pixel at sub-pixel centres.

    Returns:
        origins, unit dirs ``[H*s*W*s, 3]`` in row-major order of the ``[H*s, W*s]`` sub-pixel grid
        (with ``s = 1`` the rays go through pixel centres, as in ``cameras.pixel_rays``), through the lens
        (:meth:`SynthCameras.pixel_dirs`).
    """
    s = supersample
    # the camera-space grid is the same in every view: unprojected through the lens once per set of intrinsics
    key = (s, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height, cams.lens, np.asarray(cams.coeffs).tobytes())
    if key not in cams._grids:
        k = (np.arange(s) + 0.5) / s
        u = (np.arange(cams.width)[:, None] + k[None]).reshape(-1)
        v = (np.arange(cams.height)[:, None] + k[None]).reshape(-1)
        cams._grids[key] = cams.pixel_dirs(u, v)
    d_cam = cams._grids[key]
    dirs = d_cam @ cams.c2w[view, :, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.broadcast_to(cams.c2w[view, :, 3], dirs.shape).copy(), dirs


def sky_color(dirs: np.ndarray) -> np.ndarray:
    """Colour ``[R, 3]`` of the sky (at infinity) along unit world directions ``dirs [R, 3]``: ``SKY_HORIZON`` at
    and below the horizon, ``SKY_ZENITH`` straight up, blended by the square root of the elevation's sine."""
    t = np.sqrt(np.clip(dirs[:, 2], 0.0, 1.0))
    return _lerp(np.asarray(SKY_HORIZON), np.asarray(SKY_ZENITH), t)


def render_rays(
    scene: SynthScene, origins: np.ndarray, dirs: np.ndarray, texture_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour ``[R, 3]``, hit distance ``[R]`` and primitive index ``[R]`` of rays, in batches; rays that hit
    nothing are black, or outdoors the sky's colour."""
    rgb = np.zeros_like(origins)
    t = np.full(len(origins), np.inf)
    idx = np.full(len(origins), -1, dtype=np.int64)
    for a in range(0, len(origins), _CHUNK):
        sl = slice(a, a + _CHUNK)
        t[sl], idx[sl] = cast_rays(scene, origins[sl], dirs[sl])
        hit = np.isfinite(t[sl])
        points = origins[sl] + np.where(hit, t[sl], 0.0)[:, None] * dirs[sl]
        rgb[sl] = shade(scene, points, idx[sl], texture_scale) * hit[:, None]
        if scene.outdoor:
            rgb[sl] = np.where(hit[:, None], rgb[sl], sky_color(dirs[sl]))
    return rgb, t, idx


def render_view(
    scene: SynthScene, cams: SynthCameras, view: int, supersample: int = 1, texture_scale: float = 1.0
) -> SynthView:
    """Render view ``view``: anti-aliased colour and pixel-centre depth, labels and instances."""
    h, w, s = cams.height, cams.width, supersample
    origins, dirs = camera_rays(cams, view, s)
    rgb, _, _ = render_rays(scene, origins, dirs, texture_scale)
    rgb = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3)).astype(np.float32)
    origins, dirs = camera_rays(cams, view, 1)
    t, idx = cast_rays(scene, origins, dirs)
    depth = t * (dirs @ -cams.c2w[view, :, 2])
    prim_label = np.array([scene.classes.index(p.cls) for p in scene.primitives] + [255], dtype=np.uint8)
    prim_inst = np.array([p.instance for p in scene.primitives] + [0], dtype=np.int32)
    return SynthView(
        rgb=rgb,
        depth=depth.reshape(h, w).astype(np.float32),
        label=prim_label[idx].reshape(h, w),
        instance=prim_inst[idx].reshape(h, w),
        distance=t.reshape(h, w),
    )
