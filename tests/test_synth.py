"""Tests of the procedural scene synthesizer (ovseg3d.synth): files, ground truth, geometry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg3d.data.cameras import image_rays
from ovseg3d.data.llff import read_poses_bounds
from ovseg3d.data.loader import load_scene
from ovseg3d.synth import (
    VOCABULARY,
    SynthCameras,
    SynthConfig,
    annotated_views,
    build_scene,
    camera_rays,
    cast_rays,
    make_cameras,
    render_view,
    scene_from_json,
    surface_distance,
    synthesize,
)
from ovseg3d.synth.layout import _front_to_cameras

TINY = dict(width=40, height=30, n_views=6, supersample=1, n_annotated=2)


def _tiny(**kw: object) -> SynthConfig:
    return SynthConfig(**{**TINY, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def llff_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(_tiny(), tmp_path_factory.mktemp("synth") / "llff")


@pytest.fixture(scope="module")
def transforms_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _tiny(cameras="orbit", format="transforms", seed=1, n_objects=4)
    return synthesize(cfg, tmp_path_factory.mktemp("synth") / "orbit")


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _scene_json(root: Path) -> dict:
    return json.loads((root / "scene.json").read_text())


def _classes(root: Path) -> list[str]:
    return (root / "segmentations" / "classes.txt").read_text().splitlines()


# ------------------------------------------------------------------------------------------------ files


def test_llff_files(llff_scene: Path) -> None:
    names = [f"{i:02d}" for i in range(6)]
    assert sorted(p.stem for p in (llff_scene / "images").iterdir()) == names
    rgb = _png(llff_scene / "images" / "03.png")
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 10  # textured, not flat
    arr = np.load(llff_scene / "poses_bounds.npy")
    assert arr.shape == (6, 17)
    c2w, hwf, near_far = read_poses_bounds(llff_scene / "poses_bounds.npy")
    cams = SynthCameras.from_json(_scene_json(llff_scene)["cameras"])
    np.testing.assert_allclose(c2w, cams.c2w, atol=1e-12)
    np.testing.assert_allclose(hwf[0], [30, 40, 40 / 2 / math.tan(math.radians(30))])
    assert np.all(near_far[:, 0] > 0) and np.all(near_far[:, 1] > near_far[:, 0])
    assert not (llff_scene / "transforms.json").exists()
    for sub in ("labels", "instances"):
        assert sorted(p.stem for p in (llff_scene / sub).iterdir()) == names


def test_classes_and_masks(llff_scene: Path) -> None:
    objects = json.loads((llff_scene / "objects.json").read_text())
    assert objects["up"] == [0.0, 0.0, 1.0]
    classes = _classes(llff_scene)
    object_classes = list(dict.fromkeys(o["class"] for o in objects["objects"]))
    assert classes == object_classes + ["floor", "wall", "ceiling"]
    views = sorted(int(p.name) for p in (llff_scene / "segmentations").iterdir() if p.is_dir())
    assert views == annotated_views(6, 2) and 0 not in views and len(views) == 2
    for v in views:
        label = _png(llff_scene / "labels" / f"{v:02d}.png")
        files = sorted((llff_scene / "segmentations" / f"{v:02d}").iterdir())
        assert {f.stem for f in files} == {classes[c] for c in np.unique(label)}
        cover = np.zeros(label.shape, dtype=int)
        for f in files:
            mask = _png(f)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, label == classes.index(f.stem))
            cover += mask == 255
        assert np.all(cover == 1)  # every pixel belongs to exactly one class


def test_transforms_files(transforms_scene: Path) -> None:
    meta = json.loads((transforms_scene / "transforms.json").read_text())
    assert len(meta["frames"]) == 6 and (meta["w"], meta["h"]) == (40, 30)
    assert all((transforms_scene / f["file_path"]).is_file() for f in meta["frames"])
    room = _scene_json(transforms_scene)["room"]
    lo, hi = np.array(meta["aabb"])
    # the box holds the room with a margin on every face (walls on the box's faces would be clipped)
    extent = np.array(room["max"]) - np.array(room["min"])
    np.testing.assert_allclose(np.array(room["min"]) - lo, 0.025 * extent.max())
    np.testing.assert_allclose(hi - np.array(room["max"]), 0.025 * extent.max())
    assert not (transforms_scene / "poses_bounds.npy").exists()
    cams = SynthCameras.from_json(_scene_json(transforms_scene)["cameras"])
    mats = np.array([f["transform_matrix"] for f in meta["frames"]])
    np.testing.assert_allclose(mats[:, :3, :4], cams.c2w, atol=1e-12)


def test_loader_reads_both_formats(llff_scene: Path, transforms_scene: Path) -> None:
    """The project loader agrees with the synthesizer: rays of the loaded cameras hit what labels say."""
    for root in (llff_scene, transforms_scene):
        scene = load_scene(root)
        truth = scene_from_json(_scene_json(root))
        assert len(scene) == 6 and scene.classes == _classes(root)
        assert len(scene.objects) == len(truth.objects)
        for v in scene.instances:
            origins, dirs = image_rays(scene.cameras, v)
            _, idx = cast_rays(truth, origins.double().numpy(), dirs.double().numpy())
            inst = np.array([truth.primitives[i].instance for i in idx]).reshape(30, 40)
            assert np.mean(inst == scene.instances[v].numpy()) > 0.99


def test_refuses_foreign_folder_and_overwrites_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        synthesize(_tiny(), foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    own = synthesize(_tiny(), tmp_path / "own")
    synthesize(_tiny(n_views=4, format="transforms"), own)
    assert len(list((own / "images").iterdir())) == 4
    assert not (own / "poses_bounds.npy").exists()


def test_deterministic(tmp_path: Path) -> None:
    a = synthesize(_tiny(seed=5), tmp_path / "a")
    b = synthesize(_tiny(seed=5), tmp_path / "b")
    c = synthesize(_tiny(seed=6), tmp_path / "c")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "images" / "00.png").read_bytes() != (c / "images" / "00.png").read_bytes()
    assert (a / "objects.json").read_bytes() != (c / "objects.json").read_bytes()


# ------------------------------------------------------------------------------------------ ground truth


def test_labels_and_instances_match_objects(llff_scene: Path, transforms_scene: Path) -> None:
    for root in (llff_scene, transforms_scene):
        classes = _classes(root)
        objects = json.loads((root / "objects.json").read_text())["objects"]
        assert [o["instance"] for o in objects] == list(range(1, len(objects) + 1))
        seen: set[int] = set()
        for v in range(6):
            label = _png(root / "labels" / f"{v:02d}.png")
            inst = _png(root / "instances" / f"{v:02d}.png")
            assert np.all(label != 255) and np.all(inst != 0)  # closed room: every ray hits
            for o in objects:
                pix = inst == o["instance"]
                assert np.all(label[pix] == classes.index(o["class"]))
                seen |= {o["instance"]} if pix.any() else set()
            stuff = inst > len(objects)
            assert np.all(label[stuff] >= classes.index("floor"))
            assert np.all(label[~stuff] < classes.index("floor"))
        assert seen == {o["instance"] for o in objects}


def test_objects_rest_on_floor_without_overlap() -> None:
    scene = build_scene(SynthConfig(n_objects=7, seed=2))
    objs = scene.objects
    assert len(objs) == 7 and len({o["class"] for o in objs}) == 7
    for o in objs:
        assert 0.08 <= max(o["size"]) <= 0.5
        assert o["center"][2] == pytest.approx(o["size"][2] / 2)
        assert o["symmetric"] == VOCABULARY[o["class"]][1]
        prims = [p for p in scene.primitives if p.instance == o["instance"]]
        lowest = min(p.center[2] - p.half_size[2] for p in prims)
        assert lowest == pytest.approx(0.0, abs=1e-9)
    xy = np.array([o["center"][:2] for o in objs])
    radius = np.array([0.5 * math.hypot(*o["size"][:2]) for o in objs])
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(7) * 10
    assert np.all(dist > radius[:, None] + radius[None])


def test_asymmetric_classes_face_local_x() -> None:
    """Mug handle and chair seat front lie on the object's +x side (yaw convention), backrest on -x."""
    asym = [c for c, (_, sym) in VOCABULARY.items() if not sym]
    assert len(asym) >= 2
    scene = build_scene(SynthConfig(classes=("mug", "chair"), n_objects=2, seed=4))
    for o in scene.objects:
        yaw = o["yaw"]
        front = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        parts = [p for p in scene.primitives if p.instance == o["instance"]]
        assert len(parts) > 1
        along = [float((p.center - np.array(o["center"])) @ front) for p in parts]
        if o["class"] == "mug":
            handle = [a for a, p in zip(along, parts) if p.kind == "box"]
            body = [a for a, p in zip(along, parts) if p.kind == "cylinder"]
            assert min(handle) > 0 > body[0]
        else:
            top = max(p.center[2] for p in parts)
            back = [a for a, p in zip(along, parts) if p.center[2] == top]
            assert back[0] < 0


