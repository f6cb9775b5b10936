"""Sparse depth from a COLMAP model's own points: the prior lands where the scene's cameras project the points, the
losses on packed samples are zero at the point and grow away from it, and they train a toy ray onto it."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovseg3d.data import colmap
from ovseg3d.data.cameras import project_points
from ovseg3d.data.loader import load_scene
from ovseg3d.data.scene import SceneError
from ovseg3d.depth_prior import (
    EMPTY_SIGMAS,
    MAX_ERROR_PX,
    MIN_TRACK,
    SIGMA_FLOOR,
    TRANSPARENT_FLOOR,
    DepthPrior,
    band_samples,
    depth_prior,
    empty_space_loss,
    prior_loss,
    prior_rays,
    sample,
    termination_loss,
)
from ovseg3d.render.renderer import render_rays
from ovseg3d.render.volume import RaySamples, render_weights

# --- a capture written by pycolmap ----------------------------------------------------------------------------

W, H = 80, 60
OPENCV = [70.0, 72.0, 40.5, 29.5, -0.05, 0.01, 0.001, -0.002]


def _look_at(centre: np.ndarray) -> np.ndarray:
    """World-to-camera rotation (OpenCV rows right, down, forward) of a camera at ``centre`` looking at the origin
    with +z up."""
    f = -centre / np.linalg.norm(centre)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    return np.stack([r, np.cross(f, r), f])


def write_capture(
    pycolmap,  # noqa: ANN001
    root: Path,
    noisy: bool,
    image_scale: float = 1.0,
    sim3: tuple[float, np.ndarray, np.ndarray] | None = None,
    n_images: int = 9,
    n_points: int = 250,
    seed: int = 0,
    arc: float = 2 * np.pi,
):
    """``root/images/NN.png`` (``image_scale`` x the camera's size) and ``root/sparse/0`` written by pycolmap:
    an OPENCV camera on a circle around points in a cube. The first fifth of the points are tracked in two images
    only; with ``noisy``, keypoints carry 0.2 px of noise and every fifth point 4 px. Some keypoints observe no
    point. ``sim3``: ``(scale, rotation [3, 3], translation)`` applied to the model (as ``prepare``'s gravity turn,
    with a scale). ``arc``: the cameras' spread (radians) on the circle. Returns the reconstruction."""
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(camera_id=1, model="OPENCV", width=W, height=H, params=OPENCV)
    rec.add_camera_with_trivial_rig(camera)
    points = rng.uniform(-1.0, 1.0, (n_points, 3))
    angles = np.linspace(0, arc, n_images, endpoint=arc >= 2 * np.pi - 1e-9)
    noise = np.where(np.arange(n_points) % 5 == 4, 4.0, 0.2) if noisy else np.zeros(n_points)
    tracks: list[list[tuple[int, int]]] = [[] for _ in range(n_points)]
    (root / "images").mkdir(parents=True)
    size = (int(round(W * image_scale)), int(round(H * image_scale)))
    for i, a in enumerate(angles):
        centre = np.array([4.0 * np.cos(a), 4.0 * np.sin(a), 1.5])
        rot = _look_at(centre)
        tvec = -rot @ centre
        local = points @ rot.T + tvec
        xy = camera.img_from_cam(local) + rng.normal(size=(n_points, 2)) * noise[:, None]
        inside = (local[:, 2] > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
        seen = np.flatnonzero(inside & ((np.arange(n_points) >= n_points // 5) | (i < 2)))
        stray = rng.uniform([0, 0], [W, H], (7, 2))  # keypoints without a 3D point
        keypoints = np.concatenate([stray[:3], xy[seen], stray[3:]])
        image_id = 20 - i  # ids in the opposite order to the names
        name = f"{i:02d}.png"
        image = pycolmap.Image(name=name, keypoints=keypoints, camera_id=1, image_id=image_id)
        quat = colmap.rotmat_to_qvec(rot)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(np.r_[quat[1:], quat[0]]), tvec))
        for k, p in enumerate(seen):
            tracks[p].append((image_id, 3 + k))
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / "images" / name)
    for p, track in enumerate(tracks):
        if len(track) >= 2:
            t = pycolmap.Track()
            for image_id, k in track:
                t.add_element(image_id, k)
            rec.add_point3D(points[p], t, np.array([200, 100, 50], np.uint8))
    rec.update_point_3d_errors()
    if sim3 is not None:
        scale, rotation, translation = sim3
        quat = colmap.rotmat_to_qvec(rotation)
        rec.transform(pycolmap.Sim3d(scale, pycolmap.Rotation3d(np.r_[quat[1:], quat[0]]), translation))
    (root / "sparse" / "0").mkdir(parents=True)
    rec.write(root / "sparse" / "0")
    return rec


def _rotation(axis: list[float], angle: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def reprojection(scene, prior: DepthPrior) -> torch.Tensor:  # noqa: ANN001
    """``[M]`` pixels between each observation's ``(u, v)`` and its point projected by the scene's camera."""
    err = torch.full((len(prior),), float("inf"))
    for j in torch.unique(prior.cam).tolist():
        at = prior.cam == j
        u, v, front = project_points(scene.cameras, scene.train_ids[j], prior.xyz[at])
        err[at] = torch.where(front, torch.hypot(u - prior.u[at], v - prior.v[at]), torch.inf)
    return err


SIM3 = (2.5, _rotation([1.0, 2.0, 0.5], 0.7), np.array([0.3, -1.2, 4.0]))


@pytest.fixture(scope="module")
def pycolmap():
    return pytest.importorskip("pycolmap", minversion="4.0")


@pytest.mark.parametrize(
    ("image_scale", "downscale", "sim3"), [(1.0, 2, SIM3), (0.5, 1, None)], ids=["downscaled+sim3", "resized-images"]
)
def test_prior_lands_where_the_scenes_cameras_see_the_points(
    tmp_path: Path, pycolmap, image_scale: float, downscale: int, sim3
) -> None:
    """Noise-free keypoints: each observation's (u, v) at the training size is the scene camera's projection of its
    point (through the OPENCV lens), its depth the point's distance from the camera centre, and the ray through
    (u, v) ends at the point; only training views, only points tracked in >= 3 images."""
    rec = write_capture(pycolmap, tmp_path, noisy=False, image_scale=image_scale, sim3=sim3)
    scene = load_scene(tmp_path, downscale=downscale, holdout_every=3)
    assert scene.cameras.width == W // 2 and scene.cameras.distorted  # half the model camera's pixels either way
    prior = depth_prior(scene)
    assert prior is not None and len(prior) > 500
    assert prior.cam.dtype == torch.long and int(prior.cam.max()) < len(scene.train_ids)

    err = reprojection(scene, prior)
    assert float(err.max()) < 2e-3, float(err.max())  # float32 pixels; unscaled xys would be ~20 px off
    views = torch.tensor(scene.train_ids)[prior.cam]
    centres = scene.cameras.centers[views]
    torch.testing.assert_close(prior.depth, (prior.xyz - centres).norm(dim=1), rtol=1e-5, atol=1e-5)
    origins, dirs = prior_rays(prior, scene.cameras.subset(scene.train_ids), torch.arange(len(prior)))
    miss = (origins + prior.depth[:, None] * dirs - prior.xyz).norm(dim=1) / prior.depth
    assert float(miss.max()) < 1e-4, float(miss.max())

    # exactly the observations by training views of the points tracked in >= MIN_TRACK images
    train_names = {f"{i:02d}.png" for i in scene.train_ids}
    expected = sum(
        sum(rec.images[e.image_id].name in train_names for e in p.track.elements)
        for p in rec.points3D.values()
        if p.track.length() >= MIN_TRACK
    )
    assert len(prior) == expected
    assert sum(p.track.length() == 2 for p in rec.points3D.values()) > 10  # there were short tracks to leave out
    assert float(prior.sigma.min()) >= SIGMA_FLOOR * float(prior.depth.min()) * 0.999
    torch.testing.assert_close(prior.sigma, SIGMA_FLOOR * prior.depth)  # error 0.5 px floor, wide baselines: 1 %
    assert bool(((prior.weight > 0) & (prior.weight <= 1)).all())


def write_transforms(rec, root: Path, sim3: tuple[float, np.ndarray, np.ndarray]) -> None:  # noqa: ANN001
    """``root/transforms.json`` (nerfstudio's OPENCV camera, OpenGL axes) of ``rec``'s cameras in a frame turned,
    scaled and moved by ``sim3``, frames in name order."""
    scale, rotation, translation = sim3
    frames = []
    for image in sorted(rec.images.values(), key=lambda im: im.name):  # the model's order: the same held-out views
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        c2w = np.linalg.inv(w2c)
        c2w[:3, :3] = rotation @ c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenGL axes, turned
        c2w[:3, 3] = scale * rotation @ c2w[:3, 3] + translation
        frames.append({"file_path": f"images/{image.name}", "transform_matrix": c2w.tolist()})
    fx, fy, cx, cy, k1, k2, p1, p2 = OPENCV
    meta = {"w": W, "h": H, "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "k1": k1, "k2": k2, "p1": p1, "p2": p2}
    (root / "transforms.json").write_text(json.dumps({**meta, "camera_model": "OPENCV", "frames": frames}))


def test_a_transforms_json_scene_takes_the_points_of_its_colmap_model(tmp_path: Path, pycolmap) -> None:
    """nerfstudio's ``ns-process-data`` layout: ``transforms.json`` in a frame of its own (turned, scaled, moved)
    and the COLMAP model it came from in ``colmap/sparse/0``. The prior comes from the model's points, aligned onto
    the scene's cameras: each observation's pixel is the scene camera's projection of its point."""
    rec = write_capture(pycolmap, tmp_path, noisy=False)
    (tmp_path / "colmap").mkdir()
    (tmp_path / "sparse").rename(tmp_path / "colmap" / "sparse")
    scale = SIM3[0]
    write_transforms(rec, tmp_path, SIM3)
    scene = load_scene(tmp_path, holdout_every=3)
    assert scene.format != "colmap"
    prior = depth_prior(scene)
    assert prior is not None and len(prior) > 500
    err = reprojection(scene, prior)
    assert float(err.max()) < 0.05, float(err.max())
    views = torch.tensor(scene.train_ids)[prior.cam]
    torch.testing.assert_close(prior.depth, (prior.xyz - scene.cameras.centers[views]).norm(dim=1), rtol=1e-4, atol=0)
    in_model = depth_prior(load_scene(tmp_path, holdout_every=3, colmap_model=tmp_path / "colmap" / "sparse" / "0"))
    assert in_model is not None and len(in_model) == len(prior)
    torch.testing.assert_close(prior.depth, scale * in_model.depth, rtol=1e-4, atol=0)  # the model's units, scaled


def test_a_model_of_another_capture_beside_a_transforms_json_is_left_out(tmp_path: Path, pycolmap, capsys) -> None:
    """A model found beside a transforms.json whose cameras are not the scene's: one line, training goes on
    without the prior; the same model named with --depth-model is an error."""
    from ovseg3d.config import TrainConfig
    from ovseg3d.train import Trainer

    rec = write_capture(pycolmap, tmp_path, noisy=False)
    write_transforms(rec, tmp_path, SIM3)
    other = tmp_path / "other"
    other.mkdir()
    write_capture(pycolmap, other, noisy=False, arc=np.pi, seed=1)
    (tmp_path / "sparse").rename(tmp_path / "old")
    (other / "sparse").rename(tmp_path / "sparse")
    scene = load_scene(tmp_path, holdout_every=3)
    cfg = TrainConfig(scene=tmp_path, n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden_dim=16,
                      color_hidden_dim=16, rays_per_step=128, occ_resolution=16, depth_weight=1.0)  # fmt: skip
    trainer = Trainer(cfg, scene, torch.device("cpu"))
    assert trainer.depth is None
    assert "not this model" in capsys.readouterr().out
    with pytest.raises(SceneError, match="not this model"):
        Trainer(dataclasses.replace(cfg, depth_model=tmp_path / "sparse" / "0"), scene, torch.device("cpu"))
    named = Trainer(dataclasses.replace(cfg, depth_model=tmp_path / "old" / "0"), scene, torch.device("cpu"))
    assert named.depth is not None and len(named.depth) > 500


def test_noisy_points_are_left_out_and_weighted(tmp_path: Path, pycolmap) -> None:
    rec = write_capture(pycolmap, tmp_path, noisy=True, sim3=SIM3)
    scene = load_scene(tmp_path, holdout_every=4)
    prior = depth_prior(scene)
    assert prior is not None
    xyz = np.stack([p.xyz for p in rec.points3D.values()])
    errors = np.array([p.error for p in rec.points3D.values()])
    nearest = np.linalg.norm(prior.xyz.double().numpy()[:, None] - xyz[None], axis=2).argmin(axis=1)
    kept = errors[nearest]
    assert kept.max() <= MAX_ERROR_PX and errors.max() > 3 * MAX_ERROR_PX  # the 4 px points are gone
    err = reprojection(scene, prior)
    assert float(err.max()) < 1.5 and 0.05 < float(err.median()) < 0.5  # the keypoints' 0.2 px noise
    assert bool((prior.sigma >= SIGMA_FLOOR * prior.depth * 0.999).all())
    assert float(prior.weight.max()) < 1 / (1 + kept.min()) + 1e-6


def test_sigma_follows_the_triangulation_angle(tmp_path: Path, pycolmap) -> None:
    """Cameras on a 12 degree arc: sigma = depth * (max(error, 0.5 px) / f) / sin(track spread), the spread
    2 arccos |mean unit vector from the point to its cameras|, computed here from pycolmap's tracks."""
    rec = write_capture(pycolmap, tmp_path, noisy=True, arc=np.radians(12.0), sim3=SIM3)
    prior = depth_prior(load_scene(tmp_path, holdout_every=100))
    assert prior is not None and len(prior) > 500
    ids = list(rec.points3D)
    xyz = np.stack([rec.points3D[i].xyz for i in ids])
    nearest = np.linalg.norm(prior.xyz.double().numpy()[:, None] - xyz[None], axis=2).argmin(axis=1)
    expected = []
    for row in nearest:
        point = rec.points3D[ids[row]]
        rays = np.stack([rec.images[e.image_id].projection_center() - point.xyz for e in point.track.elements])
        mean = (rays / np.linalg.norm(rays, axis=1, keepdims=True)).mean(axis=0)
        spread = 2 * np.arccos(min(np.linalg.norm(mean), 1.0))
        expected.append(max(SIGMA_FLOOR, max(point.error, 0.5) / np.mean(OPENCV[:2]) / np.sin(min(spread, np.pi / 2))))
    share = (prior.sigma / prior.depth).double().numpy()
    np.testing.assert_allclose(share, expected, rtol=1e-4)
    assert share.min() > 2 * SIGMA_FLOOR and share.max() <= 0.2  # narrow baselines: above the floor


def test_prior_respects_masks_frames_and_formats(tmp_path: Path, pycolmap) -> None:
    write_capture(pycolmap, tmp_path / "a", noisy=False, sim3=SIM3)
    mask = np.zeros((H, W), np.uint8)
    mask[:, W // 2 :] = 255  # the left half of view 1 is not for training
    (tmp_path / "a" / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "a" / "masks" / "01.png.png")
    scene = load_scene(tmp_path / "a", holdout_every=100)
    prior = depth_prior(scene)
    assert prior is not None
    one = prior.cam == scene.train_ids.index(1)
    assert bool(one.any()) and float(prior.u[one].min()) >= W // 2
    assert float(prior.u[prior.cam == scene.train_ids.index(2)].min()) < W // 2

    # the same capture's model in another frame (as a transforms.json or LLFF's poses keep it): aligned onto the
    # scene's cameras, the same prior; another capture's model: refused; no model: no prior
    write_capture(pycolmap, tmp_path / "b", noisy=False, sim3=None)
    other_frame = depth_prior(scene, tmp_path / "b" / "sparse" / "0")
    assert other_frame is not None and len(other_frame) == len(prior)
    torch.testing.assert_close(other_frame.xyz, prior.xyz, atol=1e-4, rtol=0)
    torch.testing.assert_close(other_frame.depth, prior.depth, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(other_frame.sigma, prior.sigma, atol=1e-5, rtol=1e-4)
    write_capture(pycolmap, tmp_path / "c", noisy=False, arc=np.pi, seed=1)  # cameras on a half circle
    with pytest.raises(SceneError, match="not this model"):
        depth_prior(scene, tmp_path / "c" / "sparse" / "0")
    assert depth_prior(dataclasses.replace(scene, root=tmp_path / "nothing")) is None


def test_sample_draws_observations_on_the_priors_device() -> None:
    m = 1000
    prior = DepthPrior(
        torch.zeros(m, dtype=torch.long), *(torch.rand(m) for _ in range(5)), torch.zeros(m, 3)
    )  # cam, u, v, depth, sigma, weight, xyz
    idx = sample(prior, 4096, torch.Generator().manual_seed(0))
    assert idx.shape == (4096,) and idx.dtype == torch.long and int(idx.min()) >= 0 and int(idx.max()) < m
    assert len(torch.unique(idx)) > 0.9 * m  # uniform over all of them
    part = prior.select(idx[:10])
    assert len(part) == 10 and part.xyz.shape == (10, 3)


def test_reading_a_large_model_is_fast(tmp_path: Path) -> None:
    """300 images x 5,000 observations (1.5 M) and 100,000 points with tracks: the observations are numpy views
    of images.bin, not a loop over them."""
    rng = np.random.default_rng(0)
    n_img, k, n_pts = 300, 5000, 100_000
    model = colmap.ColmapModel(
        {1: colmap.ColmapCamera(1, "PINHOLE", 800, 600, np.array([700.0, 700.0, 400.0, 300.0]))},
        {},
        rng.normal(size=(n_pts, 3)),
        np.zeros((n_pts, 3), np.uint8),
        rng.uniform(0, 1, n_pts),
        np.zeros(n_pts, np.int64),
    )
    colmap.write_model(tmp_path, model)
    table = np.zeros(k, dtype=[("xy", "<f8", 2), ("id", "<i8")])
    parts = [struct.pack("<Q", n_img)]
    for i in range(n_img):
        parts.append(struct.pack("<I4d3dI", i + 1, 1, 0, 0, 0, 0, 0, 0, 1) + f"{i:03d}.jpg".encode() + b"\0")
        table["xy"] = rng.uniform(0, 600, (k, 2))
        table["id"] = rng.integers(-1, n_pts, k) + 1  # 0 = none here, ids 1..P
        parts.append(struct.pack("<Q", k) + table.tobytes())
    (tmp_path / "images.bin").write_bytes(b"".join(parts))
    start = time.perf_counter()
    obs = colmap.read_observations(tmp_path)
    took = time.perf_counter() - start
    assert len(obs) == n_img and obs["299.jpg"][0].shape == (k, 2)
    np.testing.assert_array_equal(obs["299.jpg"][1], table["id"])
    assert took < 3.0, took  # ~0.05 s; generous for a loaded machine


# --- the losses on packed samples -----------------------------------------------------------------------------

STEP = 0.1
T0 = torch.arange(0.0, 10.0, STEP)  # one ray's intervals [t, t + STEP)


def _one_ray(weights: torch.Tensor, depth: float = 5.0, sigma: float = 0.1) -> dict:
    return {
        "weights": weights,
        "t_starts": T0,
        "t_ends": T0 + STEP,
        "ray_indices": torch.zeros(len(T0), dtype=torch.long),
        "depth": torch.tensor([depth]),
        "sigma": torch.tensor([sigma]),
    }


def _spike(t: float, mass: float = 1.0) -> torch.Tensor:
    w = torch.zeros(len(T0))
    w[int(round(t / STEP))] = mass
    return w


def test_termination_is_zero_at_the_depth_and_grows_away_from_it() -> None:
    at = float(termination_loss(**_one_ray(_spike(5.0))))
    assert at == pytest.approx(0.0, abs=1e-6)
    assert float(termination_loss(**_one_ray(_spike(4.9)))) == pytest.approx(0.0, abs=1e-6)  # within sigma of it
    transparent = float(termination_loss(**_one_ray(torch.zeros(len(T0)))))
    away = [float(termination_loss(**_one_ray(_spike(t)))) for t in (5.2, 5.3, 6.5)]
    assert 0 < away[0] < away[1] < away[2] <= transparent, away
    front = [float(termination_loss(**_one_ray(_spike(t)))) for t in (4.7, 4.6, 3.5)]
    assert 0 < front[0] < front[1] < front[2] <= transparent, front
    # weight split between the point and a floater: between the two
    split = float(termination_loss(**_one_ray(0.5 * _spike(5.0) + 0.5 * _spike(6.5))))
    assert 0 < split < away[2]
    # an interval longer than sigma that holds the depth is on it
    coarse = termination_loss(
        torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([6.0]), torch.zeros(1, dtype=torch.long),
        torch.tensor([5.0]), torch.tensor([0.05]),
    )  # fmt: skip
    assert float(coarse) == pytest.approx(0.0, abs=1e-6)


def test_a_transparent_ray_is_penalised_more_than_a_blurred_one() -> None:
    """The loss has no cheaper way out than the point: a ray emptied of its weight costs the most, more than one
    whose weight is smeared around its point (the old loss preferred emptying it, which eroded the bonsai)."""
    eps = TRANSPARENT_FLOOR
    transparent = float(termination_loss(**_one_ray(torch.zeros(len(T0)))))
    assert transparent == pytest.approx(math.log((1 + eps) / eps))
    half = float(termination_loss(**_one_ray(_spike(5.0, 0.5))))
    assert half == pytest.approx(math.log((1 + eps) / (0.5 + eps)))
    blur = torch.exp(-0.5 * ((T0 + 0.5 * STEP - 5.0) / 1.0) ** 2)  # a surface smeared over +-1 around the point
    blur = blur / blur.sum()
    smeared = float(termination_loss(**_one_ray(blur)) + empty_space_loss(**_one_ray(blur)))
    assert 0 < smeared < transparent
    none = termination_loss(
        torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.ones(2), torch.ones(2)
    )
    torch.testing.assert_close(none, torch.full((2,), transparent))  # rays without samples: no weight at the point


def test_band_samples_cover_the_point_whatever_the_grid_skipped() -> None:
    """A prior ray whose marched samples jump over its point (cells the grid holds empty) gets samples across the
    band; its other samples and the colour rays' are kept, and the result is packed (sorted by ray, then t)."""
    t = torch.tensor([1.0, 1.5, 8.0, 8.5])  # ray 0: samples before and behind its point at 5, none near it
    marched = RaySamples(
        torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]),
        torch.cat([t, torch.tensor([4.0, 4.9, 4.0, 5.0])]),
        torch.cat([t + 0.5, torch.tensor([4.9, 5.8, 5.0, 6.0])]),
        3,
    )
    depth, sigma = torch.tensor([5.0, 5.0]), torch.tensor([0.1, 0.2])
    out = band_samples(marched, depth, sigma, 4)
    assert out.n_rays == 3
    assert torch.equal(out.ray_indices, torch.tensor([0] * 8 + [1] * 4 + [2, 2]))
    r0 = out.ray_indices == 0
    torch.testing.assert_close(out.t_starts[r0], torch.tensor([1.0, 1.5, 4.8, 4.9, 5.0, 5.1, 8.0, 8.5]))
    torch.testing.assert_close(out.t_ends[r0], torch.tensor([1.5, 2.0, 4.9, 5.0, 5.1, 5.2, 8.5, 9.0]))
    # ray 1's two marched samples overlap its band [4.6, 5.4]: replaced by it
    torch.testing.assert_close(out.t_starts[out.ray_indices == 1], torch.tensor([4.6, 4.8, 5.0, 5.2]))
    # ray 2 is a colour ray: as it was
    torch.testing.assert_close(out.t_starts[out.ray_indices == 2], torch.tensor([4.0, 5.0]))
    assert band_samples(marched, depth, sigma, 0) is marched


def test_empty_space_grows_with_the_weight_in_front() -> None:
    assert float(empty_space_loss(**_one_ray(_spike(5.0)))) == 0.0
    assert float(empty_space_loss(**_one_ray(_spike(5.0 - (EMPTY_SIGMAS - 1) * 0.1)))) == 0.0  # near the point
    assert float(empty_space_loss(**_one_ray(_spike(8.0)))) == 0.0  # behind it: the termination term's
    grows = [float(empty_space_loss(**_one_ray(_spike(5.0, 1 - m) + _spike(2.0, m)))) for m in (0.1, 0.3, 0.6)]
    np.testing.assert_allclose(grows, [0.1, 0.3, 0.6], rtol=1e-6)


def test_packed_rays_are_independent_and_later_rays_left_out() -> None:
    """Three rays packed with the colour rays after them: each prior ray's loss is its own, O(S) scatter."""
    rays = [_spike(5.0), _spike(7.0, 0.6) + _spike(2.0, 0.3), torch.zeros(len(T0))]
    depth, sigma = torch.tensor([5.0, 4.0, 3.0]), torch.tensor([0.1, 0.2, 0.1])
    colour = _spike(1.0)  # a fourth ray: not the prior's
    packed = {
        "weights": torch.cat([*rays, colour]),
        "t_starts": T0.repeat(4),
        "t_ends": (T0 + STEP).repeat(4),
        "ray_indices": torch.arange(4).repeat_interleave(len(T0)),
        "depth": depth,
        "sigma": sigma,
    }
    for fn in (termination_loss, empty_space_loss):
        together = fn(**packed)
        alone = torch.cat([fn(**_one_ray(w, float(d), float(s))) for w, d, s in zip(rays, depth, sigma)])
        torch.testing.assert_close(together, alone)
    samples = RaySamples(packed["ray_indices"], packed["t_starts"], packed["t_ends"], 4)
    total = prior_loss(packed["weights"], samples, depth, sigma, torch.tensor([1.0, 2.0, 1.0]))
    per = termination_loss(**packed) + empty_space_loss(**packed)
    torch.testing.assert_close(total, (per * torch.tensor([1.0, 2.0, 1.0])).sum() / 4)


def test_the_losses_train_a_ray_onto_its_point() -> None:
    """Gradient descent on one ray's densities (through the volume rendering weights) with the prior's loss
    alone: the ray's weight gathers within sigma of the point, none is left in front of it."""
    torch.manual_seed(0)
    log_sigma = torch.full((len(T0),), -1.0, requires_grad=True)  # a foggy start: weight spread along the ray
    opt = torch.optim.Adam([log_sigma], lr=0.1)
    samples = RaySamples(torch.zeros(len(T0), dtype=torch.long), T0, T0 + STEP, 1)
    depth, sigma = torch.tensor([6.0]), torch.tensor([0.15])

    def weights() -> torch.Tensor:
        return render_weights(log_sigma.exp(), samples.deltas, samples.ray_indices, 1)

    start = float(prior_loss(weights(), samples, depth, sigma).detach())
    for _ in range(300):
        opt.zero_grad()
        prior_loss(weights(), samples, depth, sigma).backward()
        opt.step()
    w = weights().detach()
    near = (samples.t_mid - 6.0).abs() <= 0.15 + STEP
    assert start > 0.5 and float(prior_loss(w, samples, depth, sigma)) < 0.05 * start
    assert float(w[near].sum()) > 0.9 and float(w[samples.t_ends <= 6.0 - 3 * 0.15].sum()) < 0.03
    expected_t = float((w * samples.t_mid).sum() / w.sum())
    assert abs(expected_t - 6.0) < 0.15 + STEP  # anywhere in the band is the prior's optimum (the colours decide)


def test_the_trainer_adds_rays_through_observed_keypoints_and_their_depth_loss(tmp_path: Path, pycolmap) -> None:
    """With --depth-weight, each step's batch starts with depth_rays rays through observed keypoints, and the loss
    holds the depth prior's term: the same step's loss differs from a run without it, and the term shrinks as the
    field is trained on it alone."""
    from ovseg3d.config import TrainConfig
    from ovseg3d.train import Trainer

    write_capture(pycolmap, tmp_path, noisy=False)
    scene = load_scene(tmp_path, downscale=2, holdout_every=3)
    cfg = TrainConfig(
        scene=tmp_path,
        n_levels=4,
        log2_hashmap_size=12,
        max_resolution=64,
        hidden_dim=16,
        color_hidden_dim=16,
        rays_per_step=128,
        occ_resolution=16,
        depth_weight=1.0,
        depth_rays=64,
    )
    trainer = Trainer(cfg, scene, torch.device("cpu"))
    assert trainer.depth is not None and len(trainer.depth) > 100
    origins, dirs, target, cam, index = trainer._with_depth_rays(*trainer.sample_batch())
    assert index is not None and len(origins) == 64 + 128
    torch.testing.assert_close(cam[:64], trainer.depth.cam[index])
    o, d = prior_rays(trainer.depth, trainer.cameras, index)
    torch.testing.assert_close(origins[:64], o)
    losses = []
    every_sample = dataclasses.replace(trainer.opts, early_stop_eps=0.0, alpha_thre=0.0)  # weights of `samples`
    for _ in range(45):
        trainer.train_step()
        samples = trainer.grid.march(o, d, trainer.opts.step_size, stratified=False)
        out = render_rays(trainer.field, trainer.grid, o, d, every_sample, samples=samples)
        assert out.weights is not None
        p = trainer.depth
        losses.append(float(prior_loss(out.weights.detach(), samples, p.depth[index], p.sigma[index], p.weight[index])))
    assert losses[-1] < 0.6 * losses[0]  # measured 3.19 -> 1.6; without the term it stays (3.22 -> 3.25 at 30 steps)
    without = Trainer(dataclasses.replace(cfg, depth_weight=0.0), scene, torch.device("cpu"))
    assert without.depth is None


def test_the_depth_band_starts_wide_and_narrows_to_the_points_own(tmp_path: Path, pycolmap) -> None:
    """With --depth-sigma-start, the prior's band is that share of each point's depth at the first step (a field
    that has not found its surfaces yet is not held to a 1 % band) and the points' own once depth_anneal of the
    budget has passed: the same render scores lower at the start, the same at the end."""
    from ovseg3d.config import TrainConfig
    from ovseg3d.train import Trainer

    write_capture(pycolmap, tmp_path, noisy=False)
    scene = load_scene(tmp_path, downscale=2, holdout_every=3)
    cfg = TrainConfig(
        scene=tmp_path, n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden_dim=16, color_hidden_dim=16,
        rays_per_step=128, occ_resolution=16, depth_weight=1.0, depth_rays=64, steps=100,
    )  # fmt: skip
    trainer = Trainer(cfg, scene, torch.device("cpu"))
    for _ in range(5):
        trainer.train_step()
    origins, dirs, _, _, index = trainer._with_depth_rays(*trainer.sample_batch())
    samples = trainer.grid.march(origins, dirs, trainer.opts.step_size, stratified=False)
    out = render_rays(trainer.field, trainer.grid, origins, dirs, trainer.opts, samples=samples)
    own = float(trainer._depth_loss(out, samples, index, len(origins)).detach())
    trainer.cfg = dataclasses.replace(cfg, depth_sigma_start=0.2, depth_anneal=0.5)
    trainer.step = 0
    assert float(trainer._depth_loss(out, samples, index, len(origins)).detach()) < own
    trainer.step = 50  # half the budget: the band is the points' own again
    assert float(trainer._depth_loss(out, samples, index, len(origins)).detach()) == pytest.approx(own, rel=1e-5)


def test_the_depth_weight_falls_to_zero_by_depth_until(tmp_path: Path, pycolmap) -> None:
    """With --depth-until, the prior's weight falls linearly from --depth-weight to 0 by that share of the budget;
    after it, steps draw no depth rays (they would cost samples for nothing)."""
    from ovseg3d.config import TrainConfig
    from ovseg3d.train import Trainer

    write_capture(pycolmap, tmp_path, noisy=False)
    scene = load_scene(tmp_path, downscale=2, holdout_every=3)
    cfg = TrainConfig(
        scene=tmp_path, n_levels=4, log2_hashmap_size=12, max_resolution=64, hidden_dim=16, color_hidden_dim=16,
        rays_per_step=128, occ_resolution=16, depth_weight=0.4, depth_rays=64, steps=100, depth_until=0.5,
    )  # fmt: skip
    trainer = Trainer(cfg, scene, torch.device("cpu"))
    weights = []
    for step in (0, 25, 50, 80):
        trainer.step = step
        weights.append(trainer.depth_weight())
    assert weights == pytest.approx([0.4, 0.2, 0.0, 0.0])
    assert trainer._with_depth_rays(*trainer.sample_batch())[-1] is None
    trainer.step = 10
    assert trainer._with_depth_rays(*trainer.sample_batch())[-1] is not None
    trainer.cfg = dataclasses.replace(cfg, depth_until=0.0)  # held to the end
    trainer.step = 99
    assert trainer.depth_weight() == 0.4


def test_bench_sfm_measures_weight_at_the_point_and_median_depth() -> None:
    """ovseg3d bench prepare's sfm study, per ray on packed samples: the weight within 1 and 3 sigma of the point,
    the median depth (where the accumulated weight reaches a half; nan if never) and rays left without samples."""
    from ovseg3d.bench import prepare as bench

    n = len(T0)
    at_point = _spike(5.0)
    early = _spike(2.0, 0.6) + _spike(5.0, 0.3)  # a floater in front holds most of it
    faint = _spike(5.0, 0.2)  # never reaches a half
    samples = RaySamples(torch.arange(3).repeat_interleave(n), T0.repeat(3), (T0 + STEP).repeat(3), 4)
    depth, sigma = torch.full((4,), 5.0), torch.full((4,), 0.1)
    got = bench.per_ray(torch.cat([at_point, early, faint]), samples, depth, sigma)
    torch.testing.assert_close(got["at_1sigma"], torch.tensor([1.0, 0.3, 0.2, 0.0]))
    torch.testing.assert_close(got["at_3sigma"], torch.tensor([1.0, 0.3, 0.2, 0.0]))
    assert float(got["t50"][0]) == pytest.approx(5.05) and float(got["t50"][1]) == pytest.approx(2.05)
    assert bool(torch.isnan(got["t50"][2:]).all())
    assert got["has_sample"].tolist() == [True, True, True, False]
