"""Shared fixtures: the toy run that the distillation and export tests both read."""

import pytest

from ovseg3d.cli import main

TOY_SCENE = ["--width", "80", "--height", "60", "--n-views", "32", "--n-annotated", "2", "--supersample", "1"]


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """A 32-view 80x60 synthetic scene and its run: the cpu preset's field on step budgets (600 geometry,
    150 distillation steps; not time budgets, so a slow machine gets the same run), about 2 min on 2 cores."""
    root = tmp_path_factory.mktemp("toy")
    scene, run = root / "scene", root / "run"
    assert main(["synth", str(scene), *TOY_SCENE, "--seed", "1"]) == 0
    train = ["train", str(scene), "--output", str(run), "--preset", "cpu", "--no-compile-grid", "--device", "cpu"]
    budget = ["--steps", "600", "--max-minutes", "0", "--distill-steps", "150", "--distill-minutes", "0"]
    assert main([*train, *budget, "--teacher", "synthetic"]) == 0
    return scene, run


@pytest.fixture(scope="session")
def exported(toy_run):
    """The toy run's labelled cloud with features and a relevancy for 'mug' (RUN/export)."""
    scene, run = toy_run
    assert main(["export", str(run), "--device", "cpu", "--queries", "mug", "--features"]) == 0
    return scene, run
