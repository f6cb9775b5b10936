"""Contour-aware multi-view depth maps of one object's point cloud and a zero-shot CLIP classifier over them.

The projection follows OpenDlign (which refines PointCLIP V2's "realistic projection"):

1. normalise the object: centre of its bounding box at the origin, farthest point at radius 1;
2. for each view rotate the points into the view frame (:func:`view_rotations`) and quantise them into a
   ``[B, H, W]`` grid: image x/y -> pixel, depth -> one of ``B`` bins;
3. an occupied cell holds its *nearness* ``1 - bin / B`` (in ``[1/B, 1]``; nearer = brighter), an empty one 0;
4. densify with a ``dilate``-cubed 3D max-pool (``torch.nn.functional.max_pool3d``, run as three 1D pools along
   depth, rows and columns, which is exactly the same as the full cube and ~16x cheaper for 7x7x7);
5. squeeze the depth axis with a min over depth: per pixel keep the nearest occupied cell (smallest bin index) and
   its value; pixels with no occupied cell are background (0);
6. smooth with an edge-preserving bilateral filter (:func:`bilateral_filter`). It runs on the *squeezed* 2D map,
   not per depth slice: inside one slice every occupied cell holds the same few quantised values, so filtering
   slices does little but cost ``B`` times more; on the squeezed map it smooths the bin staircase of a surface
   while the range kernel keeps depth jumps and the foreground mask keeps the silhouette (background pixels
   neither feed nor receive the filter, so the contour stays exactly where step 4 put it).

Because the max-pool value of a cell is the nearness of the nearest point in its neighbourhood, steps 4-5
together give each pixel the nearness of the nearest point within ``dilate // 2`` pixels (Chebyshev) of it: the
silhouette grows by ``dilate // 2`` pixels on every side.

Defaults: 10 views around the object (azimuths ``0, 36, ... 324`` degrees) at 25 degrees elevation, optionally
plus a top view; ``224 x 224`` pixels (CLIP's input size); ``B = 64`` depth bins (steps of 1/64 in brightness,
four uint8 grey levels each, while the ``10 x 64 x 224 x 224`` grid is still made one view at a time in ~13 MB);
the unit sphere spans ``fill = 0.9`` of the half width, leaving room for the dilation.

:class:`DepthMapClassifier` classifies an object zero-shot: it embeds each depth map (the whole image as one
crop) with a CLIP-like :class:`~ovseg3d.teachers.base.CropEncoder`, compares with class-name embeddings
averaged over :data:`DEPTH_TEMPLATES`, takes a softmax over classes per view and averages the views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.errors import UsageError
from ovseg3d.teachers.base import CropEncoder, TeacherView

DEPTH_TEMPLATES: tuple[str, ...] = (
    "a depth map of a {}.",
    "a grey depth image of a {}.",
    "a rendered depth map of a {}.",
    "a black and white depth image of a {}.",
    "a 3D depth rendering of a {}.",
    "a depth map of the shape of a {}.",
)
"""Prompt templates for depth maps (``{}`` = class name)."""


def orbit_rotation(azimuth_deg: float, elevation_deg: float) -> Tensor:
    """View-from-world rotation ``[3, 3]`` of a camera on the unit sphere looking at the origin.

    The camera sits in direction ``c = (cos e cos a, cos e sin a, sin e)`` from the origin (world +z up; azimuth
    ``a`` counter-clockwise from +x seen from above, elevation ``e`` above the xy plane). The rows of the result
    are the view axes in world coordinates, OpenGL style (right-handed): x = image right (horizontal,
    ``(-sin a, cos a, 0)``), y = image up, z = towards the camera (``c``). So ``p_view = R @ p_world`` and a
    larger view z is nearer the camera. Well defined at the poles (the top view, ``e = 90``).
    """
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    back = torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)
    right = torch.tensor([-math.sin(a), math.cos(a), 0.0], dtype=torch.float64)
    up = torch.linalg.cross(back, right)
    return torch.stack([right, up, back]).to(torch.float32)


def view_rotations(
    n_views: int = 10, elevation_deg: float = 25.0, top_view: bool = False, azimuth_offset_deg: float = 0.0
) -> Tensor:
    """View-from-world rotations ``[V, 3, 3]`` (see :func:`orbit_rotation`) of ``n_views`` cameras with evenly
    spaced azimuths ``azimuth_offset_deg + 360 i / n_views`` at ``elevation_deg``, plus one looking straight
    down (azimuth 0, elevation 90) last if ``top_view`` (``V = n_views + 1``). Up is +z of the points."""
    if n_views < 0 or (n_views == 0 and not top_view):
        raise UsageError(f"need at least one view, got n_views={n_views}, top_view={top_view}")
    rotations = [orbit_rotation(azimuth_offset_deg + 360.0 * i / n_views, elevation_deg) for i in range(n_views)]
    if top_view:
        rotations.append(orbit_rotation(0.0, 90.0))
    return torch.stack(rotations)


def normalize_points(points: Tensor) -> Tensor:
    """``[N, 3]`` -> ``[N, 3]`` float32: bounding-box centre at the origin, farthest point at radius 1 (the
    bounding-box centre, unlike the mean, does not move with uneven sampling density)."""
    if points.ndim != 2 or points.shape[-1] != 3 or points.shape[0] == 0:
        raise UsageError(f"expected a non-empty [N, 3] point cloud, got {tuple(points.shape)}")
    p = points.detach().to(torch.float32)
    p = p - (p.amin(0) + p.amax(0)) / 2
    return p / p.norm(dim=1).amax().clamp_min(1e-12)


def bilateral_filter(
    maps: Tensor,
    mask: Tensor | None = None,
    kernel_size: int = 5,
    sigma_space: float = 1.5,
    sigma_range: float = 0.1,
) -> Tensor:
    """Edge-preserving smoothing of ``[..., H, W]`` float maps.

    Each pixel becomes the average of its ``kernel_size x kernel_size`` window weighted by a spatial gaussian
    (``sigma_space`` pixels) times a range gaussian of the value difference to the centre pixel (``sigma_range``),
    so neighbours across a jump much larger than ``sigma_range`` hardly count. With ``mask`` (bool, same shape)
    only masked pixels contribute, and unmasked pixels come out 0. Borders: replicated without a mask, ignored
    with one. ``sigma_range = inf`` is a plain gaussian blur.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UsageError(f"kernel_size must be odd and positive, got {kernel_size}")
    if kernel_size == 1:
        return maps.clone() if mask is None else torch.where(mask, maps, torch.zeros_like(maps))
    shape = maps.shape
    h, w = shape[-2:]
    r = kernel_size // 2
    x = maps.reshape(-1, 1, h, w).to(torch.float32)
    if mask is None:
        padded = F.pad(x, (r, r, r, r), mode="replicate")[:, 0]
        valid = None
    else:
        padded = F.pad(x, (r, r, r, r))[:, 0]
        valid = F.pad(mask.reshape(-1, 1, h, w).to(torch.float32), (r, r, r, r))[:, 0]
    centre = x[:, 0]
    total = torch.zeros_like(centre)
    weight_sum = torch.zeros_like(centre)
    for dy in range(kernel_size):
        for dx in range(kernel_size):  # one shifted copy of the maps per window offset: small memory, vectorised
            neighbour = padded[:, dy : dy + h, dx : dx + w]
            weight = torch.full_like(centre, math.exp(-((dy - r) ** 2 + (dx - r) ** 2) / (2 * sigma_space**2)))
            if math.isfinite(sigma_range):
                weight = weight * torch.exp(-((neighbour - centre) ** 2) / (2 * sigma_range**2))
            if valid is not None:
                weight = weight * valid[:, dy : dy + h, dx : dx + w]
            total += weight * neighbour
            weight_sum += weight
    out = (total / weight_sum.clamp_min(1e-12)).reshape(shape).to(maps.dtype)
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return out


