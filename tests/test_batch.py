"""``ovseg3d batch``: scenes named by folder, glob or list file; a broken scene fails alone in one line while the
others finish; summary.json / summary.csv name it; the same batch again does no work; Ray gives the same
statuses as the in-process fallback."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ovseg3d import batch
from ovseg3d.batch import find_scenes, format_summary, run_batch, run_names, write_summary
from ovseg3d.cli import main
from ovseg3d.config import resolve_base
from ovseg3d.errors import UsageError
from ovseg3d.export import ExportOptions
from ovseg3d.pipeline import STAGES as STAGE_NAMES

SCENE = ["--width", "48", "--height", "36", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]
STAGES = ["teachers", "geometry"]
BATCH = ["--preset", "tiny", "--steps", "10", "--device", "cpu", "--to-stage", "geometry"]


def _config():
    return dataclasses.replace(resolve_base("tiny", None), steps=10, device="cpu")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    """Two good generated scenes and a broken one (a copy of the first with one image deleted)."""
    root = tmp_path_factory.mktemp("batch_scenes")
    good = []
    for i, name in enumerate(("kitchen", "office")):
        assert main(["synth", str(root / name), *SCENE, "--seed", str(i)]) == 0
        good.append(root / name)
    broken = root / "broken"
    shutil.copytree(good[0], broken)
    (broken / "images" / "03.png").unlink()
    return [*good, broken]


@pytest.fixture(scope="module")
def local_batch(scenes, tmp_path_factory):
    """The three scenes through teachers..geometry in this process (no Ray), and their summary."""
    runs = tmp_path_factory.mktemp("batch_runs") / "runs"
    results = run_batch(scenes, runs, STAGES, _config(), use_ray=False, log=lambda _: None, progress=False)
    write_summary(results, runs)
    return runs, results


def test_find_scenes_folder_glob_and_list_file(scenes, tmp_path, monkeypatch):
    root = scenes[0].parent
    (root / "notes.txt").write_text("not a scene\n")  # a file that the glob matches is not a scene
    assert find_scenes([str(scenes[1])]) == [scenes[1]]
    assert find_scenes([str(root / "*")]) == sorted(scenes)  # folders only, sorted
    # a list file: comments, blank lines, a path relative to the list's folder, a glob, a duplicate
    listing = tmp_path / "lists" / "batch.txt"
    listing.parent.mkdir()
    relative = Path("..") / ".." / scenes[0].relative_to(tmp_path.parent)
    assert (listing.parent / relative).is_dir()
    listing.write_text(f"# my scenes\n\n{scenes[2]}  # the broken one\n{relative}\n{root}/o*\n{scenes[0]}\n")
    assert [p.resolve() for p in find_scenes([str(listing)])] == [scenes[2], scenes[0], scenes[1]]
    # specs in order, each scene once
    assert [p.resolve() for p in find_scenes([str(scenes[1]), str(listing), str(root / "*")])] == [
        scenes[1],
        scenes[2],
        scenes[0],
    ]
    monkeypatch.chdir(root)
    assert find_scenes(["k*"]) == [Path("kitchen")]
    for spec, words in (("nowhere", "no such scene folder"), ("z*", "matches no folder")):
        with pytest.raises(UsageError, match=words):
            find_scenes([spec])
    listing.write_text("kitchen\nmissing_scene\n")
    with pytest.raises(UsageError) as err:
        find_scenes([str(listing)])
    assert f"{listing}:2: missing_scene" in str(err.value) and "\n" not in str(err.value)


def test_run_names_are_unique_and_stable():
    scenes = [Path("a/room"), Path("b/room"), Path("c/hall"), Path("d/my scene"), Path("e/room")]
    names = run_names(scenes)
    assert names == ["a-room", "b-room", "hall", "my_scene", "e-room"]
    assert run_names(scenes) == names


def test_one_failing_scene_does_not_stop_the_others(local_batch, scenes):
    runs, results = local_batch
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert [Path(r.run).name for r in results] == ["kitchen", "office", "broken"]
    broken = results[2]
    # the scene's own one-line error (the images folder holds fewer images than the poses), not a traceback
    assert "\n" not in broken.error and str(scenes[2] / "images") in broken.error and "7 images" in broken.error
    for r in results[:2]:
        assert r.error == "" and r.skipped == [] and all(r.seconds[s] > 0 for s in STAGES)
        assert (Path(r.run) / "stages.json").is_file()
    rows = json.loads((runs / "summary.json").read_text())
    assert [(row["run"], row["status"]) for row in rows] == [(r.run, r.status) for r in results]
    assert rows[2]["error"] == broken.error and rows[2]["scene"] == str(scenes[2])
    assert rows[0]["seconds_total"] == pytest.approx(sum(results[0].seconds.values()), abs=0.01)
    with open(runs / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["status"] for row in table] == ["done", "done", "failed"]
    assert table[2]["error"] == broken.error and table[0]["seconds_geometry"] == str(results[0].seconds["geometry"])
    text = format_summary(results)
    assert broken.failed_stage == "teachers" and rows[2]["failed_stage"] == "teachers"
    assert "2 done, 1 failed" in text and f"failed: broken ({scenes[2]}) at teachers: {broken.error}" in text


def test_a_failed_export_keeps_the_scores_of_the_stages_that_ran(scenes, tmp_path):
    """An export that finds no point (no voxel can be seen by 10,000 views, and no second try with relaxed
    thresholds) fails the scene at export; detect,
    which reads the export, does not run; eval, which reads only the checkpoint, does, and its scores stay in
    the result and the summary."""
    runs = tmp_path / "runs"
    impossible = ExportOptions(min_views=10_000, relax_below=0)
    results = run_batch(scenes[:1], runs, list(STAGE_NAMES), _config(), impossible, use_ray=False, progress=False)
    (r,) = results
    assert r.status == "failed" and r.failed_stage == "export" and "point cloud is empty" in r.error
    assert "detect" not in r.seconds and r.seconds["eval"] > 0
    assert r.metrics["psnr"] > 5 and "miou" in r.metrics
    write_summary(results, runs)
    (row,) = json.loads((runs / "summary.json").read_text())
    assert row["failed_stage"] == "export" and row["psnr"] == r.metrics["psnr"]
    assert "at export: " in format_summary(results)


def test_the_same_batch_again_does_no_work(local_batch, scenes, capsys):
    runs, first = local_batch
    # through the command this time: exit 1 (a scene failed), the summary rewritten
    code = main(["batch", *map(str, scenes), "--output", str(runs), *BATCH, "--no-ray"])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 done, 1 failed" in out and "failed: broken" in out
    rows = json.loads((runs / "summary.json").read_text())
    assert [row["status"] for row in rows] == ["done", "done", "failed"]
    for row in rows[:2]:
        assert row["skipped"] == STAGES and row["seconds_teachers"] == 0 and row["seconds_geometry"] == 0
        assert row["seconds_total"] == 0
    assert rows[2]["error"] == first[2].error


def test_a_bug_in_one_scene_is_its_class_and_first_line(scenes, tmp_path, monkeypatch):
    real = batch.run_scene

    def run_scene(scene, run, *args, **kwargs):
        if Path(scene).name == "office":
            raise ZeroDivisionError("division by zero\nsecond line")
        return real(scene, run, *args, **kwargs)

    monkeypatch.setattr(batch, "run_scene", run_scene)
    logged: list[str] = []
    results = run_batch(scenes[:2], tmp_path / "runs", ["teachers"], _config(), use_ray=False, log=logged.append)
    assert [r.status for r in results] == ["done", "failed"]
    assert results[1].error == "ZeroDivisionError: division by zero"
    assert any("Traceback" in line and "ZeroDivisionError" in line for line in logged)  # a bug shows its traceback


def test_ray_gives_the_same_statuses(local_batch, scenes, tmp_path):
    ray = pytest.importorskip("ray")
    _, local = local_batch
    logged: list[str] = []
    results = run_batch(scenes, tmp_path / "runs", STAGES, _config(), use_ray=True, log=logged.append, progress=False)
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert any("local Ray" in line for line in logged)
    assert [(r.status, r.error) for r in results] == [(r.status, r.error) for r in local]
    assert [Path(r.run).name for r in results] == ["kitchen", "office", "broken"]
    assert all(set(r.seconds) == set(STAGES) and r.skipped == [] for r in results[:2])
    assert not (tmp_path / "runs" / ".batch").exists()


def test_an_interrupted_scene_continues_and_its_current_stages_stay_at_zero(local_batch, scenes, tmp_path):
    runs, _ = local_batch
    copy = tmp_path / "runs"
    shutil.copytree(runs / "kitchen", copy / "kitchen")  # its config.toml names the scene by its absolute path
    records = json.loads((copy / "kitchen" / "stages.json").read_text())
    del records["geometry"]  # as if killed before the geometry stage was recorded
    (copy / "kitchen" / "stages.json").write_text(json.dumps(records))
    (result,) = run_batch(scenes[:1], copy, STAGES, _config(), use_ray=False, log=lambda _: None, progress=False)
    assert result.status == "done" and result.skipped == ["teachers"]
    assert result.seconds["teachers"] == 0 and result.seconds["geometry"] > 0  # reading the cache counts there
    after = json.loads((copy / "kitchen" / "stages.json").read_text())
    assert after["teachers"] == records["teachers"] and "geometry" in after
