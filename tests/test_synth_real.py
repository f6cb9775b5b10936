"""Generated scenes in the formats and lenses of real captures: COLMAP binary models, OpenCV and fisheye lenses
(ovseg3d.synth), read back by ovseg3d's loader and by pycolmap."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovseg3d.cli import main
from ovseg3d.data import colmap
from ovseg3d.data.cameras import image_rays, pixel_rays, project_points
from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE
from ovseg3d.data.loader import load_scene
from ovseg3d.synth import (
    DEFAULT_DISTORTION,
    SynthCameras,
    SynthConfig,
    build_scene,
    camera_rays,
    cast_rays,
    lens_coefficients,
    make_cameras,
    render_view,
    surface_distance,
    synthesize,
)

TINY = dict(width=48, height=32, n_views=4, supersample=1, n_annotated=1, n_points=600)
DEMO = Path(__file__).resolve().parents[1] / "scenes" / "demo"


def _tiny(**kw: object) -> SynthConfig:
    return SynthConfig(**{**TINY, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def opencv_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(_tiny(format="colmap", lens="opencv"), tmp_path_factory.mktemp("real") / "opencv")


@pytest.fixture(scope="module")
def fisheye_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _tiny(format="colmap", lens="fisheye", fov_deg=130.0, cameras="orbit", seed=3, n_views=3)
    return synthesize(cfg, tmp_path_factory.mktemp("real") / "fisheye")


def _cams(root: Path) -> SynthCameras:
    return SynthCameras.from_json(json.loads((root / "scene.json").read_text())["cameras"])


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir() if p.is_file())


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# ------------------------------------------------------------------------------------------------ COLMAP files


def test_colmap_files_keep_the_ground_truth(opencv_scene: Path) -> None:
    names = [f"{i:02d}" for i in range(4)]
    assert _stems(opencv_scene / "images") == _stems(opencv_scene / "labels") == _stems(opencv_scene / "instances")
    assert _stems(opencv_scene / "images") == names
    assert sorted(p.name for p in (opencv_scene / "sparse" / "0").iterdir()) == [
        "cameras.bin",
        "images.bin",
        "points3D.bin",
    ]
    for name in ("objects.json", "scene.json", "segmentations/classes.txt"):
        assert (opencv_scene / name).is_file()
    assert not (opencv_scene / "poses_bounds.npy").exists() and not (opencv_scene / "transforms.json").exists()
    model = colmap.read_model(opencv_scene / "sparse" / "0")
    assert [im.name for im in model.images.values()] == [f"{n}.png" for n in names]
    (camera,) = model.cameras.values()
    assert camera.model == "OPENCV" and (camera.width, camera.height) == (48, 32)
    np.testing.assert_allclose(camera.params[4:], DEFAULT_DISTORTION["opencv"])


def test_colmap_poses_are_the_rendered_cameras(opencv_scene: Path) -> None:
    cams = _cams(opencv_scene)
    model = colmap.read_model(opencv_scene / "sparse" / "0")
    for i, image in enumerate(model.images.values()):
        np.testing.assert_allclose(colmap.c2w_opengl(image), cams.c2w[i], atol=1e-12)


def test_points3d_lie_on_the_true_surfaces(opencv_scene: Path) -> None:
    model = colmap.read_model(opencv_scene / "sparse" / "0")
    assert model.points.shape == (600, 3) and model.colors.dtype == np.uint8
    assert len(np.unique(model.points, axis=0)) == 600
    dist = surface_distance(json.loads((opencv_scene / "scene.json").read_text()), model.points)
    assert dist.max() < 1e-6
    assert model.colors.std() > 10  # the images' colours, not a constant


# ------------------------------------------------------------------------------------------ loader agreement


def test_loaded_opencv_rays_are_the_rendered_rays(opencv_scene: Path) -> None:
    scene = load_scene(opencv_scene)
    assert scene.format == "colmap" and scene.cameras.lens is not None
    assert scene.cameras.lens.tolist() == [LENS_OPENCV] * 4
    assert "sparse points" in scene.bounds
    cams = _cams(opencv_scene)
    for i in range(4):
        origins, dirs = image_rays(scene.cameras, i)
        o_synth, d_synth = camera_rays(cams, i, 1)
        np.testing.assert_allclose(origins.double().numpy(), o_synth, atol=1e-6)
        np.testing.assert_allclose(dirs.double().numpy(), d_synth, atol=1e-5)
    view = int(scene.eval_ids[0])
    stem = scene.image_paths[view].stem
    np.testing.assert_array_equal(scene.labels[view].numpy(), _png(opencv_scene / "labels" / f"{stem}.png"))


def test_rendered_depth_lands_on_one_point_seen_from_two_views(opencv_scene: Path) -> None:
    """Surface points from view 0's rendered depth, projected through the loaded lens of view 1: the loaded ray
    through that (sub-pixel) point passes through them, and where nothing hides them the scene is hit there."""
    scene = load_scene(opencv_scene)
    cams = _cams(opencv_scene)
    synth_scene = build_scene(_tiny(format="colmap", lens="opencv"))
    origins, dirs = camera_rays(cams, 0, 1)
    points = origins + render_view(synth_scene, cams, 0).distance.reshape(-1, 1) * dirs
    u, v, seen = project_points(scene.cameras, 1, torch.from_numpy(points).float())
    keep = (seen & (u > 0) & (u < 48) & (v > 0) & (v < 32)).numpy()
    assert keep.sum() > 300
    ids = torch.ones(int(keep.sum()), dtype=torch.long)
    o1, d1 = pixel_rays(scene.cameras, ids, u[keep] - 0.5, v[keep] - 0.5)
    to_point = points[keep] - o1.double().numpy()
    reach = np.linalg.norm(to_point, axis=1)
    np.testing.assert_allclose(to_point / reach[:, None], d1.double().numpy(), atol=2e-5)
    d1 = d1.double().numpy()
    t, _ = cast_rays(synth_scene, o1.double().numpy(), d1 / np.linalg.norm(d1, axis=1, keepdims=True))
    same = np.abs(t - reach) < 1e-3 * reach
    assert same.mean() > 0.9  # the rest is hidden from view 1
    assert np.all(t[~same] < reach[~same])


def test_synth_project_inverts_its_rays(opencv_scene: Path, fisheye_scene: Path) -> None:
    for root in (opencv_scene, fisheye_scene):
        cams = _cams(root)
        origins, dirs = camera_rays(cams, 1, 1)
        uv, depth = cams.project(origins + 2.0 * dirs)
        u, v = np.meshgrid(np.arange(48) + 0.5, np.arange(32) + 0.5)
        np.testing.assert_allclose(uv[1], np.stack([u, v], -1).reshape(-1, 2), atol=1e-6)


def test_fisheye_scene_loads_with_its_lens(fisheye_scene: Path) -> None:
    (camera,) = colmap.read_model(fisheye_scene / "sparse" / "0").cameras.values()
    assert camera.model == "OPENCV_FISHEYE"
    scene = load_scene(fisheye_scene)
    assert scene.cameras.lens is not None and scene.cameras.lens.tolist() == [LENS_FISHEYE] * 3
    cams = _cams(fisheye_scene)
    _, dirs = image_rays(scene.cameras, 2)
    np.testing.assert_allclose(dirs.double().numpy(), camera_rays(cams, 2, 1)[1], atol=1e-5)
    # 130 degrees across: the left and right edges look 65 degrees off the axis
    forward = -cams.c2w[2, :, 2]
    edge = dirs.double().numpy().reshape(32, 48, 3)[15:17, [0, -1]].mean(axis=0)
    angles = np.degrees(np.arccos(edge @ forward / np.linalg.norm(edge, axis=-1)))
    np.testing.assert_allclose(angles, 65.0 - 0.5 * 130.0 / 48, atol=0.3)


def test_transforms_json_carries_the_lens(tmp_path: Path) -> None:
    for lens, keys in (("opencv", ("k1", "k2", "p1", "p2")), ("fisheye", ("k1", "k2", "k3", "k4"))):
        root = synthesize(_tiny(format="transforms", lens=lens, n_views=2, fov_deg=90.0), tmp_path / lens)
        meta = json.loads((root / "transforms.json").read_text())
        assert meta["camera_model"] == {"opencv": "OPENCV", "fisheye": "OPENCV_FISHEYE"}[lens]
        assert [meta[k] for k in keys] == list(DEFAULT_DISTORTION[lens])
        scene = load_scene(root)
        _, dirs = image_rays(scene.cameras, 1)
        np.testing.assert_allclose(dirs.double().numpy(), camera_rays(_cams(root), 1, 1)[1], atol=1e-5)


# ----------------------------------------------------------------------------------------------- pycolmap


def test_pycolmap_reads_the_same_cameras(opencv_scene: Path, fisheye_scene: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    for root, model_name in ((opencv_scene, "OPENCV"), (fisheye_scene, "OPENCV_FISHEYE")):
        rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
        cams = _cams(root)
        assert rec.num_images() == len(cams) and rec.num_points3D() == 600
        for image_id, image in rec.images.items():
            assert image.name == f"{image_id - 1:02d}.png"
            np.testing.assert_allclose(image.projection_center(), cams.c2w[image_id - 1, :, 3], atol=1e-9)
        camera = rec.cameras[1]
        assert camera.model.name == model_name
        # COLMAP's own undistortion of the pixel centres gives the directions synth rendered with
        u, v = np.meshgrid(np.arange(48) + 0.5, np.arange(32) + 0.5)
        xy = camera.cam_from_img(np.stack([u, v], -1).reshape(-1, 2))
        d_cv = cams.pixel_dirs(np.arange(48) + 0.5, np.arange(32) + 0.5) * np.array([1.0, -1.0, -1.0])
        np.testing.assert_allclose(xy, d_cv[:, :2] / d_cv[:, 2:], atol=1e-6)


# ------------------------------------------------------------------------------------------ lens in the pixels


def test_the_lens_is_in_the_pixels() -> None:
    """The same camera (focal, pose) with and without the lens: the centre agrees, the rest is warped."""
    cfg = _tiny(lens="opencv", distortion=(-0.3, 0.08, 0.0, 0.0), format="colmap")
    scene = build_scene(cfg)
    lensed = make_cameras(cfg, scene)
    pinhole = dataclasses.replace(lensed, lens=LENS_PINHOLE, coeffs=np.zeros(8))
    a, b = (render_view(scene, cams, 0) for cams in (pinhole, lensed))
    assert np.abs(a.rgb - b.rgb).mean() > 0.01
    assert (a.label != b.label).mean() > 0.01
    np.testing.assert_array_equal(a.label[15:17, 23:25], b.label[15:17, 23:25])
    np.testing.assert_allclose(a.rgb[15:17, 23:25], b.rgb[15:17, 23:25], atol=0.02)
    np.testing.assert_allclose(a.depth[15:17, 23:25], b.depth[15:17, 23:25], rtol=1e-3)
    # barrel distortion pulls the periphery in: a corner pixel of the lensed image looks further out
    forward = -lensed.c2w[0, :, 2]
    corner = [camera_rays(cams, 0, 1)[1][0] @ forward for cams in (pinhole, lensed)]
    assert corner[1] < corner[0] - 0.01


# -------------------------------------------------------------------------------------------- pinhole as before


def test_pinhole_rays_are_the_old_formula() -> None:
    cfg = _tiny(supersample=2)
    cams = make_cameras(cfg, build_scene(cfg))
    _, dirs = camera_rays(cams, 2, 2)
    k = (np.arange(2) + 0.5) / 2
    u = (np.arange(48)[:, None] + k[None]).reshape(-1)
    v = (np.arange(32)[:, None] + k[None]).reshape(-1)
    x = np.broadcast_to(((u - cams.cx) / cams.fx)[None], (len(v), len(u)))
    y = np.broadcast_to((-(v - cams.cy) / cams.fy)[:, None], (len(v), len(u)))
    old = np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3) @ cams.c2w[2, :, :3].T
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    np.testing.assert_array_equal(dirs, old)
    assert cams.fx == 48 / 2 / math.tan(math.radians(60.0) / 2)


def test_pinhole_scene_json_keeps_version_1_layout(tmp_path: Path) -> None:
    root = synthesize(_tiny(n_views=2, n_points=4000), tmp_path / "pin")
    meta = json.loads((root / "scene.json").read_text())
    assert not {"lens", "distortion", "n_points"} & set(meta["config"])
    assert not {"lens", "coeffs"} & set(meta["cameras"])


def test_demo_scene_renders_as_before() -> None:
    """View 0 of the bundled demo, rendered again from its scene.json config, is the bundled image."""
    meta = json.loads((DEMO / "scene.json").read_text())
    config = {**meta["config"], "room_size": tuple(meta["config"]["room_size"])}
    config["classes"] = tuple(config["classes"])
    cfg = SynthConfig(**config)
    scene = build_scene(cfg)
    cams = make_cameras(cfg, scene)
    np.testing.assert_array_equal(cams.c2w, np.asarray(meta["cameras"]["c2w_opengl"]))
    view = render_view(scene, cams, 0, cfg.supersample, cfg.texture_scale)
    np.testing.assert_array_equal(np.round(view.rgb * 255.0).astype(np.uint8), _png(DEMO / "images" / "00.png"))
    np.testing.assert_array_equal(view.label, _png(DEMO / "labels" / "00.png"))


# ------------------------------------------------------------------------------------------------ refusals


def test_llff_refuses_a_lens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="LLFF"):
        synthesize(_tiny(lens="fisheye"), tmp_path / "no")
    assert not (tmp_path / "no").exists()
    assert main(["synth", str(tmp_path / "no"), "--lens", "opencv", "--width", "16", "--height", "12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no lens model" in err


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(lens="opencv", distortion=(0.1, 0.2)), "4 finite numbers"),
        (dict(lens="pinhole", distortion=(0.1, 0.0, 0.0, 0.0)), "needs --lens"),
        (dict(lens="fisheye", distortion=(-0.3, 0.0, 0.0, 0.0), fov_deg=100.0), "folds inside the image"),
    ],
)
def test_bad_lenses_are_refused(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize(_tiny(format="colmap", **kw), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_cli_writes_a_distorted_colmap_scene(tmp_path: Path) -> None:
    args = ["synth", str(tmp_path / "s"), "--format", "colmap", "--lens", "opencv", "--distortion", "-0.2", "0.05"]
    args += ["0", "0", "--width", "24", "--height", "16", "--n-views", "2", "--supersample", "1", "--n-points", "50"]
    assert main(args) == 0
    (camera,) = colmap.read_model(tmp_path / "s" / "sparse" / "0").cameras.values()
    np.testing.assert_allclose(camera.params[4:], [-0.2, 0.05, 0.0, 0.0])
    assert lens_coefficients(_tiny(lens="opencv"))[0] == LENS_OPENCV