def _dilate3d(grid: Tensor, size: int) -> Tensor:
    """``size``-cubed max-pool (stride 1, same size) of ``[N, 1, D, H, W]``, as three separable 1D pools."""
    r = size // 2
    grid = F.max_pool3d(grid, (size, 1, 1), stride=1, padding=(r, 0, 0))
    grid = F.max_pool3d(grid, (1, size, 1), stride=1, padding=(0, r, 0))
    return F.max_pool3d(grid, (1, 1, size), stride=1, padding=(0, 0, r))


def project_depth_maps(
    points: Tensor,
    n_views: int = 10,
    size: int = 224,
    depth_bins: int = 64,
    dilate: int = 7,
    elevation_deg: float = 25.0,
    top_view: bool = False,
    rotations: Tensor | None = None,
    fill: float = 0.9,
    bilateral_kernel: int = 5,
    sigma_space: float = 1.5,
    sigma_range: float = 0.1,
) -> Tensor:
    """Contour-aware depth maps ``[V, size, size]`` float in ``[0, 1]`` of one object's ``[N, 3]`` points (see
    the module docstring): background 0, nearer surfaces brighter (nearness ``1 - depth_bin / depth_bins``,
    depth measured along the view axis across the normalised object's unit sphere, 1 at its front).

    Args:
        points: ``[N, 3]`` points of one object, any position and scale (normalised here).
        n_views, elevation_deg, top_view: the views of :func:`view_rotations`; ignored if ``rotations`` is given.
        size: image height and width in pixels.
        depth_bins: ``B``, the number of depth bins.
        dilate: edge of the 3D max-pool cube (odd; 1 or 0 = no densification).
        rotations: ``[V, 3, 3]`` view-from-world rotations (view x right, y up, z towards the camera).
        fill: the unit sphere's radius as a fraction of half the image (the silhouette grows ``dilate // 2``
            pixels beyond it, so keep ``fill * size / 2 + dilate // 2 < size / 2``).
        bilateral_kernel, sigma_space, sigma_range: the bilateral filter (:func:`bilateral_filter`);
            ``bilateral_kernel = 1`` turns it off.
    """
    if dilate > 1 and dilate % 2 == 0:
        raise UsageError(f"dilate must be odd, got {dilate}")
    if depth_bins < 1 or size < 1:
        raise UsageError(f"need depth_bins >= 1 and size >= 1, got {depth_bins}, {size}")
    p = normalize_points(points)
    if rotations is None:
        rotations = view_rotations(n_views, elevation_deg, top_view)
    rotations = rotations.to(device=p.device, dtype=torch.float32)
    maps = torch.zeros(rotations.shape[0], size, size, device=p.device)
    r = dilate // 2 if dilate > 1 else 0
    for v, rotation in enumerate(rotations):
        q = p @ rotation.T  # [N, 3] view frame
        col = ((q[:, 0] * fill + 1) / 2 * size).floor().long().clamp(0, size - 1)
        row = ((1 - q[:, 1] * fill) / 2 * size).floor().long().clamp(0, size - 1)
        depth = (1 - q[:, 2]) / 2  # 0 at the front of the unit sphere, 1 at its back
        b = (depth * depth_bins).floor().long().clamp(0, depth_bins - 1)
        # the grid spans only the points' bounding box grown by the pool radius: the pool reaches nothing beyond
        # it, so this is exact and skips the empty margins of the full [B, size, size] grid
        lo = [max(int(t.min()) - r, 0) for t in (b, row, col)]
        hi = [min(int(t.max()) + r + 1, n) for t, n in ((b, depth_bins), (row, size), (col, size))]
        grid = torch.zeros(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2], device=p.device)
        # every point in one cell writes the same value (its bin's nearness), so the scatter has no races
        grid[b - lo[0], row - lo[1], col - lo[2]] = 1 - b.to(torch.float32) / depth_bins
        if dilate > 1:
            grid = _dilate3d(grid[None, None], dilate)[0, 0]
        # min over depth: per pixel the nearest (smallest index) occupied bin; grid.shape[0] where none
        bins = torch.arange(grid.shape[0], device=p.device)[:, None, None]
        nearest = torch.where(grid > 0, bins, grid.shape[0]).amin(0)
        value = grid.gather(0, nearest.clamp_max(grid.shape[0] - 1)[None])[0]
        maps[v, lo[1] : hi[1], lo[2] : hi[2]] = torch.where(nearest < grid.shape[0], value, torch.zeros_like(value))
    if bilateral_kernel > 1:
        maps = bilateral_filter(maps, maps > 0, bilateral_kernel, sigma_space, sigma_range)
    return maps.clamp(0, 1)