def test_fronts_face_forward_cameras_only() -> None:
    """Forward cameras look along +y: every front points to -y there; orbit scenes keep the drawn yaws."""
    fronts = {"forward": [], "orbit": []}
    for cameras in fronts:
        for seed in range(6):
            cfg = SynthConfig(classes=("mug", "chair", "book"), n_objects=3, seed=seed, cameras=cameras)
            fronts[cameras] += [math.sin(o["yaw"]) for o in build_scene(cfg).objects if not o["symmetric"]]
    assert len(fronts["forward"]) == 12 and max(fronts["forward"]) <= 0
    assert max(fronts["orbit"]) > 0
    yaws = np.array([2.0, 2.0, -1.0])
    turned = _front_to_cameras(yaws, ["mug", "book", "chair"])
    np.testing.assert_allclose(turned, [2.0 - math.pi, 2.0, -1.0])


def test_near_far_bound_the_true_depth(llff_scene: Path) -> None:
    sj = _scene_json(llff_scene)
    scene, cams = scene_from_json(sj), SynthCameras.from_json(sj["cameras"])
    _, _, near_far = read_poses_bounds(llff_scene / "poses_bounds.npy")
    for v in range(len(cams)):
        depth = render_view(scene, cams, v).depth
        assert near_far[v, 0] <= depth.min() and near_far[v, 1] >= depth.max()
        np.testing.assert_allclose(near_far[v], [0.9 * depth.min(), 1.1 * depth.max()], rtol=1e-5)
        # the depth is z-depth: unprojected pixels lie on the true surfaces
        origins, dirs = camera_rays(cams, v)
        t = depth.reshape(-1) / (dirs @ -cams.c2w[v, :, 2])
        points = origins + t[:, None] * dirs
        assert np.quantile(surface_distance(sj, points), 0.99) < 1e-4


