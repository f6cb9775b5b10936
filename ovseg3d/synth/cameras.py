"""Cameras: :class:`SynthCameras` (intrinsics, lens, poses; pixel rays and projection) and the camera paths
of a scene (:func:`make_cameras`: a forward-facing patch or orbit rings around the objects)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE, N_COEFFS, project, unproject
from ovseg3d.errors import UsageError
from ovseg3d.synth.config import SynthConfig, resolve_config
from ovseg3d.synth.scene import SynthScene, _local

LENSES = {"pinhole": LENS_PINHOLE, "opencv": LENS_OPENCV, "fisheye": LENS_FISHEYE}
# --distortion defaults: a phone's main camera (mild barrel, k1 k2 p1 p2) and an action camera's fisheye
# (Kannala-Brandt k1 k2 k3 k4, near equidistant); use the fisheye with a wide --fov-deg (e.g. 120)
DEFAULT_DISTORTION = {"opencv": (-0.12, 0.03, 0.001, -0.0005), "fisheye": (0.04, -0.01, 0.002, -0.0003)}


@dataclass
class SynthCameras:
    """Cameras sharing intrinsics and lens. ``c2w``: ``[N, 3, 4]`` float64, OpenGL convention.

    Attributes:
        lens: lens kind of :mod:`.lenses` (``LENS_PINHOLE``, ``LENS_OPENCV``, ``LENS_FISHEYE``).
        coeffs: ``[8]`` float64 coefficients in the order of :mod:`.lenses` (zeros for a pinhole).
    """

    c2w: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    lens: int = LENS_PINHOLE
    coeffs: np.ndarray = field(default_factory=lambda: np.zeros(N_COEFFS))
    _grids: dict[tuple, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def to_json(self) -> dict:
        out = {
            "c2w_opengl": self.c2w.tolist(),
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "width": self.width,
            "height": self.height,
        }
        if self.lens != LENS_PINHOLE:  # pinhole cameras keep the version 1 layout
            out["lens"] = self.lens_name
            out["coeffs"] = np.asarray(self.coeffs, dtype=np.float64).tolist()
        return out

    @staticmethod
    def from_json(d: dict) -> SynthCameras:
        return SynthCameras(
            np.asarray(d["c2w_opengl"], dtype=np.float64),
            float(d["fx"]),
            float(d["fy"]),
            float(d["cx"]),
            float(d["cy"]),
            int(d["width"]),
            int(d["height"]),
            LENSES[d.get("lens", "pinhole")],
            np.asarray(d.get("coeffs", [0.0] * N_COEFFS), dtype=np.float64),
        )

    def pixel_dirs(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Camera-space directions (OpenGL axes, not normalised) through the image points ``u [U]`` x ``v [V]``
        (pixel units, centre of pixel (0, 0) at (0.5, 0.5)): ``[V*U, 3]`` in row-major order.

        Pinhole: ``((u - cx) / fx, -(v - cy) / fy, -1)``. With a lens: :func:`.lenses.unproject` of the
        distorted normalised point ``((u - cx) / fx, (v - cy) / fy)`` (OpenCV axes) in float64, y and z flipped.
        Raises ``ValueError`` if the lens cannot be inverted at some point (it folds inside the image).
        """
        if self.lens == LENS_PINHOLE:
            x = np.broadcast_to(((u - self.cx) / self.fx)[None], (len(v), len(u)))
            y = np.broadcast_to((-(v - self.cy) / self.fy)[:, None], (len(v), len(u)))
            return np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3)
        x = np.broadcast_to(((u - self.cx) / self.fx)[None], (len(v), len(u)))
        y = np.broadcast_to(((v - self.cy) / self.fy)[:, None], (len(v), len(u)))
        xy_d = torch.from_numpy(np.stack([x, y], axis=-1).reshape(-1, 2))
        d_cv, valid = unproject(xy_d, torch.tensor(self.lens), torch.from_numpy(np.asarray(self.coeffs, np.float64)))
        if not bool(valid.all()):
            raise UsageError(
                f"the {self.lens_name} lens {np.round(self.coeffs[:4], 6).tolist()} folds inside the image "
                "(cannot be inverted there): lower --fov-deg or the distortion"
            )
        return d_cv.numpy() * np.array([1.0, -1.0, -1.0])

    @property
    def lens_name(self) -> str:
        return next(name for name, kind in LENSES.items() if kind == self.lens)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates of world points in every view.

        Args:
            points: ``[P, 3]`` world points.

        Returns:
            uv ``[N, P, 2]`` (pixel units, centre of pixel (0, 0) at (0.5, 0.5)) and z-depth ``[N, P]``
            (positive in front of the camera).
        """
        rot, pos = self.c2w[:, :, :3], self.c2w[:, :, 3]
        local = np.einsum("nji,npj->npi", rot, points[None] - pos[:, None])
        depth = -local[..., 2]
        if self.lens != LENS_PINHOLE:  # through the lens; NaN where it cannot see the point
            d_cv = torch.from_numpy(local * np.array([1.0, -1.0, -1.0]))
            coeffs = torch.from_numpy(np.asarray(self.coeffs, np.float64))
            xy, seen = project(d_cv, torch.tensor(self.lens), coeffs)
            xy = torch.where(seen[..., None], xy, torch.nan).numpy()
            return np.stack([self.cx + self.fx * xy[..., 0], self.cy + self.fy * xy[..., 1]], axis=-1), depth
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.cx + self.fx * local[..., 0] / depth
            v = self.cy - self.fy * local[..., 1] / depth
        return np.stack([u, v], axis=-1), depth


def look_at(eyes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[N, 3, 4]`` for cameras at ``eyes [N, 3]`` looking at ``targets [N, 3]``
    with world +z up and no roll."""
    back = eyes - targets
    back /= np.linalg.norm(back, axis=1, keepdims=True)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(back, right)
    return np.stack([right, up, back, eyes], axis=2)


