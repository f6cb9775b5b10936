"""Pixel masks of a capture (0 = do not train on the pixel): read from a transforms.json frame's ``mask_path`` or
a ``masks/`` folder, shrunk to the training size keeping only whole pixels, never sampled by the geometry or
the distillation, left out of the held-out scores and of the exported cloud, and part of the run's scene
fingerprint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ovseg3d.cli import main
from ovseg3d.config import resolve_base
from ovseg3d.data.cameras import pixel_rays
from ovseg3d.data.loader import load_scene
from ovseg3d.data.nerfstudio import write_transforms_json
from ovseg3d.data.scene import SceneError
from ovseg3d.distill import Distiller
from ovseg3d.losses import fda_loss
from ovseg3d.metrics import psnr, ssim
from ovseg3d.run import scene_changes, scene_fingerprint
from ovseg3d.syncs import count_syncs
from ovseg3d.teachers.config import TeacherConfig
from ovseg3d.train import start_training

SCENE = ["--width", "48", "--height", "36", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]
STEP_CODE = ("ovseg3d/train.py", "ovseg3d/distill.py", "ovseg3d/losses.py")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("masks") / "scene"
    assert main(["synth", str(path), *SCENE]) == 0
    return path


def _masked_copy(scene: Path, dest: Path, cut: int = 20) -> Path:
    """``scene`` copied with a mask for every view leaving out its ``cut`` leftmost columns, as ``masks/<stem>.png``."""
    shutil.copytree(scene, dest)
    (dest / "masks").mkdir()
    for image in sorted((dest / "images").iterdir()):
        h, w = iio.imread(image).shape[:2]
        mask = np.full((h, w), 255, np.uint8)
        mask[:, :cut] = 0
        iio.imwrite(dest / "masks" / image.name, mask)  # <stem>.png for a .png image
    return dest


def _transforms_scene(root: Path, n: int = 4, size: tuple[int, int] = (48, 32)) -> list[Path]:
    angles = np.linspace(-0.5, 0.5, n)
    c2w = np.zeros((n, 3, 4))
    for i, a in enumerate(angles):
        c2w[i, :, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        c2w[i, :, 3] = [4 * np.sin(a), 0.0, 4 * np.cos(a)]
    names = [f"images/{i:04d}.jpg" for i in range(n)]
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        iio.imwrite(root / name, rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    write_transforms_json(root / "transforms.json", c2w, 40.0, 40.0, size[0] / 2, size[1] / 2, *size, names)
    return [root / name for name in names]


def _add_mask_paths(root: Path, masks: dict[int, np.ndarray]) -> None:
    """Write ``masks/frame_<i>.png`` and name it as frame ``i``'s ``mask_path``, as ns-process-data does."""
    meta = json.loads((root / "transforms.json").read_text())
    (root / "masks").mkdir(exist_ok=True)
    for i, mask in masks.items():
        iio.imwrite(root / "masks" / f"frame_{i}.png", mask)
        meta["frames"][i]["mask_path"] = f"masks/frame_{i}.png"
    (root / "transforms.json").write_text(json.dumps(meta))


def test_a_frames_mask_path_is_read_and_shrunk_keeping_whole_pixels(tmp_path: Path) -> None:
    _transforms_scene(tmp_path)
    mask = np.full((32, 48), 255, np.uint8)
    mask[:, :15] = 0  # an odd cut: at half size, column 7 covers photo columns 14 (masked) and 15
    mask[20:, 40:] = 1  # any value but 0 keeps a pixel
    _add_mask_paths(tmp_path, {1: mask})
    full = load_scene(tmp_path)
    assert set(full.masks) == {1}
    assert torch.equal(full.masks[1], torch.from_numpy(mask != 0))
    half = load_scene(tmp_path, downscale=2)
    assert half.masks[1].shape == (16, 24)
    expected = np.ones((16, 24), bool)
    expected[:, :8] = False
    assert torch.equal(half.masks[1], torch.from_numpy(expected))
    assert half.used_pixels([0, 2]) is None  # views without a mask use every pixel
    used = half.used_pixels([0, 1])
    assert used is not None and used[0].all() and torch.equal(used[1], half.masks[1])


