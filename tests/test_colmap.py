"""COLMAP sparse models: read what pycolmap writes, write what pycolmap reads, poses, lenses, bad files."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import numpy as np
import pytest

from ovseg3d.data import colmap
from ovseg3d.data.colmap import (
    CAMERA_MODELS,
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    c2w_opengl,
    find_model,
    lens_of,
    qvec_to_rotmat,
    read_model,
    read_observations,
    rotmat_to_qvec,
    write_model,
)
from ovseg3d.data.scene import SceneError

# camera id -> (model, width, height, params): two single-focal radial cameras, an OpenCV, a fisheye, a pinhole
CAMERAS = {
    1: ("SIMPLE_RADIAL", 640, 480, [520.0, 320.5, 239.5, -0.031]),
    2: ("SIMPLE_RADIAL", 320, 240, [260.0, 160.0, 120.0, 0.012]),
    3: ("OPENCV", 800, 600, [610.0, 615.5, 401.0, 298.0, -0.12, 0.034, 0.0011, -0.0007]),
    4: ("OPENCV_FISHEYE", 1024, 768, [300.0, 301.0, 512.5, 383.5, 0.05, -0.01, 0.002, -0.0003]),
    5: ("PINHOLE", 64, 48, [50.0, 52.0, 32.0, 24.0]),
}
NAMES = ["a.jpg", "left/b.png", "left/deep/c.JPG", "d.jpg", "é.jpg"]  # subfolders, non-ASCII


def random_qvec(rng: np.random.Generator) -> np.ndarray:
    """A unit quaternion ``w x y z`` with ``w > 0``."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return q * np.sign(q[0])


def make_model(n_points: int = 12, seed: int = 0) -> ColmapModel:
    """A model of every camera in ``CAMERAS``, one image per camera (ids 10, 11, ...) and random points."""
    rng = np.random.default_rng(seed)
    cameras = {cid: ColmapCamera(cid, m, w, h, np.array(p)) for cid, (m, w, h, p) in CAMERAS.items()}
    images = {}
    for i, (cid, name) in enumerate(zip(CAMERAS, NAMES)):
        images[10 + i] = ColmapImage(10 + i, random_qvec(rng), rng.normal(size=3), cid, name)
    return ColmapModel(
        cameras=cameras,
        images=images,
        points=rng.normal(size=(n_points, 3)) * 3,
        colors=rng.integers(0, 256, (n_points, 3)).astype(np.uint8),
        errors=rng.uniform(0, 2, n_points),
        track_lengths=np.zeros(n_points, np.int64),
    )


def assert_same_model(a: ColmapModel, b: ColmapModel) -> None:
    """Equal to the last bit (tracks aside)."""
    close = np.testing.assert_array_equal
    assert list(a.cameras) == list(b.cameras) and list(a.images) == list(b.images)
    for cid, cam in a.cameras.items():
        other = b.cameras[cid]
        assert (cam.model, cam.width, cam.height) == (other.model, other.width, other.height)
        close(cam.params, other.params)
    for iid, im in a.images.items():
        other = b.images[iid]
        assert (im.name, im.camera_id) == (other.name, other.camera_id)
        close(im.qvec, other.qvec)
        close(im.tvec, other.tvec)
    close(a.points, b.points)
    np.testing.assert_array_equal(a.colors, b.colors)
    close(a.errors, b.errors)
    assert a.points.dtype == np.float64 and a.colors.dtype == np.uint8 and a.track_lengths.dtype == np.int64


# --- pycolmap interoperability ------------------------------------------------------------------------------


