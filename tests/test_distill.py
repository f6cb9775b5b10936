"""Distillation end to end through the CLI on a tiny synthetic scene: train (geometry, then the semantic
field), eval (mIoU next to the teacher's), render (segmentation, query relevancy)."""

from __future__ import annotations

import json

import pytest
import torch

from ovseg3d.cli import main

SCENE_ARGS = ["--width", "64", "--height", "48", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    scene, run = root / "scene", root / "run"
    assert main(["synth", str(scene), *SCENE_ARGS]) == 0
    args = ["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu", "--steps", "60"]
    assert main([*args, "--teacher", "synthetic", "--distill-steps", "30", "--sem-rays", "512"]) == 0
    return scene, run


def test_train_logs_the_distillation_and_eval_scores_it_next_to_the_teacher(distilled, copy_run, capsys):
    run = copy_run(distilled[1])  # eval writes eval.json and renders into the run
    stages = [json.loads(line).get("stage") for line in (run / "log.jsonl").read_text().splitlines()]
    assert stages.count("distill") >= 5
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    for key in ("miou", "accuracy", "teacher_miou", "teacher_accuracy", "per_class_iou", "psnr"):
        assert key in metrics
    assert 0.0 <= metrics["miou"] <= 100.0 and metrics["n_annotated_views"] == 2
    assert 0.0 < metrics["gt_shifted_1px_miou"] < 100.0  # the scene's objects are a few pixels wide
    assert metrics["annotated_views_trained"] is False
    out = capsys.readouterr().out
    assert "segmentation on 2 annotated views" in out and "moved by one pixel" in out
    assert len(list((run / "renders").glob("seg_eval_*.png"))) == 2


def test_render_writes_segmentation_and_query_relevancy(distilled, copy_run):
    run = copy_run(distilled[1])
    assert main(["render", str(run), "--device", "cpu", "--views", "1", "--query", "mug", "a red book"]) == 0
    names = {p.name for p in (run / "renders").iterdir()}
    assert {"rgb_001.png", "depth_001.png", "seg_001.png", "rel_001_mug.png", "rel_001_a_red_book.png"} <= names


def test_render_refuses_queries_on_a_run_without_semantics(distilled, tmp_path, capsys):
    scene, _ = distilled
    run = tmp_path / "plain"
    assert (
        main(
            [
                "train",
                str(scene),
                "--output",
                str(run),
                "--preset",
                "tiny",
                "--device",
                "cpu",
                "--steps",
                "5",
                "--teacher",
                "none",
            ]
        )
        == 0
    )
    assert main(["render", str(run), "--device", "cpu", "--query", "mug"]) == 2
    assert "no semantic field" in capsys.readouterr().err
    assert main(["render", str(run), "--device", "cpu", "--views", "99"]) == 2


def test_the_run_keeps_its_geometry_and_resumes_the_distillation(distilled, copy_run):
    run = copy_run(distilled[1])  # resumed in place
    assert (run / "geometry.pt").exists()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = max(r["distill_step"] for r in log if r.get("stage") == "distill")
    assert main(["train", "--output", str(run), "--resume", "--distill-steps", "40", "--device", "cpu"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["distill_step"] for r in log if r.get("stage") == "distill"]
    assert steps[-1] == 40 and min(s for s in steps if s > last) > last  # continued, not restarted


def test_a_short_run_beats_its_own_teacher(toy_run_copy):
    """The method's promise at toy scale: the 3D field's segmentation of held-out annotated views scores a
    higher mIoU than the 2D teacher it was distilled from (the run: ``toy_run`` in conftest.py). The tiny
    preset's 64-step marching is too coarse for the semantic field (measured: 31.1 against 57.8).

    The margin is asked of the mean over each view's own classes: on 2 annotated views of 80x60 pixels a
    single stray pixel of a class a view lacks costs ``miou`` a whole term. One CI geometry of this toy
    gave 55.7 against the teacher's 54.4 (a stray "ceiling" pixel, the tennis ball and the orange at 0;
    the same with the code before the sharpened semantic weights), and 63.8 against 58.3 over the views'
    own classes."""
    _, run = toy_run_copy  # eval writes eval.json and renders into the run
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["miou"] > metrics["teacher_miou"], metrics
    assert metrics["miou_gt_classes"] > metrics["teacher_miou_gt_classes"] + 2.0, metrics


def test_auto_teacher_is_simulated_only_for_scenes_with_label_and_instance_maps(distilled, tmp_path):
    import shutil

    from ovseg3d.data.loader import load_scene
    from ovseg3d.teachers.extract import resolve_kind

    scene, _ = distilled
    logs: list[str] = []
    assert resolve_kind(load_scene(scene), logs.append) == "synthetic"
    bare = tmp_path / "bare"
    shutil.copytree(scene, bare, ignore=shutil.ignore_patterns("instances", "features"))
    assert resolve_kind(load_scene(bare), logs.append) == "clip"
    assert "--teacher none" in logs[-1]


def test_a_run_saved_before_the_weight_power_field_keeps_its_plain_weights(distilled, tmp_path):
    """Runs distilled before ``sem_weight_power`` and ``coverage_weights`` existed rendered their semantics
    with the plain radiance weights and trained without coverage weights; loading one (to render it, or to
    resume it) must not switch it to the newer defaults."""
    from ovseg3d.config import TrainConfig
    from ovseg3d.run import load_run_config

    _, run = distilled
    new = load_run_config(run)
    assert new.sem_weight_power == TrainConfig().sem_weight_power != 1.0
    assert new.coverage_weights is TrainConfig().coverage_weights is True
    old = tmp_path / "old"
    old.mkdir()
    text = (run / "config.toml").read_text().splitlines()
    keep = [x for x in text if not x.startswith(("sem_weight_power", "coverage_weights"))]
    (old / "config.toml").write_text("\n".join(keep) + "\n")
    assert load_run_config(old).sem_weight_power == 1.0
    assert load_run_config(old).coverage_weights is False


def test_a_run_saved_with_the_old_fixed_render_chunk_follows_the_device_unless_it_was_chosen(distilled, tmp_path):
    from ovseg3d.config import CPU_EVAL_CHUNK, GPU_EVAL_CHUNK
    from ovseg3d.run import load_run_config

    _, run = distilled
    text = [x for x in (run / "config.toml").read_text().splitlines() if not x.startswith(("eval_chunk", "chosen"))]
    for chosen, expected in (("[]", GPU_EVAL_CHUNK), ('["eval_chunk"]', CPU_EVAL_CHUNK)):
        old = tmp_path / f"old{len(chosen)}"
        old.mkdir()
        (old / "config.toml").write_text("\n".join([f"eval_chunk = {CPU_EVAL_CHUNK}", f"chosen = {chosen}", *text]))
        assert load_run_config(old).render_chunk("cuda") == expected


def test_count_ops_counts_an_export_as_a_gpu_runs_it_and_leaves_the_run_alone(distilled, tmp_path, capsys):
    from bench_scripts import load_script

    from ovseg3d.config import TrainConfig
    from ovseg3d.field.hashgrid import TorchHashGrid

    count_ops = load_script("count_ops")
    _, run = distilled
    before = sorted(p.name for p in run.iterdir())
    records = {}
    for path in ("gpu", "cpu"):
        out = tmp_path / f"{path}.json"
        flags = ["--pixel-stride", "4", "--json", str(out)] + (["--cpu-path"] if path == "cpu" else [])
        assert count_ops.main(["export", str(run), *flags]) == 0
        records[path] = json.loads(out.read_text())
    assert sorted(p.name for p in run.iterdir()) == before  # the cloud went to a temporary folder
    gpu, cpu = records["gpu"], records["cpu"]
    assert gpu["path"] == "GPU" and gpu["ops"] > 0 and gpu["ops"] == sum(gpu["ops_by_function"].values())
    assert any(where.startswith("ovseg3d/export.py") for where in gpu["ops_by_function"])
    # the CPU's ways cut the hash grids' work into more ops: the two paths are told apart
    assert cpu["ops"] != gpu["ops"]
    assert "kernel-launching ops" in capsys.readouterr().out
    # and nothing stays patched after it
    assert TrainConfig().render_chunk("cpu") == 8192
    assert TorchHashGrid.__init__.__name__ == "__init__"


def test_semantic_weights_let_the_surface_outweigh_the_haze_in_front_of_it():
    """Ray 0: five samples of faint haze (weight 0.05 each), then a surface (0.6). Ray 1: one sample."""
    import torch

    from ovseg3d.distill import semantic_weights

    weights = torch.tensor([0.05, 0.05, 0.05, 0.05, 0.05, 0.6, 0.9])
    rays = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    keep, w = semantic_weights(weights, rays, 2, 1.0, 0.01)
    assert keep.tolist() == list(range(7)) and torch.allclose(w[:6].sum(), torch.tensor(1.0)) and w[6] == 1.0
    assert w[5] < 0.8  # plain weights: the haze holds over a fifth of the ray
    keep, w = semantic_weights(weights, rays, 2, 4.0, 0.01)
    assert keep.tolist() == [5, 6]  # each haze sample: (0.05/0.6)^4 / ~1 < 0.01
    assert torch.allclose(w, torch.ones(2))


def test_a_weight_power_of_zero_is_refused_before_anything_is_written(distilled, tmp_path, capsys):
    scene, _ = distilled
    run = tmp_path / "run"
    assert main(["train", str(scene), "--output", str(run), "--preset", "tiny", "--sem-weight-power", "0"]) == 2
    assert "--sem-weight-power" in capsys.readouterr().err and not run.exists()


def test_the_coverage_weights_follow_the_teachers_crop_layout(distilled):
    """The distiller's coverage map is 1 in the image's interior and lower towards its border, per scale,
    on the teacher's source image; ``--no-coverage-weights`` leaves it out."""
    import dataclasses

    from ovseg3d.distill import Distiller
    from ovseg3d.teachers.extract import ensure_features
    from ovseg3d.train import load_trainer

    _, run = distilled
    trainer = load_trainer(run, "cpu")
    features = ensure_features(trainer.scene, trainer.cfg.teachers, trainer.device)
    distiller = Distiller(trainer, features)
    cover = (distiller.coverage.rows[:, None] * distiller.coverage.cols[None])[None]  # [1, H, W, S]
    scales = trainer.cfg.teachers.clip_scales
    assert cover.shape == (1, trainer.scene.height, trainer.scene.width, len(scales))
    mid = cover[0, trainer.scene.height // 2, trainer.scene.width // 2]
    assert torch.all(mid == 1.0) and torch.all(cover[0, 0, 0] < 0.5) and torch.all(cover > 0)
    trainer.cfg = dataclasses.replace(trainer.cfg, coverage_weights=False)
    assert Distiller(trainer, features).coverage is None


def test_a_checkpoint_keeps_its_teacher_space_so_export_needs_no_teacher_cache(distilled, copy_run, monkeypatch):
    """The semantic field is read against the class texts it was trained with, saved in its checkpoint: with
    the teacher's cache out of reach, export gives the cloud it gives from the cache. A checkpoint saved before
    the teacher space existed is read against the cache, as before."""
    import numpy as np

    import ovseg3d.teachers.extract as extract
    from ovseg3d.export import ExportOptions, extract_cloud
    from ovseg3d.run import latest_checkpoint, load_checkpoint, write_checkpoint

    quiet = lambda s: None  # noqa: E731
    run = copy_run(distilled[1])
    ckpt = latest_checkpoint(run)
    space = load_checkpoint(ckpt)["semantic"]["teacher_space"]
    assert space["classes"] and space["text"].shape == (len(space["classes"]), space["clip_dim"])

    def no_cache(*args, **kwargs):
        raise AssertionError("the teacher's cache was read")

    with monkeypatch.context() as m:
        m.setattr(extract, "ensure_features", no_cache)
        saved = extract_cloud(
            run, ExportOptions(min_opacity=0.3, max_spread=0.0, min_agreeing=0, min_views=1), "cpu", log=quiet
        )
    assert len(saved) > 0 and (saved.label >= 0).all()

    state = load_checkpoint(ckpt)
    del state["semantic"]["teacher_space"]  # as written before the teacher space was saved
    write_checkpoint(ckpt, state)
    real, reads = extract.ensure_features, []

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "ensure_features", counted)
    cached = extract_cloud(
        run, ExportOptions(min_opacity=0.3, max_spread=0.0, min_agreeing=0, min_views=1), "cpu", log=quiet
    )
    assert reads == [1]
    np.testing.assert_array_equal(cached.xyz, saved.xyz)
    np.testing.assert_array_equal(cached.label, saved.label)
    np.testing.assert_array_equal(cached.probs, saved.probs)

    # a saved space whose classes are not the scene's (its class list was edited since) reads the cache too
    from ovseg3d.distill import load_distiller
    from ovseg3d.train import load_trainer

    space["classes"] = list(reversed(space["classes"]))
    state["semantic"]["teacher_space"] = space
    write_checkpoint(ckpt, state)
    distiller = load_distiller(load_trainer(run, "cpu"), load_checkpoint(ckpt))
    assert reads == [1, 1] and distiller.teacher is not None


def test_the_distillation_draws_from_its_own_seeded_stream(distilled):
    """The pixels drawn and the field's initial weights follow ``cfg.seed`` alone: draws from torch's global
    stream in between (a teacher cache rebuilt, a preview's randomised PCA) change nothing, another seed does,
    and a distiller restored from a state continues the stream where it was saved."""
    import dataclasses

    from ovseg3d.distill import Distiller
    from ovseg3d.teachers.extract import ensure_features
    from ovseg3d.train import load_trainer

    _, run = distilled
    trainer = load_trainer(run, "cpu")
    features = ensure_features(trainer.scene, trainer.cfg.teachers, trainer.device)
    first = Distiller(trainer, features)
    torch.rand(1000)  # the global stream moves
    again = Distiller(trainer, features)
    a, b = first.sample_pixels(), again.sample_pixels()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(p, q) for p, q in zip(first.field.parameters(), again.field.parameters()))
    trainer.cfg = dataclasses.replace(trainer.cfg, seed=trainer.cfg.seed + 1)
    other = Distiller(trainer, features)
    assert not torch.equal(other.sample_pixels()[1], a[1])
    restored = Distiller(trainer, features)
    restored.load_state_dict(first.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(first.sample_pixels(), restored.sample_pixels()))