def _forward_eyes(cfg: SynthConfig, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera centres on a jittered grid over a ``patch_width x patch_height`` patch, serpentine order."""
    el = math.radians(cfg.elevation_deg)
    view = np.array([0.0, -math.cos(el), math.sin(el)])  # from the target towards the cameras
    across, up = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.sin(el), math.cos(el)])
    n = cfg.n_views
    cols = max(1, round(math.sqrt(n * cfg.patch_width / cfg.patch_height)))
    rows = math.ceil(n / cols)
    cells = [(r, c if r % 2 == 0 else cols - 1 - c) for r in range(rows) for c in range(cols)][:n]
    rc = np.array(cells, dtype=np.float64) + 0.5 + rng.uniform(-0.3, 0.3, (n, 2))
    a = (rc[:, 1] / cols - 0.5) * cfg.patch_width
    b = (0.5 - rc[:, 0] / rows) * cfg.patch_height
    return target + cfg.distance * view + a[:, None] * across + b[:, None] * up


def _orbit_eyes(cfg: SynthConfig, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera centres on rings around the target, evenly spread in azimuth with a little jitter."""
    n = cfg.n_views
    n_rings = max(1, min(cfg.orbit_rings, n // 4)) if n >= 8 else 1
    elevs = np.radians(np.linspace(cfg.orbit_min_elevation_deg, cfg.orbit_max_elevation_deg, n_rings))
    counts = [n // n_rings + (i < n % n_rings) for i in range(n_rings)]
    eyes = []
    for ring, (el, count) in enumerate(zip(elevs, counts)):
        az = -np.pi / 2 + 2 * np.pi * (np.arange(count) + 0.5 * ring) / count + rng.uniform(-0.05, 0.05, count)
        d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(count, np.sin(el))], 1)
        eyes.append(target + cfg.orbit_distance * d)
    return np.concatenate(eyes)


def lens_coefficients(cfg: SynthConfig) -> tuple[int, np.ndarray]:
    """The lens kind and ``[8]`` float64 coefficients (order of :mod:`.lenses`) of ``cfg.lens`` /
    ``cfg.distortion``; ``ValueError`` for an unknown lens or a wrong number of coefficients."""
    if cfg.lens not in LENSES:
        raise UsageError(f"unknown lens {cfg.lens!r}; known: {', '.join(LENSES)}")
    coeffs = np.zeros(N_COEFFS)
    if cfg.lens == "pinhole":
        if any(cfg.distortion):
            raise UsageError("--distortion needs --lens opencv or --lens fisheye")
        return LENS_PINHOLE, coeffs
    values = tuple(cfg.distortion) or DEFAULT_DISTORTION[cfg.lens]
    names = "K1 K2 P1 P2" if cfg.lens == "opencv" else "K1 K2 K3 K4"
    if len(values) != 4 or not np.isfinite(values).all():
        raise UsageError(f"--distortion for the {cfg.lens} lens takes 4 finite numbers ({names}), got {list(values)}")
    coeffs[:4] = values  # opencv k1 k2 p1 p2 and fisheye k1 k2 k3 k4 both fill the first four slots
    return LENSES[cfg.lens], coeffs


def _focal(cfg: SynthConfig, lens: int, coeffs: np.ndarray) -> float:
    """Focal length (pixels) that puts the image's left and right edges at ``fov_deg / 2`` off the axis, seen
    through the lens; for a pinhole ``(W / 2) / tan(fov / 2)``."""
    if lens == LENS_PINHOLE:
        return cfg.width / 2 / math.tan(math.radians(cfg.fov_deg) / 2)
    half = math.radians(cfg.fov_deg) / 2
    edge = torch.tensor([math.sin(half), 0.0, math.cos(half)], dtype=torch.float64)
    xy, seen = project(edge, torch.tensor(lens), torch.from_numpy(coeffs))
    if not bool(seen) or float(xy[0]) <= 0:
        raise UsageError(f"the {cfg.lens} lens cannot see {cfg.fov_deg} degrees across: lower --fov-deg")
    return cfg.width / 2 / float(xy[0])


def _inside_buildings(scene: SynthScene, points: np.ndarray, margin: float) -> bool:
    """Whether any of ``points [N, 3]`` lies within ``margin`` of a building (outdoor)."""
    for prim in scene.primitives:
        if prim.cls == "building" and np.any(np.all(np.abs(_local(prim, points)) < prim.half_size + margin, axis=1)):
            return True
    return False


def make_cameras(cfg: SynthConfig, scene: SynthScene) -> SynthCameras:
    """Cameras looking at the objects' centre; raises ``ValueError`` if one would leave the room (outdoors: go
    below the ground or into a building) or sit inside an object."""
    cfg = resolve_config(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    centers = np.array([o["center"] for o in scene.objects])
    target = centers.mean(axis=0)
    eyes = (_forward_eyes if cfg.cameras == "forward" else _orbit_eyes)(cfg, target, rng)
    looks = target + rng.uniform(-0.02, 0.02, eyes.shape)
    margin = 0.1
    if np.any(eyes < scene.room_min + margin) or np.any(eyes > scene.room_max - margin):
        if scene.outdoor:
            raise UsageError("cameras go below the ground or off it: change --elevation-deg / --orbit-distance")
        raise UsageError("cameras leave the room: lower --distance / --orbit-distance or enlarge --room-size")
    if scene.outdoor and _inside_buildings(scene, eyes, margin):
        raise UsageError("a camera is inside a building: lower --distance / --orbit-distance")
    radii = np.array([0.5 * np.linalg.norm(o["size"]) for o in scene.objects])
    gaps = np.linalg.norm(eyes[:, None] - centers[None], axis=2) - radii[None]
    if np.any(gaps < margin):
        raise UsageError("a camera is inside or touching an object: raise --distance / --orbit-distance")
    lens, coeffs = lens_coefficients(cfg)
    focal = _focal(cfg, lens, coeffs)
    c2w = look_at(eyes, looks)
    return SynthCameras(c2w, focal, focal, cfg.width / 2, cfg.height / 2, cfg.width, cfg.height, lens, coeffs)
