"""The export, detect and ceiling benchmarks (``ovseg3d bench run export | detect | ceiling``): their declarations,
a run given as a folder, and their measures on hand-made inputs (no training: seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovseg3d.bench import ceiling, cli, detect, export, harness
from ovseg3d.data.cameras import Cameras


def test_the_benchmarks_are_found_and_their_variants_combine(tmp_path):
    found = cli.benchmarks()
    assert {"export", "detect", "ceiling"} <= set(found)
    assert "forward2" in harness.SCENES and "forward2" in found["detect"].scenes
    assert harness.select(found["export"], ["demo"], None) == (["demo"], ["default"])
    (case,) = harness.cases(found["export"], tmp_path, ["demo"], ["stride1+no_spread+force"])
    assert case.overrides == {}  # export options are no training options
    opts = export.export_options(case.variant)
    assert (opts.pixel_stride, opts.max_spread, opts.max_seconds, opts.features) == (1, 0.0, 0.0, True)
    with pytest.raises(harness.BenchError, match="unknown variant"):
        harness.cases(found["detect"], tmp_path, ["demo"], ["no_such"])


def test_a_run_given_as_a_folder_is_measured_as_it_is(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({}))
    case = harness.Case("export", str(run), run, "default", {}, 0, tmp_path / "work")
    assert export.trained_run(case) == run  # nothing trained
    assert not (tmp_path / "work").exists()
    assert export.case_folder(case, "detect") == tmp_path / "work" / "detect" / "myrun-default-s0"


def test_field_only_trains_the_geometry_alone_for_a_capture_without_labels(tmp_path, monkeypatch):
    import types

    from ovseg3d import pipeline

    stages = []

    def fake_run_scene(scene, run, chosen, config=None, export=None):
        stages.append(list(chosen))
        return types.SimpleNamespace(status="done")

    monkeypatch.setattr(pipeline, "run_scene", fake_run_scene)
    monkeypatch.setattr(export, "coverage", lambda *a: {"coverage": 1.0})
    monkeypatch.setattr("ovseg3d.export.extract_cloud", lambda *a: (_ for _ in ()).throw(RuntimeError("exported")))
    scene = tmp_path / "capture"
    scene.mkdir()
    case, plain = harness.cases(export.BENCHMARK, tmp_path / "work", [str(scene)], ["field_only+stride4", "stride4"])
    with pytest.raises(RuntimeError, match="exported"):
        export.measure(case)
    assert stages == [["geometry"]]
    with pytest.raises(RuntimeError, match="exported"):
        export.measure(plain)
    assert stages[1] == ["teachers", "geometry", "distill"]
    assert harness.teacher_record(export.BENCHMARK, case)["kind"] == "none"  # what the result file says of it
    assert harness.teacher_record(export.BENCHMARK, plain)["kind"] == "synthetic"


def camera(width: int = 8, height: int = 8) -> Cameras:
    """One pinhole camera at the origin looking down -z (OpenGL)."""
    c2w = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)[None]
    focal = torch.tensor([8.0])
    return Cameras(c2w, focal, focal, torch.tensor([width / 2.0]), torch.tensor([height / 2.0]), width, height)


def at_pixel(col: int, row: int, dist: float, cams: Cameras) -> list[float]:
    """The point at ``dist`` from the camera on the ray through a pixel's centre."""
    d = np.array([(col + 0.5 - float(cams.cx[0])) / 8.0, -(row + 0.5 - float(cams.cy[0])) / 8.0, -1.0])
    return list(dist * d / np.linalg.norm(d))


def test_coverage_counts_covered_pixels_and_points_in_front():
    """The right half of the view is solid at depth 2; points agree on column 7 (covering columns 6 and 7 within a
    pixel), one floats in front, one lies behind (hidden, not counted), one falls where nothing is solid."""
    cams = camera()
    depth = torch.full((8, 8), float("inf"))
    depth[:, 4:] = 2.0
    points = [at_pixel(7, r, 2.0, cams) for r in range(8)]
    points += [at_pixel(5, 3, 1.0, cams), at_pixel(5, 4, 3.0, cams), at_pixel(1, 1, 2.0, cams)]
    confident, covered, agree, ahead = export.view_coverage(
        depth.view(-1), torch.tensor(points, dtype=torch.float32), cams, 0
    )
    assert int(confident.sum()) == 32 and int(covered.sum()) == 16
    assert bool(covered[:, 6:].all()) and not bool(covered[:, :6].any())
    assert (int(agree), int(ahead)) == (8, 1)


def test_height_kept_counts_the_slices_the_cloud_fills():
    box = {"class": "box", "center": [1.0, 2.0, 0.5], "size": [0.4, 0.2, 1.0], "yaw": 0.7}
    top = np.array([[1.0, 2.0, z] for z in np.linspace(0.51, 0.99, 200)])  # the upper half of the box
    outside = np.array([[1.5, 2.0, 0.1], [1.0, 2.0, 1.5]])  # beside it, above it
    assert detect.height_kept(np.concatenate([top, outside]), box, grow=0.01) == pytest.approx(0.5)
    assert detect.height_kept(outside, box, grow=0.01) == 0.0
    along = np.array([[1.0, 2.0, 0.5]]) + np.array([[np.cos(0.7), np.sin(0.7), 0.0]]) * [[0.19], [0.21]]
    assert detect.inside_box(along, box, 0.0).tolist() == [True, False]  # its long axis turned by the yaw
    assert detect.inside_box(along, box, 0.02).tolist() == [True, True]


def test_random_rotations_are_rotations_and_seeded():
    rots = detect.random_rotations(4, seed=3)
    for r in rots:
        assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)
    assert np.allclose(rots, detect.random_rotations(4, seed=3))


def test_fusion_averages_the_views_that_see_a_point():
    """Two views of two classes: point 0 is seen by both (class 1 wins on the mean), point 1 by the first alone,
    point 2 by none."""
    first = np.zeros((2, 2, 2))
    first[..., 0], first[..., 1] = 0.6, 0.4
    second = np.zeros((2, 2, 2))
    second[..., 0], second[..., 1] = 0.1, 0.9
    seen_by = [(0, np.array([0, 1]), np.array([[0.5, 0.5], [3.5, 3.5]])), (1, np.array([0]), np.array([[1.0, 1.0]]))]
    labels = ceiling.fuse(seen_by, {0: first, 1: second}, 3, width=4, height=4)
    assert labels.tolist() == [1, 0, -1]