# ---------------------------------------------------------------------------------------- surface distance


def _prim(kind: str, center: list[float], half: list[float], yaw: float = 0.0) -> dict:
    c, s = math.cos(yaw), math.sin(yaw)
    rot = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    return {"type": kind, "class": "x", "instance": 1, "center": center, "rotation": rot, "half_size": half}


@pytest.mark.parametrize(
    ("prim", "surface", "normal"),
    [
        (_prim("sphere", [1.0, 2.0, 0.5], [0.3] * 3), [1.0, 2.0, 0.8], [0, 0, 1]),
        (
            _prim("sphere", [1.0, 2.0, 0.5], [0.3] * 3),
            [1.0 + 0.3 / math.sqrt(2), 2.0 - 0.3 / math.sqrt(2), 0.5],
            [1 / math.sqrt(2), -1 / math.sqrt(2), 0],
        ),
        (_prim("box", [0.0, 0.0, 0.0], [0.2, 0.1, 0.05], yaw=math.pi / 2), [-0.1, 0.05, 0.01], [-1, 0, 0]),
        (_prim("box", [0.5, 0.0, 0.05], [0.2, 0.1, 0.05], yaw=0.3), [0.5, 0.0, 0.1], [0, 0, 1]),
        (_prim("cylinder", [0.0, 0.0, 0.1], [0.05, 0.05, 0.1]), [0.05, 0.0, 0.15], [1, 0, 0]),
        (_prim("cylinder", [0.0, 0.0, 0.1], [0.05, 0.05, 0.1]), [0.01, 0.02, 0.2], [0, 0, 1]),
        (_prim("plane", [0.0, 0.0, 0.0], [2.0, 1.5, 0.0]), [0.7, -1.2, 0.0], [0, 0, 1]),
    ],
)
def test_surface_distance_known_answers(prim: dict, surface: list[float], normal: list[float]) -> None:
    sj = {"primitives": [prim]}
    p, n = np.array([surface]), np.array([normal], dtype=np.float64)
    assert surface_distance(sj, p)[0] == pytest.approx(0.0, abs=1e-12)
    for delta in (0.003, 0.02):
        assert surface_distance(sj, p + delta * n)[0] == pytest.approx(delta, abs=1e-9)
        # inside (closer to this face than to any other) / behind the plane: unsigned
        assert surface_distance(sj, p - delta * n)[0] == pytest.approx(delta, abs=1e-9)


def test_surface_distance_beyond_edges_and_union() -> None:
    plane = _prim("plane", [0.0, 0.0, 0.0], [1.0, 1.0, 0.0])
    assert surface_distance({"primitives": [plane]}, np.array([[1.3, 0.0, 0.4]]))[0] == pytest.approx(0.5)
    box = _prim("box", [0.0, 0.0, 0.0], [0.1, 0.1, 0.1])
    corner = np.array([[0.1 + 0.03, 0.1 + 0.04, 0.0]])
    assert surface_distance({"primitives": [box]}, corner)[0] == pytest.approx(0.05)
    sphere = _prim("sphere", [1.0, 0.0, 0.0], [0.2] * 3)
    both = {"primitives": [box, sphere]}
    np.testing.assert_allclose(surface_distance(both, np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])), [0.3, 0.1])


