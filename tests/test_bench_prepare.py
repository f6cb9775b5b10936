"""``ovseg3d bench run prepare``'s own logic, without pycolmap: a photo set's folder (photos, reference, its own
options), bench_prepare's ``NAME=PHOTOS[:REFERENCE]`` made into one, the variants' options, and the cameras' paths
and ATE against a reference that turns runs of its photos around."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ovseg3d.bench import harness
from ovseg3d.bench import prepare as bench
from ovseg3d.prepare import PrepareConfig


def _photos(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{i:02d}.jpg").write_bytes(b"")
    return folder


def test_a_spec_makes_a_set_of_links_that_the_benchmark_reads(tmp_path):
    photos, poses = _photos(tmp_path / "photos"), (tmp_path / "poses").resolve()
    poses.mkdir()
    folder = bench.make_set(f"fox_auto_v2={photos}:{poses}", tmp_path / "sets")
    assert folder.name == "fox_auto_v2"  # the figures' keys: fox_auto_v2/VARIANT/FIGURE
    found = bench.photo_set(folder)
    assert found.photos.resolve() == photos.resolve() and found.reference.resolve() == poses and found.options == {}
    assert bench.photo_set(bench.make_set(f"fox_auto_v2={photos}", tmp_path / "sets")).reference is None  # again
    for spec, said in (("fox", "not NAME=PHOTOS"), ("=x", "not NAME=PHOTOS"), (f"a={tmp_path}/no", "is not there")):
        with pytest.raises(harness.BenchError, match=said):
            bench.make_set(spec, tmp_path / "sets")


def test_a_set_is_its_own_reference_holds_its_own_options_and_is_refused_in_one_line(tmp_path):
    scene = tmp_path / "fox"
    _photos(scene / "images")
    (scene / "transforms.json").write_text("{}")
    (scene / "prepare.toml").write_text("max_long_side = 1440\n")
    found = bench.photo_set(scene)
    assert found.reference == scene and found.options == {"max_long_side": 1440}
    case = harness.Case("prepare", str(scene), scene, "exhaustive+no_far_check", {}, 0, tmp_path)
    cfg = bench.options(case, found.options)
    assert (cfg.max_long_side, cfg.matcher, cfg.far_pair_check) == (1440, "exhaustive", False)
    assert bench.options(case, {}).max_long_side == PrepareConfig.max_long_side
    assert bench.options(dataclasses.replace(case, variant="long1440"), {"max_long_side": 800}).max_long_side == 1440
    assert bench.photo_set(_photos(tmp_path / "plain")).reference is None  # photos alone: no ATE
    (scene / "prepare.toml").write_text("max_long_sid = 1440\n")
    with pytest.raises(harness.BenchError, match="unknown config key.*max_long_sid"):
        bench.photo_set(scene)
    (scene / "reference").symlink_to(tmp_path / "gone")
    with pytest.raises(harness.BenchError, match="which is not there"):
        bench.photo_set(scene)
    (tmp_path / "empty").mkdir()
    with pytest.raises(harness.BenchError, match="holds no photos"):
        bench.photo_set(tmp_path / "empty")
    with pytest.raises(harness.BenchError, match="unknown variant.*octave7"):
        harness.cases(bench.BENCHMARK, tmp_path, [str(scene)], ["default+octave7"])
    variants = [c.variant for c in harness.cases(bench.BENCHMARK, tmp_path, [str(scene)], ["sfm+no_depth", "sift"])]
    assert variants == ["sfm+no_depth", "sift"]


def test_paths_and_the_ate_against_a_reference_that_turns_a_run_of_its_photos_around(tmp_path, monkeypatch):
    """The reference turns photos 3-5 half a turn about the vertical and puts them across the room: two turns over
    150 degrees in its path; the cameras found agree with it (scaled and moved) on each placement on its own."""
    n = 8
    c2w = np.tile(np.eye(4)[:3], (n, 1, 1))
    c2w[:, 0, 3] = np.arange(n, dtype=float)
    c2w[:, 1, 3] = np.sin(np.arange(n))
    ref = c2w.copy()
    ref[3:6, :, :3] = np.diag([-1.0, 1.0, -1.0])
    ref[3:6, 2, 3] += 5.0
    names = [f"{i:02d}" for i in range(n)]
    found = c2w.copy()
    found[:, :, 3] = 2.0 * c2w[:, :, 3] + 1.0
    assert bench.path_jumps(ref, "r_")["r_turns_over_150"] == 2 and bench.path_jumps(found)["turns_over_150"] == 0
    monkeypatch.setattr(bench, "poses_by_name", lambda _: (names, ref))
    got = bench.against(tmp_path, names, found)
    assert got["ate_images"] == n and got["reference_turns_over_150"] == 2 and got["ate_share_pct"] > 1.0
    assert got["ate_run0_share_pct"] < 1e-6 and got["ate_run1_share_pct"] < 1e-6  # each placement on its own
    monkeypatch.setattr(bench, "poses_by_name", lambda _: (names[:3], ref[:3]))
    assert "ate_run0_share_pct" not in bench.against(tmp_path, names, found)  # no turn among 00-02
    monkeypatch.setattr(bench, "poses_by_name", lambda _: (["x0", "x1", "01", "02"], ref[:4]))  # two in common
    with pytest.raises(harness.BenchError, match="places 2 of the 8 photos"):
        bench.against(tmp_path, names, found)
