"""Procedural scenes with full ground truth: a textured room with objects, ray cast analytically.

A scene is a closed box room (floor, four walls, ceiling) holding ``n_objects`` objects on the floor.
Every object is built from a few analytic primitives (sphere, oriented box, capped upright cylinder)
sharing one class and instance; the room's faces are one-sided rectangles ("plane") facing inwards,
so every ray cast from inside hits something. Units are metres, world up is ``+z``, the floor is
``z = 0`` and the objects stand around the origin.

Shading is static and view independent: ``albedo * (ambient + diffuse * max(n.l, 0) * visible)`` with one
directional light; ``visible`` comes from a shadow ray against the objects' primitives (the light shines
through the ceiling, so room faces cast no shadows). Textures are procedural functions of a primitive's
local coordinates, hence view consistent.

:func:`synthesize` writes a scene folder in the 3D-OVS / LLFF layout (REFERENCE.md §1) or the nerfstudio
``transforms.json`` layout, plus ground truth: ``labels/``, ``instances/``, ``objects.json`` and the full
analytic description ``scene.json`` (read back with :func:`scene_from_json`; distances to the true
surfaces with :func:`surface_distance`), or as a COLMAP binary model (``images/`` + ``sparse/0/``, with a
``points3D.bin`` sampled from the rendered surfaces). The cameras may have a lens (``lens``: OpenCV
radial-tangential or fisheye, :mod:`.lenses`): every pixel's ray is the lens's unprojection of the pixel's
distorted normalised coordinates, so images, depth, labels and instances are all distorted, and the lens is
written into ``cameras.bin`` (OPENCV / OPENCV_FISHEYE) and ``transforms.json`` (``camera_model``, ``k1 ...``).
LLFF has no lens model and refuses one. Pinhole scenes are byte-identical to those of earlier versions.

An outdoor scene (``outdoor``) replaces the room by open ground (a textured plane ``GROUND_HALF`` metres
each way, classes ``OUTDOOR_CLASSES``: ``ground`` and ``building``), a few large textured boxes as buildings
15-60 m from the centre, and a sky: rays that hit nothing see :func:`sky_color`, a function of direction only
(at infinity), with label 255 and instance 0. Its cameras take the camera settings of
:data:`OUTDOOR_CAMERAS` where the config holds the room's defaults (:func:`resolve_config`), so that they see
the horizon; its ``transforms.json`` has no ``"aabb"`` (the scene is unbounded: loaders fall back to their
region of interest), its LLFF near / far are percentiles of the surfaces' depth, and its ``points3D`` come
from the surfaces (buildings and far ground included), never the sky.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ovseg3d.data import colmap
from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE, N_COEFFS, project, unproject
from ovseg3d.data.llff import write_poses_bounds
from ovseg3d.data.nerfstudio import write_transforms_json
from ovseg3d.errors import UsageError

GENERATOR = "ovseg3d.data.synth"
STUFF_CLASSES = ("floor", "wall", "ceiling")
OUTDOOR_CLASSES = ("ground", "building")  # the structural classes of an outdoor scene, after the objects'
GROUND_HALF = 300.0  # outdoor: the ground plane runs this far (m) from the centre along x and y
N_BUILDINGS = 6  # outdoor: buildings around the centre, one per sector (fewer if one cannot be placed)
BUILDING_RANGE = (15.0, 60.0)  # outdoor: nearest wall at least the first (m) from the centre, the centre within
BUILDING_HEIGHT = (5.0, 20.0)  # outdoor: building heights (m)
SKY_ZENITH = (0.27, 0.47, 0.85)  # outdoor: sky colour straight up
SKY_HORIZON = (0.8, 0.86, 0.92)  # outdoor: sky colour at (and below) the horizon
# outdoor camera settings, taken where the config holds the room's defaults (resolve_config): low cameras a few
# metres from the objects looking slightly down, so that the horizon, the buildings and the sky are in view
OUTDOOR_CAMERAS = {
    "distance": 1.8,
    "elevation_deg": 14.0,
    "patch_width": 1.0,
    "patch_height": 0.5,
    "orbit_distance": 2.0,
    "orbit_min_elevation_deg": 10.0,
    "orbit_max_elevation_deg": 18.0,
}
BOX_MARGIN = 0.025  # transforms.json scene box: the room grown by this share of its longest side on every face
_EPS = 1e-7  # smallest accepted ray distance (m)
_SHADOW_OFFSET = 1e-4  # shadow rays start this far off the surface along its normal (m)
_CHUNK = 1 << 16  # rays per batch, keeps temporaries small

LENSES = {"pinhole": LENS_PINHOLE, "opencv": LENS_OPENCV, "fisheye": LENS_FISHEYE}
# --distortion defaults: a phone's main camera (mild barrel, k1 k2 p1 p2) and an action camera's fisheye
# (Kannala-Brandt k1 k2 k3 k4, near equidistant); use the fisheye with a wide --fov-deg (e.g. 120)
DEFAULT_DISTORTION = {"opencv": (-0.12, 0.03, 0.001, -0.0005), "fisheye": (0.04, -0.01, 0.002, -0.0003)}
COLMAP_MODELS = {LENS_PINHOLE: "PINHOLE", LENS_OPENCV: "OPENCV", LENS_FISHEYE: "OPENCV_FISHEYE"}
# SynthConfig fields added after version 1 of scene.json: left out of its "config" at their defaults, so that
# the files of an existing (pinhole, LLFF / transforms) scene stay byte-identical
_LATER_FIELDS = ("lens", "distortion", "n_points", "outdoor")


@dataclass
class SynthConfig:
    """A procedural scene: room, objects, cameras and output format."""

    seed: int = 0
    """Random seed: the same seed and settings give byte-identical files."""
    width: int = 160
    """Image width in pixels."""
    height: int = 120
    """Image height in pixels."""
    n_views: int = 36
    """Number of camera views."""
    cameras: Literal["forward", "orbit"] = "forward"
    """forward: LLFF-like patch of cameras facing the objects (an object with a front, such as a mug's handle,
    turns it toward them, so that its pose can be seen); orbit: rings around them."""
    format: Literal["llff", "transforms", "colmap"] = "llff"
    """Pose file: llff (poses_bounds.npy, 3D-OVS), transforms (nerfstudio transforms.json) or colmap (binary
    model in sparse/0/: cameras.bin, images.bin and points3D.bin sampled from the rendered surfaces)."""
    n_objects: int = 5
    """Number of objects on the floor."""
    n_annotated: int = 4
    """Views that get 3D-OVS masks in segmentations/, spread through the sequence (never view 0)."""
    supersample: int = 3
    """s x s rays per pixel averaged for the RGB images (anti-aliasing); labels use the pixel centre."""
    fov_deg: float = 60.0
    """Horizontal field of view in degrees (through the lens: the image's left and right edges see this angle)."""
    distance: float = 1.1
    """forward: distance (m) from the camera patch to the objects' centre."""
    elevation_deg: float = 25.0
    """forward: elevation (degrees above the horizon) of the camera patch seen from the objects."""
    patch_width: float = 0.5
    """forward: width (m) of the patch the camera centres are spread over."""
    patch_height: float = 0.3
    """forward: height (m) of that patch."""
    orbit_min_elevation_deg: float = 20.0
    """orbit: elevation of the lowest ring (degrees)."""
    orbit_max_elevation_deg: float = 45.0
    """orbit: elevation of the highest ring (degrees)."""
    orbit_distance: float = 1.5
    """orbit: distance (m) from the cameras to the objects' centre."""
    orbit_rings: int = 2
    """orbit: number of rings (one if there are fewer than 8 views)."""
    spread: float = 0.38
    """Half-width (m) of the floor area the object centres are drawn from (its depth is 2/3 of that)."""
    room_size: tuple[float, float, float] = (4.0, 3.6, 2.6)
    """Room extents (m) along x, y, z; the room is centred on the objects, floor at z = 0."""
    texture_scale: float = 1.0
    """Multiplies the spatial frequency of the room's procedural textures (2 = twice as fine)."""
    ambient: float = 0.35
    """Ambient light level (shadowed surfaces get albedo * ambient)."""
    classes: tuple[str, ...] = ()
    """Object classes to draw from (empty = all: tennis ball, orange, rubik cube, soda can, book, tissue box,
    mug, chair)."""
    lens: Literal["pinhole", "opencv", "fisheye"] = "pinhole"
    """Camera lens: pinhole, opencv (radial-tangential, COLMAP OPENCV) or fisheye (Kannala-Brandt, COLMAP
    OPENCV_FISHEYE); every pixel's ray goes through it. LLFF has no lens: use --format colmap or transforms."""
    distortion: tuple[float, ...] = ()
    """Lens coefficients: opencv K1 K2 P1 P2, fisheye K1 K2 K3 K4 (empty = a phone lens -0.12 0.03 0.001 -0.0005,
    or an action-camera fisheye 0.04 -0.01 0.002 -0.0003)."""
    n_points: int = 4000
    """colmap: number of points in points3D.bin, sampled on the surfaces seen by up to four views."""
    outdoor: bool = False
    """Render an unbounded outdoor scene instead of the room: the objects on open ground (300 m each way) under a
    sky, with buildings 15-60 m away; classes ground and building, sky unlabelled. Camera settings left at their
    defaults take outdoor values (forward: distance 1.8, elevation 14, patch 1.0 x 0.5; orbit: distance 2,
    elevations 10-18). transforms.json gets no aabb (unbounded)."""


# --------------------------------------------------------------------------------------------------
# Scene description


@dataclass
class Primitive:
    """One analytic surface, defined in its local frame.

    Attributes:
        kind: ``plane`` (rectangle in local xy, one-sided, normal local +z), ``sphere``, ``box``,
            or ``cylinder`` (axis local z, capped).
        center: ``[3]`` world position of the local origin.
        rotation: ``[3, 3]`` local -> world (columns are the local axes in world coordinates).
        half_size: ``[3]`` plane (a, b, 0); sphere (r, r, r); box half extents; cylinder (r, r, half height).
        cls, instance: class name and instance id this surface belongs to.
        material: procedural texture name (key of ``_MATERIALS``).
        colors: ``[K, 3]`` material colours in [0, 1].
        seed: texture noise seed.
    """

    kind: str
    center: np.ndarray
    rotation: np.ndarray
    half_size: np.ndarray
    cls: str
    instance: int
    material: str
    colors: np.ndarray
    seed: int

    def to_json(self) -> dict:
        return {
            "type": self.kind,
            "class": self.cls,
            "instance": self.instance,
            "center": self.center.tolist(),
            "rotation": self.rotation.tolist(),
            "half_size": self.half_size.tolist(),
            "material": self.material,
            "colors": self.colors.tolist(),
            "seed": self.seed,
        }

    @staticmethod
    def from_json(d: dict) -> Primitive:
        return Primitive(
            kind=d["type"],
            center=np.asarray(d["center"], dtype=np.float64),
            rotation=np.asarray(d["rotation"], dtype=np.float64),
            half_size=np.asarray(d["half_size"], dtype=np.float64),
            cls=d["class"],
            instance=int(d["instance"]),
            material=d.get("material", "plain"),
            colors=np.asarray(d.get("colors", [[0.7, 0.7, 0.7]]), dtype=np.float64),
            seed=int(d.get("seed", 0)),
        )


@dataclass
class SynthScene:
    """Everything the renderer needs.

    Attributes:
        primitives: all surfaces (room faces or ground and buildings, and object parts).
        room_min, room_max: ``[3]`` room box corners (outdoor: the box holding the ground and buildings).
        light_dir: ``[3]`` unit vector pointing towards the (directional) light.
        ambient, diffuse: light levels.
        classes: class names; a primitive's label is its class's index here.
        objects: ``objects.json`` entries (class, instance, center, size, yaw, symmetric).
        outdoor: rays that hit nothing see the sky (:func:`sky_color`) instead of black.
    """

    primitives: list[Primitive]
    room_min: np.ndarray
    room_max: np.ndarray
    light_dir: np.ndarray
    ambient: float
    diffuse: float
    classes: list[str]
    objects: list[dict] = field(default_factory=list)
    outdoor: bool = False
    _groups: list[tuple[np.ndarray | None, float, list[int]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def groups(self) -> list[tuple[np.ndarray | None, float, list[int]]]:
        """Primitives grouped by instance with a bounding sphere ``(center, radius, ids)``.

        Room planes and the ground get ``center=None`` (always tested).
        """
        if self._groups is None:
            self._groups = _bounding_groups(self.primitives)
        return self._groups


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


# --------------------------------------------------------------------------------------------------
# Procedural noise and textures


def _hash01(ix: np.ndarray | float, iy: np.ndarray | float, iz: np.ndarray | float, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) for integer lattice points (shapes broadcast).

    A multiply-xorshift integer hash in wrapping uint32 arithmetic.
    """
    ix, iy, iz = (np.atleast_1d(np.asarray(a, dtype=np.int64)).astype(np.uint32) for a in (ix, iy, iz))
    with np.errstate(over="ignore"):
        h = ix * np.uint32(0x8DA6B343) ^ iy * np.uint32(0xD8163841) ^ iz * np.uint32(0xCB1AB31F)
        h = h ^ np.uint32((seed * 0x9E3779B9 + 0x632BE5AB) & 0xFFFFFFFF)
        for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
            h = (h ^ (h >> np.uint32(shift))) * np.uint32(mult)
        h = h ^ (h >> np.uint32(16))
    return h.astype(np.float64) / 4294967296.0


def value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1], one lattice cell per unit. ``p [M, 3]`` -> ``[M]``."""
    cell = np.floor(p)
    w = p - cell
    w = w * w * (3.0 - 2.0 * w)
    i = cell.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                weight = (
                    (w[:, 0] if dx else 1 - w[:, 0])
                    * (w[:, 1] if dy else 1 - w[:, 1])
                    * (w[:, 2] if dz else 1 - w[:, 2])
                )
                out += weight * _hash01(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
    return out


def fbm(p: np.ndarray, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of :func:`value_noise` octaves (each twice as fine, half as strong), in [0, 1]."""
    total, norm, amp = np.zeros(len(p)), 0.0, 1.0
    for k in range(octaves):
        total += amp * value_noise(p * 2.0**k, seed + 101 * k)
        norm += amp
        amp *= 0.5
    return total / norm


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-row blend of colours ``a``, ``b`` (``[3]`` or ``[M, 3]``) by ``t [M]``."""
    return a + (b - a) * t[:, None]


def _edge_distance(x: np.ndarray, period: float) -> np.ndarray:
    """Distance (same units as ``x``) to the nearest multiple of ``period``."""
    f = np.mod(x, period)
    return np.minimum(f, period - f)


# A material maps local hit points p [M, 3] and local normals n [M, 3] to albedo [M, 3].
Material = Callable[[np.ndarray, np.ndarray, Primitive, float], np.ndarray]


def _mat_plain(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    return np.broadcast_to(prim.colors[0], p.shape).copy()


def _mat_planks(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Wooden floor planks along local x: grain streaks, per-plank tint, dark seams."""
    c = prim.colors
    width, length = 0.16 / f, 1.1 / f
    row = np.floor(p[:, 1] / width)
    x = p[:, 0] + _hash01(row, 0, 0, prim.seed) * length
    col = np.floor(x / length)
    tint = 0.9 + 0.2 * _hash01(row, col, 1, prim.seed)
    grain = value_noise(np.stack([p[:, 0] * 2.0 * f, p[:, 1] * 18.0 * f, row * 7.3], 1), prim.seed)
    grain = 0.6 * grain + 0.4 * (0.5 + 0.5 * np.sin(p[:, 1] * 70.0 * f + 4.0 * grain))
    rgb = _lerp(c[0], c[1], grain) * tint[:, None]
    seam = np.minimum(_edge_distance(p[:, 1], width), _edge_distance(x, length)) < 0.004 / f
    rgb[seam] = c[2]
    return rgb


def _mat_wall(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Wall (local x horizontal, y up): tiles below 0.9 m, a trim line, plaster above."""
    c = prim.colors
    height = p[:, 1] + prim.half_size[1]
    tile = 0.2 / f
    ti, tj = np.floor(p[:, 0] / tile), np.floor(height / tile)
    tiles = c[0] * (0.92 + 0.16 * _hash01(ti, tj, 2, prim.seed))[:, None]
    grout = np.minimum(_edge_distance(p[:, 0], tile), _edge_distance(height, tile)) < 0.006 / f
    tiles[grout] = c[1]
    plaster = c[2] * (0.88 + 0.12 * fbm(p * 3.0 * f, prim.seed))[:, None]
    rgb = np.where((height < 0.9)[:, None], tiles, plaster)
    rgb[(height >= 0.9) & (height < 0.94)] = c[3]
    return rgb


def _mat_plaster(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    return prim.colors[0] * (0.9 + 0.1 * fbm(p * 2.0 * f, prim.seed))[:, None]


def _mat_tennis(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Felt ball with a wavy white seam."""
    q = n
    phi = np.arctan2(q[:, 1], q[:, 0])
    seam = np.abs(q[:, 2] - 0.5 * np.cos(2.0 * phi)) < 0.08
    rgb = np.broadcast_to(prim.colors[0], p.shape).copy()
    rgb[seam] = prim.colors[1]
    return rgb


def _mat_orange(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Orange peel (slight dimpling) with a small stem spot on top."""
    rgb = prim.colors[0] * (0.93 + 0.07 * value_noise(p * 80.0, prim.seed))[:, None]
    rgb[n[:, 2] > 0.95] = prim.colors[1]
    return rgb


def _mat_rubik(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """3 x 3 coloured stickers per face (scrambled, centres keep the face colour), black gaps."""
    axis = np.argmax(np.abs(n), axis=1)
    rows = np.arange(len(p))
    face = 2 * axis + (n[rows, axis] < 0)
    a, b = (axis + 1) % 3, (axis + 2) % 3
    u = (p[rows, a] / prim.half_size[a] + 1.0) * 1.5
    v = (p[rows, b] / prim.half_size[b] + 1.0) * 1.5
    cu, cv = np.clip(np.floor(u), 0, 2), np.clip(np.floor(v), 0, 2)
    sticker = np.floor(_hash01(face * 9 + cu * 3 + cv, 0, 3, prim.seed) * 6).astype(np.int64)
    sticker = np.where((cu == 1) & (cv == 1), face, sticker)
    gap = (_edge_distance(u, 1.0) < 0.08) | (_edge_distance(v, 1.0) < 0.08)
    return np.where(gap[:, None], prim.colors[6], prim.colors[sticker])


def _mat_can(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Coloured can body with a white wave band, silver rims and lids."""
    c = prim.colors
    z = p[:, 2] / prim.half_size[2]
    theta = np.arctan2(p[:, 1], p[:, 0])
    rgb = np.broadcast_to(c[0], p.shape).copy()
    rgb[np.abs(z - 0.3 * np.sin(theta)) < 0.15] = c[1]
    rgb[(np.abs(z) > 0.88) | (np.abs(n[:, 2]) > 0.5)] = c[2]
    return rgb


def _mat_book(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Covers with a light border and title block; cream pages on the sides."""
    c, h = prim.colors, prim.half_size
    rgb = np.broadcast_to(c[0], p.shape).copy()
    margin = np.minimum(h[0] - np.abs(p[:, 0]), h[1] - np.abs(p[:, 1]))
    title = (np.abs(p[:, 0]) < 0.5 * h[0]) & (np.abs(p[:, 1] - 0.35 * h[1]) < 0.15 * h[1])
    rgb[(margin < 0.012) | title] = c[1]
    rgb[np.abs(n[:, 2]) < 0.5] = c[2]
    return rgb


def _mat_tissue(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Soft diagonal stripes; an oval opening with white tissue on top."""
    c, h = prim.colors, prim.half_size
    stripes = 0.5 + 0.5 * np.sin((p[:, 0] + p[:, 1] + p[:, 2]) * (2.0 * np.pi / 0.06))
    rgb = _lerp(c[0], c[1], stripes)
    oval = (p[:, 0] / (0.32 * h[0])) ** 2 + (p[:, 1] / (0.4 * h[1])) ** 2 < 1.0
    rgb[(n[:, 2] > 0.5) & oval] = c[2]
    return rgb


def _mat_mug(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Glazed mug body with a coloured band and coffee inside the rim."""
    c, h = prim.colors, prim.half_size
    rgb = np.broadcast_to(c[0], p.shape).copy()
    rgb[np.abs(p[:, 2] / h[2] - 0.45) < 0.1] = c[1]
    rgb[(n[:, 2] > 0.5) & (np.hypot(p[:, 0], p[:, 1]) < 0.82 * h[0])] = c[2]
    rgb[n[:, 2] < -0.5] = c[0] * 0.8
    return rgb


def _mat_wood(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Wood grain streaks along the part's longest axis."""
    long_axis = int(np.argmax(prim.half_size))
    scale = np.full(3, 40.0)
    scale[long_axis] = 3.0
    grain = value_noise(p * scale, prim.seed)
    return _lerp(prim.colors[0], prim.colors[1], grain)


def _mat_ground(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """Open ground (local xy = world xy, metres): a square of stone slabs around the centre, grass and earth
    patches beyond. Detail fades with the distance from the centre, where the cameras stand (a fixed texture
    that does not alias at a few hundred pixels across), and the far ground fades into haze."""
    c = prim.colors
    x, y = p[:, 0], p[:, 1]
    r = np.hypot(x, y)
    q = np.stack([x, y, np.zeros_like(x)], 1) * f
    patches = fbm(q * 0.07, prim.seed, 3)
    patches = np.clip((patches - 0.3) / 0.4, 0.0, 1.0)
    detail = 0.35 * (value_noise(q * 0.6, prim.seed + 1) - 0.5) * np.exp(-r / 60.0)
    detail += 0.3 * (value_noise(q * 3.0, prim.seed + 2) - 0.5) * np.exp(-r / 15.0)
    grass = _lerp(c[0], c[1], patches) * (1.0 + detail)[:, None]
    slab = 0.6 / f
    si, sj = np.floor(x / slab), np.floor(y / slab)
    stone = (
        c[2] * (0.85 + 0.3 * _hash01(si, sj, 4, prim.seed) + 0.1 * value_noise(q * 6.0, prim.seed + 3) - 0.05)[:, None]
    )
    stone[np.minimum(_edge_distance(x, slab), _edge_distance(y, slab)) < 0.012 / f] = c[3]
    plaza = (np.abs(x) < 6.0) & (np.abs(y) < 6.0)
    rgb = np.where(plaza[:, None], stone, grass)
    haze = 1.0 - np.exp(-np.maximum(r - 40.0, 0.0) / 150.0)
    return np.clip(_lerp(rgb, c[4], haze), 0.0, 1.0)


def _mat_facade(p: np.ndarray, n: np.ndarray, prim: Primitive, f: float) -> np.ndarray:
    """A building (box, local z up): rendered walls with a grid of windows (3 m storeys, 2.5 m bays centred on
    each face, each pane its own tint, none on the ground storey), a dark plinth and a flat roof."""
    c, h = prim.colors, prim.half_size
    side = np.abs(n[:, 0]) > 0.5  # faces along local x: their horizontal coordinate is local y
    along = np.where(side, p[:, 1], p[:, 0])
    bay, storey = 2.5 / f, 3.0 / f
    n_bays = np.maximum(np.floor(2.0 * np.where(side, h[1], h[0]) / bay), 1.0)
    u = along + n_bays * bay / 2.0
    z = p[:, 2] + h[2]
    bi, si = np.floor(u / bay), np.floor(z / storey)
    fu, fz = u - bi * bay, z - si * storey
    face = 2 * np.argmax(np.abs(n), axis=1) + (n.sum(axis=1) < 0)
    window = (bi >= 0) & (bi < n_bays) & (si >= 1) & ((si + 1) * storey <= 2.0 * h[2])
    window &= (np.abs(fu - bay / 2.0) < 0.3 * bay) & (fz > 0.3 * storey) & (fz < 0.8 * storey)
    wall = c[0] * (0.9 + 0.15 * fbm(p * 0.8 * f, prim.seed))[:, None]
    rgb = np.where(window[:, None], _lerp(c[1], c[2], _hash01(bi, si, face, prim.seed)), wall)
    rgb[z < 0.6 / f] = c[3]
    rgb[n[:, 2] > 0.5] = c[4]
    return np.clip(rgb, 0.0, 1.0)


_MATERIALS: dict[str, Material] = {
    "plain": _mat_plain,
    "planks": _mat_planks,
    "wall": _mat_wall,
    "plaster": _mat_plaster,
    "tennis": _mat_tennis,
    "orange": _mat_orange,
    "rubik": _mat_rubik,
    "can": _mat_can,
    "book": _mat_book,
    "tissue": _mat_tissue,
    "mug": _mat_mug,
    "wood": _mat_wood,
    "ground": _mat_ground,
    "facade": _mat_facade,
}


# --------------------------------------------------------------------------------------------------
# Object vocabulary: each builder returns parts in the object's frame (origin = bounding-box centre,
# x = front, z = up) and the bounding-box size.


@dataclass
class _Part:
    kind: str
    offset: tuple[float, float, float]
    half_size: tuple[float, float, float]
    material: str
    colors: list


def _jitter(rng: np.random.Generator, color: list[float], amount: float = 0.04) -> list[float]:
    return np.clip(np.asarray(color) + rng.uniform(-amount, amount, 3), 0.0, 1.0).tolist()


def _tennis_ball(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    r = rng.uniform(0.04, 0.05)
    colors = [_jitter(rng, [0.78, 0.86, 0.22]), [0.94, 0.94, 0.9]]
    return [_Part("sphere", (0, 0, 0), (r, r, r), "tennis", colors)], np.full(3, 2 * r)


def _orange(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    r = rng.uniform(0.045, 0.06)
    colors = [_jitter(rng, [0.93, 0.48, 0.08]), [0.3, 0.35, 0.1]]
    return [_Part("sphere", (0, 0, 0), (r, r, r), "orange", colors)], np.full(3, 2 * r)


def _rubik_cube(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    s = rng.uniform(0.08, 0.1)
    colors = [
        [0.95, 0.95, 0.95],
        [0.95, 0.85, 0.1],
        [0.8, 0.1, 0.1],
        [0.95, 0.45, 0.05],
        [0.1, 0.3, 0.8],
        [0.1, 0.6, 0.2],
        [0.08, 0.08, 0.08],
    ]
    return [_Part("box", (0, 0, 0), (s / 2, s / 2, s / 2), "rubik", colors)], np.full(3, s)


def _soda_can(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    r, h = rng.uniform(0.033, 0.04), rng.uniform(0.12, 0.15)
    body = [[0.75, 0.08, 0.08], [0.1, 0.25, 0.7], [0.1, 0.5, 0.2]][rng.integers(3)]
    colors = [_jitter(rng, body), [0.95, 0.95, 0.95], [0.72, 0.72, 0.74]]
    return [_Part("cylinder", (0, 0, 0), (r, r, h / 2), "can", colors)], np.array([2 * r, 2 * r, h])


def _book(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    size = np.array([rng.uniform(0.16, 0.24), rng.uniform(0.22, 0.3), rng.uniform(0.03, 0.05)])
    cover = [[0.15, 0.25, 0.55], [0.55, 0.12, 0.15], [0.15, 0.4, 0.25]][rng.integers(3)]
    colors = [_jitter(rng, cover), [0.85, 0.75, 0.45], [0.92, 0.9, 0.82]]
    return [_Part("box", (0, 0, 0), tuple(size / 2), "book", colors)], size


def _tissue_box(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    size = np.array([rng.uniform(0.22, 0.26), rng.uniform(0.11, 0.13), rng.uniform(0.09, 0.12)])
    colors = [_jitter(rng, [0.55, 0.75, 0.85]), _jitter(rng, [0.85, 0.9, 0.95]), [0.97, 0.97, 0.97]]
    return [_Part("box", (0, 0, 0), tuple(size / 2), "tissue", colors)], size


def _mug(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    """Cylinder body with a loop handle on its +x side (the front)."""
    r, h = rng.uniform(0.04, 0.05), rng.uniform(0.09, 0.11)
    reach, bar_z, bar_y = 0.035, 0.012, 0.014
    glaze = [[0.9, 0.88, 0.82], [0.3, 0.5, 0.7], [0.7, 0.3, 0.25]][rng.integers(3)]
    colors = [_jitter(rng, glaze), _jitter(rng, [0.2, 0.2, 0.3]), [0.25, 0.14, 0.07]]
    xb = -reach / 2  # body axis (bounding-box centre is at 0)
    x0, x1 = xb + r - 0.001, xb + r + reach
    z_bar = 0.3 * h
    bar_half = ((x1 - x0) / 2, bar_y / 2, bar_z / 2)
    parts = [
        _Part("cylinder", (xb, 0, 0), (r, r, h / 2), "mug", colors),
        _Part("box", ((x0 + x1) / 2, 0, z_bar), bar_half, "plain", colors),
        _Part("box", ((x0 + x1) / 2, 0, -z_bar), bar_half, "plain", colors),
        _Part("box", (x1 - bar_z / 2, 0, 0), (bar_z / 2, bar_y / 2, z_bar - bar_z / 2), "plain", colors),
    ]
    return parts, np.array([2 * r + reach, 2 * r, h])


def _chair(rng: np.random.Generator) -> tuple[list[_Part], np.ndarray]:
    """Seat on four legs, backrest (two posts and a panel) on its -x side; the front is +x."""
    depth, width, height = rng.uniform(0.28, 0.36), rng.uniform(0.3, 0.38), rng.uniform(0.42, 0.5)
    seat_top, t = 0.5 * height, 0.03
    z0 = -height / 2
    wood = [_jitter(rng, [0.55, 0.36, 0.2]), _jitter(rng, [0.42, 0.26, 0.13])]
    lx, ly = depth / 2 - t / 2, width / 2 - t / 2
    leg_half = (t / 2, t / 2, (seat_top - t) / 2)
    back_half = (t / 2, t / 2, (height - seat_top) / 2)
    panel_h = 0.5 * (height - seat_top)
    parts = [_Part("box", (0, 0, z0 + seat_top - t / 2), (depth / 2, width / 2, t / 2), "wood", wood)]
    parts += [
        _Part("box", (sx * lx, sy * ly, z0 + (seat_top - t) / 2), leg_half, "wood", wood)
        for sx in (1, -1)
        for sy in (1, -1)
    ]
    parts += [_Part("box", (-lx, sy * ly, z0 + (seat_top + height) / 2), back_half, "wood", wood) for sy in (1, -1)]
    parts.append(_Part("box", (-lx, 0, z0 + height - panel_h / 2), (t / 2, width / 2 - t, panel_h / 2), "wood", wood))
    return parts, np.array([depth, width, height])


Builder = Callable[[np.random.Generator], tuple[list[_Part], np.ndarray]]

# class name -> (builder, symmetric). Asymmetric classes have a clear front along their local +x.
VOCABULARY: dict[str, tuple[Builder, bool]] = {
    "tennis ball": (_tennis_ball, True),
    "orange": (_orange, True),
    "rubik cube": (_rubik_cube, True),
    "soda can": (_soda_can, True),
    "book": (_book, True),
    "tissue box": (_tissue_box, True),
    "mug": (_mug, False),
    "chair": (_chair, False),
}


# --------------------------------------------------------------------------------------------------
# Building a scene


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _draw_classes(cfg: SynthConfig, rng: np.random.Generator) -> list[str]:
    """``n_objects`` class names, distinct while the vocabulary lasts, at least one asymmetric if possible."""
    names = list(cfg.classes) or list(VOCABULARY)
    unknown = [n for n in names if n not in VOCABULARY]
    if unknown:
        raise UsageError(f"unknown synth classes {unknown}; known: {sorted(VOCABULARY)}")
    drawn: list[str] = []
    while len(drawn) < cfg.n_objects:
        drawn += [names[i] for i in rng.permutation(len(names))]
    drawn = drawn[: cfg.n_objects]
    asym = [n for n in names if not VOCABULARY[n][1]]
    if len(drawn) >= 2 and asym and all(VOCABULARY[n][1] for n in drawn):
        drawn[-1] = asym[int(rng.integers(len(asym)))]
    return drawn


def _place(radii: np.ndarray, heights: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Non-overlapping floor positions ``[K, 2]`` for footprints of radius ``radii [K]``.

    Taller objects are placed first; with forward cameras (looking along +y) a shorter object may not
    stand right behind a taller one, so that every object stays visible.
    """
    order = np.argsort(-heights, kind="stable")
    half = np.array([cfg.spread, cfg.spread * 2.0 / 3.0])
    for _ in range(30):
        xy = np.zeros((len(radii), 2))
        placed: list[int] = []
        for k in order:
            for _try in range(200):
                cand = rng.uniform(-half, half)
                gaps = np.linalg.norm(xy[placed] - cand, axis=1) - radii[placed] - radii[k]
                hidden = (xy[placed, 1] < cand[1]) & (np.abs(xy[placed, 0] - cand[0]) < radii[placed] + radii[k])
                if np.all(gaps > 0.03) and not (cfg.cameras == "forward" and np.any(hidden)):
                    xy[k] = cand
                    placed.append(int(k))
                    break
            else:
                break
        if len(placed) == len(radii):
            return xy
        half *= 1.1
    raise UsageError(f"could not place {len(radii)} objects without overlap; raise --spread")


def _plane(
    center: np.ndarray, rot: np.ndarray, half_xy: np.ndarray, cls: str, material: str, colors: list, seed: int
) -> Primitive:
    """A room face: a rectangle of half extents ``half_xy [2]`` in the local xy plane, normal local +z."""
    half = np.array([half_xy[0], half_xy[1], 0.0])
    return Primitive("plane", center, rot, half, cls, 0, material, np.asarray(colors, dtype=np.float64), int(seed))


def _room_primitives(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> list[Primitive]:
    """Floor, four walls and ceiling of the box ``[lo, hi]``, facing inwards (instances set later).

    Walls have local x horizontal and local y up, so their textures know the height above the floor.
    """
    mid, ext = (lo + hi) / 2, hi - lo
    up = np.array([0.0, 0.0, 1.0])
    floor_colors = [_jitter(rng, [0.6, 0.42, 0.25]), _jitter(rng, [0.48, 0.32, 0.18]), [0.25, 0.17, 0.1]]
    tile = _jitter(rng, [0.55, 0.68, 0.72], 0.08)
    seeds = rng.integers(1 << 30, size=6)
    prims = [
        _plane(np.array([mid[0], mid[1], lo[2]]), np.eye(3), ext[:2] / 2, "floor", "planks", floor_colors, seeds[0])
    ]
    for k, (axis, sign) in enumerate([(1, -1.0), (1, 1.0), (0, -1.0), (0, 1.0)]):
        normal = np.zeros(3)
        normal[axis] = sign
        center = mid.copy()
        center[axis] = hi[axis] if sign < 0 else lo[axis]
        rot = np.stack([np.cross(up, normal), up, normal], axis=1)
        colors = [tile, [0.9, 0.9, 0.88], _jitter(rng, [0.86, 0.82, 0.74], 0.05), [0.45, 0.35, 0.3]]
        half = np.array([ext[1 - axis], ext[2]]) / 2
        prims.append(_plane(center, rot, half, "wall", "wall", colors, seeds[1 + k]))
    ceiling = np.array([mid[0], mid[1], hi[2]])
    prims.append(
        _plane(ceiling, np.diag([1.0, -1.0, -1.0]), ext[:2] / 2, "ceiling", "plaster", [[0.92, 0.91, 0.88]], seeds[5])
    )
    return prims


_FACADES = ([0.72, 0.7, 0.66], [0.62, 0.34, 0.26], [0.85, 0.8, 0.68], [0.9, 0.9, 0.88], [0.5, 0.55, 0.6])


def _building(rng: np.random.Generator, xy: np.ndarray, yaw: float, half_xy: np.ndarray, height: float) -> Primitive:
    """A building: a box of footprint ``2 half_xy`` turned by ``yaw``, standing on the ground at ``xy [2]``."""
    wall = _jitter(rng, _FACADES[int(rng.integers(len(_FACADES)))], 0.05)
    glass = [_jitter(rng, [0.14, 0.18, 0.26], 0.03), _jitter(rng, [0.5, 0.6, 0.7], 0.05)]
    colors = [wall, *glass, [0.3, 0.28, 0.27], _jitter(rng, [0.38, 0.37, 0.36])]
    return Primitive(
        "box",
        np.array([xy[0], xy[1], height / 2]),
        _rot_z(yaw),
        np.array([half_xy[0], half_xy[1], height / 2]),
        "building",
        0,
        "facade",
        np.asarray(colors, dtype=np.float64),
        int(rng.integers(1 << 30)),
    )


def _outdoor_primitives(rng: np.random.Generator) -> list[Primitive]:
    """The ground (a plane ``GROUND_HALF`` m each way at ``z = 0``) and up to ``N_BUILDINGS`` buildings, one per
    sector of the turn, their nearest wall at least ``BUILDING_RANGE[0]`` from the centre and their centre within
    ``BUILDING_RANGE[1]``, apart from each other (instances set later)."""
    ground_colors = [
        _jitter(rng, [0.3, 0.45, 0.18]),
        _jitter(rng, [0.5, 0.45, 0.28]),
        _jitter(rng, [0.62, 0.6, 0.56]),
        [0.32, 0.31, 0.3],
        [0.76, 0.82, 0.87],
    ]
    half = np.array([GROUND_HALF, GROUND_HALF])
    prims = [_plane(np.zeros(3), np.eye(3), half, "ground", "ground", ground_colors, int(rng.integers(1 << 30)))]
    near, far = BUILDING_RANGE
    start = rng.uniform(0.0, 2 * np.pi)
    footprints: list[tuple[np.ndarray, float]] = []
    for k in range(N_BUILDINGS):
        half_xy, height = rng.uniform(3.0, 8.0, 2), rng.uniform(*BUILDING_HEIGHT)
        reach = float(np.hypot(*half_xy))
        for _try in range(50):
            az = start + 2 * np.pi * k / N_BUILDINGS + rng.uniform(-0.35, 0.35)
            xy = rng.uniform(near + reach, far) * np.array([math.cos(az), math.sin(az)])
            if all(np.linalg.norm(xy - c) > r + reach + 2.0 for c, r in footprints):
                footprints.append((xy, reach))
                prims.append(_building(rng, xy, az + rng.uniform(-0.3, 0.3), half_xy, height))
                break
    return prims


def _object_primitives(
    parts: list[_Part], center: np.ndarray, yaw: float, cls: str, instance: int, seed: int
) -> list[Primitive]:
    """World primitives of an object whose bounding-box centre is ``center [3]``, turned by ``yaw``."""
    rot = _rot_z(yaw)
    return [
        Primitive(
            kind=part.kind,
            center=center + rot @ np.asarray(part.offset, dtype=np.float64),
            rotation=rot,
            half_size=np.asarray(part.half_size, dtype=np.float64),
            cls=cls,
            instance=instance,
            material=part.material,
            colors=np.asarray(part.colors, dtype=np.float64),
            seed=seed,
        )
        for part in parts
    ]


def _front_to_cameras(yaws: np.ndarray, names: list[str]) -> np.ndarray:
    """Turn by half a turn every object with a front (local +x) whose front faces away from forward cameras.

    Forward cameras look along +y from the -y side, so a mug whose handle points to +y shows them a plain
    cylinder and its pose cannot be seen from any view; half a turn about the box centre keeps the footprint.
    """
    away = np.array([not VOCABULARY[n][1] for n in names]) & (np.sin(yaws) > 0)
    return np.where(away, yaws - np.pi, yaws)


def resolve_config(cfg: SynthConfig) -> SynthConfig:
    """``cfg``, outdoors with the camera settings of :data:`OUTDOOR_CAMERAS` in place of the room's defaults
    (a setting that differs from the room's default is kept); a room's config is returned as it is."""
    if not cfg.outdoor:
        return cfg
    default = SynthConfig()
    return replace(cfg, **{k: v for k, v in OUTDOOR_CAMERAS.items() if getattr(cfg, k) == getattr(default, k)})


def build_scene(cfg: SynthConfig) -> SynthScene:
    """Draw the objects, place them and build the room (or the ground and buildings) around them
    (deterministic in ``cfg.seed``)."""
    cfg = resolve_config(cfg)
    if cfg.n_objects < 1:
        raise UsageError("n_objects must be at least 1")
    rng = np.random.default_rng(cfg.seed)
    names = _draw_classes(cfg, rng)
    built = [VOCABULARY[n][0](rng) for n in names]
    sizes = np.array([size for _, size in built])
    xy = _place(0.5 * np.hypot(sizes[:, 0], sizes[:, 1]), sizes[:, 2], cfg, rng)
    yaws = rng.uniform(-np.pi, np.pi, len(names))
    if cfg.cameras == "forward":
        yaws = _front_to_cameras(yaws, names)
    prims: list[Primitive] = []
    objects: list[dict] = []
    for k, (name, (parts, size)) in enumerate(zip(names, built)):
        center = np.array([xy[k, 0], xy[k, 1], size[2] / 2])
        prims += _object_primitives(parts, center, float(yaws[k]), name, k + 1, int(rng.integers(1 << 30)))
        objects.append(
            {
                "class": name,
                "instance": k + 1,
                "center": center.tolist(),
                "size": size.tolist(),
                "yaw": float(yaws[k]),
                "symmetric": VOCABULARY[name][1],
            }
        )
    if cfg.outdoor:
        stuff, stuff_classes = _outdoor_primitives(rng), OUTDOOR_CLASSES
        top = max(prim.center[2] + prim.half_size[2] for prim in stuff + prims)
        lo, hi = np.array([-GROUND_HALF, -GROUND_HALF, 0.0]), np.array([GROUND_HALF, GROUND_HALF, top])
    else:
        room = np.asarray(cfg.room_size, dtype=np.float64)
        lo = np.array([-room[0] / 2, -room[1] / 2, 0.0])
        hi = np.array([room[0] / 2, room[1] / 2, room[2]])
        stuff, stuff_classes = _room_primitives(lo, hi, rng), STUFF_CLASSES
    for j, prim in enumerate(stuff):
        prim.instance = len(names) + 1 + j
        prims.append(prim)
    classes = list(dict.fromkeys(names)) + list(stuff_classes)
    light = np.array([-0.4, -0.5, 1.0])
    light_dir = light / np.linalg.norm(light)
    return SynthScene(prims, lo, hi, light_dir, cfg.ambient, 0.75, classes, objects, cfg.outdoor)


# --------------------------------------------------------------------------------------------------
# Cameras


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


# --------------------------------------------------------------------------------------------------
# Ray casting


def _local(prim: Primitive, x: np.ndarray) -> np.ndarray:
    """World points ``[M, 3]`` -> the primitive's local frame."""
    return (x - prim.center) @ prim.rotation


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


def _bounding_groups(prims: list[Primitive]) -> list[tuple[np.ndarray | None, float, list[int]]]:
    groups: dict[int, list[int]] = {}
    out: list[tuple[np.ndarray | None, float, list[int]]] = []
    for i, prim in enumerate(prims):
        if prim.kind == "plane":
            out.append((None, 0.0, [i]))
        else:
            groups.setdefault(prim.instance, []).append(i)
    for ids in groups.values():
        centers = np.array([prims[i].center for i in ids])
        radii = np.array([np.linalg.norm(prims[i].half_size) for i in ids])
        c = centers.mean(axis=0)
        out.append((c, float(np.max(np.linalg.norm(centers - c, axis=1) + radii)) + 1e-6, ids))
    return out


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


# --------------------------------------------------------------------------------------------------
# Distances to the true surfaces


def _box_sdf(q: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Signed distance ``[M]`` from local points ``q [M, D]`` to an axis-aligned box of half extents ``[D]``."""
    d = np.abs(q) - half
    return np.linalg.norm(np.maximum(d, 0.0), axis=1) + np.minimum(d.max(axis=1), 0.0)


def _primitive_distance(prim: Primitive, points: np.ndarray) -> np.ndarray:
    """Unsigned distance ``[P]`` from world points to the primitive's surface."""
    q = _local(prim, points)
    half = prim.half_size
    if prim.kind == "sphere":
        return np.abs(np.linalg.norm(q, axis=1) - half[0])
    if prim.kind == "box":
        return np.abs(_box_sdf(q, half))
    if prim.kind == "cylinder":
        q2 = np.stack([np.hypot(q[:, 0], q[:, 1]), q[:, 2]], axis=1)
        return np.abs(_box_sdf(q2, np.array([half[0], half[2]])))
    if prim.kind == "plane":
        dx = np.maximum(np.abs(q[:, 0]) - half[0], 0.0)
        dy = np.maximum(np.abs(q[:, 1]) - half[1], 0.0)
        return np.sqrt(dx * dx + dy * dy + q[:, 2] ** 2)
    raise UsageError(f"unknown primitive type {prim.kind!r}")


def surface_distance(scene_json: dict, points: np.ndarray) -> np.ndarray:
    """Unsigned distance from points to the nearest true surface of a synthetic scene.

    Args:
        scene_json: the parsed ``scene.json``.
        points: ``[P, 3]`` world points.

    Returns:
        ``[P]`` distances in metres (faces where parts of one object touch count as surfaces).
    """
    return nearest_surface(scene_json, points)[0]


def nearest_surface(scene_json: dict, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_distance` and the class name of the nearest surface ``[P]`` (the 3D ground-truth label)."""
    dist, classes = class_distances(scene_json, points)
    return dist.min(1), classes[dist.argmin(1)]


def class_distances(scene_json: dict, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance ``[P, K]`` from each point to the nearest surface of each of the scene's ``K`` classes, and the
    class names ``[K]``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    prims = [Primitive.from_json(d) for d in scene_json["primitives"]]
    classes = sorted({p.cls for p in prims})
    dist = np.full((len(points), len(classes)), np.inf)
    for prim in prims:
        k = classes.index(prim.cls)
        dist[:, k] = np.minimum(dist[:, k], _primitive_distance(prim, points))
    return dist, np.array(classes)


# --------------------------------------------------------------------------------------------------
# Writing a scene folder


def scene_from_json(scene_json: dict) -> SynthScene:
    """Rebuild the renderable scene from a parsed ``scene.json``."""
    light = scene_json["light"]
    return SynthScene(
        primitives=[Primitive.from_json(d) for d in scene_json["primitives"]],
        room_min=np.asarray(scene_json["room"]["min"], dtype=np.float64),
        room_max=np.asarray(scene_json["room"]["max"], dtype=np.float64),
        light_dir=np.asarray(light["direction"], dtype=np.float64),
        ambient=float(light["ambient"]),
        diffuse=float(light["diffuse"]),
        classes=list(scene_json["classes"]),
        objects=list(scene_json.get("objects", [])),
        outdoor="sky" in scene_json,
    )


def _config_json(cfg: SynthConfig) -> dict:
    """``asdict(cfg)`` without the fields of :data:`_LATER_FIELDS` that hold their defaults."""
    out, default = asdict(cfg), SynthConfig()
    for name in _LATER_FIELDS:
        if getattr(cfg, name) == getattr(default, name):
            del out[name]
    return out


def scene_to_json(cfg: SynthConfig, scene: SynthScene, cams: SynthCameras) -> dict:
    """The analytic description: config, room (outdoors the box holding the ground and buildings), light,
    classes, primitives, objects, cameras, and outdoors the sky."""
    out = {
        "generator": GENERATOR,
        "version": 1,
        "units": "metres",
        "up": [0.0, 0.0, 1.0],
        "config": _config_json(cfg),
        "room": {"min": scene.room_min.tolist(), "max": scene.room_max.tolist()},
        "light": {
            "direction": scene.light_dir.tolist(),
            "ambient": scene.ambient,
            "diffuse": scene.diffuse,
            "note": "directional light towards 'direction'; only objects cast shadows",
        },
        "classes": scene.classes,
        "primitives": [p.to_json() for p in scene.primitives],
        "objects": scene.objects,
        "cameras": cams.to_json(),
    }
    if scene.outdoor:  # a room's scene.json keeps its version 1 layout
        out["sky"] = {
            "zenith": list(SKY_ZENITH),
            "horizon": list(SKY_HORIZON),
            "note": "rays that hit nothing see the sky at infinity: the horizon colour at and below the horizon, "
            "the zenith colour straight up, blended by the square root of the sine of the elevation",
        }
    return out


_OUTPUTS = (
    "images",
    "labels",
    "instances",
    "segmentations",
    "poses_bounds.npy",
    "transforms.json",
    "sparse",
    "objects.json",
    "scene.json",
)


def _check_output(out: Path) -> None:
    """``out`` may be written: missing, empty, or a previous synth scene (whose files are replaced, others
    kept); refuse anything else, before anything is rendered."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        try:
            previous = json.loads((out / "scene.json").read_text()).get("generator")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != GENERATOR:
            raise UsageError(f"{out} is not empty and holds no synth scene (scene.json); refusing to write there")


def _partial_folder(out: Path) -> Path:
    """A fresh hidden sibling ``.NAME.tmp-PID`` of ``out`` to render into (the name :mod:`ovseg3d.atomic`
    uses, so that what a killed synth leaves there is tidied by the next one)."""
    from ovseg3d.atomic import recover_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    """Make the complete scene in ``tmp`` the scene in ``out``: one rename if ``out`` is missing; else the
    previous scene's files are replaced one by one (other files of ``out`` kept), ``scene.json`` last, so that
    ``out`` holds a ``scene.json`` (and is accepted by the next synth) at every moment."""
    if not out.exists():
        os.rename(tmp, out)
        return
    for name in _OUTPUTS:
        old, new = out / name, tmp / name
        if name == "scene.json":
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        if new.exists():
            os.rename(new, old)
    os.replace(tmp / "scene.json", out / "scene.json")


def annotated_views(n_views: int, n_annotated: int) -> list[int]:
    """Views that get 3D-OVS masks: evenly spread, never view 0 (when there are 2+ views)."""
    n = min(n_annotated, max(n_views - 1, 0))
    if n <= 0:
        return [0] if n_annotated > 0 and n_views == 1 else []
    return sorted({int(math.floor((k + 1) * n_views / (n + 1) + 0.5)) for k in range(n)})


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_view(out: Path, name: str, view: SynthView, classes: list[str], annotated: bool) -> None:
    """Image, label and instance maps, and (annotated views) one binary mask per visible class."""
    _save_png(out / "images" / f"{name}.png", np.round(view.rgb * 255.0).astype(np.uint8))
    _save_png(out / "labels" / f"{name}.png", view.label)
    inst_dtype = np.uint8 if view.instance.max() < 256 else np.uint16
    _save_png(out / "instances" / f"{name}.png", view.instance.astype(inst_dtype))
    if annotated:
        for c in np.unique(view.label[view.label != 255]):
            mask = np.where(view.label == c, 255, 0).astype(np.uint8)
            _save_png(out / "segmentations" / name / f"{classes[c]}.png", mask)


def point_views(n_views: int, k: int = 4) -> list[int]:
    """Up to ``k`` views evenly spread through the sequence: those whose surfaces seed ``points3D``."""
    return sorted({int(i) for i in np.linspace(0, n_views - 1, min(k, n_views)).round()})


def _surface_samples(
    cams: SynthCameras, i: int, view: SynthView, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random surface points ``[n, 3]`` seen by view ``i``'s pixel centres and their colours
    ``[n, 3]`` uint8 (the written image's)."""
    origins, dirs = camera_rays(cams, i, 1)
    dist = view.distance.reshape(-1)  # type: ignore[union-attr]
    hit = np.nonzero(np.isfinite(dist))[0]
    pick = np.sort(rng.choice(hit, size=min(n, len(hit)), replace=False))
    colors = np.round(view.rgb.reshape(-1, 3)[pick] * 255.0).astype(np.uint8)
    return origins[pick] + dist[pick, None] * dirs[pick], colors


def colmap_model(cams: SynthCameras, image_names: list[str], points: np.ndarray, colors: np.ndarray):
    """A :class:`.colmap.ColmapModel` of the cameras: one shared camera (PINHOLE, OPENCV or OPENCV_FISHEYE),
    one image per view with the world-to-camera pose ``x_cam = R x + t`` in OpenCV axes
    (``R = (R_gl diag(1, -1, -1))ᵀ``, ``t = -R c``), and the points (errors 0, empty tracks)."""
    model_name = COLMAP_MODELS[cams.lens]
    params = [cams.fx, cams.fy, cams.cx, cams.cy]
    if cams.lens != LENS_PINHOLE:
        params += np.asarray(cams.coeffs[:4], dtype=np.float64).tolist()
    camera = colmap.ColmapCamera(1, model_name, cams.width, cams.height, np.asarray(params, dtype=np.float64))
    images = {}
    for i, name in enumerate(image_names):
        w2c = (cams.c2w[i, :, :3] * np.array([1.0, -1.0, -1.0])).T
        tvec = -w2c @ cams.c2w[i, :, 3]
        images[i + 1] = colmap.ColmapImage(i + 1, colmap.rotmat_to_qvec(w2c), tvec, 1, name)
    errors, tracks = np.zeros(len(points)), np.zeros(len(points), dtype=np.int64)
    return colmap.ColmapModel({1: camera}, images, points, colors, errors, tracks)


def _check_format(cfg: SynthConfig) -> None:
    if cfg.supersample < 1 or cfg.n_views < 1:
        raise UsageError("supersample and n_views must be at least 1")
    if cfg.format not in ("llff", "transforms", "colmap"):
        raise UsageError(f"unknown format {cfg.format!r}; known: llff, transforms, colmap")
    lens, _ = lens_coefficients(cfg)
    if cfg.format == "llff" and lens != LENS_PINHOLE:
        raise UsageError(
            f"LLFF (poses_bounds.npy) has no lens model: use --format colmap or transforms with --lens {cfg.lens}"
        )
    if cfg.format == "colmap" and cfg.n_points < 1:
        raise UsageError("n_points must be at least 1")


def _lens_keys(cams: SynthCameras) -> dict:
    """transforms.json's ``camera_model`` and coefficients of a lens (nothing for a pinhole)."""
    c = [float(v) for v in cams.coeffs[:4]]
    if cams.lens == LENS_OPENCV:
        return {"camera_model": "OPENCV", "k1": c[0], "k2": c[1], "p1": c[2], "p2": c[3]}
    if cams.lens == LENS_FISHEYE:
        return {"camera_model": "OPENCV_FISHEYE", "k1": c[0], "k2": c[1], "k3": c[2], "k4": c[3]}
    return {}


def _near_far(depth: np.ndarray, outdoor: bool) -> tuple[float, float]:
    """LLFF near / far of a view's pixel-centre depth ``[H, W]``: a room's 0.9 x its least and 1.1 x its
    greatest; outdoors (sky at infinity) 0.9 x the 0.1st and 1.1 x the 99.9th percentile of the surfaces' depth
    (far may be hundreds of metres)."""
    if not outdoor:
        return 0.9 * depth.min(), 1.1 * depth.max()
    surface = depth[np.isfinite(depth) & (depth > 0)]
    if len(surface) == 0:  # all sky
        return 0.1, 2.0 * GROUND_HALF
    lo, hi = np.percentile(surface, [0.1, 99.9])
    return 0.9 * float(lo), 1.1 * float(hi)


def synthesize(cfg: SynthConfig, out: Path) -> Path:
    """Render a synthetic scene with ground truth into the folder ``out`` and return it.

    Writes ``images/NN.png``, ``poses_bounds.npy``, ``transforms.json`` or ``sparse/0/{cameras,images,
    points3D}.bin``, ``segmentations/`` (``classes.txt`` and masks of the annotated views), ``labels/``,
    ``instances/``, ``objects.json`` and ``scene.json``. Raises ``ValueError`` if ``out`` is non-empty and not a
    previous synth output, or for a lens that LLFF cannot hold. An outdoor scene's settings are first resolved
    (:func:`resolve_config`) and written so into ``scene.json``. The scene is rendered into a hidden sibling
    folder and moved into ``out`` when complete: an interrupted or failed synth leaves ``out`` as it was.
    """
    out = Path(out)
    cfg = resolve_config(cfg)
    _check_format(cfg)
    scene = build_scene(cfg)
    cams = make_cameras(cfg, scene)
    if cams.lens != LENS_PINHOLE:  # raises before anything is written if the lens folds inside the image
        cams.pixel_dirs(np.linspace(0.0, cfg.width, 4 * cfg.width + 1), np.array([0.0, cfg.height]))
        cams.pixel_dirs(np.array([0.0, cfg.width]), np.linspace(0.0, cfg.height, 4 * cfg.height + 1))
    _check_output(out)
    # rendered into a hidden sibling and moved into place at the end: Ctrl-C, an error or a full disk leaves
    # ``out`` as it was (and the same command can run again), never a half-written scene
    target = Path(os.path.realpath(out))
    tmp = _partial_folder(target)
    try:
        _write_scene(cfg, scene, cams, tmp)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_scene(cfg: SynthConfig, scene: SynthScene, cams: SynthCameras, out: Path) -> None:
    """Render every view of ``scene`` and write the scene's files into the empty folder ``out``."""
    digits = max(2, len(str(cfg.n_views - 1)))
    names = [f"{i:0{digits}d}" for i in range(cfg.n_views)]
    annotated = set(annotated_views(cfg.n_views, cfg.n_annotated))
    seeds = point_views(cfg.n_views) if cfg.format == "colmap" else []
    rng = np.random.default_rng([cfg.seed, 2])
    samples: list[tuple[np.ndarray, np.ndarray]] = []
    near_far = np.zeros((cfg.n_views, 2))
    for i, name in enumerate(names):
        view = render_view(scene, cams, i, cfg.supersample, cfg.texture_scale)
        near_far[i] = _near_far(view.depth, scene.outdoor)
        _write_view(out, name, view, scene.classes, i in annotated)
        if i in seeds:
            share = cfg.n_points // len(seeds) + (seeds.index(i) < cfg.n_points % len(seeds))
            samples.append(_surface_samples(cams, i, view, share, rng))
    (out / "segmentations").mkdir(exist_ok=True)
    (out / "segmentations" / "classes.txt").write_text("\n".join(scene.classes) + "\n")
    if cfg.format == "llff":
        write_poses_bounds(out / "poses_bounds.npy", cams.c2w[:, :3, :4], (cfg.height, cfg.width, cams.fx), near_far)
    elif cfg.format == "colmap":
        points, colors = np.concatenate([p for p, _ in samples]), np.concatenate([c for _, c in samples])
        colmap.write_model(out / "sparse" / "0", colmap_model(cams, [f"{n}.png" for n in names], points, colors))
    else:
        # the scene box holds the room with a margin: walls and floor lying on the box's faces would have
        # to be drawn by its last half cell (measured on the orbit scene: 22.3 dB held out without the
        # margin, 24.0 with it)
        margin = BOX_MARGIN * float((scene.room_max - scene.room_min).max())
        box = {"aabb": [(scene.room_min - margin).tolist(), (scene.room_max + margin).tolist()]}
        write_transforms_json(
            out / "transforms.json",
            cams.c2w,
            cams.fx,
            cams.fy,
            cams.cx,
            cams.cy,
            cams.width,
            cams.height,
            [f"images/{n}.png" for n in names],
            extra={**_lens_keys(cams), **({} if scene.outdoor else box)},  # outdoors unbounded: no box
        )
    objects = {"up": [0.0, 0.0, 1.0], "objects": scene.objects}
    (out / "objects.json").write_text(json.dumps(objects, indent=2) + "\n")
    (out / "scene.json").write_text(json.dumps(scene_to_json(cfg, scene, cams), indent=1) + "\n")
