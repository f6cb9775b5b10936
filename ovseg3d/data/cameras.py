"""Cameras (pinhole, or through a lens model), pose conventions and ray generation.

Conventions (REFERENCE.md §1, §7):

* Internally every camera-to-world matrix is **OpenGL / nerfstudio**: the camera looks down its
  ``-z`` axis, ``+x`` points right in the image and ``+y`` up. World coordinates and units are
  exactly those of the input poses; nothing is recentred or rescaled.
* LLFF ``poses_bounds.npy`` stores per view a 3x5 matrix whose columns are
  ``[down, right, back, position, (H, W, focal)]`` followed by ``near, far``.
* Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; ``v`` grows downwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ovseg3d.data.lenses import LENS_PINHOLE, project, unproject


def llff_to_opengl(rot_llff: np.ndarray) -> np.ndarray:
    """Rotation columns ``[down, right, back]`` -> ``[right, up, back]``. Shapes ``[..., 3, 3]``."""
    down, right, back = rot_llff[..., 0], rot_llff[..., 1], rot_llff[..., 2]
    return np.stack([right, -down, back], axis=-1)


def opengl_to_llff(rot_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_to_opengl`. Shapes ``[..., 3, 3]``."""
    right, up, back = rot_gl[..., 0], rot_gl[..., 1], rot_gl[..., 2]
    return np.stack([-up, right, back], axis=-1)