def depth_map_images(maps: Tensor) -> Tensor:
    """``[V, H, W]`` depth maps in ``[0, 1]`` -> ``[V, H, W, 3]`` uint8 grey RGB images for CLIP."""
    grey = (maps.clamp(0, 1) * 255).round().to(torch.uint8)
    return grey.unsqueeze(-1).expand(*grey.shape, 3).contiguous()


class ViewClassifier:
    """Zero-shot classifier of one object from images of it (:meth:`images`, made by a subclass).

    Each class name is embedded with every template (``encoder.encode_text``), the template embeddings averaged
    and re-normalised (cached per class list). Each image is embedded whole (``encoder.encode_crops`` with one
    box covering the image); per view, ``softmax(logit_scale * cosine)`` over the classes; the view softmaxes
    are summed and normalised to sum 1.
    """

    def __init__(self, encoder: CropEncoder, templates: Sequence[str], logit_scale: float = 100.0) -> None:
        if not templates:
            raise UsageError("need at least one template")
        self.encoder = encoder
        self.templates = tuple(templates)
        self.logit_scale = logit_scale
        self._text_cache: dict[tuple[str, ...], Tensor] = {}

    def images(self, points: Tensor) -> Tensor:
        """``[V, H, W, 3]`` uint8 views of the object whose points are ``points`` ``[N, 3]``."""
        raise NotImplementedError

    def text_embeddings(self, class_names: Sequence[str]) -> Tensor:
        """``[C, D]`` unit class embeddings, the template average of each class (cached per class list)."""
        key = tuple(class_names)
        if not key:
            raise UsageError("need at least one class name")
        if key not in self._text_cache:
            texts = [t.format(name) for name in key for t in self.templates]
            emb = self.encoder.encode_text(texts).to(torch.float32)
            emb = F.normalize(emb, dim=-1).reshape(len(key), len(self.templates), -1).mean(1)
            self._text_cache[key] = F.normalize(emb, dim=-1)
        return self._text_cache[key]

    def embed_images(self, images: Tensor) -> Tensor:
        """``[V, H, W, 3]`` uint8 -> ``[V, D]``: the encoder's ``encode_images`` (one batch) where it has one, else
        one whole-image crop a view. (Not the crops' image cache: views of two objects can share an index and,
        once the first is freed, its memory.)"""
        encode = getattr(self.encoder, "encode_images", None)
        if encode is not None:
            return encode(images)
        h, w = images.shape[1:3]
        box = torch.tensor([[0, 0, w, h]], dtype=torch.long)
        return torch.cat(
            [self.encoder.encode_crops(TeacherView(index=v, image=img), box) for v, img in enumerate(images)]
        )

    def view_probabilities(self, points: Tensor, class_names: Sequence[str]) -> Tensor:
        """``[V, C]``: per view, the softmax over classes of ``logit_scale`` x cosine."""
        text = self.text_embeddings(class_names)
        feats = F.normalize(self.embed_images(self.images(points)).to(torch.float32), dim=-1)
        return torch.softmax(self.logit_scale * feats @ text.to(feats.device).T, dim=-1)

    def classify(self, points: Tensor, class_names: Sequence[str]) -> Tensor:
        """``[C]`` class probabilities of the object ``points`` (``[N, 3]``): view softmaxes summed, sum 1."""
        probs = self.view_probabilities(points, class_names).sum(0)
        return probs / probs.sum()


class DepthMapClassifier(ViewClassifier):
    """Zero-shot classifier of one object's point cloud over its contour-aware depth maps (OpenDlign)."""

    def __init__(
        self,
        encoder: CropEncoder,
        templates: Sequence[str] = DEPTH_TEMPLATES,
        logit_scale: float = 100.0,
        n_views: int = 10,
        elevation_deg: float = 25.0,
        top_view: bool = False,
        size: int = 224,
        depth_bins: int = 64,
        dilate: int = 7,
    ) -> None:
        super().__init__(encoder, templates, logit_scale)
        self.n_views = n_views
        self.elevation_deg = elevation_deg
        self.top_view = top_view
        self.size = size
        self.depth_bins = depth_bins
        self.dilate = dilate

    def depth_maps(self, points: Tensor) -> Tensor:
        """``[V, size, size]`` depth maps of ``points`` with this classifier's projection settings."""
        return project_depth_maps(
            points,
            n_views=self.n_views,
            size=self.size,
            depth_bins=self.depth_bins,
            dilate=self.dilate,
            elevation_deg=self.elevation_deg,
            top_view=self.top_view,
        )

    def images(self, points: Tensor) -> Tensor:
        return depth_map_images(self.depth_maps(points))