def pycolmap_reconstruction(pycolmap, model: ColmapModel, tracks: bool = True):
    """The same model built with pycolmap; with ``tracks``, point ``i`` is seen as keypoint ``i`` of (i % 4)
    images, so that images.bin holds 2D points and points3D.bin tracks of lengths 0-3."""
    rec = pycolmap.Reconstruction()
    for cam in model.cameras.values():
        camera = pycolmap.Camera(
            camera_id=cam.camera_id, model=cam.model, width=cam.width, height=cam.height, params=cam.params
        )
        rec.add_camera_with_trivial_rig(camera)
    rng = np.random.default_rng(1)
    for im in model.images.values():
        keypoints = rng.uniform(0, 40, (len(model.points) if tracks else 0, 2))
        image = pycolmap.Image(name=im.name, keypoints=keypoints, camera_id=im.camera_id, image_id=im.image_id)
        rotation = pycolmap.Rotation3d(np.r_[im.qvec[1:], im.qvec[0]])  # x y z w
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rotation, im.tvec))
    image_ids = list(model.images)
    for i, (xyz, rgb) in enumerate(zip(model.points, model.colors)):
        track = pycolmap.Track()
        for k in range(i % 4 if tracks else 0):
            track.add_element(image_ids[(i + k) % len(image_ids)], i)
        rec.add_point3D(xyz, track, rgb)
    return rec


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_reads_model_written_by_pycolmap(tmp_path: Path, binary: bool) -> None:
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    model = make_model()
    rec = pycolmap_reconstruction(pycolmap, model)
    if binary:
        rec.write(tmp_path)
    else:
        rec.write_text(tmp_path)
    ext = ".bin" if binary else ".txt"
    assert (tmp_path / f"rigs{ext}").is_file() and (tmp_path / f"frames{ext}").is_file()  # COLMAP 4 extras

    got = read_model(tmp_path)
    assert list(got.cameras) == list(CAMERAS) and sorted(got.images) == sorted(model.images)
    for cid, cam in got.cameras.items():
        assert cam.model == rec.cameras[cid].model.name and cam.params.dtype == np.float64
        assert (cam.width, cam.height) == (rec.cameras[cid].width, rec.cameras[cid].height)
        np.testing.assert_allclose(cam.params, rec.cameras[cid].params, rtol=1e-15)
    for iid, im in got.images.items():
        ref = rec.images[iid]
        assert (im.name, im.camera_id) == (ref.name, ref.camera_id)
        np.testing.assert_allclose(c2w_opengl(im)[:, 3], ref.projection_center(), atol=1e-12)
        cam_from_world = ref.cam_from_world().matrix()  # [3, 4]
        np.testing.assert_allclose(qvec_to_rotmat(im.qvec), cam_from_world[:, :3], atol=1e-12)
        np.testing.assert_allclose(im.tvec, cam_from_world[:, 3], atol=1e-12)
    by_id = sorted(rec.points3D.items())
    np.testing.assert_allclose(got.points, np.stack([p.xyz for _, p in by_id]), atol=1e-12)
    np.testing.assert_array_equal(got.colors, np.stack([p.color for _, p in by_id]))
    np.testing.assert_allclose(got.errors, [p.error for _, p in by_id], rtol=1e-12)
    np.testing.assert_array_equal(got.track_lengths, [p.track.length() for _, p in by_id])
    assert got.track_lengths.max() == 3  # the images' 2D points were really there to skip


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_observations_and_point_ids_match_pycolmap(tmp_path: Path, binary: bool) -> None:
    """Each image's 2D points (keypoint and 3D point id, -1 for none) and the points' ids, which join them; point
    ids with gaps (deleted points) and keypoints left without a point."""
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    rec = pycolmap_reconstruction(pycolmap, make_model(n_points=40))
    for pid in (3, 4, 17):
        rec.delete_point3D(pid)
    rec.write(tmp_path) if binary else rec.write_text(tmp_path)

    got = read_model(tmp_path, observations=True)
    obs = read_observations(tmp_path)
    assert all(im.xys is None and im.point3D_ids is None for im in read_model(tmp_path).images.values())
    np.testing.assert_array_equal(got.point_ids, sorted(rec.point3D_ids()))
    assert got.point_ids.dtype == np.int64 and 3 not in got.point_ids
    row = {int(pid): i for i, pid in enumerate(got.point_ids)}
    seen = 0
    for iid, ref in rec.images.items():
        im = got.images[iid]
        xys, ids = obs[ref.name]
        ref_xys = np.array([p.xy for p in ref.points2D]).reshape(-1, 2)
        ref_ids = [p.point3D_id if p.has_point3D() else -1 for p in ref.points2D]
        assert xys.dtype == np.float64 and ids.dtype == np.int64 and xys.shape == (len(ref_ids), 2)
        np.testing.assert_allclose(xys, ref_xys, rtol=1e-15)  # text: 17 significant digits
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(im.xys, xys)
        np.testing.assert_array_equal(im.point3D_ids, ids)
        for k, pid in enumerate(ids):
            if pid >= 0:  # joins to the point whose track holds (this image, keypoint k)
                seen += 1
                np.testing.assert_array_equal(got.points[row[pid]], rec.points3D[pid].xyz)
                track = [(e.image_id, e.point2D_idx) for e in rec.points3D[pid].track.elements]
                assert (iid, k) in track
    assert seen == got.track_lengths.sum() > 0 and (np.concatenate([i for _, i in obs.values()]) == -1).any()


