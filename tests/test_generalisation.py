"""``ovseg3d eval`` scores a few training views beside the held-out ones and warns when the field does not
generalise (held-out PSNR more than 5 dB below the training views')."""

from __future__ import annotations

import json

from ovseg3d.cli import main
from ovseg3d.evaluate import GAP_WARNING_DB, training_views


def test_training_views_are_spread_through_the_sequence():
    assert training_views([1, 2, 3, 5, 6, 7, 9], 3) == [1, 5, 9]
    assert training_views([4, 8], 3) == [4, 8]
    assert training_views([4, 8], 0) == []


def test_an_overfitted_run_gets_the_gap_warning(tmp_path, capsys):
    """Four training views of a room, 90 degrees apart on an orbit, 400 steps: the field fits them and not the
    views between."""
    scene, run = tmp_path / "scene", tmp_path / "run"
    toy = ["--width", "80", "--height", "60", "--n-views", "8", "--n-annotated", "0", "--supersample", "1"]
    assert main(["synth", str(scene), *toy, "--seed", "3", "--cameras", "orbit", "--orbit-rings", "1"]) == 0
    train = ["train", str(scene), "--output", str(run), "--preset", "cpu", "--device", "cpu", "--teacher", "none"]
    small = ["--target-samples", "4096"]  # a quarter of the preset's rays a step: the gap measured 6.1 dB
    assert main([*train, "--steps", "400", "--max-minutes", "0", "--holdout-every", "2", *small]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--no-renders"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["train_psnr"] - metrics["psnr"] > GAP_WARNING_DB
    assert metrics["generalisation_gap"] == metrics["train_psnr"] - metrics["psnr"]
    assert "does not generalise" in printed and "4 training views are few" in printed
    assert [v["view"] for v in metrics["train_views"]] == [1, 5, 7]


def test_a_run_that_generalises_gets_no_warning(toy_run_copy, capsys):
    _, run = toy_run_copy
    assert main(["eval", str(run), "--no-renders"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "eval.json").read_text())
    assert len(metrics["train_views"]) == 3 and metrics["train_psnr"] > metrics["psnr"] - 3
    assert metrics["generalisation_gap"] < GAP_WARNING_DB
    assert "train " in printed and "does not generalise" not in printed and "gap_warning" not in metrics
