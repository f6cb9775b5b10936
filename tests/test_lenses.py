"""Lens models (REFERENCE.md §8): known answers, round trips through the pixel, mixed batches, validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ovseg3d.data.cameras import Cameras, image_rays, pixel_rays
from ovseg3d.data.lenses import (
    LENS_FISHEYE,
    LENS_OPENCV,
    LENS_PINHOLE,
    distort,
    invertible_limit,
    project,
    unproject,
)
from ovseg3d.syncs import count_ops, count_syncs

FX, FY, CX, CY, W, H = 500.0, 480.0, 320.0, 240.0, 640, 480
OPENCV_5 = [-0.28, 0.09, 0.0012, -0.0008, -0.015, 0.0, 0.0, 0.0]  # k1 k2 p1 p2 k3 (a strong wide-angle lens)
RATIONAL = [0.25, -0.08, -0.0015, 0.002, 0.01, 0.45, -0.05, 0.012]  # k1 k2 p1 p2 k3 k4 k5 k6
FISHEYE = [0.03, -0.008, 0.001, -0.0002, 0.0, 0.0, 0.0, 0.0]  # GoPro-like k1 k2 k3 k4


def lens(kind: int, coeffs: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.tensor(coeffs if coeffs is not None else [0.0] * 8, dtype=torch.float32)
    return torch.tensor(kind), c


def image_xy_d(step: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of a W x H image every ``step`` pixels (corners included): ``[N, 2]`` pixels and their
    distorted normalised coordinates."""
    u = torch.cat([torch.arange(0, W, step), torch.tensor([W - 1])]).float() + 0.5
    v = torch.cat([torch.arange(0, H, step), torch.tensor([H - 1])]).float() + 0.5
    uv = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(-1, 2)
    return uv, torch.stack([(uv[:, 0] - CX) / FX, (uv[:, 1] - CY) / FY], dim=-1)


def to_pixels(xy_d: torch.Tensor) -> torch.Tensor:
    return torch.stack([xy_d[:, 0] * FX + CX, xy_d[:, 1] * FY + CY], dim=-1)


def fisheye_dirs(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    return torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], dim=-1)


# ---------------------------------------------------------------------------------------------- known answers


def test_opencv_radial_known_answer():
    # r² = 0.05, radial = 1 + 0.1 * 0.05
    out = distort(torch.tensor([0.1, -0.2]), *lens(LENS_OPENCV, [0.1, 0, 0, 0, 0, 0, 0, 0]))
    assert torch.allclose(out, torch.tensor([0.1 * 1.005, -0.2 * 1.005]), atol=1e-7)


def test_opencv_tangential_known_answer():
    # x_d = 0.1 + 2(0.01)(0.1)(-0.2) + 0.02 (0.05 + 0.02) = 0.101
    # y_d = -0.2 + 0.01 (0.05 + 0.08) + 2(0.02)(0.1)(-0.2) = -0.1995
    out = distort(torch.tensor([0.1, -0.2]), *lens(LENS_OPENCV, [0, 0, 0.01, 0.02, 0, 0, 0, 0]))
    assert torch.allclose(out, torch.tensor([0.101, -0.1995]), atol=1e-7)


def test_rational_known_answer():
    # radial = (1 + 0.1 r² + 0.5 r⁶) / (1 + 0.2 r² + 0.4 r⁶) at r² = 0.05
    radial = (1 + 0.1 * 0.05 + 0.5 * 0.05**3) / (1 + 0.2 * 0.05 + 0.4 * 0.05**3)
    out = distort(torch.tensor([0.1, -0.2]), *lens(LENS_OPENCV, [0.1, 0, 0, 0, 0.5, 0.2, 0, 0.4]))
    assert torch.allclose(out, torch.tensor([0.1 * radial, -0.2 * radial]), atol=1e-7)