def test_malformed_observations(tmp_path: Path) -> None:
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 64 48 50 50 32 24\n", encoding="utf-8")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n1.0 2.0 x\n", encoding="utf-8")
    assert read_model(tmp_path).images[1].xys is None  # not read: not checked
    with pytest.raises(SceneError) as info:
        read_observations(tmp_path)
    assert_names(info, str(tmp_path / "images.txt:2"), "2D points")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n1.0 nan 5\n", encoding="utf-8")
    with pytest.raises(SceneError, match="non-finite 2D point"):
        read_model(tmp_path, observations=True)
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n1 2 -1 3.5 4 7\n", encoding="utf-8")
    xys, ids = read_observations(tmp_path)["a.png"]
    np.testing.assert_array_equal(xys, [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(ids, [-1, 7])


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_pycolmap_reads_our_model(tmp_path: Path, binary: bool) -> None:
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    model = make_model()
    write_model(tmp_path, model, binary=binary)
    rec = pycolmap.Reconstruction(tmp_path)
    assert (rec.num_cameras(), rec.num_images(), rec.num_points3D()) == (5, 5, 12)
    for cid, cam in model.cameras.items():
        ref = rec.cameras[cid]
        assert (ref.model.name, ref.width, ref.height) == (cam.model, cam.width, cam.height)
        np.testing.assert_array_equal(ref.params, cam.params)
    for iid, im in model.images.items():
        ref = rec.images[iid]
        assert (ref.name, ref.camera_id, ref.num_points2D()) == (im.name, im.camera_id, 0)
        np.testing.assert_allclose(ref.projection_center(), c2w_opengl(im)[:, 3], atol=1e-12)
    by_id = sorted(rec.points3D.items())
    assert [pid for pid, _ in by_id] == list(range(1, 13))
    np.testing.assert_array_equal(np.stack([p.xyz for _, p in by_id]), model.points)
    np.testing.assert_array_equal(np.stack([p.color for _, p in by_id]), model.colors)
    np.testing.assert_array_equal([p.error for _, p in by_id], model.errors)


def test_c2w_opengl_projects_like_pycolmap() -> None:
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    rng = np.random.default_rng(3)
    fx, fy, cx, cy = 500.0, 480.0, 319.5, 241.0
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(
        pycolmap.Camera(camera_id=1, model="PINHOLE", width=640, height=480, params=[fx, fy, cx, cy])
    )
    for iid in range(1, 6):
        q = random_qvec(rng)
        image = ColmapImage(iid, q, rng.normal(size=3), 1, f"{iid}.png")
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=image.name, camera_id=1, image_id=iid),
            pycolmap.Rigid3d(pycolmap.Rotation3d(np.r_[q[1:], q[0]]), image.tvec),
        )
        c2w = c2w_opengl(image)
        assert np.allclose(c2w[:, :3].T @ c2w[:, :3], np.eye(3)) and np.isclose(np.linalg.det(c2w[:, :3]), 1.0)
        # world points in front of the camera: along -z of the OpenGL camera
        local = np.c_[rng.uniform(-0.5, 0.5, (20, 2)), -rng.uniform(1, 5, 20)]
        world = local @ c2w[:, :3].T + c2w[:, 3]
        cam = (world - c2w[:, 3]) @ c2w[:, :3]  # OpenGL camera coordinates, z < 0 in front
        ours = np.stack([cx + fx * cam[:, 0] / -cam[:, 2], cy - fy * cam[:, 1] / -cam[:, 2]], axis=1)
        ref = np.stack([rec.images[iid].project_point(x) for x in world])
        np.testing.assert_allclose(ours, ref, atol=1e-8)


