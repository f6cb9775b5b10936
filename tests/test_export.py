"""Labelled point clouds: fusion, the PLY / NPZ files, and a distilled scene's points on its true surfaces."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovseg3d.cli import main
from ovseg3d.data.loader import load_scene
from ovseg3d.export import LabelledCloud, agreeing_views, fuse_points, incidence_cosine, load_export, write_ply
from ovseg3d.syncs import count_syncs
from ovseg3d.synth import surface_distance

plyfile = pytest.importorskip("plyfile")


def test_fuse_points_keeps_surfaces_seen_from_several_views():
    g = torch.Generator().manual_seed(0)
    # a 20 cm square of the plane z = 0 seen by three views, and a floater that one view alone sees
    plane = torch.cat([torch.rand(3000, 3, generator=g) * torch.tensor([0.2, 0.2, 0.0]) for _ in range(3)])
    floater = torch.tensor([[0.1, 0.1, 0.5]]).repeat(50, 1)
    points = torch.cat([plane, floater])
    colours = torch.cat([torch.full((9000, 3), 200.0), torch.full((50, 3), 10.0)])
    views = torch.cat([torch.arange(3).repeat_interleave(3000), torch.full((50,), 3)])
    xyz, rgb, n_views = fuse_points(points, colours, views, torch.zeros(3), voxel=0.02, min_views=2)
    assert len(xyz) >= 90  # about 10 x 10 voxels of the square
    assert float(xyz[:, 2].abs().max()) < 1e-6  # the floater is gone
    assert bool((rgb == 200).all()) and bool((n_views >= 2).all())  # the floater's colour is not mixed in
    # every kept point is the mean of its voxel: inside the square
    assert float(xyz[:, :2].min()) >= 0.0 and float(xyz[:, :2].max()) <= 0.2


def test_fuse_points_drops_isolated_voxels():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.01, 1.0, 1.0]])
    views = torch.tensor([0, 1, 0, 1, 1])
    xyz, _, _ = fuse_points(points, torch.zeros(5, 3), views, torch.zeros(3), 0.01, 1)
    assert len(xyz) == 2 and float(xyz[:, 0].min()) > 0.5  # the lone voxel at the origin has no neighbour


def test_a_far_wall_seen_one_point_a_voxel_is_fused_on_a_coarser_grid():
    """Three views of a far wall whose pixels are 5 voxels wide (each view's grid of points offset by a fraction of a
    pixel): on the fine grid every point is alone in its voxel, so the wall is lost; with the pixels' footprint it is
    fused on the grid where its pixels meet, and covers the wall. A near floater, whose pixels are small, is still
    dropped, and a near surface keeps the fine grid."""
    voxel, pixel = 0.01, 0.05
    grid = torch.stack(torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij"), -1).reshape(-1, 2)
    wall = torch.cat([torch.cat([(grid + off) * pixel, torch.full((400, 1), 5.0)], 1) for off in (0.0, 0.33, 0.67)])
    near = torch.cat([torch.rand(3000, 2) * 0.2 + 2.0, torch.zeros(3000, 1)], 1)
    floater = torch.tensor([[2.1, 2.1, 0.5]]).repeat(5, 1)
    points = torch.cat([wall, near, floater])
    views = torch.cat([torch.arange(3).repeat_interleave(400), torch.arange(3).repeat(1000), torch.full((5,), 3)])
    footprint = torch.cat([torch.full((1200,), pixel), torch.full((3005,), voxel / 4)])
    values = torch.zeros(len(points), 1)
    fine, _, _ = fuse_points(points, values, views, torch.zeros(3), voxel, 2)
    assert not bool((fine[:, 2] > 4).any()) and len(fine) >= 300  # the wall lost, the near square kept
    xyz, _, n_views = fuse_points(points, values, views, torch.zeros(3), voxel, 2, footprint)
    on_wall = xyz[xyz[:, 2] > 4]
    assert len(on_wall) >= 50 and bool((n_views >= 2).all())
    covered = torch.unique(torch.floor(on_wall[:, :2] / (2 * pixel)).long(), dim=0)
    assert len(covered) >= 0.8 * 10 * 10  # most of the wall's 1 x 1 area, in cells of two pixels
    assert float((xyz[:, 2] - 0.5).abs().min()) > 0.1  # the floater is gone
    assert len(xyz) - len(on_wall) == len(fine)  # the near square as on the fine grid


def test_the_spread_limit_and_the_agreement_tolerance_grow_beyond_the_region_of_interest():
    from ovseg3d.export import agreement_tolerance, spread_limit

    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    points = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.9, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, -10.0]])
    # the field's steps grow as |x|^2 beyond the ROI: the thinnest surface with them, a far point's relative depth
    # error (its distance from the cameras growing as |x|) as |x|; a bounded scene: the same value everywhere
    for fn, base, growth in ((spread_limit, 0.08, [1, 1, 9, 100]), (agreement_tolerance, 0.005, [1, 1, 3, 10])):
        assert torch.allclose(fn(points, aabb, "none", base), torch.full((4,), base))
        assert torch.allclose(fn(points, aabb, "sphere", base), base * torch.tensor(growth, dtype=torch.float32))


def test_agreeing_views_counts_views_whose_depth_matches():
    from ovseg3d.data.cameras import Cameras

    # three cameras on the z axis looking down at the plane z = 0 (OpenGL: looking along -z)
    c2w = torch.zeros(3, 3, 4)
    c2w[:, :, :3] = torch.eye(3)
    c2w[:, 2, 3] = torch.tensor([1.0, 2.0, 3.0])
    f = torch.full((3,), 10.0)
    cams = Cameras(c2w, f, f, torch.full((3,), 5.0), torch.full((3,), 5.0), 10, 10)
    # each camera's depth map: the plane along its rays (centre pixel: the height of the camera)
    from ovseg3d.data.cameras import image_rays

    depths = {}
    for i in range(3):
        _, d = image_rays(cams, i)
        depths[i] = c2w[i, 2, 3] / -d[:, 2]
    depths[2][:] = float("nan")  # camera 2 sees nothing solid
    on_plane = torch.tensor([[0.01, 0.01, 0.0]])
    above = torch.tensor([[0.01, 0.01, 0.3]])
    assert int(agreeing_views(on_plane, depths, cams, skip=0, tol=0.01)[0]) == 1  # camera 1 agrees
    assert int(agreeing_views(above, depths, cams, skip=0, tol=0.01)[0]) == 0
    # camera 1 sees a surface at distance r in every pixel: a point at that distance straight below it agrees,
    # one at that distance outside its picture does not (whatever the depth at the border pixels)
    r = 29**0.5
    flat = {0: depths[0], 1: torch.full_like(depths[1], r)}
    below, aside = torch.tensor([[0.0, 0.0, 2.0 - r]]), torch.tensor([[5.0, 0.0, 0.0]])
    assert agreeing_views(torch.cat([below, aside]), flat, cams, skip=0, tol=0.01).tolist() == [1, 0]
    # a tolerance per point: the same point 3 % nearer than camera 1's surface agrees only under its own 5 %
    near = torch.tensor([[0.0, 0.0, 2.0 - 0.97 * r]] * 2)
    assert agreeing_views(near, flat, cams, skip=0, tol=torch.tensor([0.01, 0.05])).tolist() == [0, 1]
    # nothing with a data-dependent size or a value read back: a GPU queues the views without waiting
    points = torch.cat([on_plane, above, below, aside])
    assert not count_syncs(lambda: agreeing_views(points, depths, cams, skip=0, tol=0.01))
    # the views taken one at a time or all at once: the same counts
    for skip in range(3):
        one = agreeing_views(points, flat | {2: depths[2]}, cams, skip=skip, tol=0.01, batch=1)
        assert torch.equal(one, agreeing_views(points, flat | {2: depths[2]}, cams, skip=skip, tol=0.01))


def test_incidence_cosine_is_the_rays_angle_to_a_smooth_surface_and_1_at_edges_and_noise():
    from ovseg3d.data.cameras import Cameras, image_rays

    # a camera 1 above the plane tilted 80 deg from facing it (z = -tan(80 deg) y): a floor seen at a grazing angle
    c2w = torch.zeros(1, 3, 4)
    c2w[0, :, :3] = torch.eye(3)
    c2w[0, 2, 3] = 1.0
    f = torch.full((1,), 40.0)
    cams = Cameras(c2w, f, f, torch.full((1,), 16.0), torch.full((1,), 12.0), 32, 24)
    origins, dirs = image_rays(cams, 0)
    tilt = np.deg2rad(80.0)
    normal = torch.tensor([0.0, np.sin(tilt), np.cos(tilt)], dtype=torch.float32)
    depth = -(origins @ normal) / (dirs @ normal)  # the plane through the origin
    truth = (F.normalize(dirs, dim=-1) @ normal).abs().reshape(24, 32)
    cosine = incidence_cosine(origins, dirs, depth, 24, 32).reshape(24, 32)
    assert torch.allclose(cosine[1:-1, 1:-1], truth[1:-1, 1:-1], atol=1e-3)
    assert float(truth[1:-1, 1:-1].max()) < 0.5  # grazing everywhere
    assert torch.equal(cosine[0], torch.ones(32))  # the border: no allowance
    # a plate facing the camera at depth 1 over a wall at depth 3: the pixels at the edge get no allowance (a mixed
    # pixel there must not pass for a surface seen edge-on), nor does one beside a missing depth
    step = torch.where(torch.arange(32) < 16, 1.0, 3.0).repeat(24) / -dirs[:, 2]
    step.reshape(24, 32)[:, 8] = float("nan")
    edge = incidence_cosine(origins, dirs, step, 24, 32).reshape(24, 32)
    assert float(edge[1:-1, [7, 9, 15, 16]].min()) == 1.0
    # a hazy layer facing the camera whose depth is noisy by 5 %: its random normals are not read as grazing
    torch.manual_seed(0)
    hazy = (1.0 + 0.05 * torch.randn(24 * 32)) / -dirs[:, 2]
    assert float((incidence_cosine(origins, dirs, hazy, 24, 32) < 0.5).float().mean()) < 0.05


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_depth_agreement_on_cuda_is_the_cpus_and_queues_without_a_wait():
    from ovseg3d.data.cameras import Cameras

    gen = torch.Generator().manual_seed(0)
    n = 12
    c2w = torch.zeros(n, 3, 4)
    c2w[:, :, :3] = torch.eye(3)
    c2w[:, :, 3] = torch.randn(n, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, 2.0])
    f = torch.full((n,), 60.0)
    cams = Cameras(c2w, f, f, torch.full((n,), 32.0), torch.full((n,), 24.0), 64, 48)
    depths = {i: 1.5 + torch.rand(64 * 48, generator=gen) for i in range(n)}
    depths[3][:100] = float("nan")
    points = torch.randn(5000, 3, generator=gen) * 0.5
    cpu = agreeing_views(points, depths, cams, skip=0, tol=0.2)
    gpu_depths = {i: d.cuda() for i, d in depths.items()}
    gpu = agreeing_views(points.cuda(), gpu_depths, cams.to("cuda"), skip=0, tol=0.2)
    # equal but for a point whose projection lands on a pixel border in one float arithmetic and not the other
    assert cpu.sum() > 0 and (gpu.cpu() != cpu).float().mean() < 1e-3
    assert not count_syncs(lambda: agreeing_views(points.cuda(), gpu_depths, cams.to("cuda"), skip=0, tol=0.2))


def test_projecting_into_several_cameras_at_once_is_projecting_into_each():
    from ovseg3d.data.cameras import Cameras, project_points
    from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE

    gen = torch.Generator().manual_seed(0)
    c2w = torch.zeros(3, 3, 4)
    c2w[:, :, :3] = torch.eye(3)
    c2w[:, :, 3] = torch.randn(3, 3, generator=gen) * 0.1 + torch.tensor([0.0, 0.0, 2.0])
    f = torch.tensor([40.0, 50.0, 60.0])
    lens = torch.tensor([LENS_PINHOLE, LENS_OPENCV, LENS_FISHEYE])
    coeffs = torch.zeros(3, 8)
    coeffs[1, :4] = torch.tensor([-0.1, 0.02, 0.001, -0.002])
    coeffs[2, :4] = torch.tensor([0.05, -0.01, 0.0, 0.0])
    cams = Cameras(c2w, f, f * 1.1, torch.full((3,), 32.0), torch.full((3,), 24.0), 64, 48, lens, coeffs)
    points = torch.randn(50, 3, generator=gen)
    together = project_points(cams, torch.tensor([2, 0, 1]), points)
    for row, cam in enumerate([2, 0, 1]):
        alone = project_points(cams, cam, points)
        for a, b in zip(alone, together):
            torch.testing.assert_close(a, b[row], rtol=0, atol=1e-5)


def _cloud(n: int = 7) -> LabelledCloud:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), n).astype(np.float16)
    return LabelledCloud(
        xyz=rng.normal(size=(n, 3)).astype(np.float32),
        rgb=rng.integers(0, 256, (n, 3), dtype=np.uint8),
        views=rng.integers(2, 9, n).astype(np.int32),
        label=probs.argmax(1).astype(np.int32),
        confidence=probs.max(1).astype(np.float32),
        probs=probs,
        relevancy={"red mug": rng.random(n).astype(np.float32)},
        feature=rng.normal(size=(n, 8)).astype(np.float16),
        classes=["mug", "floor", "wall"],
        voxel_size=0.01,
    )


def test_ply_is_read_back_by_an_independent_reader(tmp_path):
    cloud = _cloud()
    write_ply(tmp_path / "p.ply", cloud)
    ply = plyfile.PlyData.read(str(tmp_path / "p.ply"))
    assert ply.elements[0].name == "vertex" and not ply.text and ply.byte_order == "<"
    v = ply["vertex"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), cloud.xyz)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), cloud.rgb)
    np.testing.assert_array_equal(v["label"], cloud.label)
    np.testing.assert_array_equal(v["rel_red_mug"], cloud.relevancy["red mug"])
    assert any("class 2 wall" in c for c in ply.comments)


def test_exported_points_lie_on_the_scene_surfaces(exported):
    scene, run = exported
    cloud = load_export(run / "export")
    assert len(cloud) > 500
    scene_json = json.loads((scene / "scene.json").read_text())
    dist = surface_distance(scene_json, cloud.xyz)
    # points spread at random through the room, the distance a frame or depth error would give
    lo, hi = (np.array(scene_json["room"][k]) for k in ("min", "max"))
    random = np.random.default_rng(0).uniform(lo, hi, (4000, 3))
    chance = float(np.median(surface_distance(scene_json, random)))
    # a 600-step field of an 80 x 60 scene is coarse (the demo benchmark measures the real figure)
    assert float(np.median(dist)) < 0.4 * chance
    assert float(np.quantile(dist, 0.25)) < 0.2 * chance


def test_export_files_agree(exported):
    _, run = exported
    info = json.loads((run / "export" / "points.json").read_text())
    cloud = load_export(run / "export")
    ply = plyfile.PlyData.read(str(run / "export" / "points.ply"))
    assert info["n_points"] == len(cloud) == ply["vertex"].count
    assert info["classes"] == cloud.classes and info["queries"] == {"mug": "rel_mug"}
    assert info["relaxed"] == {}  # a healthy run's export relaxes nothing
    assert cloud.feature is not None and cloud.feature.shape == (len(cloud), cloud.feature.shape[1])
    np.testing.assert_allclose(cloud.probs.astype(np.float32).sum(1), 1.0, atol=1e-2)
    assert ((cloud.relevancy["mug"] >= 0) & (cloud.relevancy["mug"] <= 1)).all()


def test_a_run_without_semantics_exports_colours_only_and_an_empty_cloud_is_refused(exported, tmp_path, capsys):
    scene, run = exported
    geo = tmp_path / "geo"
    args = ["train", str(scene), "--output", str(geo), "--preset", "tiny", "--device", "cpu", "--steps", "5"]
    assert main([*args, "--teacher", "none"]) == 0
    capsys.readouterr()
    assert main(["export", str(geo), "--device", "cpu", "--features"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no semantic field" in err and "--features" in err and len(err.splitlines()) == 1
    assert not (geo / "export").exists()
    assert main(["export", str(geo), "--device", "cpu"]) == 0  # the geometry alone: positions and colours
    assert "positions and colours only" in capsys.readouterr().out
    cloud = load_export(geo / "export")
    assert len(cloud) > 0 and cloud.classes == [] and bool((cloud.label == -1).all()) and cloud.feature is None
    # and not made again with relaxed thresholds (a view in 4 is as empty as all of them, in a quarter of the time)
    impossible = ["--min-views", "1000", "--relax-below", "0", "--view-stride", "4"]
    assert main(["export", str(run), "--device", "cpu", *impossible, "--output", str(tmp_path / "e")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("ovseg3d export: error:") and "empty" in last
    assert not (tmp_path / "e").exists()


def test_a_tiny_runs_export_is_not_empty_and_says_what_was_relaxed(tmp_path, capsys):
    """The tiny preset's 20-step field is faint (no pixel reaches opacity 0.55, so no pixel has a median depth at
    the default thresholds): the export is made again with the thresholds relaxed from the run's own opacities,
    one line says how, and points.json records it."""
    scene, run = tmp_path / "scene", tmp_path / "run"
    assert main(["synth", str(scene), "--width", "96", "--height", "72", "--n-views", "12", "--seed", "3"]) == 0
    assert main(["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert (
        main(["export", str(run), "--device", "cpu", "--relax-below", "0", "--output", str(tmp_path / "strict")]) == 2
    )
    assert "empty" in capsys.readouterr().err
    import ovseg3d.export as export_module

    real, calls = export_module.render_median_depth, []

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[8] if len(args) > 8 else kwargs.get("relative", False))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(export_module, "render_median_depth", counted)
        assert main(["export", str(run), "--device", "cpu"]) == 0
    # the relaxed pass reads the first pass's relative depths: every view rendered once (and the stride's probe)
    n_views = len(load_scene(scene).train_ids)
    assert not any(calls) and len(calls) <= n_views + 4, calls
    out = capsys.readouterr().out
    assert "depth maps 0.0 (the first pass's, read again)" in out
    lines = [line for line in out.splitlines() if "relaxed" in line]
    assert len(lines) == 1 and "--min-opacity 0.9 -> 0." in lines[0]
    info = json.loads((run / "export" / "points.json").read_text())
    assert info["relaxed"]["min_opacity"] < 0.9 and info["relaxed"]["relative_depth"] is True
    cloud = load_export(run / "export")
    assert len(cloud) >= 1000
    # as good as the field, which after 20 steps has no geometry: the median point is as far from a surface as a
    # point at random in the room (docs/benchmarks.md measures the relaxed clouds of short runs)
    assert np.isfinite(cloud.xyz).all() and cloud.voxel_size > 0


def test_relative_depths_kept_from_a_render_equal_a_relative_render(exported):
    """A faint field's second export pass reads the relative median depths the first pass kept: they are the
    ones a render with ``relative=True`` gives, where the opacity passes the relaxed threshold, and nan elsewhere."""
    from ovseg3d.export import depth_map
    from ovseg3d.train import load_trainer

    _, run = exported
    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras.scaled(1 / 4)
    for v in trainer.scene.train_ids[:2]:
        chunks: list[torch.Tensor] = []
        _, _, opacity = depth_map(trainer, cams, v, 0.9, 0.0, out_relative=chunks)
        threshold = float(opacity.quantile(0.5))
        relative, _, opacity2 = depth_map(trainer, cams, v, threshold, 0.0, relative=True)
        kept = torch.cat(chunks)
        assert torch.equal(opacity, opacity2)
        assert torch.equal(
            torch.where(opacity >= threshold, kept, kept.new_tensor(float("nan"))).isnan(), relative.isnan()
        )
        solid = ~relative.isnan()
        assert solid.any() and torch.allclose(kept[solid], relative[solid])


def test_a_strided_view_takes_the_mean_colour_of_its_pixels():
    from ovseg3d.data.cameras import Cameras
    from ovseg3d.export import view_colours

    image = torch.arange(4 * 6 * 3, dtype=torch.uint8).reshape(4, 6, 3)
    one = torch.ones(1)
    cams = Cameras(torch.zeros(1, 3, 4), one, one, one, one, 6, 4)
    assert torch.equal(view_colours(image, cams), image.reshape(-1, 3).float())
    half = view_colours(image, cams.scaled(0.5))  # 3 x 2 pixels, each the mean of a 2 x 2 block
    expected = image.float().reshape(2, 2, 3, 2, 3).mean((1, 3)).reshape(-1, 3)
    torch.testing.assert_close(half, expected)


def test_export_lifts_one_pixel_in_n_and_its_points_still_lie_on_the_surfaces(exported, capsys):
    """--pixel-stride 2 renders the views at half size: about a quarter of the solid pixels, and the fused points
    as close to the true surfaces as every pixel's; the automatic stride of the 80 x 60 toy keeps every pixel."""
    import re

    from ovseg3d.export import ExportOptions, auto_pixel_stride, extract_cloud
    from ovseg3d.train import load_trainer

    scene, run = exported
    lines: list[str] = []
    opts = ExportOptions(max_spread=0.0, view_stride=2)  # 15 of the 30 views: the strides' ratio is the same
    full = extract_cloud(run, opts, "cpu", log=lines.append)
    half = extract_cloud(run, dataclasses.replace(opts, pixel_stride=2), "cpu", log=lines.append)
    made = [line for line in lines if "solid pixels" in line]
    solid = [int(re.match(r"(\d+) solid pixels", line).group(1)) for line in made]
    assert "at 80x60 " in made[0] and "at 40x30, one pixel in 2 along each axis" in made[-1]
    seconds = [line for line in lines if line.startswith("export's seconds: depth maps")]
    assert len(seconds) == len(made) and "rays/s), agreement" in seconds[0] and "semantic field" in seconds[0]
    assert 0.15 < solid[1] / solid[0] < 0.35
    scene_json = json.loads((scene / "scene.json").read_text())
    near = [float(np.median(surface_distance(scene_json, c.xyz))) for c in (full, half)]
    assert near[1] < 1.5 * near[0] + 1e-3
    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras
    voxel = opts.spacing * trainer.diag
    assert auto_pixel_stride(trainer, cams, trainer.scene.train_ids, voxel, opts.min_opacity) == 1
    # the same views seen 8 times sharper (a focal length 8 times longer): their pixels are 8 times narrower
    sharp = dataclasses.replace(cams, fx=cams.fx * 8, fy=cams.fy * 8)
    assert auto_pixel_stride(trainer, sharp, trainer.scene.train_ids, voxel, opts.min_opacity) > 1