def test_every_opencv_coefficient_known_answer():
    k1, k2, p1, p2, k3, k4, k5, k6 = 0.11, -0.07, 0.013, -0.021, 0.05, 0.17, -0.09, 0.03
    x, y = 0.4, -0.3
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    x_d = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    y_d = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    kind, c = torch.tensor(LENS_OPENCV), torch.tensor([k1, k2, p1, p2, k3, k4, k5, k6], dtype=torch.float64)
    out = distort(torch.tensor([x, y], dtype=torch.float64), kind, c)
    assert torch.allclose(out, torch.tensor([x_d, y_d], dtype=torch.float64), atol=1e-14, rtol=0)
    dirs, valid = unproject(out, kind, c)
    assert bool(valid) and torch.allclose(dirs[:2] / dirs[2], torch.tensor([x, y], dtype=torch.float64), atol=1e-10)


def test_every_fisheye_coefficient_known_answer():
    k1, k2, k3, k4 = 0.04, -0.02, 0.006, -0.001
    theta, phi = 1.3, 2.0  # 74.5° off the axis
    theta_d = theta * (1 + k1 * theta**2 + k2 * theta**4 + k3 * theta**6 + k4 * theta**8)
    kind, c = torch.tensor(LENS_FISHEYE), torch.tensor([k1, k2, k3, k4, 0, 0, 0, 0], dtype=torch.float64)
    direction = fisheye_dirs(torch.tensor(theta, dtype=torch.float64), torch.tensor(phi, dtype=torch.float64))
    xy_d, valid = project(direction * 2.5, kind, c)
    expected = torch.tensor([theta_d * math.cos(phi), theta_d * math.sin(phi)], dtype=torch.float64)
    assert bool(valid) and torch.allclose(xy_d, expected, atol=1e-14, rtol=0)
    dirs, valid = unproject(xy_d, kind, c)
    assert bool(valid) and torch.allclose(dirs, direction, atol=1e-10)


def test_newton_converges_quadratically():
    # a strong lens with strong tangential terms: exact Newton needs only a few iterations in each stage
    kind, c = lens(LENS_OPENCV, [-0.25, 0.06, 0.01, -0.012, -0.01, 0.0, 0.0, 0.0])
    _, xy_d = image_xy_d(step=11)
    _, valid = unproject(xy_d, kind, c, iters=4)
    assert valid.all()
    _, valid = unproject(xy_d, *lens(LENS_FISHEYE, FISHEYE), iters=4)
    assert valid.all()


def test_fisheye_known_answer():
    # the direction (0.3, 0.4, 1) is at θ = atan(0.5) from the axis; θ_d = θ (1 + 0.05 θ²), along (0.6, 0.8)
    theta = math.atan(0.5)
    theta_d = theta * (1 + 0.05 * theta**2)
    expected = torch.tensor([0.6 * theta_d, 0.8 * theta_d])
    kind, c = lens(LENS_FISHEYE, [0.05, 0, 0, 0, 0, 0, 0, 0])
    xy_d, valid = project(torch.tensor([0.3, 0.4, 1.0]), kind, c)
    assert bool(valid) and torch.allclose(xy_d, expected, atol=1e-7)
    assert torch.allclose(distort(torch.tensor([0.3, 0.4]), kind, c), expected, atol=1e-7)
    # an equidistant lens maps the ray at 90° to the radius π/2, the ray at 100° beyond it
    xy_d, valid = project(torch.tensor([[0.0, 1.0, 0.0], [math.sin(1.75), 0.0, math.cos(1.75)]]), *lens(LENS_FISHEYE))
    assert valid.all()
    assert torch.allclose(xy_d, torch.tensor([[0.0, math.pi / 2], [1.75, 0.0]]), atol=1e-6)