def test_a_masks_folder_takes_colmap_names_and_stems(synth: Path, tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    shutil.copytree(synth, scene)
    (scene / "masks").mkdir()
    a, b = np.full((36, 48), 255, np.uint8), np.full((36, 48), 255, np.uint8)
    a[:5] = 0
    b[:, -3:] = 0
    iio.imwrite(scene / "masks" / "00.png.png", a)  # COLMAP's naming: the image's full name + .png
    iio.imwrite(scene / "masks" / "03.png", b)  # the image's stem + .png
    loaded = load_scene(scene)
    assert sorted(loaded.masks) == [0, 3]
    assert int((~loaded.masks[0]).sum()) == 5 * 48 and int((~loaded.masks[3]).sum()) == 3 * 36


def test_instant_ngp_dynamic_masks_mark_what_to_leave_out(tmp_path: Path) -> None:
    """``images/dynamic_mask_<stem>.png`` (instant-ngp): non-zero, in any channel, is masked away; a frame's
    ``mask_path`` wins over it."""
    images = _transforms_scene(tmp_path)
    dynamic = np.zeros((32, 48, 3), np.uint8)
    dynamic[10:20, 5:25, 2] = 1  # a faint blue is still a mask
    iio.imwrite(tmp_path / "images" / "dynamic_mask_0002.png", dynamic)
    iio.imwrite(tmp_path / "images" / "dynamic_mask_0003.png", dynamic)
    _add_mask_paths(tmp_path, {3: np.full((32, 48), 255, np.uint8)})
    scene = load_scene(tmp_path)
    assert sorted(scene.masks) == [2, 3] and len(scene) == len(images)
    assert int((~scene.masks[2]).sum()) == 10 * 20 and not bool(scene.masks[2][10:20, 5:25].any())
    assert bool(scene.masks[3].all())  # its mask_path, not the dynamic mask


def test_bad_masks_are_one_line_naming_the_file(tmp_path: Path) -> None:
    _transforms_scene(tmp_path)
    _add_mask_paths(tmp_path, {0: np.zeros((16, 24), np.uint8) + 255})
    with pytest.raises(SceneError, match=r"frame_0\.png: mask size 24x16 differs from its image 0000\.jpg \(48x32\)"):
        load_scene(tmp_path)
    (tmp_path / "masks" / "frame_0.png").write_bytes(b"\x89PNG\r\n not a png")
    with pytest.raises(SceneError, match=r"frame_0\.png: cannot read mask"):
        load_scene(tmp_path)
    (tmp_path / "masks" / "frame_0.png").unlink()
    with pytest.raises(SceneError, match=r"frame_0\.png: mask_path of 0000\.jpg not found"):
        load_scene(tmp_path)
    _add_mask_paths(tmp_path, {i: np.zeros((32, 48), np.uint8) for i in range(4)})
    with pytest.raises(SceneError, match="every mask is all zero"):
        load_scene(tmp_path)


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_training_never_samples_a_masked_pixel_and_reads_nothing_back_for_it(
    synth: Path, tmp_path: Path, device: str
) -> None:
    scene = _masked_copy(synth, tmp_path / "scene", cut=20)
    cfg = resolve_base("tiny", None)
    cfg = dataclasses.replace(
        cfg, scene=scene, output=tmp_path / "run", device=device, teachers=TeacherConfig(kind="synthetic"), seed=0
    )
    t = start_training(cfg)
    trainer = t.trainer
    assert trainer.pixels is not None and len(trainer.pixels) == len(trainer.scene.train_ids) * 36 * 28
    n_img, h, w = trainer.images.shape[:3]
    saved = trainer.images.clone()
    trainer.images[:, :, :20] = torch.tensor([255, 0, 255], dtype=torch.uint8)  # paint the masked pixels magenta
    for _ in range(5):
        _, _, target, cam = trainer.sample_batch()
        magenta = (target == torch.tensor([1.0, 0.0, 1.0], device=target.device)).all(-1)
        assert not magenta.any() and cam.max() < n_img and len(cam.unique()) > 1
    trainer.images = saved
    flat = trainer.pixels[torch.randint(0, len(trainer.pixels), (4096,))].long()
    assert ((flat % w) >= 20).all()  # the table holds only kept pixels
    for _ in range(10):  # the occupancy grid's warm-up
        trainer.train_step()
    distiller = Distiller(trainer, t.features)
    views, u, v = distiller.sample_pixels()
    n = cfg.sem_rays
    assert (u[:n] >= 20).all() and set(views[:n].tolist()) <= set(trainer.scene.train_ids)
    assert len(set(views[:n].tolist())) > 1
    assert distiller.used is not None
    # the rays of masked pixels (patches may cover some) count in no loss: spoil their teacher targets
    origins, dirs = pixel_rays(distiller.cameras, views, u, v)
    with torch.no_grad():
        out = distiller.field.decode(distiller.render_latent(distiller.cameras, views, origins, dirs, None))
    targets = distiller.teacher.lookup(views, u, v, w, h)
    used = torch.ones(len(views), dtype=torch.bool, device=views.device)
    used[::3] = False
    spoilt = [x.clone() for x in targets]
    for x in spoilt:
        x[~used] = torch.rand_like(x[~used].float()).to(x.dtype)
    cover = distiller.coverage.at(u, v, w, h) if distiller.coverage is not None else None
    kept = distiller.losses(out, *targets, cover, used)
    torch.testing.assert_close(torch.stack(kept), torch.stack(distiller.losses(out, *spoilt, cover, used)))
    assert not torch.allclose(torch.stack(kept), torch.stack(distiller.losses(out, *spoilt, cover, None)))
    distiller.train_step()

    def steps() -> None:
        for _ in range(3):
            trainer.train_step()
            distiller.train_step()

    counts = count_syncs(steps)
    own = {at for (op, at) in counts if op == "_local_scalar_dense" and at.startswith(STEP_CODE)}
    assert {at for at in own if "(_cap_samples)" not in at} == set(), own


def test_a_masked_pixel_changes_no_loss_and_no_score() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 9, 4, generator=gen), -1)
    dino = torch.randn(2, 9, 16, generator=gen)
    used = torch.ones(2, 9, dtype=torch.bool)
    used[0, 3] = used[1, 0] = False
    other = probs.clone()
    other[0, 3] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    other[1, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(fda_loss(probs, dino, used=used), fda_loss(other, dino, used=used))
    assert not torch.allclose(fda_loss(probs, dino), fda_loss(other, dino))

    pred = torch.rand(20, 30, 3, generator=gen)
    gt = torch.rand(20, 30, 3, generator=gen)
    mask = torch.ones(20, 30, dtype=torch.bool)
    mask[:, :10] = False
    spoilt = pred.clone()
    spoilt[:, :10] = 1.0 - gt[:, :10]
    assert psnr(pred, gt, mask) == psnr(spoilt, gt, mask) and psnr(pred, gt) != psnr(spoilt, gt)
    assert ssim(pred, gt, mask=mask) != ssim(spoilt, gt)
    # windows centred on kept pixels may reach 5 pixels into the masked ones: spoil only farther ones
    far = pred.clone()
    far[:, :4] = 1.0 - gt[:, :4]
    assert ssim(pred, gt, mask=mask) == ssim(far, gt, mask=mask)


def test_a_changed_mask_changes_the_scene_fingerprint(synth: Path, tmp_path: Path) -> None:
    scene = _masked_copy(synth, tmp_path / "scene")
    before = scene_fingerprint(scene)
    assert before["image_files_sha1"] != scene_fingerprint(synth)["image_files_sha1"]
    mask = scene / "masks" / "02.png"
    iio.imwrite(mask, np.full((36, 48), 255, np.uint8))
    import os

    os.utime(mask, (1, 1))
    assert scene_changes(before, scene_fingerprint(scene)) == [
        "image, mask or model files changed (names, sizes or bytes)"
    ]


def test_export_lifts_no_masked_pixel(toy_run) -> None:
    """The toy run's cloud with masks over its training views: no point from a view masked whole, fewer with
    the left half of every view masked; at a pixel stride a small pixel is kept only where all under it are."""
    from ovseg3d.export import ExportOptions, surface_points, view_used
    from ovseg3d.train import load_trainer

    _, run = toy_run
    trainer = load_trainer(run, "cpu")
    scene = trainer.scene
    opts = ExportOptions(max_spread=0.0, pixel_stride=1, relax_below=0, view_stride=3)  # 10 of the 30 views
    quiet = lambda s: None  # noqa: E731
    every = len(surface_points(trainer, opts, log=quiet)[0])
    half = torch.ones(scene.height, scene.width, dtype=torch.bool)
    half[:, : scene.width // 2] = False
    scene.masks = {v: half for v in scene.train_ids}
    some = len(surface_points(trainer, opts, log=quiet)[0])
    assert 0 < some < every
    scene.masks = {v: torch.zeros_like(half) for v in scene.train_ids}
    assert len(surface_points(trainer, opts, log=quiet)[0]) == 0

    odd = torch.ones(scene.height, scene.width, dtype=torch.bool)
    odd[:, :5] = False  # at stride 2 a pixel covers columns 4 and 5, both masked; column 6 is kept
    scene.masks = {0: odd}
    small = view_used(scene, 0, scene.cameras.scaled(1 / 2)).view(scene.height // 2, scene.width // 2)
    assert not small[:, :3].any() and small[:, 3:].all()
    assert view_used(scene, 1, scene.cameras) is None


def test_eval_scores_held_out_views_on_their_kept_pixels(synth: Path, tmp_path: Path, capsys) -> None:
    """A masked held-out view is scored on what its mask keeps and says so; one masked whole is not scored."""
    scene = _masked_copy(synth, tmp_path / "scene", cut=20)
    held_out = load_scene(scene).eval_ids
    assert len(held_out) == 2
    iio.imwrite(scene / "masks" / f"{held_out[0]:02d}.png", np.zeros((36, 48), np.uint8))
    run = tmp_path / "run"
    args = ["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu", "--teacher", "none"]
    assert main(args) == 0
    log = capsys.readouterr().out
    share = 100 * 20 / 48  # the 20 leftmost of 48 columns
    assert f"masks: 6 of 6 training views ({share:.1f} % of their pixels left out), 2 of 2 held-out views" in log
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["views_masked_whole"] == [held_out[0]] and metrics["n_views"] == 1
    assert metrics["per_view"][0]["view"] == held_out[1] and metrics["per_view"][0]["masked_pixels"] == 20 * 36
    assert "scored on the pixels their masks keep" in out and "masked whole: not scored" in out
