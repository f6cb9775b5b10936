"""Contour-aware depth maps (OpenDlign) of object point clouds and the zero-shot classifier over them."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from ovseg3d.detect.depthmaps import (
    DEPTH_TEMPLATES,
    DepthMapClassifier,
    _dilate3d,
    bilateral_filter,
    depth_map_images,
    orbit_rotation,
    project_depth_maps,
    view_rotations,
)
from ovseg3d.teachers.base import TeacherView

SIZE = 96
BINS = 64
FILL = 0.9  # project_depth_maps' default
R = 3  # the 7x7x7 max-pool grows the silhouette 3 pixels on each side
FRONT = view_rotations(1, 0.0)  # azimuth 0, elevation 0: camera on +x; image right = world +y, image up = world +z


def fibonacci_sphere(n: int, radius: float = 1.0) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    rho = (1 - z**2).sqrt()
    return (radius * torch.stack([rho * phi.cos(), rho * phi.sin(), z], 1)).float()


def cube_surface(n: int = 80, half: float = 1.0) -> torch.Tensor:
    """Points on the 6 faces of an axis-aligned cube, an ``n x n`` grid per face."""
    u = torch.linspace(-half, half, n)
    a, b = torch.meshgrid(u, u, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    c = torch.full_like(a, half)
    faces = []
    for sign in (1, -1):
        faces += [torch.stack([sign * c, a, b], 1), torch.stack([a, sign * c, b], 1), torch.stack([a, b, sign * c], 1)]
    return torch.cat(faces)


def cylinder_surface(radius: float = 1.0, height: float = 2.0) -> torch.Tensor:
    """Side and both caps of a z-axis cylinder."""
    t = torch.linspace(0, 2 * math.pi, 240)[:-1]
    z = torch.linspace(-height / 2, height / 2, 80)
    tt, zz = torch.meshgrid(t, z, indexing="ij")
    side = torch.stack([radius * tt.cos(), radius * tt.sin(), zz], -1).reshape(-1, 3)
    u = torch.linspace(-radius, radius, 70)
    x, y = torch.meshgrid(u, u, indexing="ij")
    disc = torch.stack([x, y], -1).reshape(-1, 2)
    disc = disc[disc.norm(dim=1) <= radius]
    caps = [torch.cat([disc, torch.full((len(disc), 1), s * height / 2)], 1) for s in (1, -1)]
    return torch.cat([side, *caps])


def normalisation(points: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The centre and radius that project_depth_maps normalises by (bounding-box centre, farthest point)."""
    centre = (points.amin(0) + points.amax(0)) / 2
    return centre, float((points - centre).norm(dim=1).max())


def pixel(coordinate: float) -> float:
    """Continuous pixel coordinate (column, or row for -coordinate) of a normalised view-frame coordinate."""
    return (coordinate * FILL + 1) / 2 * SIZE


def nearness(x_view: float) -> float:
    """Expected brightness of a normalised view-frame depth coordinate (z towards the camera) with BINS bins."""
    return 1 - math.floor((1 - x_view) / 2 * BINS) / BINS


def foreground_bbox(image: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = (image > 0).nonzero(as_tuple=True)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def test_view_rotations_are_orbit_cameras_looking_at_the_centre():
    rots = view_rotations(10, 25.0, top_view=True)
    assert rots.shape == (11, 3, 3)
    assert torch.allclose(rots @ rots.transpose(1, 2), torch.eye(3).expand(11, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rots), torch.ones(11), atol=1e-6)
    back = rots[:, 2]  # the camera's direction from the centre, in world coordinates
    assert torch.allclose(back[:10, 2], torch.full((10,), math.sin(math.radians(25))), atol=1e-6)
    azimuths = torch.atan2(back[:10, 1], back[:10, 0]).rad2deg() % 360
    assert torch.allclose(azimuths, torch.arange(10) * 36.0, atol=1e-3)
    assert torch.allclose(back[10], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)  # the top view looks straight down
    assert (rots[:10, 1, 2] > 0).all()  # image up has world +z up
    assert torch.allclose(FRONT[0], orbit_rotation(0.0, 0.0))
    assert torch.allclose(FRONT[0], torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]), atol=1e-6)


def test_separable_pool_is_the_full_cube_max_pool():
    g = torch.rand(2, 1, 12, 20, 17)
    g = torch.where(g > 0.97, g, torch.zeros_like(g))
    assert torch.equal(_dilate3d(g, 7), F.max_pool3d(g, 7, stride=1, padding=3))


