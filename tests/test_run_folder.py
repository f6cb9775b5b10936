"""The run folder can be trusted: checkpoints are found by the order they were written (a finished run can be
extended), a damaged one is passed over, a run knows the scene it was made from, --resume refuses settings it
would ignore, a failed start leaves no dead folder behind, and log.jsonl stays continuous over resumes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ovseg3d.cli import main
from ovseg3d.run import (
    RunError,
    checkpoint_path,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)

TINY_SCENE = ["--width", "40", "--height", "30", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]
TINY = ["--preset", "tiny", "--device", "cpu"]


def _train(scene, run, *extra: str) -> int:
    return main(["train", str(scene), "--output", str(run), *TINY, *extra])


def _error(capsys) -> str:
    """The one error line of a failed command (progress bars aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ovseg3d ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes") / "llff"
    assert main(["synth", str(root), *TINY_SCENE]) == 0
    return root


@pytest.fixture(scope="module")
def plain_run(scene, tmp_path_factory):
    """20 tiny steps, no teacher: checkpoints at 10 and 20, log lines every 5 steps. Read-only."""
    run = tmp_path_factory.mktemp("runs") / "plain"
    assert _train(scene, run, "--teacher", "none") == 0
    return run


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# -- 1. checkpoints in the order written -----------------------------------------------------------------------


def test_extending_a_finished_distilled_run_keeps_its_new_steps(scene, tmp_path, capsys):
    """The distillation's checkpoints are numbered past the geometry's steps (geometry + distillation steps):
    extending the geometry used to write checkpoints that sorted before them and were deleted at once."""
    run = tmp_path / "run"
    assert _train(scene, run, "--steps", "10", "--teacher", "synthetic", "--distill-steps", "10") == 0
    before = load_checkpoint(latest_checkpoint(run))
    assert "semantic" in before and checkpoint_step(latest_checkpoint(run)) > 14
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--steps", "14", "--device", "cpu"]) == 0
    assert "done: " in capsys.readouterr().out
    latest = latest_checkpoint(run)
    state = load_checkpoint(latest)
    assert state["step"] >= 14  # the new geometry steps are in the run's newest checkpoint
    assert latest == list_checkpoints(run)[-1] and latest.name.startswith("ckpt_")
    assert "semantic" in state and state["semantic"]["step"] == 10  # distilled again on the new geometry
    assert load_checkpoint(run / "geometry.pt")["step"] == 14  # the field before the (new) distillation
    geometry = [r["step"] for r in _log(run) if r.get("stage") != "distill"]
    distill = [r["distill_step"] for r in _log(run) if r.get("stage") == "distill"]
    assert geometry == sorted(set(geometry)) and geometry[-1] == 14
    assert distill == sorted(set(distill)) and distill[-1] == 10  # the old distillation's lines are gone

    from ovseg3d.train import load_trainer

    assert load_trainer(run, "cpu").step == state["step"]


def test_an_interrupted_distillation_continues_and_a_finished_one_extends(scene, tmp_path):
    run = tmp_path / "run"
    args = ["--steps", "10", "--teacher", "synthetic", "--distill-steps", "10", "--checkpoint-every", "5"]
    assert _train(scene, run, *args) == 0
    assert latest_checkpoint(run) == checkpoint_path(run, checkpoint_step(latest_checkpoint(run)))
    list_checkpoints(run)[-1].unlink()  # stopped after distillation step 5's checkpoint
    geometry = load_checkpoint(run / "geometry.pt")
    assert main(["train", "--output", str(run), "--resume", "--device", "cpu"]) == 0
    distill = [r["distill_step"] for r in _log(run) if r.get("stage") == "distill"]
    assert distill == [5, 10]  # continued from step 5, its lines after it dropped
    assert torch.equal(load_checkpoint(run / "geometry.pt")["field"]["grid.params"], geometry["field"]["grid.params"])
    assert main(["train", "--output", str(run), "--resume", "--distill-steps", "15", "--device", "cpu"]) == 0
    distill = [r["distill_step"] for r in _log(run) if r.get("stage") == "distill"]
    assert distill == [5, 10, 15] and load_checkpoint(latest_checkpoint(run))["semantic"]["step"] == 15


def test_runs_with_step_named_checkpoints_still_load_and_extend(plain_run, tmp_path):
    run = _copy(plain_run, tmp_path / "old")
    for path in list_checkpoints(run):  # as ovseg3d named them before the counter
        path.rename(path.parent / f"step_{checkpoint_step(path):07d}.pt")
    assert latest_checkpoint(run).name == "step_0000020.pt"
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0
    assert json.loads((run / "eval.json").read_text())["step"] == 20
    assert main(["train", "--output", str(run), "--resume", "--steps", "25", "--device", "cpu"]) == 0
    names = [p.name for p in list_checkpoints(run)]
    assert names[-1].startswith("ckpt_") and load_checkpoint(latest_checkpoint(run))["step"] == 25
    assert len(names) == 2  # the older ones are pruned whatever their names


# -- 2. a damaged checkpoint -----------------------------------------------------------------------------------


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(plain_run, tmp_path, capsys):
    run = _copy(plain_run, tmp_path / "run")
    older, newest = list_checkpoints(run)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and newest.name in warnings[0] and older.name in warnings[0]
    assert json.loads((run / "eval.json").read_text())["step"] == 10
    # resuming continues from the intact one
    assert main(["train", "--output", str(run), "--resume", "--steps", "20", "--device", "cpu"]) == 0
    assert load_checkpoint(latest_checkpoint(run))["step"] == 20

    for path in list_checkpoints(run):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RunError, match="no readable checkpoint"):
        latest_checkpoint(run)
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert "no readable checkpoint" in _error(capsys)


