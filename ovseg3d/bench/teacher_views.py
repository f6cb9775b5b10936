"""The teachers on K views (issue 68, ``--teacher-views``): 3D mIoU against K, from one geometry per scene and seed.

Each (scene, seed) trains its geometry once (the preset's, ``semantic = "lift"``; kept under the work folder and
reused by every variant); each variant then lifts (or, with ``semantic = "distill"`` in its overrides, distils) the
simulated teacher from that geometry in a run folder of its own, with the teachers on the views it names (``all``:
every training view, else ``--teacher-views K``), and its annotated held-out views are scored (3D-OVS protocol)
beside the 2D teacher's. Figures: ``miou``, ``teacher_miou``, ``views`` (teacher views used), ``coverage`` (share
of the field's surface cells those views see), ``choose_seconds`` (choosing them) and ``semantic_seconds`` (the
lifting or distillation). The teachers' own seconds scale with ``views``: a real teacher's are measured on the
video (``ovseg3d bench run whole``), not here, where the simulated teacher's cache is shared between variants.

    ovseg3d bench run teacher_views --scenes demo orbit --out results/teacher_views.json
    ovseg3d bench run teacher_views --variants k4 k8 all --set teachers.syn_errors=per-view
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from ovseg3d.bench.harness import Benchmark, Case

KS = (4, 6, 8, 12, 16)


def geometry(case: Case) -> Path:
    """The (scene, seed)'s geometry run, trained the first time (the geometry alone: its ``geometry.pt``)."""
    from ovseg3d.train import start_training, train_geometry

    base = {k: v for k, v in case.overrides.items() if k not in ("teacher_views", "semantic")}
    key = hashlib.sha1(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()[:8]  # --set's geometry
    run = case.work / "teacher_views" / f"{Path(case.scene).name}-s{case.seed}-geometry-{key}"
    if (run / "geometry.pt").exists():
        return run
    if run.exists():
        shutil.rmtree(run)
    cfg = dataclasses.replace(case, overrides=base).config()
    cfg = dataclasses.replace(cfg, scene=case.folder, output=run, device=case.device, teacher_views=1)
    cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="synthetic"))
    t = start_training(cfg)  # teacher_views > 0: the teachers wait for the geometry, which writes geometry.pt
    train_geometry(t)
    return run


def measure(case: Case) -> dict[str, float]:
    import torch

    from ovseg3d.config import apply_overrides, write_toml
    from ovseg3d.evaluate import semantic_metrics
    from ovseg3d.lift import semantic_training
    from ovseg3d.run import GEOMETRY_CHECKPOINT, checkpoint_path, load_checkpoint, load_run_config
    from ovseg3d.teachers.extract import build_teachers, ensure_features
    from ovseg3d.train import Training, load_trainer

    source = geometry(case)
    run = case.work / "teacher_views" / f"{Path(case.scene).name}-s{case.seed}-{case.variant}"
    if run.exists():
        shutil.rmtree(run)
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(source / "run.json", run / "run.json")
    # the geometry's run waited for its teachers (teacher_views 1): every training view unless the variant says
    settings = {"teacher_views": 0, **{k: v for k, v in case.overrides.items() if k != "seed"}}
    cfg = apply_overrides(load_run_config(source), settings, case.label)
    cfg = dataclasses.replace(cfg, output=run)
    write_toml(cfg, run / "config.toml")
    state = load_checkpoint(source / GEOMETRY_CHECKPOINT)
    torch.save(state, checkpoint_path(run, int(state["step"])))
    trainer = load_trainer(run, case.device)
    scene, dev = trainer.scene, trainer.device
    if cfg.teacher_views > 0:
        t = Training(run, trainer, None, None, True, False, build_teachers(scene, cfg.teachers, dev))
    else:
        t = Training(run, trainer, ensure_features(scene, cfg.teachers, dev, log=lambda s: None), None, True, False)
    start = time.perf_counter()
    semantic_training(t)
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    chosen = [r for r in log if r.get("stage") == "teacher_views"]
    metrics = semantic_metrics(run, trainer, save_renders=False)
    return {
        "miou": metrics["miou"],
        "teacher_miou": metrics["teacher_miou"],
        "views": len(chosen[0]["views"]) if chosen else len(scene.train_ids),
        "coverage": chosen[0]["coverage"] if chosen else 1.0,
        "semantic_seconds": round(seconds, 1),
    }


BENCHMARK = Benchmark(
    name="teacher_views",
    doc="the teachers on K views chosen by coverage: 3D mIoU against K, lifted (or distilled) from one geometry",
    measure=measure,
    figures=("miou", "teacher_miou", "views", "coverage", "semantic_seconds"),
    scenes=("demo", "orbit"),
    variants={
        "all": {"semantic": "lift"},
        **{f"k{k}": {"semantic": "lift", "teacher_views": k} for k in KS},
        "distill_all": {"semantic": "distill"},
        "distill_k8": {"semantic": "distill", "teacher_views": 8},
    },
    repeats=1,
    teacher={"kind": "synthetic"},
)
