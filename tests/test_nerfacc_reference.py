"""scripts/nerfacc_reference.py on the CPU: ovseg3d's cameras brought into nerfacc's frame, nerfacc's rays, its split
and the wall-clock schedule. nerfacc and tinycudann are not imported; where ``.nerfacc/`` holds nerfacc's examples
(``bash scripts/gpu_session.sh nerfacc-src``) the same numbers are also checked against its own loader code."""

from __future__ import annotations

import ast
import collections
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bench_scripts import load_script
from PIL import Image

from ovseg3d.data import colmap
from ovseg3d.data.cameras import Cameras, pixel_rays
from ovseg3d.data.loader import load_scene, split_views

ROOT = Path(__file__).resolve().parent.parent
ref = load_script("nerfacc_reference")

NERF_360_V2 = ROOT / ".nerfacc" / "examples" / "datasets" / "nerf_360_v2.py"
Rays = collections.namedtuple("Rays", ("origins", "viewdirs"))  # as nerfacc's datasets/utils.py


def ring_c2w(n: int = 12, seed: int = 0) -> np.ndarray:
    """``[n, 3, 4]`` OpenGL cameras on a tilted ring around an off-origin centre, each looking near the centre."""
    rng = np.random.default_rng(seed)
    up = np.array([0.2, 0.1, 1.0]) / np.linalg.norm([0.2, 0.1, 1.0])
    centre = np.array([3.0, -2.0, 5.0])
    a = np.cross(up, [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    poses = []
    for i in range(n):
        angle = 2 * np.pi * i / n + rng.uniform(-0.1, 0.1)
        pos = centre + rng.uniform(3.0, 5.0) * (np.cos(angle) * a + np.sin(angle) * b) + rng.uniform(0.5, 1.5) * up
        back = pos - (centre + rng.normal(scale=0.3, size=3))
        back /= np.linalg.norm(back)
        right = np.cross(up, back)
        right /= np.linalg.norm(right)
        poses.append(np.stack([right, np.cross(back, right), back, pos], axis=1))
    return np.stack(poses)


def ring_cameras(n: int = 12, width: int = 64, height: int = 48) -> Cameras:
    return Cameras(
        c2w=torch.as_tensor(ring_c2w(n), dtype=torch.float32),
        fx=torch.full((n,), 50.0),
        fy=torch.full((n,), 52.0),
        cx=torch.full((n,), 31.5),
        cy=torch.full((n,), 24.25),
        width=width,
        height=height,
    )


def views_of(cams: Cameras) -> object:
    c2w, _, _ = ref.nerfacc_poses(cams.c2w)
    n = len(cams)
    images = torch.randint(
        0, 256, (n, cams.height, cams.width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    return ref.Views(
        images=images,
        c2w=torch.as_tensor(c2w, dtype=torch.float32),
        fx=cams.fx,
        fy=cams.fy,
        cx=cams.cx,
        cy=cams.cy,
        train_ids=torch.arange(n),
        eval_ids=[],
        train_views=[],
    )


def test_rays_are_ovseg3d_rays_in_nerfacc_frame() -> None:
    """(a) nerfacc's rays of a camera, with the similarity undone, are ovseg3d's ``pixel_rays`` of the same pixels."""
    cams = ring_cameras()
    c2w, transform, scale = ref.nerfacc_poses(cams.c2w)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(cams), (500,), generator=gen)
    u = torch.randint(0, cams.width, (500,), generator=gen)
    v = torch.randint(0, cams.height, (500,), generator=gen)
    origins, dirs = ref.camera_rays(
        torch.as_tensor(c2w, dtype=torch.float32), cams.fx, cams.fy, cams.cx, cams.cy, ids, u, v
    )
    rot = torch.as_tensor(transform[:3, :3], dtype=torch.float32)
    shift = torch.as_tensor(transform[:3, 3], dtype=torch.float32)
    want_o, want_d = pixel_rays(cams, ids, u, v)
    torch.testing.assert_close(dirs @ rot, want_d, atol=1e-5, rtol=0)  # R^T d
    torch.testing.assert_close((origins / scale - shift) @ rot, want_o, atol=1e-4, rtol=0)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(500), atol=1e-6, rtol=0)


@pytest.mark.parametrize("strict", [False, True])
def test_normalisation_median_distance_one_and_up(strict: bool) -> None:
    """(b) the cameras end at median (``strict_scaling``: max) distance 1 from the origin, their mean up along -y,
    through a rigid rotation."""
    c2w_cv = np.array(ring_c2w(15, seed=1))
    c2w_cv[:, :, 1:3] *= -1
    transform, scale = ref.similarity_from_cameras(c2w_cv, strict_scaling=strict)
    rot = transform[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    dist = np.linalg.norm(scale * (c2w_cv[:, :, 3] @ rot.T + transform[:3, 3]), axis=-1)
    assert (dist.max() if strict else np.median(dist)) == pytest.approx(1.0, abs=1e-12)
    assert dist.min() < 0.999  # not every camera on the unit sphere: scale and translate are not trivially right

    poses, _, _ = ref.nerfacc_poses(ring_c2w(15, seed=1))
    assert np.median(np.linalg.norm(poses[:, :, 3], axis=-1)) == pytest.approx(1.0, abs=1e-12)
    up = -poses[:, :, 1].mean(axis=0)  # OpenCV cameras: up is -y
    np.testing.assert_allclose(up / np.linalg.norm(up), [0.0, -1.0, 0.0], atol=1e-12)


def test_split_is_every_eighth() -> None:
    """(c) ovseg3d's split of a scene without annotations is nerfacc's; any other is refused."""
    for n in (8, 9, 17, 292):
        train_ids, eval_ids = split_views(n, [], holdout_every=8)
        ref.check_split(train_ids, eval_ids, n)
    assert split_views(292, [], holdout_every=8)[1][:3] == [0, 8, 16]
    with pytest.raises(ValueError, match="every 8th"):
        ref.check_split(*split_views(20, [], holdout_every=7), 20)
    with pytest.raises(ValueError, match="every 8th"):
        ref.check_split(*split_views(20, [3, 11]), 20)  # a 3D-OVS scene: its annotated views held out


def test_colmap_scene_in_nerfacc_frame(tmp_path: Path) -> None:
    """A COLMAP scene (image ids not in name order) through ovseg3d's loader and ``nerfacc_poses`` gives the
    poses nerfacc's ``_load_colmap`` + normalisation would: ``inv([R | t])`` by sorted name, no axis flip; its
    held-out views are the 0th, 8th, 16th names."""
    n, (w, h) = 17, (8, 6)
    c2w_gl = ring_c2w(n, seed=2)
    order = np.random.default_rng(0).permutation(n)
    images, w2c = {}, {}
    (tmp_path / "images").mkdir()
    for k, i in enumerate(order):  # image id k + 1 is the name img_{i}: ids and file order not by name
        rot = (c2w_gl[i, :, :3] * [1.0, -1.0, -1.0]).T  # world-to-camera, OpenCV
        tvec = -rot @ c2w_gl[i, :, 3]
        name = f"img_{i:02d}.png"
        images[k + 1] = colmap.ColmapImage(k + 1, colmap.rotmat_to_qvec(rot), tvec, 1, name)
        w2c[name] = np.vstack([np.hstack([colmap.qvec_to_rotmat(images[k + 1].qvec), tvec[:, None]]), [0, 0, 0, 1]])
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(tmp_path / "images" / name)
    camera = colmap.ColmapCamera(1, "PINHOLE", w, h, np.array([7.0, 7.5, 4.0, 3.0]))
    empty = np.zeros((0, 3))
    model = colmap.ColmapModel({1: camera}, images, empty, empty.astype(np.uint8), np.zeros(0), np.zeros(0, np.int64))
    colmap.write_model(tmp_path / "sparse" / "0", model)

    scene = load_scene(tmp_path, downscale=1, holdout_every=8, max_long_side=0)
    assert scene.cameras.lens is None
    ref.check_split(scene.train_ids, scene.eval_ids, n)
    assert [scene.image_paths[i].name for i in scene.eval_ids] == ["img_00.png", "img_08.png", "img_16.png"]
    assert int(scene.images[8, 0, 0, 0]) == 80
    ours, _, _ = ref.nerfacc_poses(scene.cameras.c2w)

    c2w_cv = np.linalg.inv(np.stack([w2c[name] for name in sorted(w2c)]))  # nerfacc's _load_colmap
    transform, scale = ref.similarity_from_cameras(c2w_cv, strict_scaling=False)
    theirs = np.einsum("nij, ki -> nkj", c2w_cv, transform)  # SubjectLoader.__init__, verbatim
    theirs[:, :3, 3] *= scale
    np.testing.assert_allclose(ours, theirs[:, :3], atol=2e-6)


def test_lr_factor_is_the_examples_scheduler_on_progress() -> None:
    """With progress = step / max_steps, the wall-clock factor is the examples' ChainedScheduler at every step."""
    max_steps = 400
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
    sched = torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=100),
            torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=[max_steps // 2, max_steps * 3 // 4, max_steps * 9 // 10], gamma=0.33
            ),
        ]
    )
    for step in range(max_steps + 1):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * ref.lr_factor(step, step / max_steps), rel=1e-9)
        opt.step()
        sched.step()


