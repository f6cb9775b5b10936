"""The published benchmarks in one command each (scripts/bench_3dovs.py, scripts/bench_lerf_ovs.py) on generated
scenes written in the datasets' layouts, their one-line refusals before any work, and LangSplat's LERF-OVS label
reader and scores (ovseg3d.data.lerf_ovs) on hand-made cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_script
from PIL import Image

from ovseg3d.data.lerf_ovs import (
    frame_scores,
    localisation_hit,
    mask_iou,
    mask_polygon,
    objects_from_maps,
    polygon_mask,
    read_frame_label,
    read_labels,
    relevancy_mask,
    summarise,
    write_frame_label,
)
from ovseg3d.synth import SynthConfig, synthesize

SMALL = dict(n_views=8, width=80, height=60, supersample=1, n_annotated=2)
# the tiny preset, and a sparser crop grid for the simulated teacher (a quarter of its crops: seconds, not ten)
RUN = ["--preset", "tiny", "--teacher", "synthetic", "--device", "cpu", "--set", "teachers.clip_stride=0.5"]


@pytest.fixture(scope="module")
def scripts():
    return load_script("bench_3dovs"), load_script("bench_lerf_ovs")


def lerf_dataset(root: Path, scene: str = "ramen", frames: tuple[int, ...] = (1, 4)) -> Path:
    """A generated COLMAP scene at ``root/scene`` and LangSplat labels of ``frames`` at ``root/label/scene`` (polygons
    and boxes of the scene's instance maps, the frame's image beside), plus one label frame that is not in the scene."""
    folder = synthesize(SynthConfig(format="colmap", seed=2, **SMALL), root / scene)  # type: ignore[arg-type]
    classes = (folder / "segmentations" / "classes.txt").read_text().split("\n")
    classes = [c for c in classes if c]
    labels = root / "label" / scene
    for i in frames:
        image = sorted((folder / "images").iterdir())[i]
        inst = np.asarray(Image.open(folder / "instances" / f"{image.stem}.png")).astype(np.int64)
        lab = np.asarray(Image.open(folder / "labels" / f"{image.stem}.png"))
        objects = objects_from_maps(inst, lab, classes)
        assert objects
        write_frame_label(labels / f"{image.stem}.json", image.name, inst.shape[1], inst.shape[0], objects)
        shutil.copyfile(image, labels / image.name)
    write_frame_label(labels / "frame_99999.json", "frame_99999.jpg", 80, 60, objects)
    return root


def test_3dovs_bench_runs_a_generated_scene_to_a_table(scripts, tmp_path, capsys):
    bench, _ = scripts
    synthesize(SynthConfig(format="llff", seed=1, **SMALL), tmp_path / "data" / "bed")  # type: ignore[arg-type]
    out = tmp_path / "3dovs.json"
    argv = [str(tmp_path / "data"), *RUN, "--output", str(tmp_path / "runs"), "--json", str(out)]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "3D-OVS dataset, preset tiny, teacher: simulated" in table
    row = next(line for line in table.splitlines() if line.startswith("bed "))
    assert "89.5" in row and "92.5" in row  # the published 3D-OVS and LangSplat figures beside ours
    result = json.loads(out.read_text())
    bed = result["scenes"]["bed"]
    assert (
        bed["status"] == "done" and bed["teacher"]["kind"] == "synthetic" and bed["teacher"]["weights"] == "simulated"
    )
    assert 0 <= bed["miou"] <= 100 and 0 <= bed["accuracy"] <= 100 and 0 <= bed["teacher_miou"] <= 100
    assert bed["published_miou"] == {"3D-OVS": 89.5, "LangSplat": 92.5}
    assert bed["n_annotated_views"] == 2 and set(bed["stage_seconds"]) >= {"geometry", "distill", "eval"}


def test_lerf_ovs_bench_runs_a_generated_scene_to_a_table(scripts, tmp_path, capsys):
    _, bench = scripts
    data = lerf_dataset(tmp_path / "data")
    out = tmp_path / "lerf.json"
    argv = [str(data), *RUN, "--output", str(tmp_path / "runs"), "--json", str(out), "--smooth-px", "8"]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "LERF-OVS (2D protocol), preset tiny, teacher: simulated" in table
    row = next(line for line in table.splitlines() if line.startswith("ramen "))
    assert "62.0" in row and "73.2" in row and "28.2" in row and "51.2" in row  # LERF's and LangSplat's figures
    assert "label frames not in the scene (left out): frame_99999.jpg" in table
    ramen = json.loads(out.read_text())["scenes"]["ramen"]
    assert ramen["status"] == "done" and ramen["teacher"]["label"] == "simulated, persistent errors"
    assert 0 <= ramen["localisation"] <= 100 and 0 <= ramen["miou"] <= 100
    assert ramen["frames_not_in_scene"] == ["frame_99999.jpg"] and len(ramen["frames"]) == 2
    pairs = sum(len(f["queries"]) for f in ramen["frames"].values())
    assert ramen["n_queries"] == pairs > 0
    # the label polygons themselves, given as the relevancy, find every object
    labels = read_labels(data / "label" / "ramen")
    truth = {f.name: frame_scores({c: m.astype(float) for c, m in f.masks.items()}, f, smooth_px=8) for f in labels}
    assert summarise(truth)["localisation"] == 100.0


@pytest.mark.parametrize("which", [0, 1])
def test_a_folder_without_scenes_is_one_line_and_exit_2(scripts, tmp_path, capsys, which):
    bench = scripts[which]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes").mkdir()
    assert bench.main([str(tmp_path / "empty"), "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no scene folders found" in err
    assert not (tmp_path / "runs").exists()


def test_missing_scene_parts_are_one_line_before_any_work(scripts, tmp_path, capsys):
    ovs, lerf = scripts
    (tmp_path / "a" / "bed" / "images").mkdir(parents=True)  # no photo, no poses, no labels
    assert ovs.main([str(tmp_path / "a"), "--teacher", "synthetic", "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "bed: no images" in err and "no poses_bounds.npy" in err and "bed: no labels" in err
    (tmp_path / "b" / "ramen" / "sparse" / "0").mkdir(parents=True)
    assert lerf.main([str(tmp_path / "b"), "--teacher", "synthetic", "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no COLMAP model" in err and "ramen: no labels" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("which", [0, 1])
def test_clip_weights_that_are_not_there_are_one_line_and_exit_2(scripts, tmp_path, capsys, which):
    bench = scripts[which]
    if which == 0:
        synthesize(
            SynthConfig(format="llff", seed=1, n_views=3, width=16, height=12, n_annotated=1), tmp_path / "d" / "bed"
        )
    else:
        lerf_dataset(tmp_path / "d", frames=(1,))
    clip, dino = tmp_path / "no_clip", tmp_path / "no_dino"  # local paths: no hub is asked
    argv = [str(tmp_path / "d"), "--teacher", "clip", "--clip-model", str(clip), "--dino-model", str(dino)]
    assert bench.main([*argv, "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--clip-model" in err and "--dino-model" in err
    assert str(clip) in err and str(dino) in err
    assert not (tmp_path / "runs").exists()  # nothing ran
    assert not any((tmp_path / "d").glob("*/features"))  # no teacher ran either


# ------------------------------------------------------------------------------------------------ labels and scores


def test_label_reader_joins_a_categorys_objects(tmp_path):
    objects = [
        {"category": "cup", "bbox": [2, 2, 5, 5], "segmentation": [[2, 2], [5, 2], [5, 5], [2, 5]]},
        {"category": "cup", "bbox": [[10, 1], [12, 3]], "segmentation": [[10, 1], [12, 1], [12, 3], [10, 3]]},
        {"category": "plate", "bbox": [0, 8, 19, 9], "segmentation": [[0, 8], [19, 8], [19, 9], [0, 9]]},
    ]
    path = write_frame_label(tmp_path / "label" / "s" / "frame_00007.json", "frame_00007.jpg", 20, 10, objects)
    label = read_frame_label(path)
    assert (label.name, label.stem, label.width, label.height) == ("frame_00007.jpg", "frame_00007", 20, 10)
    assert label.masks["cup"].shape == (10, 20) and label.masks["cup"].sum() == 16 + 9
    assert label.masks["plate"].sum() == 40
    np.testing.assert_array_equal(label.boxes["cup"], [[2, 2, 5, 5], [10, 1, 12, 3]])
    assert [f.name for f in read_labels(path.parent)] == ["frame_00007.jpg"]
    path.write_text('{"info": {"name": "x.jpg"}}')
    with pytest.raises(Exception, match="not a LangSplat LERF-OVS label file"):
        read_frame_label(path)


def test_mask_polygon_round_trips_a_row_convex_mask():
    mask = np.zeros((12, 16), bool)
    mask[3:9, 4:10] = True
    mask[5, 2:12] = True
    assert (polygon_mask(mask_polygon(mask), 16, 12) == mask).all()
    assert mask_polygon(np.zeros((4, 4), bool)) == []


def test_objects_from_maps_take_each_instances_class():
    inst = np.zeros((20, 30), np.int64)
    inst[2:8, 3:9], inst[10:18, 15:25] = 1, 2
    lab = np.full((20, 30), 255, np.uint8)
    lab[inst == 1], lab[inst == 2] = 0, 1
    objects = objects_from_maps(inst, lab, ["mug", "book"])
    assert [(o["category"], o["bbox"]) for o in objects] == [("mug", [3, 2, 8, 7]), ("book", [15, 10, 24, 17])]


def test_localisation_hit_is_the_smoothed_peak_inside_a_box():
    rel = np.full((60, 80), 0.2)
    rel[40:50, 60:70] = 0.9  # the peak
    rel[5, 5] = 1.0  # one bright pixel: the box mean outweighs it
    assert localisation_hit(rel, np.array([[58, 38, 72, 52]]), smooth_px=5)
    assert not localisation_hit(rel, np.array([[0, 0, 20, 20]]), smooth_px=5)
    assert localisation_hit(rel, np.array([[0, 0, 20, 20], [72, 52, 58, 38]]), smooth_px=5)  # any box, either order
    assert localisation_hit(rel, np.array([[0, 0, 10, 10]]), smooth_px=1)  # no smoothing: the bright pixel wins


def test_relevancy_mask_and_iou_of_a_clean_map():
    gt = np.zeros((60, 80), bool)
    gt[20:40, 20:50] = True
    rel = np.where(gt, 0.9, 0.1)
    assert mask_iou(relevancy_mask(rel, smooth_px=1, vote_radius=0), gt) == 1.0
    assert 0.95 < mask_iou(relevancy_mask(rel, smooth_px=1), gt) < 1.0  # the majority vote rounds the corners
    assert mask_iou(np.zeros_like(gt), gt) == 0.0 and mask_iou(np.zeros_like(gt), np.zeros_like(gt)) == 0.0


def test_frame_scores_and_summary(tmp_path):
    objects = [{"category": "cup", "bbox": [20, 20, 49, 39], "segmentation": [[20, 20], [49, 20], [49, 39], [20, 39]]}]
    objects.append({"category": "fork", "bbox": [0, 0, 9, 9], "segmentation": [[0, 0], [9, 0], [9, 9], [0, 9]]})
    label = read_frame_label(write_frame_label(tmp_path / "f.json", "f.jpg", 80, 60, objects))
    cup = np.where(label.masks["cup"], 0.9, 0.1)
    scores = frame_scores({"cup": cup, "fork": cup}, label, smooth_px=1)  # the fork's map shows the cup
    assert scores["cup"]["hit"] is True and scores["cup"]["iou"] > 0.95
    assert scores["fork"]["hit"] is False and scores["fork"]["iou"] == 0.0
    cup_iou = round(100 * scores["cup"]["iou"] / 2, 2)
    assert summarise({"f.jpg": scores}) == {"localisation": 50.0, "miou": cup_iou, "n_queries": 2}
