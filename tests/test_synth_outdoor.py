"""Generated outdoor scenes (ovseg3d.synth, ``outdoor``): objects on open ground under a sky, buildings tens
of metres away; the ground truth, the three output formats and the loader's view of an unbounded scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg3d.cli import main
from ovseg3d.data import colmap
from ovseg3d.data.llff import read_poses_bounds
from ovseg3d.data.loader import load_scene
from ovseg3d.synth import (
    BUILDING_HEIGHT,
    BUILDING_RANGE,
    OUTDOOR_CAMERAS,
    SKY_HORIZON,
    SKY_ZENITH,
    SynthConfig,
    build_scene,
    make_cameras,
    nearest_surface,
    render_rays,
    render_view,
    resolve_config,
    scene_from_json,
    synthesize,
)

TINY = dict(width=64, height=48, n_views=6, supersample=1, n_annotated=2, n_points=600, outdoor=True)


def _tiny(**kw: object) -> SynthConfig:
    return SynthConfig(**{**TINY, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def orbit_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _tiny(cameras="orbit", format="colmap", lens="opencv", seed=5)
    return synthesize(cfg, tmp_path_factory.mktemp("outdoor") / "orbit")


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _classes(root: Path) -> list[str]:
    return (root / "segmentations" / "classes.txt").read_text().splitlines()


def _labels(root: Path) -> np.ndarray:
    return np.stack([_png(p) for p in sorted((root / "labels").iterdir())])


def _meta(root: Path) -> dict:
    return json.loads((root / "scene.json").read_text())


# ------------------------------------------------------------------------------------------------ ground truth


def test_classes_are_the_objects_then_ground_and_building(orbit_scene: Path) -> None:
    classes = _classes(orbit_scene)
    objects = json.loads((orbit_scene / "objects.json").read_text())
    assert classes[-2:] == ["ground", "building"]
    assert set(classes[:-2]) == {o["class"] for o in objects["objects"]}
    assert objects["up"] == [0.0, 0.0, 1.0]
    assert "sky" in _meta(orbit_scene) and _meta(orbit_scene)["config"]["outdoor"] is True


def test_orbit_views_see_sky_above_and_ground_below(orbit_scene: Path) -> None:
    labels = _labels(orbit_scene)
    ground = _classes(orbit_scene).index("ground")
    top, bottom = labels[:, : labels.shape[1] // 4], labels[:, -labels.shape[1] // 4 :]
    assert (top == 255).mean() > 0.4  # the sky, unlabelled, fills most of the top quarter
    assert all((view[0] == 255).any() for view in labels)  # every view sees some sky along its top row
    assert not (bottom == 255).any() and (bottom == ground).mean() > 0.8
    sky_rows = (labels == 255).mean(axis=(0, 2))
    assert np.all(np.diff(sky_rows) <= 1e-9)  # the sky thins out towards the bottom, never below the ground


def test_sky_is_unlabelled_at_infinity(orbit_scene: Path) -> None:
    meta = _meta(orbit_scene)
    scene, cfg = scene_from_json(meta), SynthConfig(**{**TINY, "cameras": "orbit", "lens": "opencv", "seed": 5})
    view = render_view(scene, make_cameras(cfg, scene), 1)
    sky = view.label == 255
    assert sky.any() and np.all(view.instance[sky] == 0) and np.all(np.isinf(view.distance[sky]))
    # scene.json renders the written image again (the sky included)
    np.testing.assert_array_equal(np.round(view.rgb * 255.0).astype(np.uint8), _png(orbit_scene / "images" / "01.png"))
    # a function of direction only: the same colour from any origin, bluer straight up than at the horizon
    dirs = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    origins = np.array([[0.0, 0.0, 30.0], [100.0, -40.0, 25.0], [0.0, 0.0, 100.0], [5.0, 0.0, 300.0]])
    rgb, t, _ = render_rays(scene, origins, dirs)
    assert np.all(np.isinf(t))
    np.testing.assert_allclose(rgb, [SKY_ZENITH, SKY_ZENITH, SKY_HORIZON, SKY_HORIZON], atol=1e-12)


def test_buildings_are_seen_far_away(orbit_scene: Path) -> None:
    meta = _meta(orbit_scene)
    building = _classes(orbit_scene).index("building")
    labels = _labels(orbit_scene)
    assert sum((view == building).any() for view in labels) >= 2
    scene, cfg = scene_from_json(meta), SynthConfig(**{**TINY, "cameras": "orbit", "lens": "opencv", "seed": 5})
    cams = make_cameras(cfg, scene)
    depths = [render_view(scene, cams, i).depth[labels[i] == building] for i in range(len(labels))]
    depths = np.concatenate(depths)
    assert len(depths) > 20 and depths.min() > 10.0
    instances = {p["instance"] for p in meta["primitives"] if p["class"] == "building"}
    assert len(instances) == sum(p["class"] == "building" for p in meta["primitives"])  # one instance each


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_buildings_stand_around_at_their_range(seed: int) -> None:
    scene = build_scene(_tiny(seed=seed))
    near, far = BUILDING_RANGE
    boxes = [p for p in scene.primitives if p.cls == "building"]
    assert len(boxes) >= 4
    azimuths = []
    for box in boxes:
        corners = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)]) * box.half_size[:2]
        xy = box.center[:2] + corners @ box.rotation[:2, :2].T
        assert np.linalg.norm(xy, axis=1).min() >= near and np.linalg.norm(box.center[:2]) <= far
        assert BUILDING_HEIGHT[0] <= 2 * box.half_size[2] <= BUILDING_HEIGHT[1]
        assert box.center[2] == pytest.approx(box.half_size[2])  # on the ground
        azimuths.append(np.arctan2(box.center[1], box.center[0]))
    gaps = np.diff(np.sort(azimuths))
    assert np.all(gaps > 0.3) and (2 * np.pi - np.ptp(azimuths)) > 0.3  # in different directions
    (ground,) = [p for p in scene.primitives if p.cls == "ground"]
    assert ground.half_size[0] >= 250.0 and ground.center[2] == 0.0
    for obj in scene.objects:  # the objects stand on the ground around the origin
        assert obj["center"][2] == pytest.approx(obj["size"][2] / 2) and np.hypot(*obj["center"][:2]) < 1.0


# ------------------------------------------------------------------------------------------------ formats


def test_points3d_come_from_surfaces_near_and_far(orbit_scene: Path) -> None:
    model = colmap.read_model(orbit_scene / "sparse" / "0")
    assert model.points.shape == (600, 3) and np.isfinite(model.points).all()
    dist, cls = nearest_surface(_meta(orbit_scene), model.points)
    assert dist.max() < 1e-6  # on true surfaces: none in the sky
    assert (cls == "building").sum() > 10 and (cls == "ground").sum() > 100
    reach = np.hypot(model.points[:, 0], model.points[:, 1])
    assert (reach > 15.0).sum() > 20


def test_loader_finds_the_region_of_interest(orbit_scene: Path) -> None:
    scene = load_scene(orbit_scene)
    assert scene.format == "colmap" and scene.bounds.startswith("the region of interest")
    assert scene.classes[-2:] == ["ground", "building"]
    lo, hi = scene.aabb[:3].numpy(), scene.aabb[3:].numpy()
    for obj in scene.objects:
        center, radius = np.asarray(obj.center), 0.5 * float(np.linalg.norm(obj.size))  # a yawed box's reach
        assert np.all(center - radius >= lo) and np.all(center + radius <= hi)
    assert np.all(hi - lo < 2 * 300.0)  # not the whole ground


def test_transforms_output_has_no_box(tmp_path: Path) -> None:
    out = tmp_path / "tr"
    args = ["synth", str(out), "--outdoor", "--format", "transforms", "--cameras", "orbit", "--width", "32"]
    assert main([*args, "--height", "24", "--n-views", "3", "--supersample", "1", "--n-annotated", "1"]) == 0
    meta = json.loads((out / "transforms.json").read_text())
    assert "aabb" not in meta and len(meta["frames"]) == 3
    scene = load_scene(out)
    assert scene.bounds.startswith("the region of interest")
    labels = _labels(out)
    assert (labels == 255).any() and (labels == _classes(out).index("ground")).any()


def test_forward_llff_near_far_span_the_surfaces(tmp_path: Path) -> None:
    root = synthesize(_tiny(n_views=3, n_annotated=1, seed=2), tmp_path / "llff")
    _, _, near_far = read_poses_bounds(root / "poses_bounds.npy")
    assert np.isfinite(near_far).all() and np.all(near_far[:, 0] > 0)
    scene = scene_from_json(_meta(root))
    cams = make_cameras(_tiny(n_views=3, seed=2), scene)
    for i in range(3):
        depth = render_view(scene, cams, i).depth
        surface = depth[np.isfinite(depth)]
        assert near_far[i, 0] <= surface.min() and near_far[i, 1] > 20.0  # the far ground is far
        assert (depth == np.inf).any()  # forward cameras see the sky too


def test_outdoor_camera_defaults_apply_only_where_unset() -> None:
    cfg = resolve_config(_tiny(orbit_distance=2.5))
    assert cfg.orbit_distance == 2.5
    assert cfg.orbit_min_elevation_deg == OUTDOOR_CAMERAS["orbit_min_elevation_deg"]
    assert cfg.distance == OUTDOOR_CAMERAS["distance"]
    room = SynthConfig()
    assert resolve_config(room) is room