# -- 3. what a run was made from ---------------------------------------------------------------------------------


def test_a_run_whose_scene_changed_is_refused_unless_forced(tmp_path, capsys):
    scene, run = tmp_path / "scene", tmp_path / "run"
    assert main(["synth", str(scene), *TINY_SCENE]) == 0
    assert _train(scene, run, "--steps", "4", "--teacher", "none") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["scene"] == str(scene.resolve()) and info["scene_fingerprint"]["images"] == 8
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0  # unchanged: accepted

    poses = np.load(scene / "poses_bounds.npy")
    np.save(scene / "poses_bounds.npy", poses * 1.0001)
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = _error(capsys)
    assert "poses_bounds.npy changed" in err and "--force" in err and "--output" in err

    shutil.rmtree(scene)  # regenerated with fewer views
    assert main(["synth", str(scene), *TINY_SCENE[:5], "4", *TINY_SCENE[6:]]) == 0
    capsys.readouterr()
    for command in (["eval", str(run)], ["render", str(run)], ["detect", str(run)]):
        assert main([*command, "--device", "cpu"]) == 2, command
        assert "4 images now, 8 at training" in _error(capsys), command
    assert main(["train", "--output", str(run), "--resume", "--steps", "6", "--device", "cpu"]) == 2
    assert "another --output" in _error(capsys)

    assert main(["eval", str(run), "--device", "cpu", "--no-renders", "--force"]) == 0
    assert sum("changed since" in line for line in capsys.readouterr().err.splitlines()) == 1

    del info["scene_fingerprint"]  # a run made before the fingerprint: no check
    (run / "run.json").write_text(json.dumps(info))
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0


@pytest.mark.parametrize(("fmt", "pose_file"), [("transforms", "transforms.json"), ("colmap", "sparse/0/images.bin")])
def test_the_fingerprint_sees_the_pose_files_of_every_format(tmp_path, fmt, pose_file):
    from ovseg3d.data.loader import load_scene
    from ovseg3d.data.scene import check_poses
    from ovseg3d.run import scene_changes, scene_fingerprint

    scene = tmp_path / fmt
    assert main(["synth", str(scene), *TINY_SCENE, "--format", fmt]) == 0
    check_poses(load_scene(scene))  # a good scene passes
    saved = scene_fingerprint(scene)
    assert saved["format"] == fmt and saved["images"] == 8 and saved["pose_files"][-1] == pose_file
    assert scene_changes(saved, scene_fingerprint(scene)) == []
    with open(scene / pose_file, "ab") as f:
        f.write(b" ")
    assert scene_changes(saved, scene_fingerprint(scene)) == [f"{' / '.join(saved['pose_files'])} changed"]
    image = sorted((scene / "images").iterdir())[0]
    image.rename(image.with_name("renamed" + image.suffix))
    assert any("image" in change for change in scene_changes(saved, scene_fingerprint(scene)))