def test_invertible_limit_known_answers():
    # r (1 + k1 r²) stops growing at 1 + 3 k1 r² = 0; θ (1 + k1 θ²) likewise
    lim = invertible_limit(
        torch.tensor([LENS_OPENCV, LENS_FISHEYE, LENS_PINHOLE]), torch.tensor([[-0.3] + [0.0] * 7] * 3)
    )
    assert lim[0].item() == pytest.approx(math.sqrt(1 / 0.9), rel=1e-6)
    assert lim[1].item() == pytest.approx(math.sqrt(1 / 0.9), rel=1e-6)
    assert math.isinf(lim[2].item())
    monotone = invertible_limit(torch.tensor([LENS_OPENCV, LENS_FISHEYE]), torch.tensor([[0.05] + [0.0] * 7] * 2))
    assert math.isinf(monotone[0].item()) and monotone[1].item() == pytest.approx(math.pi)


# ------------------------------------------------------------------------------------------------ pinhole


def test_pinhole_is_identity():
    xy = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    kind, c = lens(LENS_PINHOLE, OPENCV_5)  # coefficients are ignored
    assert torch.equal(distort(xy, kind, c), xy)
    dirs, valid = unproject(xy, kind, c)
    assert valid.all()
    expected = torch.cat([xy, torch.ones(1000, 1)], dim=1)
    assert torch.allclose(dirs, expected / expected.norm(dim=1, keepdim=True), atol=1e-7)
    xy_back, valid = project(dirs * 3.0, kind, c)
    assert valid.all() and torch.allclose(xy_back, xy, atol=1e-6)


def test_behind_the_camera_is_invalid():
    dirs = torch.tensor([[0.1, 0.2, -1.0], [0.1, 0.2, 0.0], [0.1, 0.2, 1.0]])
    for kind in (LENS_PINHOLE, LENS_OPENCV):
        _, valid = project(dirs, *lens(kind, [-0.1, 0.01, 0, 0, 0, 0, 0, 0]))
        assert valid.tolist() == [False, False, True]
    # a fisheye sees to the side and behind, as far as its polynomial keeps growing (FISHEYE: to θ = 2.30)
    _, valid = project(dirs, *lens(LENS_FISHEYE))
    assert valid.all()
    _, valid = project(dirs, *lens(LENS_FISHEYE, FISHEYE))
    assert valid.tolist() == [False, True, True]
    _, valid = project(torch.tensor([[0.0, 0.0, -1.0]]), *lens(LENS_FISHEYE))
    assert not valid.any()


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("coeffs", [OPENCV_5, RATIONAL], ids=["opencv5", "rational"])
def test_opencv_round_trips_through_the_pixel(coeffs):
    kind, c = lens(LENS_OPENCV, coeffs)
    uv, xy_d = image_xy_d()
    dirs, valid = unproject(xy_d, kind, c)
    assert valid.all()
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(len(dirs)), atol=1e-6)
    # distort ∘ unproject and project ∘ unproject give the pixel back
    back = distort(dirs[:, :2] / dirs[:, 2:], kind, c)
    assert (to_pixels(back) - uv).abs().max() < 5e-3
    xy_back, valid = project(dirs, kind, c)
    assert valid.all() and (xy_back - xy_d).abs().max() < 1e-5
    # and the lens does distort: a pinhole would put these rays elsewhere
    assert (dirs[:, :2] / dirs[:, 2:] - xy_d).abs().max() > 0.05


def test_opencv_unproject_inverts_distort():
    kind, c = lens(LENS_OPENCV, RATIONAL)
    g = torch.Generator().manual_seed(1)
    xy = (torch.rand(5000, 2, generator=g) * 2 - 1) * torch.tensor([0.8, 0.6])
    dirs, valid = unproject(distort(xy, kind, c), kind, c)
    assert valid.all()
    assert torch.allclose(dirs[:, :2] / dirs[:, 2:], xy, atol=1e-5)


