"""The field benchmark's variants (ovseg3d.bench.field): the scoring variants change the evaluation, not the
training; an unknown variant fails before anything runs; and the colour check
finds the fur and what a colour map gives back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ovseg3d.bench import field, harness


def test_scoring_variants_change_the_evaluation_not_the_training(tmp_path):
    assert field.scoring("lr_steps+eval64+every4") == {"max_samples_per_ray": 64, "every": 4}
    assert field.variant_overrides("lr_steps+eval64+colour") == field.VARIANTS["lr_steps"]
    (case,) = harness.cases(field.BENCHMARK, tmp_path, ["demo"], ["cull+colour"], ["steps=30"])
    assert case.overrides == {**field.VARIANTS["cull"], "steps": 30}


def test_an_unknown_variant_fails_before_anything_runs(tmp_path):
    with pytest.raises(harness.BenchError, match="unknown variant"):
        harness.run(field.BENCHMARK, tmp_path / "r.json", tmp_path, ["demo"], ["default+nope"])
    assert list(tmp_path.iterdir()) == []


def test_the_colour_check_finds_the_fur_and_what_an_affine_map_gives_back(monkeypatch, tmp_path):
    photo = torch.full((8, 8, 3), 0.5)
    photo[:4] = torch.tensor([0.6, 0.4, 0.2])  # fur: red > green + 0.1, green > blue, saturated
    render = 0.8 * photo + 0.05  # an exposure error, all of it given back by an affine map
    views = SimpleNamespace(render_view=lambda cams, v, near_far: SimpleNamespace(rgb=render))
    scene = SimpleNamespace(image_paths=[0, 1, 2], train_ids=[0, 2], cameras=None, near_far=None)
    trainer = SimpleNamespace(scene=SimpleNamespace(**vars(scene), image_float=lambda v: photo), **vars(views))
    monkeypatch.setattr("ovseg3d.train.load_trainer", lambda run, device, force: trainer)
    figures = field.colour_figures(tmp_path, views=1)
    assert set(k.split("_")[1] for k in figures) == {"heldout1", "training2"}  # the middle of the training views
    assert figures["colour_heldout1_pixels"] == 32 and figures["colour_heldout1_photo_r"] == pytest.approx(0.6)
    assert figures["colour_heldout1_render_r"] == pytest.approx(0.53)
    assert figures["colour_heldout1_psnr_affine"] > figures["colour_heldout1_psnr"] + 20
