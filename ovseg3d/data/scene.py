"""The in-memory scene every stage reads: images, cameras, splits and optional ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ovseg3d.data.cameras import Cameras
from ovseg3d.errors import UsageError


class SceneError(UsageError):
    """Bad scene input. The message is one line and names the offending file."""


# where a scene's box came from, when it was given rather than estimated: such a box holds the whole scene
GIVEN_BOUNDS = ("LLFF depth bounds", "transforms.json aabb")


@dataclass
class SceneObject:
    """One annotated object of ``objects.json`` (world frame and units of the poses)."""

    cls: str
    instance: int
    center: tuple[float, float, float]
    size: tuple[float, float, float]  # extents along the object's own x, y, z (z = up)
    yaw: float  # radians about the scene's up vector
    symmetric: bool

    def as_json(self) -> dict:
        """The entry as ``objects.json`` writes it."""
        return {
            "class": self.cls,
            "instance": self.instance,
            "center": list(self.center),
            "size": list(self.size),
            "yaw": self.yaw,
            "symmetric": self.symmetric,
        }


@dataclass
class Scene:
    """A loaded scene. All images share one size; colours are uint8 to keep memory low.

    Attributes:
        root: the scene folder.
        format: ``"llff"`` (3D-OVS / LLFF ``poses_bounds.npy``) or ``"transforms"`` (nerfstudio).
        image_paths: one per view, in view-index order.
        images: ``[N, H, W, 3]`` uint8.
        cameras: ``N`` cameras, OpenGL convention, input frame and units.
        near_far: ``[N, 2]`` float32 depth bounds when the format gives them, else ``None``.
        aabb: ``[6]`` float32 ``(xmin, ymin, zmin, xmax, ymax, zmax)`` enclosing the content.
        train_ids / eval_ids: view indices used for training / held out.
        classes: scene class names (``segmentations/classes.txt``), empty if none.
        segmentations: view index -> ``[C, H, W]`` bool 3D-OVS masks (one per class in ``classes``).
        labels: view index -> ``[H, W]`` uint8 class index (255 = none), from ``labels/``.
        instances: view index -> ``[H, W]`` int32 instance id (0 = none), from ``instances/``.
        masks: view index -> ``[H, W]`` bool, the pixels training may use (a ``mask_path`` or ``masks/``); a
            view without one uses every pixel.
        objects: annotated objects from ``objects.json``.
        up: unit up vector from ``objects.json`` (or estimated from the cameras).
        bounds: where ``aabb`` came from (one of :data:`GIVEN_BOUNDS`, or how it was estimated: the region of
            interest, beyond which a contraction models the rest).
    """

    root: Path
    format: str
    image_paths: list[Path]
    images: Tensor
    cameras: Cameras
    near_far: Tensor | None
    aabb: Tensor
    train_ids: list[int]
    eval_ids: list[int]
    classes: list[str] = field(default_factory=list)
    segmentations: dict[int, Tensor] = field(default_factory=dict)
    labels: dict[int, Tensor] = field(default_factory=dict)
    instances: dict[int, Tensor] = field(default_factory=dict)
    masks: dict[int, Tensor] = field(default_factory=dict)
    objects: list[SceneObject] = field(default_factory=list)
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    bounds: str = GIVEN_BOUNDS[0]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return self.cameras.height

    @property
    def width(self) -> int:
        return self.cameras.width

    def image_float(self, idx: int) -> Tensor:
        """``[H, W, 3]`` float32 in [0, 1]."""
        return self.images[idx].float() / 255.0

    def used_pixels(self, views: list[int]) -> Tensor | None:
        """``[len(views), H, W]`` bool, the pixels of ``views`` that training may use; ``None`` when none of
        them has a mask (every pixel is used)."""
        if not any(v in self.masks for v in views):
            return None
        every = torch.ones(self.height, self.width, dtype=torch.bool)
        return torch.stack([self.masks.get(v, every) for v in views])

    def extent(self) -> float:
        """Length of the aabb diagonal: the scene's scale for tolerances."""
        return float(torch.linalg.norm(self.aabb[3:] - self.aabb[:3]))


def pose_file(scene: Scene) -> str:
    """The file (or folder) a scene's poses were read from, for messages."""
    if scene.format == "llff":
        return str(scene.root / "poses_bounds.npy")
    if scene.format == "transforms":
        return str(scene.root / "transforms.json")
    return f"the COLMAP model of {scene.root}"


def check_poses(scene: Scene, source: str | Path | None = None) -> None:
    """Raise :class:`SceneError` (one line naming the pose file ``source``, default :func:`pose_file`) for poses
    that no training can use: a non-finite camera matrix or one whose rotation part is not a rotation
    (``|det|`` far from 1, e.g. all zeros), non-finite or non-positive focal lengths, and LLFF depth bounds
    that are not finite or have ``near >= far`` or ``near < 0``."""
    where = str(source) if source is not None else pose_file(scene)
    cams = scene.cameras

    def name(i: int) -> str:
        image = scene.image_paths[i].name if i < len(scene.image_paths) else "?"
        return f"view {i} ({image})"

    c2w = cams.c2w.double()
    finite = torch.isfinite(c2w).flatten(1).all(1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise SceneError(f"{where}: {name(i)} has a camera pose with NaN or infinite values: fix or remove it")
    det = torch.linalg.det(c2w[:, :, :3]).abs()
    bad = (det - 1.0).abs() > 0.1
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise SceneError(
            f"{where}: {name(i)} has a camera rotation with determinant {float(det[i]):.3g} (a rotation has 1 or "
            f"-1; {int(bad.sum())} such poses): fix or remove them"
        )
    for label, focal in (("fx", cams.fx), ("fy", cams.fy)):
        bad = ~torch.isfinite(focal) | (focal <= 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise SceneError(f"{where}: {name(i)} has focal length {label} = {float(focal[i]):g}: must be above 0")
    if scene.near_far is not None:
        nf = scene.near_far.double()
        bad = ~torch.isfinite(nf).all(1) | (nf[:, 0] >= nf[:, 1]) | (nf[:, 0] < 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            near, far = (float(x) for x in nf[i])
            raise SceneError(
                f"{where}: {name(i)} has depth bounds near {near:g}, far {far:g}: need 0 <= near < far "
                f"({int(bad.sum())} such views): fix or remove them"
            )