def _nerfacc_loader_code() -> SimpleNamespace:
    """``similarity_from_cameras`` and ``SubjectLoader.fetch_data`` / ``preprocess`` from nerfacc's own
    ``nerf_360_v2.py`` (its module imports pycolmap: only these functions are compiled)."""
    tree = ast.parse(NERF_360_V2.read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "similarity_from_cameras"]
    loader = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SubjectLoader")
    funcs += [n for n in loader.body if isinstance(n, ast.FunctionDef) and n.name in ("fetch_data", "preprocess")]
    assert len(funcs) == 3
    namespace = {"np": np, "torch": torch, "F": F, "Rays": Rays}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), str(NERF_360_V2), "exec"), namespace)
    return SimpleNamespace(**{f.name: namespace[f.name] for f in funcs})


@pytest.mark.skipif(not NERF_360_V2.is_file(), reason="nerfacc's examples not exported (gpu_session.sh nerfacc-src)")
def test_against_nerfacc_loader_code() -> None:
    """The normalisation, the test split's image rays and a training batch (same seed) equal what nerfacc's own
    ``nerf_360_v2.py`` code computes from the same cameras and images."""
    code = _nerfacc_loader_code()
    cams = ring_cameras(9)
    c2w_cv = cams.c2w.double().numpy()
    c2w_cv[:, :, 1:3] *= -1
    c2w_cv = np.concatenate([c2w_cv, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(cams), 1, 1))], axis=1)
    for strict in (False, True):
        want_t, want_s = code.similarity_from_cameras(c2w_cv, strict_scaling=strict)
        got_t, got_s = ref.similarity_from_cameras(c2w_cv, strict_scaling=strict)
        np.testing.assert_allclose(got_t, want_t, atol=1e-12)
        assert got_s == pytest.approx(want_s, rel=1e-12)

    views = views_of(cams)
    fx, fy, cx, cy = (float(t[0]) for t in (cams.fx, cams.fy, cams.cx, cams.cy))
    loader = SimpleNamespace(
        images=views.images,
        camtoworlds=views.c2w,
        K=torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]),
        width=cams.width,
        height=cams.height,
        OPENGL_CAMERA=False,
        batch_over_images=True,
        color_bkgd_aug="random",
        training=False,
        num_rays=None,
    )
    data = code.preprocess(loader, code.fetch_data(loader, 4))
    rays, pixels = ref.image_batch(views, 4, Rays)
    torch.testing.assert_close(rays.origins, data["rays"].origins, atol=1e-6, rtol=0)
    torch.testing.assert_close(rays.viewdirs, data["rays"].viewdirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels, data["pixels"], atol=0, rtol=0)
    assert data["color_bkgd"].tolist() == list(ref.WHITE)

    loader.training, loader.num_rays = True, 256
    torch.manual_seed(5)
    data = code.preprocess(loader, code.fetch_data(loader, 0))
    torch.manual_seed(5)
    rays, pixels, bkgd = ref.train_batch(views, 256, Rays)
    torch.testing.assert_close(rays.origins, data["rays"].origins, atol=1e-6, rtol=0)
    torch.testing.assert_close(rays.viewdirs, data["rays"].viewdirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(pixels, data["pixels"], atol=0, rtol=0)
    torch.testing.assert_close(bkgd, data["color_bkgd"], atol=0, rtol=0)


# ---------------------------------------------------------------------------- the CPU stand-ins (--device cpu)


def test_importance_sampling_restated_puts_samples_at_even_steps_of_the_cdf():
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 3.0]])
    cdfs = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 1.0]])  # ray 1: all its weight in [1, 3]
    edges, samples = ref.importance_sample_batched(t, cdfs, 2)
    assert torch.allclose(samples, torch.tensor([[0.5, 1.5], [1.5, 2.5]]))
    assert torch.allclose(edges, torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]))
    edges, samples = ref.importance_sample_batched(t[:1].expand(64, 3), cdfs[:1].expand(64, 3), 8, stratified=True)
    assert (samples.diff(dim=-1) > 0).all() and (edges.diff(dim=-1) >= 0).all()
    assert (edges[:, 0] >= 0).all() and (edges[:, -1] <= 2).all()
    assert not torch.allclose(samples[0], samples[1])  # one jitter a ray