@pytest.mark.parametrize("shape", ["sphere", "cube"])
def test_silhouette_has_its_contour_where_the_geometry_puts_it(shape):
    if shape == "sphere":
        points = fibonacci_sphere(40000, radius=2.5) + torch.tensor([1.0, -2.0, 3.0])
        half = 1.0  # the normalised sphere's silhouette radius
    else:
        points = cube_surface(80, half=1.7) + torch.tensor([-4.0, 0.5, 2.0])
        half = 1 / math.sqrt(3)  # half-side of the normalised cube (its corners on the unit sphere)
    maps = project_depth_maps(points, size=SIZE, depth_bins=BINS, rotations=FRONT)
    assert maps.shape == (1, SIZE, SIZE) and maps.dtype == torch.float32
    image = maps[0]
    assert float(image.min()) == 0.0 and float(image.max()) <= 1.0
    lo, hi = math.floor(pixel(-half)) - R, math.floor(pixel(half)) + R  # the same for columns and rows
    x0, y0, x1, y1 = foreground_bbox(image)
    for got, want in ((x0, lo), (y0, lo), (x1, hi), (y1, hi)):
        assert abs(got - want) <= 1, (x0, y0, x1, y1, lo, hi)
    rows, cols = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    centre = SIZE / 2
    extent = half * FILL * SIZE / 2  # pixels
    if shape == "sphere":
        dist = ((rows - centre) ** 2 + (cols - centre) ** 2).sqrt()
        assert (image[dist < extent + R - 1] > 0).all()  # a filled disc, no holes
        assert (image[dist > extent + R * math.sqrt(2) + 1] == 0).all()  # background exactly 0 outside
        assert (image[dist < extent * 0.5] > 0.85).all()  # the front of the sphere is near: bright
    else:
        cheb = torch.maximum((rows - centre).abs(), (cols - centre).abs())
        assert (image[cheb < extent + R - 1] > 0).all()
        assert (image[cheb > extent + R + 1] == 0).all()
        front = nearness(half)  # the face x = +half of the normalised cube, flat towards the camera
        assert torch.allclose(image[cheb < extent - 2], torch.tensor(front), atol=1e-4)


def test_nearer_is_brighter_on_a_tilted_plane():
    y, z = torch.meshgrid(torch.linspace(-1, 1, 160), torch.linspace(-1, 1, 160), indexing="ij")
    points = torch.stack([0.5 * y, y, z], -1).reshape(-1, 3)  # larger y: nearer the camera on +x, and more right
    _, radius = normalisation(points)
    image = project_depth_maps(points, size=SIZE, depth_bins=BINS, rotations=FRONT)[0]
    edge = (1 / radius) * FILL * SIZE / 2  # the plane's half-width in pixels
    cols = torch.arange(math.ceil(SIZE / 2 - edge) + R, math.floor(SIZE / 2 + edge) - R)
    row = image[SIZE // 2, cols]
    assert (row.diff() >= -1e-4).all()  # monotone along the tilt
    assert row[-1] - row[0] > 0.25
    # nearness of the plane at each column: the nearest point within R pixels is R pixels further right
    y_norm = ((cols + 0.5 + R) / SIZE * 2 - 1) / FILL
    expected = 1 - (1 - 0.5 * y_norm) / 2
    assert (row - expected).abs().max() < 1.5 / BINS + 0.01


def test_min_over_depth_keeps_the_nearest_surface():
    u = torch.linspace(0, 1, 120)
    a, b = torch.meshgrid(u, u, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    near = torch.stack([torch.full_like(a, 0.6), -0.5 + 0.8 * a, -0.5 + 0.8 * b], 1)  # y, z in [-0.5, 0.3]
    far = torch.stack([torch.full_like(a, -0.6), -0.3 + 1.2 * a, -0.3 + 1.2 * b], 1)  # y, z in [-0.3, 0.9]
    points = torch.cat([near, far])  # the far square last: a last-write-wins scatter would show it
    centre, radius = normalisation(points)
    image = project_depth_maps(points, size=SIZE, depth_bins=BINS, rotations=FRONT)[0]

    def region(y0: float, y1: float) -> torch.Tensor:
        """The image inside world y, z in [y0, y1] (a square), shrunk by the pool radius and one pixel."""
        c0, c1 = (pixel((v - float(centre[1])) / radius) for v in (y0, y1))
        r0, r1 = (SIZE - pixel((v - float(centre[2])) / radius) for v in (y1, y0))
        m = R + 1
        return image[math.ceil(r0) + m : math.floor(r1) - m, math.ceil(c0) + m : math.floor(c1) - m]

    overlap, far_only = region(-0.3, 0.3), region(0.45, 0.85)
    assert overlap.numel() > 100 and far_only.numel() >= 25
    near_value = nearness((0.6 - float(centre[0])) / radius)
    far_value = nearness((-0.6 - float(centre[0])) / radius)
    assert near_value - far_value > 0.5
    assert torch.allclose(overlap, torch.tensor(near_value), atol=1e-4)
    assert torch.allclose(far_only, torch.tensor(far_value), atol=1e-4)


def test_bilateral_filter_keeps_a_contour_that_a_gaussian_blurs():
    gen = torch.Generator().manual_seed(0)
    step = torch.full((1, 32, 32), 0.3)
    step[..., 16:] = 0.8
    noisy = step + 0.02 * torch.randn(step.shape, generator=gen)
    out = bilateral_filter(noisy, kernel_size=5, sigma_space=1.5, sigma_range=0.1)
    d = torch.arange(-2, 3, dtype=torch.float32)
    g = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 1.5**2))
    blurred = F.conv2d(F.pad(noisy[None], (2, 2, 2, 2), mode="replicate"), (g / g.sum())[None, None])[0]
    assert float((out[..., 16] - out[..., 15]).mean()) > 0.45  # still a sharp edge
    assert float((blurred[..., 16] - blurred[..., 15]).mean()) < 0.3  # the same-width gaussian smears it
    # and it does smooth within each plateau
    inner = (slice(None), slice(4, 28), slice(3, 12))
    assert float((out - step)[inner].std()) < 0.5 * float((noisy - step)[inner].std())
    # with a mask, background neither feeds nor receives
    mask = step > 0.5
    masked = bilateral_filter(torch.where(mask, noisy, 0.0), mask, sigma_range=float("inf"))
    assert (masked[~mask] == 0).all() and float(masked[mask].min()) > 0.7