def test_fisheye_round_trips_beyond_90_degrees():
    kind, c = lens(LENS_FISHEYE, FISHEYE)
    theta = torch.cat([torch.linspace(0.0, math.radians(100), 200), torch.tensor([math.radians(100)])])
    phi = torch.linspace(0.0, 2 * math.pi, 201)
    dirs = fisheye_dirs(theta, phi)
    xy_d, valid = project(dirs, kind, c)
    assert valid.all()
    back, valid = unproject(xy_d, kind, c)
    assert valid.all()
    assert torch.allclose(back, dirs, atol=1e-5)
    assert back[-1, 2] < -0.17  # cos(100°)
    xy_back, valid = project(back, kind, c)
    assert valid.all() and (to_pixels(xy_back) - to_pixels(xy_d)).abs().max() < 5e-3
    # distort ∘ unproject for the rays in front of the camera
    front = back[:, 2] > 0.05
    assert torch.allclose(distort(back[front, :2] / back[front, 2:], kind, c), xy_d[front], atol=1e-5)


def test_strong_pincushion_does_not_cycle():
    # r_d(r) is S-shaped here: plain Newton from r = r_d falls into a 2-cycle near r = 1.429 (the
    # undistortion must bisect when Newton does not halve its step)
    kind, c = lens(LENS_OPENCV, [0.13, 0.06, 0, 0, -0.016, 0, 0, 0])
    r = torch.linspace(1.3, 1.6, 3001)
    xy = torch.stack([r, torch.zeros_like(r)], dim=-1)
    dirs, valid = unproject(distort(xy, kind, c), kind, c)
    assert valid.all()
    assert torch.allclose(dirs[:, :2] / dirs[:, 2:], xy, atol=1e-5)


def test_float64_round_trip_is_tighter():
    kind, c = lens(LENS_OPENCV, RATIONAL)
    _, xy_d = image_xy_d(step=31)
    dirs, valid = unproject(xy_d.double(), kind, c.double())
    assert valid.all() and dirs.dtype == torch.float64
    assert (distort(dirs[:, :2] / dirs[:, 2:], kind, c.double()) - xy_d.double()).abs().max() < 1e-10


def test_past_the_fold_is_invalid():
    # r (1 - 0.3 r²) peaks at r = √(1/0.9), r_d = 0.7027: farther distorted points have no undistortion
    kind, c = lens(LENS_OPENCV, [-0.3, 0, 0, 0, 0, 0, 0, 0])
    dirs, valid = unproject(torch.tensor([[0.5, 0.3], [0.72, 0.0], [0.0, -2.0]]), kind, c)
    assert valid.tolist() == [True, False, False]
    assert torch.isfinite(dirs).all()
    # a point past the fold projects to where a nearer one does, and is flagged
    _, valid = project(torch.tensor([[1.0, 0.0, 1.0], [1.5, 0.0, 1.0]]), kind, c)
    assert valid.tolist() == [True, False]
    # a fisheye whose θ_d stops growing at θ = √(1/0.3) = 1.826
    kind, c = lens(LENS_FISHEYE, [-0.1, 0, 0, 0, 0, 0, 0, 0])
    _, valid = project(fisheye_dirs(torch.tensor([1.7, 1.9]), torch.zeros(2)), kind, c)
    assert valid.tolist() == [True, False]
    _, valid = unproject(torch.tensor([[1.0, 0.0], [1.3, 0.0]]), kind, c)  # θ_d peaks at 1.2172
    assert valid.tolist() == [True, False]


# ------------------------------------------------------------------------------------------- batches, shapes


def test_mixed_kinds_in_one_batch():
    g = torch.Generator().manual_seed(2)
    n = 3000
    kinds = torch.randint(0, 3, (n,), generator=g)
    table = torch.tensor([OPENCV_5, RATIONAL, FISHEYE])
    coeffs = table[torch.randint(0, 3, (n,), generator=g)]
    coeffs[kinds == LENS_FISHEYE] = torch.tensor(FISHEYE)
    xy_d = (torch.rand(n, 2, generator=g) * 2 - 1) * torch.tensor([0.6, 0.45])

    out = distort(xy_d, kinds, coeffs)
    dirs, valid = unproject(xy_d, kinds, coeffs)
    xy_back, valid_back = project(dirs, kinds, coeffs)
    assert valid.all() and valid_back.all()
    assert (xy_back - xy_d).abs().max() < 1e-5
    pinhole = kinds == LENS_PINHOLE
    assert torch.equal(out[pinhole], xy_d[pinhole])
    for k in (LENS_OPENCV, LENS_FISHEYE):  # the same as one kind at a time
        rows = kinds == k
        assert torch.allclose(out[rows], distort(xy_d[rows], torch.tensor(k), coeffs[rows]))
        dirs_k, _ = unproject(xy_d[rows], torch.tensor(k), coeffs[rows])
        assert torch.allclose(dirs[rows], dirs_k, atol=1e-7)


