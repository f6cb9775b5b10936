"""``ovseg3d run``: one command from a scene (or photos) to a labelled cloud with CLIP features and boxes, and
``--classes`` for a scene without ``segmentations/classes.txt``. Tiny random CLIP / DINO models (no downloads)."""

from __future__ import annotations

import json
import shutil
import tomllib

import numpy as np
import pytest
from tiny_models import save_tiny_clip, save_tiny_dino

from ovseg3d.cli import main
from ovseg3d.data.loader import load_scene, parse_classes

TINY_SCENE = ["--width", "40", "--height", "30", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A COLMAP scene as a user's capture comes out of ``prepare``: photos and poses, no classes, no masks; and
    tiny CLIP and DINO models to teach it."""
    root = tmp_path_factory.mktemp("run_cmd")
    assert main(["synth", str(root / "synth"), *TINY_SCENE, "--format", "colmap"]) == 0
    scene = root / "plain"
    scene.mkdir()
    for part in ("images", "sparse"):
        shutil.copytree(root / "synth" / part, scene / part)
    layers = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)
    clip = save_tiny_clip(root / "clip", image_size=32, vision=dict(patch_size=8, **layers))
    dino = save_tiny_dino(root / "dino", "vit", sizes=dict(patch_size=4, num_attention_heads=2))
    teacher = ["--teacher", "clip", "--clip-model", str(clip), "--dino-model", str(dino)]
    return root, scene, ["--preset", "tiny", "--device", "cpu", *teacher]


def test_parse_classes_splits_commas_and_drops_repeats():
    assert parse_classes(["chair, table", " potted  plant ", "chair", ",,"]) == ["chair", "table", "potted plant"]


def test_classes_for_a_scene_without_a_classes_file_and_a_contradiction_is_one_line(plain, capsys):
    root, scene, _ = plain
    assert load_scene(scene, classes=["mug, book"]).classes == ["mug", "book"]
    synth = root / "synth"  # has segmentations/classes.txt
    assert load_scene(synth, classes=load_scene(synth).classes).classes == load_scene(synth).classes
    assert main(["train", str(synth), "--output", str(root / "x"), "--preset", "tiny", "--classes", "chair"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "classes.txt names the classes" in err and "--classes" in err


def test_run_labels_and_detects_the_given_classes_and_a_second_run_redoes_nothing(plain, capsys):
    root, scene, options = plain
    run = root / "run"
    assert main(["run", str(scene), "--output", str(run), "--classes", "chair, table", *options]) == 0
    out = capsys.readouterr().out
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["classes"] == ["chair", "table"]  # kept in the run
    cloud = json.loads((run / "export" / "points.json").read_text())
    assert cloud["classes"] == ["chair", "table"] and cloud["n_points"] > 0
    assert "feature" in np.load(run / "export" / "points.npz")  # the viewer answers queries at once
    assert (run / "detections.json").exists()
    for stage in ("teachers", "geometry", "distill", "export", "detect", "total"):
        assert any(line.split()[:1] == [stage] for line in out.splitlines()), stage
    assert f"ovseg3d view {run}" in out
    stamp = (run / "export" / "points.npz").stat().st_mtime_ns
    assert main(["run", str(scene), "--output", str(run), "--classes", "chair, table", *options]) == 0
    assert (run / "export" / "points.npz").stat().st_mtime_ns == stamp  # every stage was current
    capsys.readouterr()
    assert main(["export", str(run), "--classes", "mug", "--device", "cpu", "--output", str(root / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained with the classes chair, table" in err


def test_run_without_classes_keeps_the_feature_field_and_says_so(plain, capsys):
    root, scene, options = plain
    run = root / "run_nc"
    assert main(["run", str(scene), "--output", str(run), *options]) == 0
    said = capsys.readouterr()
    assert "no classes" in said.out + said.err and "free-text queries" in said.out + said.err
    assert not (run / "detections.json").exists()
    assert "feature" in np.load(run / "export" / "points.npz")
    # named afterwards: detect labels the points from their CLIP features; export reads the feature field
    assert main(["detect", str(run), "--classes", "chair, table", "--device", "cpu"]) == 0
    said = capsys.readouterr()
    assert "labelled chair, table from their CLIP features" in said.out + said.err
    assert (run / "detections.json").exists()
    assert main(["export", str(run), "--classes", "chair, table", "--device", "cpu"]) == 0
    cloud = json.loads((run / "export" / "points.json").read_text())
    assert cloud["classes"] == ["chair", "table"]
    labels = np.load(run / "export" / "points.npz")["label"]
    assert labels.min() >= 0 and labels.max() <= 1


def test_run_refuses_what_it_cannot_use_in_one_line(plain, tmp_path, capsys):
    _, scene, _ = plain
    for args, words in (
        (["run", str(tmp_path / "nothing"), "--output", str(tmp_path / "r")], "not found"),
        (["run", str(scene)], "give the run folder"),
        (["run", "--output", str(tmp_path / "r")], "give the photos, video or scene folder"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert main(["run", "--help"]) == 0 and "--classes" in capsys.readouterr().out


def test_run_prepares_a_video_with_the_presets_prepare_table_and_frames_over_it(tmp_path):
    """The cpu preset's [prepare] table (a laptop's budget) reaches prepare, --frames goes over it, one line says
    what was taken; a preset without a table (tiny) keeps prepare's own defaults."""
    from pathlib import Path

    from ovseg3d.cli import run_prepare_config
    from ovseg3d.config import preset_prepare, resolve_base
    from ovseg3d.errors import UsageError
    from ovseg3d.prepare import PrepareConfig

    table = preset_prepare("cpu")
    assert table and set(table) <= {f for f in PrepareConfig.__dataclass_fields__}
    resolve_base("cpu", None)  # the table is not read as a training setting
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    lines: list[str] = []
    cfg = run_prepare_config("cpu", None, video, log=lines.append)
    assert (cfg.frames, cfg.max_long_side) == (table["frames"], table["max_long_side"])
    assert len(lines) == 1 and f"frames = {table['frames']}" in lines[0]
    assert run_prepare_config("cpu", 24, video, log=lines.append).frames == 24
    assert run_prepare_config("tiny", None, video, log=lines.append) == PrepareConfig()
    with pytest.raises(UsageError, match="--frames 2"):
        run_prepare_config("cpu", 2, video, log=lines.append)
    photos = run_prepare_config("cpu", None, Path(tmp_path), log=lines.append)  # a folder: frames not said
    assert photos.max_long_side == table["max_long_side"] and "frames" not in lines[-1]
