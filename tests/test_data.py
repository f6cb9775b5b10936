"""Scene loading: LLFF / 3D-OVS and transforms.json, ground truth, splits, scene box, bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ovseg3d.data.cameras import Cameras, llff_to_opengl, opengl_to_llff, pixel_rays
from ovseg3d.data.llff import read_poses_bounds, write_poses_bounds
from ovseg3d.data.loader import frustum_corners, load_scene, split_views
from ovseg3d.data.nerfstudio import write_transforms_json
from ovseg3d.data.scene import SceneError

N, W, H = 5, 8, 6


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 3, 3]`` proper rotations."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def forward_cameras(n: int = N, seed: int = 0) -> np.ndarray:
    """``[n, 3, 4]`` OpenGL c2w of a forward-facing rig: small rotations, centres spread in x and y."""
    rng = np.random.default_rng(seed)
    rot = np.stack([_rot_y(a) for a in rng.uniform(-0.2, 0.2, n)])
    pos = np.stack([np.linspace(-1, 1, n), rng.uniform(-0.3, 0.3, n), rng.uniform(-0.1, 0.1, n)], axis=1)
    return np.concatenate([rot, pos[:, :, None]], axis=2)


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def write_images(folder: Path, names: list[str], w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    """Random RGB images ``[n, h, w, 3]`` uint8 written as ``folder/<name>``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(seed).integers(0, 256, size=(len(names), h, w, 3), dtype=np.uint8)
    for name, image in zip(names, images):
        iio.imwrite(folder / name, image)
    return images


def make_llff(root: Path, n: int = N, w: int = W, h: int = H, focal: float = 5.0) -> np.ndarray:
    """An LLFF scene with near/far (1, 4); returns its images."""
    write_poses_bounds(root / "poses_bounds.npy", forward_cameras(n), (h, w, focal), np.tile([1.0, 4.0], (n, 1)))
    return write_images(root / "images", [f"{i:03d}.png" for i in range(n)], w, h)


def make_transforms(root: Path, n: int = N, extra: dict | None = None) -> np.ndarray:
    """A nerfstudio scene with shared intrinsics; returns its images."""
    names = [f"frame_{i:04d}.png" for i in range(n)]
    write_transforms_json(
        root / "transforms.json", forward_cameras(n), 5.0, 6.0, 3.9, 3.1, W, H, [f"images/{m}" for m in names], extra
    )
    return write_images(root / "images", names)


def write_classes(root: Path, classes: list[str]) -> None:
    (root / "segmentations").mkdir(parents=True, exist_ok=True)
    (root / "segmentations" / "classes.txt").write_text("\n".join(classes) + "\n\n")


def write_mask(root: Path, folder: str, cls: str, mask: np.ndarray) -> None:
    (root / "segmentations" / folder).mkdir(parents=True, exist_ok=True)
    iio.imwrite(root / "segmentations" / folder / f"{cls}.png", mask.astype(np.uint8) * 255)


