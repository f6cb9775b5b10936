"""The analytic description of a scene: its primitives (:class:`Primitive`) and :class:`SynthScene`, rebuilt
from a parsed ``scene.json`` by :func:`scene_from_json`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


def _local(prim: Primitive, x: np.ndarray) -> np.ndarray:
    """World points ``[M, 3]`` -> the primitive's local frame."""
    return (x - prim.center) @ prim.rotation


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
