"""Procedural noise and textures: a material maps a primitive's local hit points and normals to albedo, so
that textures are view consistent."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ovseg3d.synth.scene import Primitive


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