def box_mask(h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[1 : h // 2 + 1, 2 : w // 2 + 2] = True
    return mask


# ------------------------------------------------------------------------------------------ conventions


def test_llff_opengl_rotation_round_trip() -> None:
    rot = random_rotations(64, np.random.default_rng(1))
    np.testing.assert_allclose(opengl_to_llff(llff_to_opengl(rot)), rot, atol=1e-12)
    np.testing.assert_allclose(llff_to_opengl(opengl_to_llff(rot)), rot, atol=1e-12)
    gl = llff_to_opengl(rot)
    np.testing.assert_allclose(gl[..., 0], rot[..., 1])  # right
    np.testing.assert_allclose(gl[..., 1], -rot[..., 0])  # up = -down
    np.testing.assert_allclose(np.linalg.det(gl), 1.0, atol=1e-9)


def test_poses_bounds_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    c2w = np.concatenate([random_rotations(7, rng), rng.normal(size=(7, 3, 1))], axis=2)
    hwf = np.stack([np.full(7, 6.0), np.full(7, 8.0), rng.uniform(3, 9, 7)], axis=1)
    near_far = np.stack([rng.uniform(0.1, 1, 7), rng.uniform(2, 9, 7)], axis=1)
    path = tmp_path / "sub" / "poses_bounds.npy"
    write_poses_bounds(path, c2w, hwf, near_far)
    got = read_poses_bounds(path)
    for a, b in zip(got, (c2w, hwf, near_far)):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a, b)


def test_llff_hand_checked_pose_and_rays(tmp_path: Path) -> None:
    # Camera looking along world +y with world +z up: right=(1,0,0), up=(0,0,1), back=(0,-1,0), down=(0,0,-1).
    down, right, back, pos, hwf = (0, 0, -1), (1, 0, 0), (0, -1, 0), (1, 2, 3), (H, W, 4.0)
    mat = np.stack([down, right, back, pos, hwf], axis=1).astype(np.float64)  # [3, 5] columns
    np.save(tmp_path / "poses_bounds.npy", np.concatenate([mat.reshape(15), [1.0, 4.0]])[None])
    write_images(tmp_path / "images", ["a.png"])
    c2w, got_hwf, near_far = read_poses_bounds(tmp_path / "poses_bounds.npy")
    expected = np.array([[1.0, 0, 0, 1], [0, 0, -1, 2], [0, 1, 0, 3]])
    np.testing.assert_array_equal(c2w[0], expected)
    np.testing.assert_array_equal(got_hwf[0], hwf)
    np.testing.assert_array_equal(near_far[0], [1.0, 4.0])

    cams = load_scene(tmp_path).cameras
    assert (cams.fx.item(), cams.fy.item(), cams.cx.item(), cams.cy.item()) == (4.0, 4.0, 4.0, 3.0)
    # pixel centre offsets are +0.5: u=3.5, v=2.5 is the image centre; u=v=-0.5 the top-left corner
    u, v = torch.tensor([3.5, -0.5]), torch.tensor([2.5, -0.5])
    origins, dirs = pixel_rays(cams, torch.zeros(2, dtype=torch.long), u, v)
    np.testing.assert_allclose(origins.numpy(), [[1, 2, 3], [1, 2, 3]], atol=1e-6)
    np.testing.assert_allclose(dirs[0].numpy(), [0, 1, 0], atol=1e-6)
    corner = np.array([-1.0, 1.0, 0.75])  # left, forward, up: (-cx/fx, cy/fy, -1) in camera axes
    np.testing.assert_allclose(dirs[1].numpy(), corner / np.linalg.norm(corner), atol=1e-6)


def test_llff_focal_scaled_to_image_size(tmp_path: Path) -> None:
    write_poses_bounds(tmp_path / "poses_bounds.npy", forward_cameras(2), (2 * H, 2 * W, 10.0), [[1.0, 4.0]] * 2)
    write_images(tmp_path / "images", ["0.jpg", "1.JPG"])
    scene = load_scene(tmp_path)
    assert scene.width == W and scene.height == H
    torch.testing.assert_close(scene.cameras.fx, torch.full((2,), 5.0))
    torch.testing.assert_close(scene.cameras.cx, torch.full((2,), W / 2))
    torch.testing.assert_close(scene.cameras.cy, torch.full((2,), H / 2))


def test_llff_images_sorted_by_name(tmp_path: Path) -> None:
    write_poses_bounds(tmp_path / "poses_bounds.npy", forward_cameras(3), (H, W, 5.0), [[1.0, 4.0]] * 3)
    images = write_images(tmp_path / "images", ["b.png", "c.PNG", "a.jpeg"])
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / "._b.png").write_bytes(b"macOS metadata, not an image")
    scene = load_scene(tmp_path)
    assert [p.name for p in scene.image_paths] == ["a.jpeg", "b.png", "c.PNG"]
    np.testing.assert_array_equal(scene.images[1].numpy(), images[0])


# ------------------------------------------------------------------------------------------ transforms


def test_transforms_round_trip(tmp_path: Path) -> None:
    aabb = [[-1.0, -2.0, -3.0], [1.0, 2.0, 0.5]]
    images = make_transforms(tmp_path, extra={"aabb": np.array(aabb)})
    scene = load_scene(tmp_path)
    assert scene.format == "transforms" and len(scene) == N and scene.near_far is None
    np.testing.assert_allclose(scene.cameras.c2w.numpy(), forward_cameras(N), atol=1e-6)
    for name, value in (("fx", 5.0), ("fy", 6.0), ("cx", 3.9), ("cy", 3.1)):
        torch.testing.assert_close(getattr(scene.cameras, name), torch.full((N,), value))
    np.testing.assert_array_equal(scene.images.numpy(), images)
    assert scene.images.dtype == torch.uint8
    np.testing.assert_allclose(scene.aabb.numpy(), np.array(aabb).reshape(6))
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert np.array(meta["frames"][0]["transform_matrix"]).shape == (4, 4)