def test_whole_images_broadcast_per_camera():
    # two cameras of different kinds, one [H, W] image each: kind [C, 1, 1], coeffs [C, 1, 1, 8]
    _, xy_d = image_xy_d(step=16)
    grid = xy_d.reshape(31, 41, 2)  # 30 rows of 16 px + the last one, 40 columns + the last one
    kinds = torch.tensor([LENS_OPENCV, LENS_FISHEYE]).reshape(2, 1, 1)
    coeffs = torch.tensor([OPENCV_5, FISHEYE]).reshape(2, 1, 1, 8)
    dirs, valid = unproject(grid, kinds, coeffs)
    assert dirs.shape == (2, 31, 41, 3) and valid.shape == (2, 31, 41) and valid.all()
    for cam in range(2):
        one, _ = unproject(xy_d, kinds[cam, 0, 0], coeffs[cam, 0, 0])
        assert torch.allclose(dirs[cam].reshape(-1, 3), one, atol=1e-7)
    assert distort(grid, kinds, coeffs).shape == (2, 31, 41, 2)


def test_unknown_kind_and_bad_coeffs_raise():
    with pytest.raises(ValueError, match="lens kind"):
        distort(torch.zeros(4, 2), torch.tensor(3), torch.zeros(8))
    with pytest.raises(ValueError, match="coeffs"):
        unproject(torch.zeros(4, 2), torch.tensor(LENS_OPENCV), torch.zeros(5))


# ---------------------------------------------------------------------------------------------------- OpenCV


def test_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    eye = np.eye(3)
    _, xy_d = image_xy_d(step=23)
    xy_d = xy_d.double()
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)

    dist = np.array(RATIONAL, dtype=np.float64)
    ref = cv2.undistortPointsIter(xy_d.numpy().reshape(-1, 1, 2), eye, dist, None, None, criteria).reshape(-1, 2)
    dirs, valid = unproject(xy_d, torch.tensor(LENS_OPENCV), torch.from_numpy(dist))
    assert valid.all()
    np.testing.assert_allclose((dirs[:, :2] / dirs[:, 2:]).numpy(), ref, atol=1e-8)
    pts = np.concatenate([ref, np.ones((len(ref), 1))], axis=1).reshape(-1, 1, 3)
    ref_d, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), eye, dist)
    np.testing.assert_allclose(
        distort(torch.from_numpy(ref), torch.tensor(LENS_OPENCV), torch.from_numpy(dist)).numpy(),
        ref_d.reshape(-1, 2),
        atol=1e-10,
    )

    d_fish = np.array(FISHEYE[:4], dtype=np.float64)
    ref = cv2.fisheye.undistortPoints(xy_d.numpy().reshape(-1, 1, 2), eye, d_fish).reshape(-1, 2)
    dirs, valid = unproject(xy_d, torch.tensor(LENS_FISHEYE), torch.tensor(FISHEYE, dtype=torch.float64))
    assert valid.all()
    np.testing.assert_allclose((dirs[:, :2] / dirs[:, 2:]).numpy(), ref, atol=1e-6)
    ref_d = cv2.fisheye.distortPoints(ref.reshape(-1, 1, 2), eye, d_fish).reshape(-1, 2)
    out = distort(torch.from_numpy(ref), torch.tensor(LENS_FISHEYE), torch.tensor(FISHEYE, dtype=torch.float64))
    np.testing.assert_allclose(out.numpy(), ref_d, atol=1e-10)


