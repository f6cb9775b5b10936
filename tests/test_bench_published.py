"""The published benchmarks (ovseg3d.bench.published: the 3D-OVS dataset and LERF-OVS) on generated scenes written
in the datasets' layouts, their one-line refusals before any work, and LangSplat's LERF-OVS label reader and scores
(ovseg3d.data.lerf_ovs) on hand-made cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovseg3d.bench import cli, harness, published
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
# the simulated teacher with a sparser crop grid (a quarter of its crops: seconds, not ten)
SETS = ["teachers.kind=synthetic", "teachers.clip_stride=0.5"]


def bench(tmp_path: Path, scenes: list, variants: list[str] | None = None, sets: list[str] = SETS) -> dict:
    """The benchmark on ``scenes`` with the tiny preset, as ``ovseg3d bench run published`` runs it."""
    out = tmp_path / "published.json"
    return harness.run(
        published.BENCHMARK, out, tmp_path / "work", [str(s) for s in scenes], variants, sets, 1, "cpu", "test", "tiny"
    )


def refused(tmp_path: Path, scenes: list, sets: list[str] = SETS) -> str:
    """The one line (a UsageError: ``ovseg3d bench`` exits 2 with it) the benchmark refuses ``scenes`` with, before
    any work: no run folder, no result file."""
    with pytest.raises(harness.BenchError) as info:
        bench(tmp_path, scenes, sets=sets)
    assert not (tmp_path / "work" / "published").exists() and not (tmp_path / "published.json").exists()
    assert "\n" not in str(info.value)
    return str(info.value)


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
    return folder


def test_3dovs_scene_runs_to_figures_beside_the_published(tmp_path, capsys):
    bed = synthesize(SynthConfig(format="llff", seed=1, **SMALL), tmp_path / "data" / "bed")  # type: ignore[arg-type]
    data = bench(tmp_path, [bed])
    assert "bed (3D-OVS): mIoU" in capsys.readouterr().out
    fig = {k: v["median"] for k, v in data["figures"].items()}
    assert data["teacher"]["kind"] == "synthetic" and data["teacher"]["errors"] == "persistent"
    assert 0 <= fig["bed/default/miou"] <= 100 and 0 <= fig["bed/default/accuracy"] <= 100
    assert 0 <= fig["bed/default/teacher_miou"] <= 100 and fig["bed/default/n_annotated_views"] == 2
    assert {"bed/default/geometry_seconds", "bed/default/distill_seconds", "bed/default/eval_seconds"} <= set(fig)
    assert any(k.startswith("bed/default/iou_") for k in fig) and not any("localisation" in k for k in fig)
    table = published.markdown_tables(data)
    assert table.startswith("3D-OVS, teacher synthetic, persistent") and "LERF-OVS" not in table
    row = next(line for line in table.splitlines() if line.startswith("| bed |"))
    assert "| 89.5 | 92.5 |" in row  # the published 3D-OVS and LangSplat figures beside ours
    assert "3D-OVS 86.8, GOI 90.6, LangSplat 93.4, GVR 95.4" in table


def test_lerf_ovs_scene_runs_once_and_each_variant_scores_it(tmp_path, capsys):
    ramen = lerf_dataset(tmp_path / "data")
    data = bench(tmp_path, [ramen], ["smooth8", "default"])
    assert "ramen: label frames not in the scene (left out): frame_99999.jpg" in capsys.readouterr().out
    fig = {k: v["median"] for k, v in data["figures"].items()}
    assert fig["ramen/smooth8/geometry_seconds"] > 0 and fig["ramen/default/geometry_seconds"] == 0  # one training
    for variant in ("smooth8", "default"):
        assert 0 <= fig[f"ramen/{variant}/localisation"] <= 100 and 0 <= fig[f"ramen/{variant}/miou"] <= 100
        assert fig[f"ramen/{variant}/frames"] == 2 and fig[f"ramen/{variant}/frames_not_in_scene"] == 1
    scores = json.loads((tmp_path / "work" / "published" / "ramen-s0" / "lerf_ovs-smooth8.json").read_text())
    assert scores["smooth_px"] == 8 and scores["mask_threshold"] == 0.4
    assert scores["frames_not_in_scene"] == ["frame_99999.jpg"] and len(scores["frames"]) == 2
    assert fig["ramen/smooth8/n_queries"] == sum(len(f["queries"]) for f in scores["frames"].values()) > 0
    row = next(line for line in published.markdown_tables(data).splitlines() if line.startswith("| ramen (smooth8) |"))
    queries = f"{fig['ramen/smooth8/n_queries']:.0f}"
    assert f"| 62.0 | 73.2 | 28.2 | 51.2 | {queries} | 1 |" in row  # LERF's and LangSplat's figures, the frame left out
    # the label polygons themselves, given as the relevancy, find every object
    labels = read_labels(tmp_path / "data" / "label" / "ramen")
    truth = {f.name: frame_scores({c: m.astype(float) for c, m in f.masks.items()}, f, smooth_px=8) for f in labels}
    assert summarise(truth)["localisation"] == 100.0


def test_scenes_are_folders_given_or_one_line(tmp_path):
    assert "ovseg3d.bench.published" in cli.modules()  # ovseg3d bench run published
    assert "no default scene" in refused(tmp_path, [])
    assert "neither a name nor a folder" in refused(tmp_path, [tmp_path / "nowhere"])


def test_missing_scene_parts_are_one_line_before_any_work(tmp_path):
    (tmp_path / "a" / "bed" / "images").mkdir(parents=True)  # no photo, no poses, no labels
    err = refused(tmp_path, [tmp_path / "a" / "bed"])
    assert "bed: no images" in err and "no poses_bounds.npy" in err and "bed: no labels" in err
    assert "labels/ and instances/ of every image" in err
    (tmp_path / "b" / "ramen" / "sparse" / "0").mkdir(parents=True)
    err = refused(tmp_path, [tmp_path / "b" / "ramen"])
    assert "no COLMAP model" in err and "ramen: no labels" in err and "poses_bounds" not in err


@pytest.mark.parametrize("lerf", [False, True])
def test_clip_weights_that_are_not_there_are_one_line(tmp_path, lerf):
    if lerf:
        scene = lerf_dataset(tmp_path / "d", frames=(1,))
    else:
        config = SynthConfig(format="llff", seed=1, n_views=3, width=16, height=12, n_annotated=1)
        scene = synthesize(config, tmp_path / "d" / "bed")
    clip, dino = tmp_path / "no_clip", tmp_path / "no_dino"  # local paths: no hub is asked
    err = refused(tmp_path, [scene], [f"teachers.clip_model={clip}", f"teachers.dino_model={dino}"])  # CLIP + DINO
    assert "--set teachers.clip_model=/path" in err and "--set teachers.dino_model=/path" in err
    assert str(clip) in err and str(dino) in err
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