# --------------------------------------------------------------------------------------------------- cameras


def test_object_centres_project_into_views(llff_scene: Path, transforms_scene: Path) -> None:
    """Independent pinhole projection with the stored OpenGL poses; centres mostly hit their object."""
    for root in (llff_scene, transforms_scene):
        sj = _scene_json(root)
        cams = SynthCameras.from_json(sj["cameras"])
        hits = inside = total = 0
        for v in range(len(cams)):
            inst = _png(root / "instances" / f"{v:02d}.png")
            rot, pos = cams.c2w[v, :, :3], cams.c2w[v, :, 3]
            for o in sj["objects"]:
                x, y, z = rot.T @ (np.array(o["center"]) - pos)
                u, w = cams.cx + cams.fx * x / -z, cams.cy - cams.fy * y / -z
                total += 1
                if z < 0 and 0 <= u < cams.width and 0 <= w < cams.height:
                    inside += 1
                    hits += inst[int(w), int(u)] == o["instance"]
        assert inside >= 0.9 * total
        assert hits >= 0.6 * total


def test_forward_and_orbit_camera_layouts() -> None:
    cfg = SynthConfig(n_views=36)
    scene = build_scene(cfg)
    target = np.mean([o["center"] for o in scene.objects], axis=0)
    eyes = make_cameras(cfg, scene).c2w[:, :, 3]
    extent = np.ptp(eyes, axis=0)
    assert 0.3 <= extent[0] <= 0.6 and 0.1 <= np.hypot(extent[1], extent[2]) <= 0.4
    assert np.all(np.abs(np.linalg.norm(eyes - target, axis=1) - cfg.distance) < 0.15)
    orbit = SynthConfig(n_views=12, cameras="orbit")
    cams = make_cameras(orbit, build_scene(orbit))
    offset = cams.c2w[:, :, 3] - target
    elevation = np.degrees(np.arcsin(offset[:, 2] / np.linalg.norm(offset, axis=1)))
    assert np.all((elevation > 19) & (elevation < 46))
    azimuth = np.sort(np.arctan2(offset[:, 1], offset[:, 0]))
    assert np.max(np.diff(np.concatenate([azimuth, azimuth[:1] + 2 * np.pi]))) < np.radians(60)
    # cameras look at the objects: the optical axis passes near the target
    back = cams.c2w[:, :, 2]
    miss = np.linalg.norm(np.cross(offset, back), axis=1)
    assert np.all(miss < 0.05)


def test_cameras_are_upright_rotations(llff_scene: Path) -> None:
    """Proper rotations, no roll, and upright images: floor at the bottom rows, never at the top."""
    c2w, _, _ = read_poses_bounds(llff_scene / "poses_bounds.npy")
    rot = c2w[:, :, :3]
    np.testing.assert_allclose(rot.transpose(0, 2, 1) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
    assert np.all(rot[:, 2, 1] > 0.5) and np.all(np.abs(rot[:, 2, 0]) < 1e-9)  # camera up ~ +z, x level
    floor = _classes(llff_scene).index("floor")
    for v in range(len(c2w)):
        label = _png(llff_scene / "labels" / f"{v:02d}.png")
        assert np.mean(label[-1] == floor) > 0.9 and np.mean(label[0] == floor) < 0.5


def test_annotated_views_spread() -> None:
    assert annotated_views(36, 4) == [7, 14, 22, 29]
    assert 0 not in annotated_views(6, 5) and len(annotated_views(6, 5)) == 5
    assert annotated_views(10, 0) == []


def test_supersampling_antialiases() -> None:
    cfg = _tiny()
    scene = build_scene(cfg)
    cams = make_cameras(cfg, scene)
    sharp = render_view(scene, cams, 0, supersample=1).rgb
    smooth = render_view(scene, cams, 0, supersample=3).rgb
    diff = np.abs(sharp - smooth)
    assert 0 < diff.mean() < 0.05
    # edges (where the label changes) get blended colours: the s x s average differs most there
    label = render_view(scene, cams, 0).label
    edge = np.zeros_like(label, dtype=bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:] |= label[1:] != label[:-1]
    assert diff[edge].mean() > 2 * diff[~edge].mean()


def test_views_rendered_by_worker_processes_give_the_same_files(tmp_path):
    import dataclasses

    cfg = SynthConfig(width=48, height=36, n_views=5, n_annotated=2, supersample=1)
    one = synthesize(cfg, tmp_path / "one")
    two = synthesize(dataclasses.replace(cfg, workers=2), tmp_path / "two")
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert "workers" not in json.loads((two / "scene.json").read_text())["config"]