def test_transforms_frame_intrinsics_override_top_level(tmp_path: Path) -> None:
    make_transforms(tmp_path)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta["frames"][2].update({"fl_x": 7.0, "cx": 4.5})
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    cams = load_scene(tmp_path).cameras
    assert cams.fx.tolist() == [5.0, 5.0, 7.0, 5.0, 5.0]
    assert cams.cx[2].item() == 4.5 and cams.fy[2].item() == 6.0


def test_blender_camera_angle_x_and_alpha(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    rgba = np.zeros((2, H, W, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :3, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    frames = []
    for i in range(2):
        iio.imwrite(tmp_path / "train" / f"r_{i}.png", rgba[i])
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": np.eye(4).tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    scene = load_scene(tmp_path)
    focal = 0.5 * W / math.tan(0.4)
    torch.testing.assert_close(scene.cameras.fx, torch.full((2,), focal))
    torch.testing.assert_close(scene.cameras.fy, torch.full((2,), focal))
    assert scene.cameras.cx[0].item() == W / 2 and scene.cameras.cy[0].item() == H / 2
    assert scene.images.shape == (2, H, W, 3)
    assert scene.images[0, 0, 0].tolist() == [200, 0, 0]
    assert scene.images[0, -1, 0].tolist() == [255, 255, 255]


def test_grayscale_image_becomes_rgb(tmp_path: Path) -> None:
    make_transforms(tmp_path, n=1)
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    iio.imwrite(tmp_path / "images" / "frame_0000.png", gray)
    image = load_scene(tmp_path).images[0].numpy()
    np.testing.assert_array_equal(image, np.repeat(gray[:, :, None], 3, axis=2))


# ------------------------------------------------------------------------------------------ downscale


def test_downscale_resizes_images_intrinsics_and_ground_truth(tmp_path: Path) -> None:
    images = make_llff(tmp_path, w=2 * W, h=2 * H, focal=10.0)
    write_classes(tmp_path, ["cup", "table"])
    mask = box_mask(2 * H, 2 * W)
    write_mask(tmp_path, "1", "cup", mask)
    (tmp_path / "labels").mkdir()
    label = np.where(mask, 0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "labels" / "001.png", label)
    full = load_scene(tmp_path)
    scene = load_scene(tmp_path, downscale=2)
    assert scene.images.shape == (N, H, W, 3)
    blocks = images.reshape(N, H, 2, W, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(scene.images.numpy().astype(np.float64) - blocks).max() <= 1.0
    torch.testing.assert_close(scene.cameras.fx, full.cameras.fx / 2)
    torch.testing.assert_close(scene.cameras.cx, full.cameras.cx / 2)
    assert (scene.width, scene.height) == (W, H)
    np.testing.assert_array_equal(scene.segmentations[1][0].numpy(), mask[1::2, 1::2])
    assert not scene.segmentations[1][1].any()
    np.testing.assert_array_equal(scene.labels[1].numpy(), label[1::2, 1::2])
    torch.testing.assert_close(scene.aabb, full.aabb)


@pytest.mark.parametrize("fmt", ["llff", "transforms"])
def test_downscale_uses_prescaled_folder(tmp_path: Path, fmt: str) -> None:
    if fmt == "llff":
        make_llff(tmp_path, w=2 * W, h=2 * H)
        names = [f"x{i}.jpg" for i in range(N)]  # other names and extension, same count
    else:
        names = [f"frame_{i:04d}.png" for i in range(N)]
        files = [f"images/{m}" for m in names]
        write_transforms_json(tmp_path / "transforms.json", forward_cameras(), 10, 10, W, H, 2 * W, 2 * H, files)
        write_images(tmp_path / "images", names, 2 * W, 2 * H)
    (tmp_path / "images_2").mkdir()
    for name in names:
        iio.imwrite(tmp_path / "images_2" / name, np.full((H, W, 3), 7, dtype=np.uint8))
    scene = load_scene(tmp_path, downscale=2)
    assert scene.images.shape == (N, H, W, 3)
    assert np.abs(scene.images.numpy().astype(int) - 7).max() <= 1  # jpg may move a value by one
    assert scene.cameras.cx[0].item() == W / 2


# ------------------------------------------------------------------------------------------ splits, gt


def test_annotated_views_are_held_out(tmp_path: Path) -> None:
    make_llff(tmp_path)
    write_classes(tmp_path, ["cup", "table", "wall"])
    write_mask(tmp_path, "03", "table", box_mask())
    write_mask(tmp_path, "1", "cup", box_mask())
    write_mask(tmp_path, "1", "wall", ~box_mask())
    scene = load_scene(tmp_path)
    assert scene.classes == ["cup", "table", "wall"]
    assert scene.eval_ids == [1, 3] and scene.train_ids == [0, 2, 4]
    seg = scene.segmentations[1]
    assert seg.dtype == torch.bool and seg.shape == (3, H, W)
    np.testing.assert_array_equal(seg.numpy(), np.stack([box_mask(), np.zeros((H, W), bool), ~box_mask()]))
    assert scene.segmentations[3][1].sum().item() == box_mask().sum()
    both = load_scene(tmp_path, train_on_annotated=True)
    assert both.train_ids == list(range(N)) and both.eval_ids == [1, 3]


def test_holdout_every_without_masks(tmp_path: Path) -> None:
    make_transforms(tmp_path)
    scene = load_scene(tmp_path, holdout_every=3)
    assert scene.eval_ids == [0, 3] and scene.train_ids == [1, 2, 4]
    default = load_scene(tmp_path)
    assert default.eval_ids == [0] and default.train_ids == [1, 2, 3, 4]
    assert load_scene(tmp_path, holdout_every=3, train_on_annotated=True).train_ids == list(range(N))


def test_split_never_leaves_training_empty(tmp_path: Path) -> None:
    make_llff(tmp_path, n=1)
    scene = load_scene(tmp_path)
    assert scene.train_ids == [0] and scene.eval_ids == [0]
    assert split_views(3, [0, 1, 2]) == ([0, 1, 2], [0, 1, 2])
    assert split_views(4, [], holdout_every=1) == ([0, 1, 2, 3], [0, 1, 2, 3])


def test_labels_instances_objects_and_up(tmp_path: Path) -> None:
    make_llff(tmp_path)
    write_classes(tmp_path, ["cup", "table"])
    (tmp_path / "labels").mkdir()
    (tmp_path / "instances").mkdir()
    label = np.full((H, W), 255, dtype=np.uint8)
    label[2:4, 2:4] = 1
    ids = np.zeros((H, W), dtype=np.uint16)
    ids[2:4, 2:4] = 1000
    iio.imwrite(tmp_path / "labels" / "002.png", label)
    iio.imwrite(tmp_path / "instances" / "002.png", ids)
    iio.imwrite(tmp_path / "instances" / "004.png", (ids > 0).astype(np.uint8) * 3)
    obj = {"class": "table", "instance": 1000, "center": [0, 1, 2], "size": [1, 0.5, 0.7], "yaw": 0.3}
    obj["symmetric"] = True
    (tmp_path / "objects.json").write_text(json.dumps({"up": [0, 0, 2], "objects": [obj]}))
    scene = load_scene(tmp_path)
    assert set(scene.labels) == {2} and scene.labels[2].dtype == torch.uint8
    np.testing.assert_array_equal(scene.labels[2].numpy(), label)
    assert set(scene.instances) == {2, 4} and scene.instances[2].dtype == torch.int32
    assert scene.instances[2].max().item() == 1000 and scene.instances[4].max().item() == 3
    np.testing.assert_allclose(scene.up, [0, 0, 1])
    (o,) = scene.objects
    got = (o.cls, o.instance, o.center, o.size, o.yaw, o.symmetric)
    assert got == ("table", 1000, (0, 1, 2), (1, 0.5, 0.7), 0.3, True)


def test_up_from_cameras_without_objects_json(tmp_path: Path) -> None:
    make_llff(tmp_path)
    scene = load_scene(tmp_path)
    ups = forward_cameras()[:, :, 1].mean(axis=0)
    np.testing.assert_allclose(scene.up, ups / np.linalg.norm(ups))
    np.testing.assert_allclose(scene.up, [0, 1, 0], atol=1e-9)  # the rig rotates about y only


# ------------------------------------------------------------------------------------------ scene box


def corner_points(cams: Cameras, depths: tuple[float, ...]) -> torch.Tensor:
    """``[D, N, 4, 3]`` image-corner points via ``pixel_rays`` moved to depths along the viewing axis."""
    n = len(cams)
    u = torch.tensor([-0.5, cams.width - 0.5, -0.5, cams.width - 0.5]).repeat(n)
    v = torch.tensor([-0.5, -0.5, cams.height - 0.5, cams.height - 0.5]).repeat(n)
    ids = torch.arange(n).repeat_interleave(4)
    origins, dirs = pixel_rays(cams, ids, u, v)
    along = (dirs * -cams.c2w[ids, :, 2]).sum(-1, keepdim=True)  # cosine to the forward axis
    return torch.stack([(origins + d * dirs / along).reshape(n, 4, 3) for d in depths])


def test_llff_aabb_contains_centres_and_frustum_corners(tmp_path: Path) -> None:
    make_llff(tmp_path)
    scene = load_scene(tmp_path)
    points = torch.cat([corner_points(scene.cameras, (1.0, 4.0)).reshape(-1, 3), scene.cameras.centers])
    lo, hi = scene.aabb[:3], scene.aabb[3:]
    assert scene.aabb.shape == (6,) and scene.aabb.dtype == torch.float32
    assert (points >= lo - 1e-5).all() and (points <= hi + 1e-5).all()
    torch.testing.assert_close(lo, points.min(0).values, atol=1e-5, rtol=0)  # tight, not just containing
    torch.testing.assert_close(hi, points.max(0).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(scene.near_far, torch.tensor([[1.0, 4.0]] * N))


def test_frustum_corners_with_off_centre_principal_point(tmp_path: Path) -> None:
    make_transforms(tmp_path)  # fx 5, fy 6, cx 3.9, cy 3.1 on 8 x 6 images
    cams = load_scene(tmp_path).cameras
    got = frustum_corners(cams, np.tile([1.0, 4.0], (N, 1)))  # [N, 2, 4, 3]
    expected = corner_points(cams, (1.0, 4.0)).permute(1, 0, 2, 3)
    np.testing.assert_allclose(got, expected.double().numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------ bad input


def _set_json(path: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _llff_with_classes(root: Path) -> None:
    make_llff(root)
    write_classes(root, ["cup", "table"])


def _bad_mask_size(root: Path) -> str:
    _llff_with_classes(root)
    write_mask(root, "2", "cup", np.ones((H, W + 1), dtype=bool))
    return "cup.png"


def _bad_mask_class(root: Path) -> str:
    _llff_with_classes(root)
    write_mask(root, "2", "chair", box_mask())
    return "chair.png"


def _bad_mask_folder(root: Path) -> str:
    _llff_with_classes(root)
    write_mask(root, "9", "cup", box_mask())
    return "9"


def _bad_label_size(root: Path) -> str:
    _llff_with_classes(root)
    (root / "labels").mkdir()
    iio.imwrite(root / "labels" / "001.png", np.zeros((H + 1, W), dtype=np.uint8))
    return "001.png"


def _bad_label_value(root: Path) -> str:
    _llff_with_classes(root)
    (root / "labels").mkdir()
    iio.imwrite(root / "labels" / "001.png", np.full((H, W), 5, dtype=np.uint8))
    return "001.png"


def _bad_instance_size(root: Path) -> str:
    make_transforms(root)
    (root / "instances").mkdir()
    iio.imwrite(root / "instances" / "frame_0003.png", np.zeros((H, 2 * W), dtype=np.uint16))
    return "frame_0003.png"


def _bad_object_class(root: Path) -> str:
    _llff_with_classes(root)
    obj = {"class": "sofa", "instance": 1, "center": [0, 0, 0], "size": [1, 1, 1], "yaw": 0.0, "symmetric": False}
    (root / "objects.json").write_text(json.dumps({"up": [0, 0, 1], "objects": [obj]}))
    return "objects.json"


def _bad_objects_json(root: Path) -> str:
    make_llff(root)
    (root / "objects.json").write_text('{"up": [0, 0, 1],\n "objects": [}')
    return "objects.json:2:"


def _count_mismatch(root: Path) -> str:
    make_llff(root)
    (root / "images" / "004.png").unlink()
    return "4 images"


def _corrupt_image(root: Path) -> str:
    make_llff(root)
    (root / "images" / "002.png").write_bytes(b"not a png at all")
    return "002.png"


def _truncated_image(root: Path) -> str:
    make_llff(root)
    data = (root / "images" / "003.png").read_bytes()
    (root / "images" / "003.png").write_bytes(data[: len(data) // 2])
    return "003.png"


def _mixed_sizes(root: Path) -> str:
    make_llff(root)
    iio.imwrite(root / "images" / "003.png", np.zeros((H, W + 2, 3), dtype=np.uint8))
    iio.imwrite(root / "images" / "004.png", np.zeros((H + 2, W, 3), dtype=np.uint8))
    return "003.png"


def _poses_wrong_shape(root: Path) -> str:
    make_llff(root)
    np.save(root / "poses_bounds.npy", np.zeros((N, 15)))
    return "poses_bounds.npy"


def _poses_not_finite(root: Path) -> str:
    make_llff(root)
    arr = np.load(root / "poses_bounds.npy")
    arr[2, 16] = np.inf
    np.save(root / "poses_bounds.npy", arr)
    return "poses_bounds.npy"


def _poses_not_npy(root: Path) -> str:
    make_llff(root)
    (root / "poses_bounds.npy").write_text("hello")
    return "poses_bounds.npy"


def _no_images_folder(root: Path) -> str:
    make_llff(root)
    for p in (root / "images").iterdir():
        p.unlink()
    (root / "images").rmdir()
    return "images"


def _malformed_transforms(root: Path) -> str:
    make_transforms(root)
    (root / "transforms.json").write_text('{\n  "fl_x": 5,\n  "frames": [,]\n}')
    return "transforms.json:3:"


def _no_intrinsics(root: Path) -> str:
    make_transforms(root)
    _set_json(root / "transforms.json", lambda m: [m.pop(k) for k in ("fl_x", "fl_y")])
    return "transforms.json"


def _no_transform_matrix(root: Path) -> str:
    make_transforms(root)
    _set_json(root / "transforms.json", lambda m: m["frames"][1].pop("transform_matrix"))
    return "transforms.json"


def _missing_frame_files(root: Path) -> str:
    make_transforms(root)
    for i in range(1, N):
        (root / "images" / f"frame_{i:04d}.png").unlink()
    return f"{N - 1} of {N} listed images are missing (first: images/frame_0001.png); 1 remain"


def _neither_file(root: Path) -> str:
    root.mkdir(exist_ok=True)
    return str(root)


BAD_CASES = {
    "count_mismatch": _count_mismatch,
    "corrupt_image": _corrupt_image,
    "truncated_image": _truncated_image,
    "mixed_sizes": _mixed_sizes,
    "poses_wrong_shape": _poses_wrong_shape,
    "poses_not_finite": _poses_not_finite,
    "poses_not_npy": _poses_not_npy,
    "no_images_folder": _no_images_folder,
    "malformed_transforms": _malformed_transforms,
    "no_intrinsics": _no_intrinsics,
    "no_transform_matrix": _no_transform_matrix,
    "missing_frame_files": _missing_frame_files,
    "mask_size": _bad_mask_size,
    "mask_class": _bad_mask_class,
    "mask_folder_out_of_range": _bad_mask_folder,
    "label_size": _bad_label_size,
    "label_value": _bad_label_value,
    "instance_size": _bad_instance_size,
    "object_class": _bad_object_class,
    "malformed_objects_json": _bad_objects_json,
    "neither_file": _neither_file,
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_one_line_scene_error(tmp_path: Path, case: str) -> None:
    root = tmp_path / "scene"
    root.mkdir()
    expected = BAD_CASES[case](root)
    with pytest.raises(SceneError) as info:
        load_scene(root)
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message and "\r" not in message


def test_missing_folder_is_scene_error(tmp_path: Path) -> None:
    with pytest.raises(SceneError, match="nowhere"):
        load_scene(tmp_path / "nowhere")


def test_error_messages_name_both_sides(tmp_path: Path) -> None:
    _count_mismatch(tmp_path)
    with pytest.raises(SceneError) as info:
        load_scene(tmp_path)
    msg = str(info.value)
    assert "4 images" in msg and "5 poses" in msg and str(tmp_path / "images") in msg
    assert str(tmp_path / "poses_bounds.npy") in msg
    (tmp_path / "poses_bounds.npy").unlink()
    with pytest.raises(SceneError) as info:
        load_scene(tmp_path)
    assert "poses_bounds.npy" in str(info.value) and "transforms.json" in str(info.value)