def test_a_copied_scene_is_the_same_scene_and_an_edit_of_the_same_size_is_not(tmp_path, capsys):
    import os

    scene, run = tmp_path / "scene", tmp_path / "run"
    assert main(["synth", str(scene), *TINY_SCENE, "--format", "colmap"]) == 0
    assert _train(scene, run, "--steps", "2", "--teacher", "none") == 0
    for p in scene.rglob("*"):  # a copy without times kept (cp, git clone): every file newer
        os.utime(p, (2e9, 2e9))
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0
    assert "changed" not in capsys.readouterr().err
    image = sorted((scene / "images").iterdir())[0]
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # one byte of one photo: the same size, and the copy's time
    image.write_bytes(bytes(data))
    os.utime(image, (2e9, 2e9))
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 2
    err = _error(capsys)
    assert "model files changed (names, sizes or bytes)" in err and "sparse/0" not in err
    # a run saved before the bytes were kept: the model's other files' times were in its pose sha1, and it says so
    from ovseg3d.run import scene_changes, scene_fingerprint

    legacy = scene_fingerprint(scene, legacy=True)
    os.utime(scene / "sparse" / "0" / "points3D.bin", (1e9, 1e9))
    now = scene_fingerprint(scene, contents=False, legacy=True)
    assert scene_changes(legacy, now) == [
        "sparse/0/cameras.bin / sparse/0/images.bin or the model's other files changed"
    ]


def test_run_json_that_is_not_an_object_is_one_line(plain_run, tmp_path, capsys):
    run = _copy(plain_run, tmp_path / "run")
    (run / "run.json").write_text("[1, 2]")
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert "not an object" in _error(capsys)
    assert main(["train", "--output", str(run), "--resume", "--steps", "25", "--device", "cpu"]) == 2
    assert "run.json" in _error(capsys)


# -- 4. --resume with other settings ----------------------------------------------------------------------------


def test_resume_refuses_settings_it_would_ignore(plain_run, scene, tmp_path, capsys):
    run = _copy(plain_run, tmp_path / "run")
    resume = ["train", "--output", str(run), "--resume", "--device", "cpu"]
    other = tmp_path / "other"
    shutil.copytree(scene, other)
    config = tmp_path / "my.toml"
    config.write_text("n_levels = 6\n")
    cases = {
        ("--n-levels", "8"): "n_levels (saved 4, given 8)",
        ("--preset", "cpu"): "preset (saved tiny, given cpu)",
        ("--teacher", "synthetic"): "teachers.kind (saved none, given synthetic)",
        ("--config", str(config)): "n_levels (saved 4, given 6)",
    }
    capsys.readouterr()
    for flags, listed in cases.items():
        assert main([*resume, *flags]) == 2, flags
        err = _error(capsys)
        assert listed in err and "another --output" in err, err
    assert main(["train", str(other), "--output", str(run), "--resume", "--device", "cpu"]) == 2
    assert "scene (saved" in _error(capsys)

    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "run_format": 0}))
    assert main([*resume, "--steps", "25"]) == 2
    assert "run format" in _error(capsys)
    (run / "run.json").write_text(json.dumps(info))

    # what may change on resume, and the same values as saved, pass; nothing was written by the refusals
    assert len(list_checkpoints(run)) == 2
    args = ["--steps", "24", "--log-every", "2", "--checkpoint-every", "4", "--threads", "1", "--n-levels", "4"]
    args += ["--clip-batch", "8"]
    assert main(["train", str(scene), *TINY, "--output", str(run), "--resume", *args]) == 0
    assert load_checkpoint(latest_checkpoint(run))["step"] == 24

    from ovseg3d.config import TrainConfig
    from ovseg3d.pipeline import train

    train(TrainConfig(output=run, resume=True, steps=26, device="cpu"))  # the API: defaults are not "given"
    assert load_checkpoint(latest_checkpoint(run))["step"] == 26


