"""The object vocabulary: each builder returns parts in the object's frame (origin = bounding-box centre,
x = front, z = up) and the bounding-box size; :data:`VOCABULARY` maps class names to builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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