def reference_projection(camera: ColmapCamera, cam_points: np.ndarray) -> np.ndarray:
    """``[N, 2]`` pixels of OpenCV-frame points through ``lens_of(camera)`` with REFERENCE.md §8's formulas."""
    fx, fy, cx, cy, kind, c = lens_of(camera)
    x, y = cam_points[:, 0] / cam_points[:, 2], cam_points[:, 1] / cam_points[:, 2]
    r2 = x * x + y * y
    if kind == 1:
        k1, k2, p1, p2, k3, k4, k5, k6 = c
        radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
        x, y = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    elif kind == 2:
        r = np.sqrt(r2)
        theta = np.arctan(r)
        theta_d = theta * (1 + c[0] * theta**2 + c[1] * theta**4 + c[2] * theta**6 + c[3] * theta**8)
        x, y = x * theta_d / r, y * theta_d / r
    return np.stack([fx * x + cx, fy * y + cy], axis=1)


LENS_CAMERAS = [
    ("SIMPLE_PINHOLE", [400.0, 320.0, 240.0]),
    ("SIMPLE_RADIAL", [400.0, 320.0, 240.0, -0.05]),
    ("RADIAL", [400.0, 320.0, 240.0, -0.05, 0.01]),
    ("OPENCV", [400.0, 410.0, 320.0, 240.0, -0.1, 0.02, 0.001, -0.002]),
    ("FULL_OPENCV", [400.0, 410.0, 320.0, 240.0, -0.1, 0.02, 0.001, -0.002, 0.003, 0.05, -0.01, 0.002]),
    ("OPENCV_FISHEYE", [300.0, 305.0, 320.0, 240.0, 0.05, -0.01, 0.002, -0.0003]),
    ("SIMPLE_RADIAL_FISHEYE", [300.0, 320.0, 240.0, 0.04]),
    ("RADIAL_FISHEYE", [300.0, 320.0, 240.0, 0.04, -0.01]),
]


@pytest.mark.parametrize(("model", "params"), LENS_CAMERAS, ids=[m for m, _ in LENS_CAMERAS])
def test_lens_of_projects_like_pycolmap(model: str, params: list[float]) -> None:
    """lens_of's (fx, fy, cx, cy, kind, coeffs) with the documented formulas give COLMAP's pixels."""
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    rng = np.random.default_rng(4)
    points = np.c_[rng.uniform(-0.6, 0.6, (50, 2)), np.ones(50)] * rng.uniform(1, 4, (50, 1))
    camera = ColmapCamera(1, model, 640, 480, np.array(params))
    ref = pycolmap.Camera(camera_id=1, model=model, width=640, height=480, params=params).img_from_cam(points)
    np.testing.assert_allclose(reference_projection(camera, points), ref, atol=1e-9)