# -- 5. no dead run folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--rays-per-step", "0"), "--rays-per-step 0"),
        (("--checkpoint-every", "0"), "--checkpoint-every 0"),
        (("--log-every", "0"), "--log-every 0"),
        (("--steps", "-1"), "--steps -1"),
        (("--lr", "0"), "--lr 0"),
        (("--eval-chunk", "-1"), "--eval-chunk -1"),
    ],
)
def test_bad_options_fail_before_anything_is_written(scene, tmp_path, capsys, flags, named):
    run = tmp_path / "run"
    assert _train(scene, run, "--teacher", "none", *flags) == 2
    assert named in _error(capsys)
    assert not run.exists()


@pytest.mark.parametrize("damage", ["zero rotation", "near = far = 0"])
def test_unusable_poses_are_one_line_naming_the_file_and_leave_no_run(scene, tmp_path, capsys, damage):
    bad = _copy(scene, tmp_path / "scene")
    poses = np.load(bad / "poses_bounds.npy")
    if damage == "zero rotation":
        poses[3, [0, 1, 2, 5, 6, 7, 10, 11, 12]] = 0.0
    else:
        poses[3, 15:17] = 0.0
    np.save(bad / "poses_bounds.npy", poses)
    run = tmp_path / "run"
    assert _train(bad, run, "--teacher", "none") == 2
    err = _error(capsys)
    assert "poses_bounds.npy" in err and "view 3" in err
    assert not run.exists()
    np.save(bad / "poses_bounds.npy", np.load(scene / "poses_bounds.npy"))  # fixed: the same command trains
    assert _train(bad, run, "--teacher", "none", "--steps", "2") == 0


def test_a_failed_first_step_leaves_no_run_folder(scene, tmp_path, monkeypatch, capsys):
    from ovseg3d.train import Trainer

    def fail(self):
        raise RuntimeError("boom")

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", fail)
    assert _train(scene, run, "--teacher", "none") != 0
    assert not run.exists()
    kept = tmp_path / "kept"  # a folder that was there before keeps what was in it, and only that
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert _train(scene, kept, "--teacher", "none") != 0
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    monkeypatch.undo()
    capsys.readouterr()


def test_a_dead_run_folder_left_by_an_older_ovseg3d_is_taken_over(plain_run, scene, tmp_path, capsys):
    run = _copy(plain_run, tmp_path / "dead")
    shutil.rmtree(run / "checkpoints")
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--device", "cpu"]) == 2
    err = _error(capsys)
    assert "no checkpoint" in err and "without --resume" in err
    assert _train(scene, run, "--teacher", "none", "--steps", "3") == 0
    assert load_checkpoint(latest_checkpoint(run))["step"] == 3
    assert [r["step"] for r in _log(run)] == [3]


# -- 6. a continuous log -----------------------------------------------------------------------------------------


def test_the_log_stays_continuous_over_a_resume(plain_run, tmp_path):
    run = _copy(plain_run, tmp_path / "run")
    list_checkpoints(run)[-1].unlink()  # interrupted after logging steps 15 and 20, before their checkpoint
    assert [r["step"] for r in _log(run)] == [5, 10, 15, 20]
    assert main(["train", "--output", str(run), "--resume", "--steps", "25", "--device", "cpu"]) == 0
    assert [r["step"] for r in _log(run)] == [5, 10, 15, 20, 25]


def test_two_trainings_with_the_same_settings_give_the_same_field(scene, tmp_path):
    """Past the occupancy grid's warm-up (8 steps in the tiny preset), where cells are drawn at random."""
    fields = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert _train(scene, run, "--teacher", "none", "--steps", "40") == 0
        fields.append(load_checkpoint(latest_checkpoint(run)))
    for part in ("field", "grid"):
        for key, value in fields[0][part].items():
            assert torch.equal(value, fields[1][part][key]), f"{part}.{key}"