def opencv_to_opengl(c2w_cv: np.ndarray) -> np.ndarray:
    """OpenCV camera axes ``[right, down, forward]`` -> OpenGL ``[right, up, back]``; ``[..., 3, 4]``."""
    out = np.array(c2w_cv, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1.0
    return out


LENS_TABLE_BYTES = 1 << 28
"""The most memory a set of cameras with a lens keeps for the directions of its pixel centres
(:meth:`Cameras.pixel_table`): 256 MiB holds one lens at 8,000 x 2,800 pixels, or 30 at 1,280 x 720. Beyond it
each batch of rays goes through the lens's Newton iterations again."""


@dataclass(eq=False)
class Cameras:
    """A set of cameras sharing one image size, pinhole or with a lens model (:mod:`.lenses`).

    Attributes:
        c2w: ``[N, 3, 4]`` float32 camera-to-world, OpenGL convention.
        fx, fy, cx, cy: ``[N]`` float32 intrinsics in pixels.
        width, height: image size in pixels.
        lens: ``[N]`` long lens kind (``LENS_PINHOLE``, ``LENS_OPENCV``, ``LENS_FISHEYE``), or ``None``: all pinhole.
        coeffs: ``[N, 8]`` float32 distortion coefficients (OpenCV ``k1 k2 p1 p2 k3 k4 k5 k6``, fisheye
            ``k1 k2 k3 k4``), or ``None``.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int
    lens: Tensor | None = None
    coeffs: Tensor | None = None
    _table: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False)
    _table_tried: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.lens is not None and not bool((self.lens != LENS_PINHOLE).any()):
            self.lens, self.coeffs = None, None  # every camera a pinhole: the fast path

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def distorted(self) -> bool:
        return self.lens is not None

    @property
    def centers(self) -> Tensor:
        """``[N, 3]`` camera positions in world coordinates."""
        return self.c2w[:, :, 3]

    def scaled(self, factor: float | tuple[float, float]) -> Cameras:
        """Cameras for images resized by ``factor`` (e.g. 0.25 for a 4x downscale), or by ``(sx, sy)``."""
        sx, sy = factor if isinstance(factor, tuple) else (factor, factor)
        return Cameras(
            c2w=self.c2w,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            width=int(round(self.width * sx)),
            height=int(round(self.height * sy)),
            lens=self.lens,
            coeffs=self.coeffs,
        )

    def pixel_table(self) -> tuple[Tensor, Tensor] | None:
        """Through a lens, the camera-space directions (OpenGL axes, not normalised) of every pixel centre: ``[G,
        H, W, 3]`` for the ``G`` distinct sets of intrinsics and lens, and ``[N]`` long, each camera's row of it.
        ``None`` for pinhole cameras (their directions cost a few ops a ray) and where the table would take more
        than :data:`LENS_TABLE_BYTES`. Built once per object, by the same Newton iterations as a batch of rays
        (:func:`camera_directions`): a training step, or a render's view, then reads its rays' directions instead
        of inverting the lens again, which took about half the ops of a GPU step and most of its waits (13 of
        15) on a phone video's capture."""
        if self.lens is None or self._table_tried:
            return self._table
        self._table_tried = True
        assert self.coeffs is not None
        key = torch.cat(
            [torch.stack([self.fx, self.fy, self.cx, self.cy], 1), self.lens[:, None].to(self.fx), self.coeffs], 1
        )
        unique, group = torch.unique(key, dim=0, return_inverse=True)
        if len(unique) * self.height * self.width * 3 * 4 > LENS_TABLE_BYTES:
            return None
        device = self.c2w.device
        v, u = torch.meshgrid(
            torch.arange(self.height, device=device), torch.arange(self.width, device=device), indexing="ij"
        )
        first = torch.full((len(unique),), len(self), dtype=torch.long, device=group.device)
        first = first.scatter_reduce(0, group, torch.arange(len(self), device=group.device), "amin")
        rows = []
        for cam in first.tolist():
            ids = torch.full((u.numel(),), cam, dtype=torch.long, device=device)
            rows.append(_camera_space(self, ids, u.reshape(-1), v.reshape(-1), 0.5, 0.5))
        self._table = (torch.stack(rows).view(len(unique), self.height, self.width, 3), group.to(device))
        return self._table

    def subset(self, ids: list[int] | Tensor) -> Cameras:
        idx = torch.as_tensor(ids, dtype=torch.long)
        lens = None if self.lens is None else self.lens[idx.to(self.lens.device)]
        coeffs = None if self.coeffs is None else self.coeffs[idx.to(self.coeffs.device)]
        return Cameras(
            self.c2w[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx], self.width, self.height, lens, coeffs
        )

    def to(self, device: torch.device | str) -> Cameras:
        """These cameras on ``device``: themselves where they are there already (a render per view keeps their
        :meth:`pixel_table`, built once)."""
        tensors = [self.c2w, self.fx, self.fy, self.cx, self.cy, self.lens, self.coeffs]
        if all(t is None or t.device == torch.device(device) for t in tensors):
            return self
        return Cameras(
            self.c2w.to(device),
            self.fx.to(device),
            self.fy.to(device),
            self.cx.to(device),
            self.cy.to(device),
            self.width,
            self.height,
            None if self.lens is None else self.lens.to(device),
            None if self.coeffs is None else self.coeffs.to(device),
        )


def camera_directions(cameras: Cameras, cam_ids: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``[R, 3]`` camera-space ray directions (OpenGL axes, not normalised) through the normalised image points
    ``x = (u - cx) / fx``, ``y = (v - cy) / fy`` (``v`` down) of cameras ``cam_ids``, through their lenses."""
    if cameras.lens is None:
        return torch.stack([x, -y, -torch.ones_like(x)], dim=-1)
    if bool((cameras.coeffs == cameras.coeffs[:1]).all() and (cameras.lens == cameras.lens[:1]).all()):  # type: ignore
        lens, coeffs = cameras.lens[:1], cameras.coeffs[:1]  # one lens for all: broadcast it  # type: ignore[index]
    else:
        lens, coeffs = cameras.lens[cam_ids], cameras.coeffs[cam_ids]  # type: ignore[index]
    d_cv, _ = unproject(torch.stack([x, y], -1), lens, coeffs)
    return d_cv * d_cv.new_tensor([1.0, -1.0, -1.0])  # OpenCV (x right, y down, z ahead) -> OpenGL


def project_points(cameras: Cameras, cam: int | Tensor, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """World points ``[P, 3]`` into camera ``cam``: pixel ``u, v`` ``[P]`` (continuous, pixel centres at +0.5) and
    a ``[P]`` mask of points in front of the camera that its lens can see. With ``cam`` a ``[G]`` tensor of
    camera ids, into each of them at once: ``[G, P]`` each."""
    one = not isinstance(cam, Tensor)

    def per_camera(x: Tensor) -> Tensor:  # [G, ...] on the points' device (a slice for one camera: no copy)
        return (x[cam : cam + 1] if one else x[cam.to(x.device)]).to(points.device)  # type: ignore[union-attr,operator]

    c2w = per_camera(cameras.c2w)  # [G, 3, 4]
    local = (points[None] - c2w[:, None, :, 3]) @ c2w[:, :, :3]  # [G, P, 3], OpenGL camera axes
    d_cv = local * local.new_tensor([1.0, -1.0, -1.0])
    if cameras.lens is None:
        ahead = d_cv[..., 2]
        front = ahead > 1e-6
        xy = d_cv[..., :2] / ahead.clamp(min=1e-6)[..., None]
    else:  # each camera's lens broadcast over its points
        xy, front = project(d_cv, per_camera(cameras.lens)[:, None], per_camera(cameras.coeffs)[:, None])  # type: ignore[arg-type]
    u = per_camera(cameras.cx)[:, None] + per_camera(cameras.fx)[:, None] * xy[..., 0]
    v = per_camera(cameras.cy)[:, None] + per_camera(cameras.fy)[:, None] * xy[..., 1]
    return (u[0], v[0], front[0]) if one else (u, v, front)


def _camera_space(
    cameras: Cameras, cam_ids: Tensor, u: Tensor, v: Tensor, off_u: Tensor | float, off_v: Tensor | float
) -> Tensor:
    """``[R, 3]`` camera-space directions through the points ``(u + off_u, v + off_v)`` of cameras ``cam_ids``."""
    x = (u.float() + off_u - cameras.cx[cam_ids]) / cameras.fx[cam_ids]
    y = (v.float() + off_v - cameras.cy[cam_ids]) / cameras.fy[cam_ids]
    return camera_directions(cameras, cam_ids, x, y)


def pixel_rays(cameras: Cameras, cam_ids: Tensor, u: Tensor, v: Tensor, jitter: bool = False) -> tuple[Tensor, Tensor]:
    """World-space rays through pixels, through each camera's lens.

    Args:
        cam_ids: ``[R]`` long, camera of each ray.
        u, v: ``[R]`` pixel column / row (integers or floats, before the +0.5 centre offset).
        jitter: sample a random point inside the pixel instead of its centre.

    Returns:
        origins ``[R, 3]`` and unit directions ``[R, 3]``; a ray's ``t`` is a world distance.
    """
    centres = not (jitter or u.is_floating_point() or v.is_floating_point())
    table = cameras.pixel_table() if centres else None
    if table is not None:  # through a lens: the pixel centres' directions, inverted once
        d_cam = table[0][table[1][cam_ids], v.long(), u.long()]
    else:
        off_u = torch.rand_like(u, dtype=torch.float32) if jitter else 0.5
        off_v = torch.rand_like(v, dtype=torch.float32) if jitter else 0.5
        d_cam = _camera_space(cameras, cam_ids, u, v, off_u, off_v)
    c2w = cameras.c2w[cam_ids]
    dirs = torch.einsum("rij,rj->ri", c2w[:, :, :3], d_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return c2w[:, :, 3].expand_as(dirs).contiguous(), dirs


def image_rays(cameras: Cameras, cam_id: int) -> tuple[Tensor, Tensor]:
    """All rays of one image in row-major pixel order: ``[H*W, 3]`` origins and directions."""
    device = cameras.c2w.device
    v, u = torch.meshgrid(
        torch.arange(cameras.height, device=device),
        torch.arange(cameras.width, device=device),
        indexing="ij",
    )
    ids = torch.full((u.numel(),), cam_id, dtype=torch.long, device=device)
    return pixel_rays(cameras, ids, u.reshape(-1), v.reshape(-1))
