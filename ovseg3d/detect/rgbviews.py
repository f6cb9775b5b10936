"""CLIP on rgb renders of one instance from the run's radiance field: the detection head's third cue.

Where a point cloud comes from a run, the radiance field can draw each instance from any side, also from
where no training camera stood. :class:`RenderClassifier` puts ``n_views`` cameras on a ring around the
instance's bounding sphere (``elevation_deg`` above its horizon, about ``up``), each at the distance at which
the sphere fills ``fill`` of the half field of view, and renders the field with every ray limited to the
sphere: what stands in front of the instance, behind it or beside it is not drawn, so CLIP sees the object
alone on black. Each render is embedded whole and classified as
:class:`~ovseg3d.detect.depthmaps.ViewClassifier` does (template-averaged class texts, a softmax per view,
the views averaged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.data.cameras import Cameras, image_rays
from ovseg3d.detect.depthmaps import ViewClassifier
from ovseg3d.render.renderer import render_image_rays
from ovseg3d.teachers.base import CropEncoder

RGB_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a rendering of a {}.",
    "a close-up photo of a {}.",
    "a photo of a {} on a black background.",
)
"""Prompt templates for the renders (``{}`` = class name)."""


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """``[3, 4]`` OpenGL camera-to-world of a camera at ``eye`` looking at ``target`` (x right, y up, -z ahead);
    ``up`` must not be parallel to the viewing direction."""
    ahead = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(ahead, up), dim=0)
    return torch.stack([right, torch.linalg.cross(right, ahead), -ahead, eye], dim=1)


def ring_cameras(
    center: Tensor,
    radius: float,
    up: Tensor,
    n_views: int = 6,
    elevation_deg: float = 30.0,
    size: int = 96,
    fov_deg: float = 40.0,
    fill: float = 0.9,
) -> Cameras:
    """``n_views`` square cameras around a sphere (``center``, ``radius``), looking at its centre.

    Azimuths ``0, 360/V, ...`` degrees about ``up`` from an arbitrary horizontal axis; the sphere fills
    ``fill`` of the half field of view.
    """
    up = F.normalize(up.float(), dim=0)
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    east = F.normalize(torch.linalg.cross(up, helper), dim=0)
    north = torch.linalg.cross(up, east)
    half_fov = math.radians(fov_deg) / 2.0
    distance = radius / (fill * math.sin(half_fov))
    el = math.radians(elevation_deg)
    c2w = []
    for k in range(n_views):
        az = 2.0 * math.pi * k / n_views
        direction = math.cos(el) * (math.cos(az) * east + math.sin(az) * north) + math.sin(el) * up
        c2w.append(look_at(center + distance * direction, center, up))
    focal = 0.5 * size / math.tan(half_fov)
    full = torch.full((n_views,), focal)
    mid = torch.full((n_views,), 0.5 * size)
    return Cameras(torch.stack(c2w), full, full.clone(), mid, mid.clone(), size, size)


def sphere_limits(origins: Tensor, dirs: Tensor, center: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """``[R]`` entry and exit distances of unit rays through a sphere; a ray that misses it gets an empty
    interval (both at its closest approach)."""
    along = ((center - origins) * dirs).sum(-1)
    miss2 = ((center - origins) ** 2).sum(-1) - along**2
    half = (radius**2 - miss2).clamp(min=0.0).sqrt()
    return (along - half).clamp(min=0.0), along + half


class RenderClassifier(ViewClassifier):
    """Zero-shot classifier of one instance over rgb renders of it from a run's radiance field.

    ``trainer``: the run's :class:`~ovseg3d.train.Trainer` (its field and occupancy grid render the views);
    ``up``: the world's up, about which the cameras circle.
    """

    def __init__(
        self,
        encoder: CropEncoder,
        trainer,  # noqa: ANN001 (ovseg3d.train.Trainer; imported lazily by the callers)
        up: Tensor,
        templates: Sequence[str] = RGB_TEMPLATES,
        logit_scale: float = 100.0,
        n_views: int = 6,
        elevation_deg: float = 30.0,
        size: int = 96,
    ) -> None:
        super().__init__(encoder, templates, logit_scale)
        self.trainer, self.up = trainer, up.float().cpu()
        self.n_views, self.elevation_deg, self.size = n_views, elevation_deg, size

    def images(self, points: Tensor) -> Tensor:
        """``[V, size, size, 3]`` uint8 renders of the instance whose points (world frame) are ``points``."""
        lo, hi = points.amin(0), points.amax(0)
        center = 0.5 * (lo + hi)
        radius = max(float((points - center).norm(dim=-1).max()), 1e-3)
        cameras = ring_cameras(center, radius, self.up, self.n_views, self.elevation_deg, self.size)
        geo = self.trainer
        cameras, center = cameras.to(geo.device), center.to(geo.device)
        # every view's rays in one render call (its chunks): on a GPU, per-view calls were launch-bound
        rays = [image_rays(cameras, v) for v in range(self.n_views)]
        origins, dirs = torch.cat([o for o, _ in rays]), torch.cat([d for _, d in rays])
        near, far = sphere_limits(origins, dirs, center, radius)
        out = render_image_rays(
            geo.field, geo.grid, origins, dirs, geo.opts, geo.cfg.render_chunk(geo.device.type), near, far
        )
        renders = out.rgb.view(self.n_views, self.size, self.size, 3)
        return (renders.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
