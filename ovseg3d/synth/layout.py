"""Building a scene: drawing and placing the objects, and the room (floor, walls, ceiling) or the outdoor
ground and buildings around them (:func:`build_scene`)."""

from __future__ import annotations

import math

import numpy as np

from ovseg3d.errors import UsageError
from ovseg3d.synth.config import SynthConfig, resolve_config
from ovseg3d.synth.objects import VOCABULARY, _jitter, _Part
from ovseg3d.synth.scene import Primitive, SynthScene

STUFF_CLASSES = ("floor", "wall", "ceiling")
OUTDOOR_CLASSES = ("ground", "building")  # the structural classes of an outdoor scene, after the objects'
GROUND_HALF = 300.0  # outdoor: the ground plane runs this far (m) from the centre along x and y
N_BUILDINGS = 6  # outdoor: buildings around the centre, one per sector (fewer if one cannot be placed)
BUILDING_RANGE = (15.0, 60.0)  # outdoor: nearest wall at least the first (m) from the centre, the centre within
BUILDING_HEIGHT = (5.0, 20.0)  # outdoor: building heights (m)


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