def test_searchsorted_restated_matches_nerfacc_s_contract():
    """``sorted.gather(ids_left) <= value < sorted.gather(ids_right)``, clipped to the sequence (nerfacc's doc)."""
    keys = SimpleNamespace(vals=torch.tensor([[0.0, 1.0, 2.0]]))
    left, right = ref.torch_searchsorted(keys, SimpleNamespace(vals=torch.tensor([[0.5, 1.5, 2.5, -1.0]])))
    assert left.tolist() == [[0, 1, 1, 0]] and right.tolist() == [[1, 2, 2, 0]]


def test_torch_stand_ins_of_tinycudann_modules_have_its_shapes_and_learn():
    grid = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10}
    grid |= {"base_resolution": 4, "per_level_scale": 1.5}
    mlp = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None", "n_neurons": 16}
    net = ref._TorchNetworkWithInputEncoding(3, 5, grid, {**mlp, "n_hidden_layers": 1})
    x = torch.rand(32, 3)
    out = net(x)
    assert out.shape == (32, 5) and all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Linear))
    out.square().sum().backward()
    assert net.encoding.grid.params.grad.abs().sum() > 0
    sh = ref._TorchEncoding(3, {"otype": "Composite", "nested": [{"otype": "SphericalHarmonics", "degree": 4}]})
    d = F.normalize(torch.randn(8, 3), dim=-1)
    assert sh.n_output_dims == 16 and torch.allclose(sh((d + 1) / 2)[:, 0], torch.full((8,), 0.28209479177387814))
    with pytest.raises(ValueError, match="no output activation"):
        ref._TorchMLP(3, 1, {**mlp, "n_hidden_layers": 1, "output_activation": "Sigmoid"})
