"""Distances from points to the true surfaces of a scene described by its ``scene.json`` (3D ground truth)."""

from __future__ import annotations

import numpy as np

from ovseg3d.errors import UsageError
from ovseg3d.synth.scene import Primitive, _local


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
