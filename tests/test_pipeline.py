"""ovseg3d.pipeline: the stages over one scene, each skipped when its outputs are current."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ovseg3d.config import ConfigError, apply_overrides, parse_overrides, resolve_base
from ovseg3d.errors import UsageError
from ovseg3d.export import ExportOptions
from ovseg3d.pipeline import STAGE_FILE, is_current, read_stages, run_scene, stage_range
from ovseg3d.run import RUN_FORMAT

# the stages' bookkeeping is under test, not the cloud: a view in 2, at half size, makes it in an eighth of the time
EXPORT = ExportOptions(max_spread=0.0, view_stride=2, pixel_stride=2)


def toy_config():
    """The toy run's own settings (tests/conftest.py), so that resuming it is allowed and trains no step."""
    cfg = resolve_base("cpu", None)
    budget = dict(steps=600, max_minutes=0.0, distill_steps=300, distill_minutes=0.0, compile_grid=False)
    return dataclasses.replace(cfg, **budget, device="cpu")


def test_run_scene_twice_does_no_work_the_second_time(toy_run_copy):
    scene, run = toy_run_copy
    stages = ["geometry", "distill", "export", "detect", "eval"]
    started: list[str] = []
    opts = EXPORT
    first = run_scene(scene, run, stages, toy_config(), export=opts, log=lambda s: None, on_stage=started.append)
    assert first.status == "done" and first.skipped == []
    assert started == ["teachers", *stages]  # the scene and its features are loaded once for geometry + distill
    assert (run / "export" / "points.npz").is_file() and (run / "detections.json").is_file()
    assert "psnr" in first.metrics and "miou" in first.metrics
    eval_json = (run / "eval.json").stat().st_mtime_ns
    records = read_stages(run)
    assert set(stages) <= set(records) and all(is_current(run, s) for s in stages)

    again: list[str] = []
    second = run_scene(scene, run, stages, toy_config(), export=opts, log=lambda s: None, on_stage=again.append)
    assert again == [] and second.skipped == stages
    assert all(v == 0.0 for v in second.seconds.values())
    assert (run / "eval.json").stat().st_mtime_ns == eval_json
    assert second.metrics == first.metrics

    # a newer export makes the detections and the scores stale; the export itself stays current
    stamp = run / "export" / "points.npz"
    stamp.write_bytes(stamp.read_bytes())
    assert is_current(run, "export") and not is_current(run, "detect") and not is_current(run, "eval")


def test_a_lost_stage_record_redoes_only_that_stage(toy_run_copy):
    scene, run = toy_run_copy
    opts = EXPORT
    run_scene(scene, run, ["geometry", "distill"], toy_config(), log=lambda s: None)
    records = json.loads((run / STAGE_FILE).read_text())
    assert {"geometry", "distill"} <= set(records)
    started: list[str] = []
    run_scene(scene, run, ["geometry", "distill", "export"], toy_config(), export=opts, on_stage=started.append)
    assert started == ["export"]


def test_a_stage_without_its_inputs_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint to export"):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "run.json").write_text(json.dumps({"run_format": RUN_FORMAT}))
        run_scene(tmp_path / "scene", tmp_path / "run", ["export"], toy_config())


def test_stage_names_and_ranges():
    assert stage_range("distill", "detect") == ["distill", "export", "detect"]
    with pytest.raises(UsageError, match="unknown stage"):
        stage_range("fit", "eval")
    with pytest.raises(UsageError, match="comes before"):
        stage_range("eval", "export")
    with pytest.raises(UsageError, match="unknown stage"):
        run_scene(Path("x"), Path("y"), ["train"])


def test_a_larger_step_budget_continues_the_geometry(toy_run_copy):
    from ovseg3d.run import latest_checkpoint, load_checkpoint

    def geometry_step() -> int:
        return int(load_checkpoint(latest_checkpoint(run))["step"])

    scene, run = toy_run_copy
    first = run_scene(scene, run, ["geometry"], toy_config(), log=lambda s: None)
    before = geometry_step()
    assert first.skipped == [] and read_stages(run)["geometry"]["steps"] == 600
    assert run_scene(scene, run, ["geometry"], toy_config(), log=lambda s: None).skipped == ["geometry"]
    more = dataclasses.replace(toy_config(), steps=before + 20)
    started: list[str] = []
    run_scene(scene, run, ["geometry"], more, log=lambda s: None, on_stage=started.append)
    assert "geometry" in started and geometry_step() == before + 20


def test_the_steps_schedule_holds_lr_until_half_the_budget_then_drops_a_third_at_each_milestone():
    from ovseg3d.config import TrainConfig
    from ovseg3d.train import lr_factor

    steps = TrainConfig(lr_schedule="steps", lr_warmup_steps=100)
    assert lr_factor(steps, 0.0, 0) == pytest.approx(0.01)  # the warm-up starts at a hundredth
    assert lr_factor(steps, 0.01, 50) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(steps, 0.49, 1000) == 1.0
    assert lr_factor(steps, 0.6, 1000) == pytest.approx(0.33)
    assert lr_factor(steps, 0.8, 1000) == pytest.approx(0.33**2)
    assert lr_factor(steps, 0.95, 1000) == pytest.approx(0.33**3)
    exp = TrainConfig(lr_schedule="exp", lr_final_factor=0.03)
    assert lr_factor(exp, 0.5, 1000) == pytest.approx(0.03**0.5)


def test_roi_scale_grows_an_estimated_box_about_its_centre_and_keeps_a_given_one():
    from types import SimpleNamespace

    import torch

    from ovseg3d.data.scene import GIVEN_BOUNDS
    from ovseg3d.errors import UsageError
    from ovseg3d.train import roi_box

    box = torch.tensor([0.0, -1.0, 2.0, 2.0, 1.0, 4.0])
    estimated = SimpleNamespace(aabb=box, bounds="the region of interest (a cube about where the cameras look)")
    torch.testing.assert_close(roi_box(estimated, 2.0), torch.tensor([-1.0, -2.0, 1.0, 3.0, 2.0, 5.0]))
    torch.testing.assert_close(roi_box(estimated, 1.0), box)
    given = SimpleNamespace(aabb=box, bounds=GIVEN_BOUNDS[1])
    torch.testing.assert_close(roi_box(given, 2.0), box)
    with pytest.raises(UsageError, match="roi_scale"):
        roi_box(estimated, 0.0)


def test_set_overrides_reach_nested_tables_and_unknown_keys_are_named():
    values = parse_overrides(["steps=300", "teachers.clip_features=dense", "teachers.clip_batch=64", "lr=1e-2"])
    assert values == {"steps": 300, "lr": 0.01, "teachers": {"clip_features": "dense", "clip_batch": 64}}
    cfg = apply_overrides(resolve_base("gpu", None), values, "--set")
    assert (cfg.steps, cfg.teachers.clip_features, cfg.teachers.clip_batch) == (300, "dense", 64)
    assert cfg.teachers.kind == resolve_base("gpu", None).teachers.kind  # the table's other keys are kept
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(cfg, parse_overrides(["teachers.no_such_key=1"]), "--set")
    with pytest.raises(ConfigError, match="'steps' is set to a value"):
        parse_overrides(["steps=3", "steps.x=1"])
