"""What real captures bring: the region of interest, the contraction beyond it, missing frames, EXIF
orientation, big photos decoded straight to the training size, lenses in the rays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from ovseg3d.data.bounds import look_at_point, region_of_interest
from ovseg3d.data.cameras import Cameras, pixel_rays, project_points
from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV
from ovseg3d.data.loader import downscale_factor, load_scene
from ovseg3d.data.nerfstudio import write_transforms_json
from ovseg3d.data.scene import SceneError
from ovseg3d.field.space import contract, from_unit, to_unit, uncontract
from ovseg3d.render.occupancy import OccupancyGrid

UP = np.array([0.0, 0.0, 1.0])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = UP) -> np.ndarray:
    """``[3, 4]`` OpenGL camera-to-world at ``eye`` looking at ``target``."""
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back, eye], axis=1)


def arc_cameras(target: np.ndarray, n: int = 12, radius: float = 5.0, span: float = 2.0) -> np.ndarray:
    """Cameras on an arc of ``span`` radians on one side of ``target``, all looking at it (like the fox)."""
    angles = np.linspace(0.0, span, n)
    eyes = target + np.stack([radius * np.cos(angles), radius * np.sin(angles), 0.8 + 0.2 * np.sin(3 * angles)], 1)
    return np.stack([look_at(e, target) for e in eyes])


# ---------------------------------------------------------------------------------------- region of interest


def test_look_at_point_of_converging_cameras() -> None:
    target = np.array([0.3, -0.2, 0.1])
    np.testing.assert_allclose(look_at_point(arc_cameras(target)), target, atol=1e-9)


def test_look_at_point_is_none_for_parallel_cameras() -> None:
    c2w = np.stack([look_at(np.array([x, 0.0, 0.0]), np.array([x, 5.0, 0.0])) for x in np.linspace(-1, 1, 6)])
    assert look_at_point(c2w) is None


def test_roi_is_a_cube_about_the_subject_not_the_box_of_the_cameras() -> None:
    target = np.array([0.3, -0.2, 0.1])
    c2w = arc_cameras(target, radius=5.0)
    box, how = region_of_interest(c2w)
    lo, hi = box[:3], box[3:]
    np.testing.assert_allclose((lo + hi) / 2, target, atol=1e-9)  # centred on the subject
    radius = np.median(np.linalg.norm(c2w[:, :, 3] - target, axis=-1))
    np.testing.assert_allclose(hi - lo, np.full(3, radius), rtol=1e-9)  # half the camera distance each way
    assert "cameras look" in how
    centers = c2w[:, :, 3]
    # the box of the camera positions alone has the subject near its edge
    assert (target - centers.min(0) < 0.2 * (centers.max(0) - centers.min(0)) + 1e-9).any()


def test_roi_of_forward_cameras_comes_from_the_sparse_points() -> None:
    c2w = np.stack([look_at(np.array([x, 0.0, 0.0]), np.array([x, 5.0, 0.0])) for x in np.linspace(-1, 1, 6)])
    rng = np.random.default_rng(0)
    points = rng.normal([0.0, 6.0, 0.0], 0.5, (500, 3))
    box, how = region_of_interest(c2w, points)
    assert "sparse points" in how
    assert box[1] < 5.0 < 7.0 < box[4]  # the content in front, and the cameras
    assert box[1] <= 0.0


# ---------------------------------------------------------------------------------------------- contraction


@pytest.mark.parametrize("kind", ["sphere", "cube"])
def test_contraction_keeps_the_roi_and_brings_far_points_inside(kind: str) -> None:
    rng = np.random.default_rng(1)
    inside = torch.as_tensor(rng.uniform(-0.55, 0.55, (200, 3)), dtype=torch.float32)  # |x| <= 0.96 in L2
    torch.testing.assert_close(contract(inside, kind), inside)
    far = torch.as_tensor(rng.normal(size=(200, 3)), dtype=torch.float32)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=-1) if kind == "sphere" else x.abs().amax(-1)

    far = far / norm(far)[:, None] * torch.logspace(0.1, 6, 200)[:, None]  # 1.26 to 1e6 ROI half sizes
    c_norm = norm(contract(far, kind))
    assert (c_norm <= 2.0).all() and (c_norm > 1.0).all()
    back = uncontract(contract(far[:50], kind), kind)  # up to 1000 ROI sizes, the inverse holds
    torch.testing.assert_close(back, far[:50], rtol=1e-3, atol=1e-4)


def test_grid_coordinates_round_trip_through_the_contraction() -> None:
    aabb = torch.tensor([-1.0, -2.0, 0.0, 3.0, 2.0, 1.0])
    x = torch.tensor([[1.0, 0.0, 0.5], [30.0, -40.0, 5.0], [-1e4, 0.0, 0.0]])
    u, inside = to_unit(x, aabb, "sphere")
    assert inside.all() and (u > 0).all() and (u < 1).all()
    torch.testing.assert_close(u[0], torch.tensor([0.5, 0.5, 0.5]))  # the ROI centre is the grid's centre
    torch.testing.assert_close(from_unit(u[:2], aabb, "sphere"), x[:2], rtol=1e-4, atol=1e-3)
    u_none, inside_none = to_unit(x, aabb, "none")
    assert inside_none.tolist() == [True, False, False]


def test_contracted_march_reaches_the_background_and_orders_samples() -> None:
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, 16, "sphere")  # all cells occupied
    origins = torch.zeros(3, 3)
    dirs = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), dim=-1)
    samples = grid.march(origins, dirs, step_size=0.05)
    for r in range(3):
        sel = samples.ray_indices == r
        starts, ends = samples.t_starts[sel], samples.t_ends[sel]
        assert (ends > starts).all() and (starts[1:] >= starts[:-1]).all()
        assert float(ends.max()) > 100.0  # far beyond the ROI
        assert float(starts.min()) < 0.05
    bounded = OccupancyGrid(aabb, 16, "none").march(origins, dirs, step_size=0.05)
    assert float(bounded.t_ends.max()) < 2.0


# ------------------------------------------------------------------------------------------- real files


def _transforms_scene(root: Path, n: int = 6, size: tuple[int, int] = (48, 32), extra: dict | None = None) -> None:
    target = np.zeros(3)
    c2w = arc_cameras(target, n)
    names = [f"images/{i:04d}.jpg" for i in range(n)]
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        iio.imwrite(root / name, rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    write_transforms_json(root / "transforms.json", c2w, 40.0, 40.0, size[0] / 2, size[1] / 2, *size, names, extra)


def test_missing_frames_are_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _transforms_scene(tmp_path)
    for i in (1, 4):
        (tmp_path / "images" / f"{i:04d}.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="ovseg3d"):
        scene = load_scene(tmp_path)
    assert len(scene) == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "2 of 6 listed images are missing" in lines[0] and "4 that remain" in lines[0]
    assert scene.bounds.startswith("the region of interest")


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    _transforms_scene(tmp_path, n=3, size=(32, 48))  # poses for portrait 32 x 48 images
    im = Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8))  # stored landscape ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... to be shown rotated by 90 degrees
    for i in range(3):
        im.save(tmp_path / "images" / f"{i:04d}.jpg", exif=exif)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta.pop("w"), meta.pop("h")
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(tmp_path)
    assert (scene.width, scene.height) == (32, 48)


def test_big_photos_are_decoded_straight_to_the_long_side(tmp_path: Path) -> None:
    _transforms_scene(tmp_path, n=3, size=(400, 300))
    assert downscale_factor(400, 300, 0, 128) == 4
    scene = load_scene(tmp_path, downscale=0, max_long_side=128)
    assert (scene.width, scene.height) == (100, 75)
    assert float(scene.cameras.fx[0]) == pytest.approx(10.0)
    full = load_scene(tmp_path, downscale=1)
    box = full.images[0].float().reshape(75, 4, 100, 4, 3).mean((1, 3))
    assert (scene.images[0].float() - box).abs().mean() < 12  # the same picture (JPEG's DCT scaling differs a bit)


def test_unknown_camera_model_is_one_line(tmp_path: Path) -> None:
    _transforms_scene(tmp_path, extra={"camera_model": "EQUIRECTANGULAR"})
    with pytest.raises(SceneError, match="camera_model 'EQUIRECTANGULAR' is not supported"):
        load_scene(tmp_path)


def test_transforms_lens_coefficients_reach_the_cameras(tmp_path: Path) -> None:
    _transforms_scene(tmp_path, extra={"k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": -0.002})
    cams = load_scene(tmp_path).cameras
    assert cams.lens is not None and (cams.lens == LENS_OPENCV).all()
    torch.testing.assert_close(cams.coeffs[0, :5], torch.tensor([0.1, -0.02, 0.001, -0.002, 0.0]))
    _transforms_scene(tmp_path / "fish", extra={"camera_model": "OPENCV_FISHEYE", "k1": 0.05, "k4": 0.001})
    fish = load_scene(tmp_path / "fish").cameras
    assert (fish.lens == LENS_FISHEYE).all() and float(fish.coeffs[0, 3]) == pytest.approx(0.001)


@pytest.mark.parametrize("lens", [LENS_OPENCV, LENS_FISHEYE])
def test_rays_through_a_lens_project_back_to_their_pixel(lens: int) -> None:
    coeffs = [0.12, -0.03, 0.002, -0.001, 0.01, 0, 0, 0] if lens == LENS_OPENCV else [0.05, -0.01, 0.002, 0, 0, 0, 0, 0]
    c2w = torch.as_tensor(arc_cameras(np.zeros(3), 2), dtype=torch.float32)
    cams = Cameras(
        c2w,
        torch.full((2,), 60.0),
        torch.full((2,), 62.0),
        torch.full((2,), 50.0),
        torch.full((2,), 40.0),
        100,
        80,
        torch.full((2,), lens),
        torch.tensor([coeffs] * 2, dtype=torch.float32),
    )
    u, v = torch.meshgrid(torch.arange(0, 100, 7), torch.arange(0, 80, 7), indexing="xy")
    u, v = u.reshape(-1), v.reshape(-1)
    origins, dirs = pixel_rays(cams, torch.ones_like(u), u, v)
    pu, pv, front = project_points(cams, 1, origins + 3.0 * dirs)
    assert front.all()
    torch.testing.assert_close(pu, u.float() + 0.5, atol=2e-3, rtol=0)
    torch.testing.assert_close(pv, v.float() + 0.5, atol=2e-3, rtol=0)
    pinhole = Cameras(c2w, cams.fx, cams.fy, cams.cx, cams.cy, 100, 80)
    _, straight = pixel_rays(pinhole, torch.ones_like(u), u, v)
    assert float((straight - dirs).norm(dim=-1).max()) > 1e-2  # the lens bends the corner rays


# --------------------------------------------------------------------------------------------- appearance


def test_appearance_codes_change_colour_not_density_and_held_out_views_use_the_mean() -> None:
    from ovseg3d.field.hashgrid import HashGridConfig
    from ovseg3d.field.radiance import FieldConfig, RadianceField

    cfg = FieldConfig(HashGridConfig(4, 2, 10, 4, 1.5), 16, 7, 16, 2, appearance_dim=4, n_images=3)
    field = RadianceField(torch.tensor([-1.0, -1, -1, 1, 1, 1]), cfg, contraction="sphere")
    torch.manual_seed(0)
    with torch.no_grad():
        field.appearance.weight.normal_()
    x = torch.rand(20, 3) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    sigma0, rgb0 = field(x, dirs, field.appearance_codes(torch.zeros(20, dtype=torch.long), 20))
    sigma1, rgb1 = field(x, dirs, field.appearance_codes(torch.ones(20, dtype=torch.long), 20))
    torch.testing.assert_close(sigma0, sigma1)
    assert float((rgb0 - rgb1).detach().abs().max()) > 1e-4
    _, rgb_mean = field(x, dirs)  # no code given: the mean of the training images' codes
    mean = field.appearance.weight.mean(0, keepdim=True).expand(20, -1)
    torch.testing.assert_close(rgb_mean, field(x, dirs, mean)[1])


# ------------------------------------------------------------------------------------------ COLMAP scenes


def _colmap_scene(root: Path, binary: bool = True) -> np.ndarray:
    """A COLMAP scene: 6 images in a subfolder, two cameras (OPENCV 48 x 32 and a SIMPLE_RADIAL of twice the size),
    one image missing; returns the OpenGL c2w of the listed images."""
    from ovseg3d.data import colmap

    c2w = arc_cameras(np.array([0.2, 0.1, 0.0]), 6)
    cams = {
        1: colmap.ColmapCamera(1, "OPENCV", 48, 32, np.array([40.0, 41.0, 24.0, 16.0, 0.05, -0.01, 0.001, 0.0])),
        2: colmap.ColmapCamera(2, "SIMPLE_RADIAL", 96, 64, np.array([80.0, 48.0, 32.0, 0.05])),
    }
    images, rng = {}, np.random.default_rng(0)
    (root / "images" / "sub").mkdir(parents=True)
    for i, pose in enumerate(c2w):
        rot_cv = pose[:, :3] * np.array([1.0, -1.0, -1.0])  # OpenGL -> OpenCV axes
        w2c_rot = rot_cv.T
        cam = 1 if i < 4 else 2
        name = f"sub/{i:03d}.png"
        images[i + 1] = colmap.ColmapImage(i + 1, colmap.rotmat_to_qvec(w2c_rot), -w2c_rot @ pose[:, 3], cam, name)
        if i != 2:
            w, h = cams[cam].width, cams[cam].height
            iio.imwrite(root / "images" / name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    points = rng.normal([0.2, 0.1, 0.0], 0.3, (200, 3))
    model = colmap.ColmapModel(
        cams, images, points, np.zeros((200, 3), np.uint8), np.zeros(200), np.full(200, 3, np.int64)
    )
    colmap.write_model(root / "sparse" / "0", model, binary=binary)
    return c2w


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_scene_loads_with_its_poses_lenses_and_sizes(tmp_path: Path, binary: bool) -> None:
    c2w = _colmap_scene(tmp_path, binary)
    scene = load_scene(tmp_path)
    assert scene.format == "colmap" and len(scene) == 5  # the missing image skipped
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(scene.cameras.c2w.numpy(), c2w[keep], atol=1e-5)
    assert (scene.width, scene.height) == (48, 32)  # the most common size; the bigger images are resized to it
    torch.testing.assert_close(scene.cameras.fx, torch.tensor([40.0, 40.0, 40.0, 40.0, 40.0]))
    assert scene.cameras.lens is not None and (scene.cameras.lens == LENS_OPENCV).all()
    torch.testing.assert_close(scene.cameras.coeffs[-1, :2], torch.tensor([0.05, 0.0]))
    assert "cameras look" in scene.bounds
    assert (scene.aabb[:3] < torch.tensor([0.2, 0.1, 0.0])).all() and (scene.aabb[3:] > 0.2).all()


def test_colmap_model_option_and_missing_folder(tmp_path: Path) -> None:
    _colmap_scene(tmp_path)
    (tmp_path / "sparse" / "0").rename(tmp_path / "model")
    with pytest.raises(SceneError, match="not a scene folder"):
        load_scene(tmp_path)
    assert len(load_scene(tmp_path, colmap_model=tmp_path / "model")) == 5
    with pytest.raises(SceneError, match="COLMAP model folder not found"):
        load_scene(tmp_path, colmap_model=tmp_path / "nowhere")


def test_progress_bar_counts_to_the_steps_the_time_budget_allows() -> None:
    from tqdm import tqdm

    from ovseg3d.train import budget_bar

    bar = tqdm(total=20000, disable=True)  # the step budget ...
    budget_bar(bar, 100, 100 / 1500)  # ... but a third of the time budget is gone after 500 of 1500 steps' worth
    assert bar.total == 1500
    budget_bar(bar, 1499, 1.0)  # the time is up: the run ends here
    assert bar.total == 1499
    steps_bound = tqdm(total=50, disable=True)
    budget_bar(steps_bound, 10, 0.2)  # the step budget ends it first
    assert steps_bound.total == 50


def test_distortion_over_normalised_distance_stays_finite_far_away() -> None:
    from ovseg3d.render.volume import distortion_loss

    # one ray's weight on one short interval near the subject, another's spread over far, long intervals
    t0 = torch.tensor([1.0, 1.1, 50.0, 500.0])
    t1 = torch.tensor([1.1, 1.2, 500.0, 5000.0])
    rays = torch.tensor([0, 0, 1, 1])
    w = torch.tensor([0.9, 0.0, 0.45, 0.45])
    world = distortion_loss(w, t0, t1, rays, 2)
    s0, s1 = t0 / (t0 + 2.0), t1 / (t1 + 2.0)
    norm = distortion_loss(w, s0, s1, rays, 2)
    assert float(world[1]) > 100.0  # in world units the far fog dominates everything
    assert float(norm.max()) < 1.0 and float(norm[1]) > float(norm[0])  # normalised: bounded, fog still costs more


def test_an_empty_contracted_field_shows_its_learned_background() -> None:
    from ovseg3d.field.hashgrid import HashGridConfig
    from ovseg3d.field.radiance import FieldConfig, RadianceField
    from ovseg3d.render.renderer import RenderOptions, render_rays

    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    cfg = FieldConfig(HashGridConfig(4, 2, 10, 4, 1.5), 16, 7, 16, 2, background=True)
    field = RadianceField(aabb, cfg, contraction="sphere")
    with torch.no_grad():
        field.density_mlp[-1].bias[0] = -30.0  # empty space everywhere
    grid = OccupancyGrid(aabb, 8, "sphere")
    dirs = torch.nn.functional.normalize(torch.randn(6, 3), dim=-1)
    origins = torch.zeros(6, 3)
    expected = field.background_color(dirs)
    with torch.no_grad():
        out = render_rays(field, grid, origins, dirs, RenderOptions(0.1))
    torch.testing.assert_close(out.rgb, expected, atol=1e-5, rtol=0)
    assert float(expected.detach().std(0).max()) > 0  # it depends on the direction
    plain = RadianceField(aabb, FieldConfig(HashGridConfig(4, 2, 10, 4, 1.5), 16, 7, 16, 2), contraction="sphere")
    assert plain.background_color(dirs) is None