# ------------------------------------------------------------------------------------- the pixel-centre table


def lens_cameras(n: int = 6, fisheye_every: int = 0, w: int = 64, h: int = 48) -> Cameras:
    """``n`` cameras of one OpenCV lens (every ``fisheye_every``-th a fisheye one, with other intrinsics)."""
    g = torch.Generator().manual_seed(5)
    c2w = torch.cat([torch.eye(3).expand(n, 3, 3), torch.randn(n, 3, 1, generator=g)], 2)
    scale = w / W
    fx, fy = torch.full((n,), FX * scale), torch.full((n,), FY * scale)
    kinds, coeffs = torch.full((n,), LENS_OPENCV), torch.tensor(OPENCV_5).repeat(n, 1)
    if fisheye_every:
        kinds[::fisheye_every], coeffs[::fisheye_every] = LENS_FISHEYE, torch.tensor(FISHEYE)
        fx[::fisheye_every] *= 0.8
    return Cameras(c2w, fx, fy, torch.full((n,), w / 2), torch.full((n,), h / 2), w, h, kinds, coeffs)


def random_pixels(cams: Cameras, n: int = 4000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    cam = torch.randint(0, len(cams), (n,), generator=g)
    return cam, torch.randint(0, cams.width, (n,), generator=g), torch.randint(0, cams.height, (n,), generator=g)


def newton_only(cams: Cameras) -> Cameras:
    """The same cameras without the table: every batch of rays through the lens's Newton iterations."""
    plain = Cameras(cams.c2w, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height, cams.lens, cams.coeffs)
    plain._table_tried = True
    return plain


@pytest.mark.parametrize("fisheye_every", [0, 3])
def test_pixel_centre_rays_through_a_lens_read_the_table_and_equal_newtons(fisheye_every):
    cams = lens_cameras(fisheye_every=fisheye_every)
    cam, u, v = random_pixels(cams)
    origins, dirs = pixel_rays(cams, cam, u, v)
    table, group = cams.pixel_table()
    assert table.shape == (2 if fisheye_every else 1, cams.height, cams.width, 3)
    assert len(torch.unique(group)) == len(table)
    expected = pixel_rays(newton_only(cams), cam, u, v)
    assert torch.equal(dirs, expected[1]) and torch.equal(origins, expected[0])
    # once built, a batch of pixel centres makes no read back and runs the lens's code no more
    counts = count_ops(lambda: pixel_rays(cams, cam, u, v))
    assert not [where for where in counts if "lenses.py" in where]
    assert not count_syncs(lambda: pixel_rays(cams, cam, u, v))
    # whole images too (row-major, as a render asks for them)
    assert torch.equal(image_rays(cams, 1)[1], image_rays(newton_only(cams), 1)[1])


def test_jittered_rays_and_pinholes_and_big_tables_go_through_the_lens(monkeypatch):
    cams = lens_cameras()
    cam, u, v = random_pixels(cams, 500)
    torch.manual_seed(0)
    jittered = pixel_rays(cams, cam, u, v, jitter=True)[1]
    torch.manual_seed(0)
    assert torch.equal(jittered, pixel_rays(newton_only(cams), cam, u, v, jitter=True)[1])
    assert not torch.equal(jittered, pixel_rays(cams, cam, u, v)[1])  # not the centres'
    pinhole = Cameras(cams.c2w, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
    assert pinhole.pixel_table() is None
    monkeypatch.setattr("ovseg3d.data.cameras.LENS_TABLE_BYTES", cams.width * cams.height * 3 * 4 - 1)
    big = lens_cameras()
    assert big.pixel_table() is None  # over the memory it may keep: Newton for every batch, the same rays
    assert torch.equal(pixel_rays(big, cam, u, v)[1], pixel_rays(newton_only(cams), cam, u, v)[1])