def test_reader_imports_only_numpy_and_the_standard_library() -> None:
    """pycolmap (~135 MB) is a test dependency only: the reader's imports are numpy, stdlib and ovseg3d."""
    tree = ast.parse(Path(colmap.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    roots = {name.split(".")[0] for name in imported}
    assert roots <= {"__future__", "io", "os", "struct", "dataclasses", "pathlib", "numpy", "ovseg3d"}, roots


# --- our reader and writer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_round_trip(tmp_path: Path, binary: bool) -> None:
    model = make_model(n_points=300)
    write_model(tmp_path, model, binary=binary)
    ext = ".bin" if binary else ".txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"cameras{ext}", f"images{ext}", f"points3D{ext}"]
    got = read_model(tmp_path)
    assert_same_model(got, model)  # exact: text floats are written as shortest round-trip decimals
    np.testing.assert_array_equal(got.track_lengths, np.zeros(300))  # tracks are not written


def test_name_with_space_binary_only(tmp_path: Path) -> None:
    """COLMAP's text reader stops a name at the first space: binary keeps it, our text writer refuses it."""
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    model = make_model()
    model.images[12].name = "left/my photo.jpg"
    write_model(tmp_path, model)
    assert read_model(tmp_path).images[12].name == "left/my photo.jpg"
    assert pycolmap.Reconstruction(tmp_path).images[12].name == "left/my photo.jpg"
    with pytest.raises(ValueError, match="whitespace"):
        write_model(tmp_path, model, binary=False)


def test_rewrite_replaces_other_format(tmp_path: Path) -> None:
    """Writing text over a binary model (plus COLMAP 4's rigs/frames) leaves only the text model."""
    pycolmap = pytest.importorskip("pycolmap", minversion="4.0")
    pycolmap_reconstruction(pycolmap, make_model(seed=1)).write(tmp_path)
    model = make_model(seed=2)
    write_model(tmp_path, model, binary=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.txt", "images.txt", "points3D.txt"]
    assert_same_model(read_model(tmp_path), model)
    assert pycolmap.Reconstruction(tmp_path).num_images() == 5


def test_points_without_file_and_without_points(tmp_path: Path) -> None:
    model = make_model(n_points=0)
    write_model(tmp_path, model)
    assert read_model(tmp_path).points.shape == (0, 3)
    (tmp_path / "points3D.bin").unlink()
    got = read_model(tmp_path)
    assert got.points.shape == (0, 3) and got.colors.shape == (0, 3) and got.errors.shape == (0,)
    assert got.colors.dtype == np.uint8 and got.track_lengths.shape == (0,)


@pytest.mark.parametrize("chunk", [1 << 25, 16], ids=["one-chunk", "many-chunks"])
def test_points_text_with_tracks_comments_and_crlf(tmp_path: Path, monkeypatch, chunk: int) -> None:
    """The vectorised text reader: comments anywhere, CRLF, tabs, tracks of any length, no final newline."""
    monkeypatch.setattr(colmap, "_TEXT_CHUNK", chunk)
    write_model(tmp_path, make_model(n_points=0), binary=False)
    text = (
        "# header\r\n\r\n"
        "7 1 2 3 4 5 6 0.5\r\n"
        "  # a comment line\n"
        "8\t1e3 -2 3.5 255 0 0 -1 1 2 3 4\n"
        "9 0 0 0 0 0 0 0.25 7 8"
    )
    (tmp_path / "points3D.txt").write_text(text, encoding="utf-8", newline="")
    got = read_model(tmp_path)
    np.testing.assert_array_equal(got.points, [[1, 2, 3], [1000, -2, 3.5], [0, 0, 0]])
    np.testing.assert_array_equal(got.colors, [[4, 5, 6], [255, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(got.errors, [0.5, -1, 0.25])
    np.testing.assert_array_equal(got.track_lengths, [0, 2, 1])


def test_points_binary_with_tracks(tmp_path: Path) -> None:
    """Variable track lengths (0..5) in points3D.bin are skipped; the fixed part of each point is kept."""
    model = make_model(n_points=50)
    write_model(tmp_path, model)
    lens = np.arange(50) % 6
    data = [struct.pack("<Q", 50)]
    for i in range(50):
        head = struct.pack("<Q3d3Bd", i + 1, *model.points[i], *model.colors[i], model.errors[i])
        track = np.arange(2 * lens[i], dtype="<i4").tobytes()
        data.append(head + struct.pack("<Q", lens[i]) + track)
    (tmp_path / "points3D.bin").write_bytes(b"".join(data))
    got = read_model(tmp_path)
    assert_same_model(got, model)
    np.testing.assert_array_equal(got.track_lengths, lens)


def test_rotations_and_opengl_axes() -> None:
    q_z90 = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])  # 90 degrees about z
    np.testing.assert_allclose(qvec_to_rotmat(q_z90), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_allclose(rotmat_to_qvec(qvec_to_rotmat(-q_z90)), q_z90, atol=1e-12)  # sign: w >= 0
    rng = np.random.default_rng(0)
    qs = np.stack([random_qvec(rng) for _ in range(50)])
    np.testing.assert_allclose(rotmat_to_qvec(qvec_to_rotmat(qs)), qs, atol=1e-12)  # batched
    np.testing.assert_allclose(qvec_to_rotmat(2.0 * qs[0]), qvec_to_rotmat(qs[0]), atol=1e-15)  # normalised
    # identity pose: camera at the origin, OpenCV looks down +z, OpenGL's camera z points back (-z world)
    c2w = c2w_opengl(ColmapImage(1, np.array([1.0, 0, 0, 0]), np.zeros(3), 1, "a.png"))
    np.testing.assert_array_equal(c2w, [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0]])
    # x_cam = x_world + t: the centre is -t
    c2w = c2w_opengl(ColmapImage(1, np.array([1.0, 0, 0, 0]), np.array([1.0, 2, 3]), 1, "a.png"))
    np.testing.assert_array_equal(c2w[:, 3], [-1, -2, -3])


def test_lens_of_every_supported_model() -> None:
    def lens(model: str, params: list[float]):
        return lens_of(ColmapCamera(1, model, 100, 80, np.array(params, dtype=np.float64)))

    def check(got, fx, fy, cx, cy, kind, coeffs):
        assert got[:5] == (fx, fy, cx, cy, kind)
        assert got[5].shape == (8,) and got[5].dtype == np.float64
        np.testing.assert_array_equal(got[5], np.r_[coeffs, np.zeros(8 - len(coeffs))])

    check(lens("SIMPLE_PINHOLE", [50, 40, 30]), 50, 50, 40, 30, 0, [])
    check(lens("PINHOLE", [50, 51, 40, 30]), 50, 51, 40, 30, 0, [])
    check(lens("SIMPLE_RADIAL", [50, 40, 30, 0.1]), 50, 50, 40, 30, 1, [0.1])
    check(lens("SIMPLE_RADIAL", [50, 40, 30, 0.0]), 50, 50, 40, 30, 0, [])
    check(lens("RADIAL", [50, 40, 30, 0.1, -0.2]), 50, 50, 40, 30, 1, [0.1, -0.2])
    check(lens("OPENCV", [50, 51, 40, 30, 0.1, -0.2, 0.01, 0.02]), 50, 51, 40, 30, 1, [0.1, -0.2, 0.01, 0.02])
    check(lens("OPENCV", [50, 51, 40, 30, 0, 0, 0, 0]), 50, 51, 40, 30, 0, [])
    full = [0.1, -0.2, 0.01, 0.02, 0.3, 0.4, 0.5, 0.6]
    check(lens("FULL_OPENCV", [50, 51, 40, 30, *full]), 50, 51, 40, 30, 1, full)
    fisheye = [0.1, -0.2, 0.03, -0.04]
    check(lens("OPENCV_FISHEYE", [50, 51, 40, 30, *fisheye]), 50, 51, 40, 30, 2, fisheye)
    check(lens("OPENCV_FISHEYE", [50, 51, 40, 30, 0, 0, 0, 0]), 50, 51, 40, 30, 2, [])  # equidistant, not pinhole
    check(lens("SIMPLE_RADIAL_FISHEYE", [50, 40, 30, 0.1]), 50, 50, 40, 30, 2, [0.1])
    check(lens("RADIAL_FISHEYE", [50, 40, 30, 0.1, 0.2]), 50, 50, 40, 30, 2, [0.1, 0.2])
    assert CAMERA_MODELS[5] == ("OPENCV_FISHEYE", 8) and CAMERA_MODELS[10] == ("THIN_PRISM_FISHEYE", 12)


def test_find_model(tmp_path: Path) -> None:
    assert find_model(tmp_path) is None
    write_model(tmp_path / "distorted/sparse/0", make_model())
    assert find_model(tmp_path) == tmp_path / "distorted/sparse/0"
    write_model(tmp_path / "sparse", make_model(), binary=False)  # text beats nothing
    (tmp_path / "sparse/0").mkdir()
    (tmp_path / "sparse/0/cameras.bin").write_bytes(b"")  # cameras without images: not a model
    assert find_model(tmp_path) == tmp_path / "sparse"
    write_model(tmp_path / "sparse/0", make_model())
    assert find_model(tmp_path) == tmp_path / "sparse/0"


# --- bad input ----------------------------------------------------------------------------------------------


def assert_names(info: pytest.ExceptionInfo, file: str | Path, *words: str) -> None:
    """The ``SceneError`` message is one line, names ``file`` and contains ``words``."""
    message = str(info.value)
    assert str(file) in message and "\n" not in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("cut", [3, 20, 60, 80, -1])
def test_truncated_images_bin(tmp_path: Path, cut: int) -> None:
    """Cut in the count, a pose, a name (images are ~70 bytes each) and in the last record."""
    write_model(tmp_path, make_model())
    path = tmp_path / "images.bin"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(path), "truncated")


def test_truncated_points_bin_and_trailing_bytes(tmp_path: Path) -> None:
    write_model(tmp_path, make_model())
    path = tmp_path / "points3D.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(path), "truncated")
    path.write_bytes(data + b"\0")
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(path), "1 unexpected bytes")


def test_unknown_camera_model_id(tmp_path: Path) -> None:
    write_model(tmp_path, make_model())
    path = tmp_path / "cameras.bin"
    data = bytearray(path.read_bytes())
    data[12:16] = struct.pack("<i", 99)  # the first camera's model: after u64 count and i32 id
    path.write_bytes(bytes(data))
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(path), "unknown model id 99")


def test_fov_model_is_refused_by_lens_of(tmp_path: Path) -> None:
    (tmp_path / "cameras.txt").write_text("# c\n1 FOV 640 480 500 510 320 240 0.9\n", encoding="utf-8")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n", encoding="utf-8")
    camera = read_model(tmp_path).cameras[1]
    with pytest.raises(SceneError) as info:
        lens_of(camera)
    assert_names(info, str(tmp_path / "cameras.txt"), "FOV", "supported", "OPENCV_FISHEYE")
    thin_prism = ColmapCamera(2, "THIN_PRISM_FISHEYE", 10, 10, np.ones(12))
    with pytest.raises(SceneError, match="THIN_PRISM_FISHEYE is not supported"):
        lens_of(thin_prism)


@pytest.mark.parametrize(
    ("file", "text", "words"),
    [
        ("cameras.txt", "1 PINHOLE 64 48 50 50 32\n", ["cameras.txt:1", "PINHOLE needs 4 params, got 3"]),
        ("cameras.txt", "1 PINHOLEX 64 48 50 50 32 24\n", ["cameras.txt:1", "unknown camera model"]),
        ("cameras.txt", "#\n1 PINHOLE 64 x 50 50 32 24\n", ["cameras.txt:2", "malformed"]),
        ("images.txt", "1 1 0 0 0 0 0 0 7 a.png\n\n", ["images.txt", "uses camera 7"]),
        ("images.txt", "1 1 0 0 0 0 0 1\n\n", ["images.txt:1", "malformed image line"]),
        ("images.txt", "1 1 0 0 0 0 0 0 1 a.png\n1.0 2.0\n", ["images.txt:2", "2D points"]),
        ("images.txt", "1 0 0 0 0 0 0 0 1 a.png\n\n", ["images.txt:1", "invalid pose"]),
        ("points3D.txt", "1 0 0 0 1 2 3 0.5\n2 0 0 0 1 2\n", ["points3D.txt:2", "malformed point line"]),
        ("points3D.txt", "1 0 0 0 1 2 3 0.5\n2 0 0 0 1 2 3 0.5 1\n", ["points3D.txt:2", "malformed point"]),
        ("points3D.txt", "# c\n\n1 0 0 0 1 2 3 0.5\n2 0 nan 0 1 2 3 0.5\n", ["points3D.txt:4", "non-finite"]),
        ("points3D.txt", "1 0 0 0 1 2 300 0.5\n", ["points3D.txt:1", "colour outside"]),
        ("points3D.txt", "1 0 0 0 1 2 3 0.5\n2 0 zero 0 1 2 3 0.5\n", ["points3D.txt:2", "'2 0 zero"]),
    ],
)
def test_malformed_text(tmp_path: Path, file: str, text: str, words: list[str]) -> None:
    write_model(tmp_path, make_model(), binary=False)
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 64 48 50 50 32 24\n", encoding="utf-8")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n\n", encoding="utf-8")
    assert len(read_model(tmp_path).images) == 1  # valid before the bad line goes in
    (tmp_path / file).write_text(text, encoding="utf-8")
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(tmp_path / file), *words)


def test_missing_model_and_bad_camera_in_binary(tmp_path: Path) -> None:
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(tmp_path), "no COLMAP model")
    write_model(tmp_path, make_model())
    path = tmp_path / "images.bin"
    data = bytearray(path.read_bytes())
    data[8 + 4 + 56 : 8 + 4 + 56 + 4] = struct.pack("<I", 42)  # the first image's camera id
    path.write_bytes(bytes(data))
    with pytest.raises(SceneError) as info:
        read_model(tmp_path)
    assert_names(info, str(path), "image 10 (a.jpg) uses camera 42")


def test_writer_refuses_inconsistent_model(tmp_path: Path) -> None:
    model = make_model()
    model.images[11].camera_id = 9
    with pytest.raises(ValueError, match="camera 9"):
        write_model(tmp_path, model)
    model = make_model()
    model.cameras[5].params = np.zeros(3)
    with pytest.raises(ValueError, match="PINHOLE needs 4 params"):
        write_model(tmp_path, model)
    assert not any(tmp_path.iterdir())  # nothing written
