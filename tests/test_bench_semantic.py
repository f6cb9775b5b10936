"""The semantic benchmarks' shared geometry (ovseg3d.bench.distill: one field per scene, the repeats seed the
distillation; ovseg3d.bench.teacher_views: a field per seed), the per-object figures under the simulated teacher,
and the hash grid's throughput."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ovseg3d import train
from ovseg3d.bench import distill, harness, hashgrid, teacher_views


def test_the_variants_share_one_geometry_a_field_per_seed_only_where_asked(tmp_path, monkeypatch) -> None:
    trained = []

    def fake_geometry(cfg) -> None:  # noqa: ANN001
        trained.append((cfg.seed, cfg.steps, cfg.teacher_views, cfg.teachers.kind))
        cfg.output.mkdir(parents=True)
        (cfg.output / "geometry.pt").write_bytes(b"")

    monkeypatch.setattr(train, "start_training", lambda cfg: cfg)
    monkeypatch.setattr(train, "train_geometry", fake_geometry)
    cases = harness.cases(distill.BENCHMARK, tmp_path, ["demo"], ["default", "negatives", "lift_r64"], ["steps=50"])
    fields = {teacher_views.geometry(c, per_seed=False) for c in cases}
    assert len(cases) == 9 and len(fields) == 1  # 3 variants x 3 distillation seeds, one field
    assert [c.config().seed for c in cases[:3]] == [0, 1, 2]  # the repeats seed the semantic stage
    assert trained == [(0, 50, 1, "synthetic")]  # the geometry alone, its teachers waiting for it
    (other,) = harness.cases(distill.BENCHMARK, tmp_path, ["demo"], ["default"], ["steps=60"], repeats=1)
    assert teacher_views.geometry(other, per_seed=False) not in fields  # a geometry option: another field
    cases = harness.cases(teacher_views.BENCHMARK, tmp_path, ["demo"], ["all", "distill_all"], repeats=2)
    assert len({teacher_views.geometry(c) for c in cases}) == 2  # one per seed, whichever the stage
    assert [t[0] for t in trained] == [0, 0, 0, 1]


def test_each_object_has_its_lean_under_the_simulated_teacher(tmp_path) -> None:
    from ovseg3d.config import TrainConfig, write_toml

    cfg = TrainConfig(scene=harness.ROOT / "scenes/demo")
    write_toml(
        dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="synthetic")), tmp_path / "config.toml"
    )
    figures = distill.objects(tmp_path, {"per_class_iou": {"soda can": 60.0}, "teacher_per_class_iou": {"mug": None}})
    assert figures["iou_soda_can"] == 60.0 and "teacher_iou_mug" not in figures
    leans = {k: v for k, v in figures.items() if k.endswith("_lean")}
    wrong = {k: v for k, v in figures.items() if k.endswith("_wrong_views")}
    assert len(leans) == len(wrong) >= 5 and any(k.startswith("object4_mug_as_") for k in leans)
    assert all(0.0 <= v <= 1.0 for v in [*leans.values(), *wrong.values()]) and max(wrong.values()) > 0.0
    write_toml(
        dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="clip")), tmp_path / "config.toml"
    )
    assert distill.objects(tmp_path, {}) == {}  # no lean to draw from a real teacher


def test_the_hash_grid_is_timed_as_the_config_makes_it(tmp_path) -> None:
    (case,) = harness.cases(hashgrid.BENCHMARK, tmp_path, ["demo"], ["torch"], ["preset=tiny"], device="cpu")
    figures = hashgrid.measure(dataclasses.replace(case, folder=Path("scenes/demo")))
    assert figures["mpoints_per_s"] > 0 and figures["ms"] > 0 and figures["tcnn"] == 0.0
    assert abs(figures["mpoints_per_s"] * figures["ms"] * 1e3 / 1e6 - hashgrid.POINTS["cpu"] / 1e6) < 1e-6


def test_the_training_views_are_scored_against_their_own_label_maps(toy_run, monkeypatch) -> None:
    """``train_miou``: 100 where the label maps of the training views are the run's own labels, less where one
    view's classes are swapped, nothing for a scene without label maps."""
    import torch

    from ovseg3d.evaluate import training_views
    from ovseg3d.lift import load_semantics
    from ovseg3d.run import latest_checkpoint, load_checkpoint

    _, run = toy_run
    real = train.load_trainer
    views: list[int] = []

    def labelled(run_folder: Path, device: str, swap: bool):
        trainer = real(run_folder, device)
        scene = trainer.scene
        semantics = load_semantics(trainer, load_checkpoint(latest_checkpoint(run_folder), "cpu"))
        views[:] = training_views([v for v in scene.train_ids if v not in scene.eval_ids], distill.TRAIN_VIEWS)
        for v in views:
            scene.labels[v] = semantics.segment(scene.cameras, v, scene.near_far).to(torch.uint8)
        if swap:
            scene.labels[views[0]] = (scene.labels[views[0]] + 1) % len(scene.classes)
        return trainer

    monkeypatch.setattr(train, "load_trainer", lambda r, d: labelled(r, d, swap=False))
    assert distill.train_miou(run, "cpu") == {"train_miou": 100.0}
    assert len(views) == distill.TRAIN_VIEWS
    monkeypatch.setattr(train, "load_trainer", lambda r, d: labelled(r, d, swap=True))
    assert distill.train_miou(run, "cpu")["train_miou"] < 95.0
    monkeypatch.setattr(train, "load_trainer", lambda r, d: _unlabelled(real(r, d)))
    assert distill.train_miou(run, "cpu") == {}


def _unlabelled(trainer):
    trainer.scene.labels.clear()
    return trainer