def test_depth_map_images_are_grey_uint8():
    maps = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    images = depth_map_images(maps)
    assert images.shape == (1, 2, 2, 3) and images.dtype == torch.uint8
    assert images[0, :, :, 0].tolist() == [[0, 128], [255, 64]]
    assert torch.equal(images[..., 0], images[..., 1]) and torch.equal(images[..., 0], images[..., 2])


WORDS = ("ball", "box", "cup")
DIM = 16


class SilhouetteEncoder:
    """A deterministic stand-in for CLIP: a text is its class word's fixed unit vector plus a little noise that
    depends on the whole text (so templates differ); an image crop is the unit vector of 'ball' or 'box',
    whichever reference fills the silhouette's bounding box closer to how much it fills it (a disc pi/4, a
    square 1). It reads only the pixels of the crops it is given."""

    name = "silhouette"
    embedding_dim = DIM

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.base = {w: F.normalize(torch.randn(DIM, generator=gen), dim=0) for w in WORDS}
        self.text_calls: list[list[str]] = []
        self.crop_calls: list[tuple[int, tuple[int, ...], list[list[int]]]] = []

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.text_calls.append(list(texts))
        out = []
        for text in texts:
            (word,) = [w for w in WORDS if w in text.split(" ") or f"{w}." in text.split(" ")]
            noise = torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(text.encode())))
            out.append(F.normalize(self.base[word] + 0.2 * noise, dim=0))
        return torch.stack(out)

    def encode_crops(self, view: TeacherView, boxes: torch.Tensor) -> torch.Tensor:
        assert view.image.dtype == torch.uint8 and view.image.ndim == 3 and view.image.shape[-1] == 3
        self.crop_calls.append((view.index, tuple(view.image.shape), boxes.tolist()))
        out = []
        for x0, y0, x1, y1 in boxes.tolist():
            fg = view.image[y0:y1, x0:x1].amax(-1) > 0
            rows, cols = fg.nonzero(as_tuple=True)
            area = (int(rows.max()) - int(rows.min()) + 1) * (int(cols.max()) - int(cols.min()) + 1)
            filled = float(fg.sum()) / area
            out.append(self.base["ball" if abs(filled - math.pi / 4) < abs(filled - 1.0) else "box"])
        return torch.stack(out)


def test_classifier_plumbing_with_a_fake_encoder():
    encoder = SilhouetteEncoder()
    clf = DepthMapClassifier(encoder, n_views=4, elevation_deg=0.0, size=SIZE)  # axis-aligned side views
    classes = ["box", "ball", "cup"]
    sphere = fibonacci_sphere(20000, radius=0.7)
    cube = cube_surface(60, half=2.0)

    p_sphere = clf.classify(sphere, classes)
    assert p_sphere.shape == (3,) and abs(float(p_sphere.sum()) - 1) < 1e-5
    assert classes[int(p_sphere.argmax())] == "ball" and float(p_sphere[1]) > 0.95
    p_cube = clf.classify(cube, classes)
    assert classes[int(p_cube.argmax())] == "box" and float(p_cube[0]) > 0.95

    # every view went in whole, as one box, as a uint8 RGB image
    assert [c[0] for c in encoder.crop_calls] == [0, 1, 2, 3] * 2
    assert all(shape == (SIZE, SIZE, 3) and boxes == [[0, 0, SIZE, SIZE]] for _, shape, boxes in encoder.crop_calls)
    # the class texts: every template for every class, embedded once per class list (cached)
    assert len(encoder.text_calls) == 1
    assert sorted(encoder.text_calls[0]) == sorted(t.format(c) for c in classes for t in DEPTH_TEMPLATES)
    per_template = encoder.encode_text([t.format("cup") for t in DEPTH_TEMPLATES])
    assert torch.allclose(clf.text_embeddings(classes)[2], F.normalize(per_template.mean(0), dim=0), atol=1e-6)
    clf.text_embeddings(["ball", "box"])
    assert len(encoder.text_calls) == 3  # a new class list is embedded anew

    # aggregation sums the per-view softmaxes: a cylinder is a rectangle from 4 sides and a disc from the top
    clf_top = DepthMapClassifier(encoder, n_views=4, elevation_deg=0.0, top_view=True, size=SIZE)
    probs = clf_top.classify(cylinder_surface(), classes)
    assert torch.allclose(probs, torch.tensor([0.8, 0.2, 0.0]), atol=0.01)