def test_the_exports_time_limit_raises_the_stride_and_says_so(exported):
    """--max-seconds: a limit the probe render's pace says the views cannot meet at full size raises the pixel
    stride (up to 8) and one line says so; no limit, or one they meet, keeps the voxel size's stride."""
    from ovseg3d.export import MAX_BUDGET_STRIDE, ExportOptions, auto_pixel_stride
    from ovseg3d.train import load_trainer

    _, run = exported
    trainer = load_trainer(run, "cpu")
    cams, views = trainer.scene.cameras, trainer.scene.train_ids
    voxel = ExportOptions().spacing * trainer.diag
    lines: list[str] = []
    assert auto_pixel_stride(trainer, cams, views, voxel, 0.9, max_seconds=0.0, log=lines.append) == 1
    assert auto_pixel_stride(trainer, cams, views, voxel, 0.9, max_seconds=1e4, log=lines.append) == 1
    assert lines == []
    assert auto_pixel_stride(trainer, cams, views, voxel, 0.9, max_seconds=1e-6, log=lines.append) == MAX_BUDGET_STRIDE
    assert len(lines) == 1 and "--max-seconds 1e-06" in lines[0] and "one pixel in 8" in lines[0]


def test_an_export_records_its_options_and_they_read_back(tmp_path):
    """``recorded_options``: what points.json says the cloud was made with; the defaults where it says nothing
    readable, and keys no ExportOptions has (a newer or older version's) left out."""
    from ovseg3d.export import ExportOptions, recorded_options

    assert recorded_options(tmp_path) == ExportOptions()
    (tmp_path / "points.json").write_text("{not json")
    assert recorded_options(tmp_path) == ExportOptions()
    opts = {"pixel_stride": 3, "queries": ["mug"], "max_spread": 0.0, "from_the_future": 1}
    (tmp_path / "points.json").write_text(json.dumps({"options": opts}))
    assert recorded_options(tmp_path) == ExportOptions(pixel_stride=3, queries=["mug"], max_spread=0.0)
