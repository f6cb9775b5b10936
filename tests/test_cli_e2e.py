"""End to end through the real CLI: synth a tiny scene, train it, evaluate, resume, refuse bad runs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from ovseg3d.cli import main
from ovseg3d.run import checkpoint_path, latest_checkpoint, load_checkpoint

TINY_SCENE = ["--width", "40", "--height", "30", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    assert main(["synth", str(root / "llff"), *TINY_SCENE]) == 0
    assert main(["synth", str(root / "orbit"), *TINY_SCENE, "--cameras", "orbit", "--format", "transforms"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["train", str(scenes / "llff"), "--output", str(run), "--preset", "tiny", "--device", "cpu"]
    assert main([*args, "--teacher", "none"]) == 0  # the radiance field alone (tests/test_distill.py: the rest)
    return run


def test_train_writes_every_file_a_user_looks_at(trained):
    assert (trained / "run.json").exists() and (trained / "config.toml").exists()
    assert latest_checkpoint(trained) == checkpoint_path(trained, 20)
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 20 and all(r["n_samples"] > 0 for r in log)
    renders = sorted((trained / "renders").glob("view_*.png"))
    assert len(renders) == 1  # a preview of the first held-out view; eval renders them all


def test_eval_writes_psnr_and_ssim(trained, copy_run, capsys):
    run = copy_run(trained)  # eval writes eval.json and renders into the run
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["n_views"] == 2 and metrics["step"] == 20
    assert len(list((run / "renders").glob("view_*.png"))) == 2  # the two annotated views are held out
    assert 5.0 < metrics["psnr"] < 60.0 and -1.0 <= metrics["ssim"] <= 1.0
    assert "mean" in capsys.readouterr().out


def test_eval_keeps_keys_written_by_other_stages(trained, copy_run):
    run = copy_run(trained)
    path = run / "eval.json"
    path.write_text(json.dumps({"miou": 0.5, "n_views": -1}))  # as the distillation's eval would leave it
    assert main(["eval", str(run), "--device", "cpu", "--no-renders"]) == 0
    metrics = json.loads(path.read_text())
    assert metrics["miou"] == 0.5 and metrics["n_views"] == 2 and "psnr" in metrics


def test_resume_continues_from_the_checkpoint_step(scenes, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(scenes / "llff"), "--output", str(run), "--preset", "tiny", "--device", "cpu"]
    assert main([*args, "--steps", "10", "--teacher", "none"]) == 0
    saved = load_checkpoint(latest_checkpoint(run))
    assert saved["step"] == 10
    assert main(["train", str(scenes / "llff"), "--output", str(run), "--resume", "--steps", "16"]) == 0
    resumed = load_checkpoint(latest_checkpoint(run))
    assert resumed["step"] == 16
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 16 and 10 in steps
    # the resumed run started from the saved parameters, not from scratch
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, "cpu")
    assert trainer.step == 16
    assert not torch.equal(trainer.field.grid.params.detach(), saved["field"]["grid.params"])


def test_a_checkpoint_restores_the_same_state(trained):
    from ovseg3d.train import load_trainer

    trainer = load_trainer(trained, "cpu")
    state = load_checkpoint(latest_checkpoint(trained))
    assert trainer.step == state["step"]
    torch.testing.assert_close(trainer.field.grid.params.detach(), state["field"]["grid.params"])
    assert torch.equal(trainer.grid.binaries, state["grid"]["binaries"])


def test_orbit_transforms_scene_trains(scenes, tmp_path):
    run = tmp_path / "orbit"
    assert main(["train", str(scenes / "orbit"), "--output", str(run), "--preset", "tiny", "--steps", "6"]) == 0
    assert latest_checkpoint(run) is not None


def test_refuses_to_overwrite_a_run(trained, scenes, capsys):
    assert main(["train", str(scenes / "llff"), "--output", str(trained), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "--resume" in err and len(err.splitlines()) == 1


def test_refuses_a_run_from_another_version(trained, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    info = json.loads((old / "run.json").read_text())
    info["run_format"] = 0
    (old / "run.json").write_text(json.dumps(info))
    assert main(["eval", str(old)]) == 2
    err = capsys.readouterr().err
    assert "run format" in err and len(err.strip().splitlines()) == 1


def test_eval_every_scores_a_subset_and_says_so(trained, copy_run):
    run = copy_run(trained)
    assert main(["eval", str(run), "--device", "cpu", "--every", "2", "--no-renders", "--train-views", "0"]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["n_views"] == 1 and metrics["views_every"] == 2


def test_an_unbounded_scene_takes_the_presets_unbounded_settings_where_no_flag_set_them(tmp_path, capsys):
    import tomllib

    scene = tmp_path / "colmap"  # a COLMAP scene: its box is estimated, so a contraction goes beyond it
    assert main(["synth", str(scene), *TINY_SCENE, "--format", "colmap"]) == 0
    small = ["--steps", "2", "--teacher", "none", "--device", "cpu", "--log2-hashmap-size", "12"]
    small += ["--max-resolution", "64", "--rays-per-step", "256", "--target-samples", "4096", "--max-long-side", "0"]
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", str(scene), "--output", str(run), "--preset", "gpu", "--sampler", "grid", *small]) == 0
    said = capsys.readouterr()
    saved = tomllib.loads((run / "config.toml").read_text())
    # taken from [unbounded]: the preset's own values were left; kept: what the flags set
    assert saved["roi_scale"] == 2.0 and saved["n_features_per_level"] == 2 and saved["n_levels"] == 16
    assert saved["sampler"] == "grid" and saved["max_resolution"] == 64
    line = next(x for x in (said.out + said.err).splitlines() if "[unbounded]" in x)
    assert "roi_scale = 2.0" in line and "sampler" not in line and "max_resolution" not in line


def test_unknown_preset_and_bad_scene_are_one_line_errors(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--output", str(tmp_path / "r"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--output", str(tmp_path / "r"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "poses_bounds.npy" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "run.json").exists()  # nothing half-written


def test_config_file_and_flags_override_the_preset(scenes, tmp_path):
    cfg = tmp_path / "my.toml"
    cfg.write_text("steps = 4\nlog_every = 2\n")
    run = tmp_path / "run"
    args = ["train", str(scenes / "llff"), "--output", str(run), "--preset", "tiny", "--config", str(cfg)]
    assert main([*args, "--log-every", "1"]) == 0
    import tomllib

    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["steps"] == 4 and saved["log_every"] == 1 and saved["preset"] == "tiny"
    assert saved["n_levels"] == 4  # from the tiny preset


def test_console_script_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "ovseg3d.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("synth", "train", "eval"):
        assert name in out.stdout
    help_train = subprocess.run(
        [sys.executable, "-m", "ovseg3d.cli", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert "--max-minutes" in help_train.stdout and "--preset" in help_train.stdout


def test_help_reflows_an_options_text_written_over_several_lines():
    """A field docstring of several source lines is one paragraph in --help (tyro kept the source's line breaks)."""
    wide = {**os.environ, "COLUMNS": "400"}
    said = subprocess.run(
        [sys.executable, "-m", "ovseg3d.cli", "prepare", "--help"], capture_output=True, text=True, check=True, env=wide
    ).stdout
    assert "apart in name order) whose matches contradict" in said
    assert "(photos not in capture order). --no-far-pair-check" in said
