"""The teachers on K views (issue 68, ``--teacher-views``), and lifting against distillation from the same geometry
(``scripts/bench_lift.py`` folded): 3D mIoU against K, and against the lifting's settings.

Each (scene, seed) trains its geometry once (:func:`geometry`: the preset's with the case's seed, kept under the
work folder and reused by every variant); each variant then lifts (or, with ``semantic = "distill"``, distils) the
simulated teacher from that geometry in a run folder of its own (:func:`semantic_run`), with the teachers on the
views it names (``all``: every training view, else ``--teacher-views K``), and its annotated held-out views are
scored (3D-OVS protocol) beside the 2D teacher's. A repeat's seed is the geometry's: the median over repeats is over
fields (the lifting has no randomness of its own).

Figures: ``miou``, ``teacher_miou``, ``views`` (teacher views used), ``coverage`` (share of the field's surface cells
those views see), ``semantic_seconds`` (the lifting or the distillation alone); a lifting adds ``lift_seconds``
(march, sums, propagation; no checkpoint), ``propagate_seconds``, ``voxels``, ``structure_mib`` (the lifted table),
``peak_rss_mib`` (the process's peak resident memory) and ``rss_grew_mib`` (what lifting added to it); a
distillation adds its ``steps``. The teachers' own seconds scale with ``views``: a real teacher's are measured on the
video (``ovseg3d bench run whole``), not here, where the simulated teacher's cache is shared.

    ovseg3d bench run teacher_views --scenes demo orbit --out results/teacher_views.json
    ovseg3d bench run teacher_views --variants k4 k8 all --set teachers.syn_errors=per-view
    ovseg3d bench run teacher_views --scenes demo --variants all lift_no_propagate distill_all --repeats 3
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import shutil
import time
from functools import cache
from pathlib import Path
from typing import Any

from ovseg3d.bench.harness import Benchmark, Case

KS = (4, 6, 8, 12, 16)

UNFILTERED = {"semantic": "lift", "lift_view_filter": 0}
"""Lifting as it was before the view filter became its default (2026-11-29): the variants that result files were
made with keep it, so that their commands still make those files."""
LIFT = {
    "lift_no_propagate": {"lift_propagate": 0},
    "lift_r64": {"lift_resolution": 64},
    "lift_r256": {"lift_resolution": 256},
    "lift_stride4": {"lift_stride": 4},
    "lift_full_dims": {"lift_clip_dim": 0, "lift_dino_dim": 0},
    "lift_scale_selection": {"scale_selection": True},
    "lift_view_filter": {"lift_view_filter": 5},  # FDA's pull and push in each view before lifting
    "lift_no_view_filter": {"lift_view_filter": 0},
    "lift_view_filter10": {"lift_view_filter": 10},
    "lift_view_filter20": {"lift_view_filter": 20},
    # the strengths are joined after a filter: lift_view_filter+lift_view_strength10
    "lift_view_strength2.5": {"lift_view_strength": 2.5},
    "lift_view_strength10": {"lift_view_strength": 10.0},
}
"""The lifting's settings changed one at a time (``semantic = "lift"`` with them)."""


@cache
def semantic_options() -> frozenset[str]:
    """The training config's options of the semantic stage (``distill_steps`` and every one after it, the teachers
    among them): they leave the geometry alone, so a geometry is shared by the variants that differ only in them."""
    from ovseg3d.config import TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    return frozenset(names[names.index("distill_steps") :])


def key(values: dict[str, Any]) -> str:
    """A short name for a set of overrides (a run folder's suffix)."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def geometry(case: Case, per_seed: bool = True) -> Path:
    """The case's geometry run (``geometry.pt``, before any semantic stage), trained the first time: with the case's
    overrides but the semantic options, and the case's seed (``per_seed``), else the overrides' seed alone."""
    from ovseg3d.train import start_training, train_geometry

    base = {k: v for k, v in case.overrides.items() if k not in semantic_options()}
    seed = case.config().seed if per_seed else int(base.get("seed", 0))
    run = case.work / "geometry" / f"{Path(case.scene).name}-s{seed}-{key({**base, 'seed': seed})}"
    if (run / "geometry.pt").exists():
        return run
    if run.exists():
        shutil.rmtree(run)
    cfg = dataclasses.replace(case, overrides={**base, "seed": seed}, seed=0).config()
    cfg = dataclasses.replace(cfg, scene=case.folder, output=run, device=case.device, teacher_views=1)
    cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="synthetic"))
    t = start_training(cfg)  # teacher_views > 0: the teachers wait for the geometry, which writes geometry.pt
    train_geometry(t)
    return run


def semantic_run(case: Case, source: Path, run: Path, settings: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """``source``'s geometry copied into ``run``, whose semantic stage then runs with the case's overrides and
    ``settings`` over ``source``'s config (the seed: the case's); its trainer and its stage's figures."""
    import torch

    from ovseg3d.config import apply_overrides, write_toml
    from ovseg3d.lift import semantic_training
    from ovseg3d.run import GEOMETRY_CHECKPOINT, checkpoint_path, load_checkpoint, load_run_config
    from ovseg3d.teachers.extract import build_teachers, ensure_features
    from ovseg3d.train import Training, load_trainer

    if run.exists():
        shutil.rmtree(run)
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(source / "run.json", run / "run.json")
    # the geometry's run waited for its teachers (teacher_views 1): every training view unless the variant says
    settings = {"teacher_views": 0, **case.overrides, **settings, "seed": case.config().seed}
    cfg = dataclasses.replace(apply_overrides(load_run_config(source), settings, case.label), output=run)
    write_toml(cfg, run / "config.toml")
    state = load_checkpoint(source / GEOMETRY_CHECKPOINT)
    torch.save(state, checkpoint_path(run, int(state["step"])))
    trainer = load_trainer(run, case.device)
    scene, dev = trainer.scene, trainer.device
    if cfg.teacher_views > 0:
        t = Training(run, trainer, None, None, True, False, build_teachers(scene, cfg.teachers, dev))
    else:
        t = Training(run, trainer, ensure_features(scene, cfg.teachers, dev, log=lambda s: None), None, True, False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    start = time.perf_counter()
    stage = semantic_training(t)
    figures = {"semantic_seconds": round(time.perf_counter() - start, 1)}
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    chosen = [r for r in log if r.get("stage") == "teacher_views"]
    figures |= {
        "views": len(chosen[0]["views"]) if chosen else len(scene.train_ids),
        "coverage": chosen[0]["coverage"] if chosen else 1.0,
    }
    if cfg.semantic == "lift":
        figures |= {
            "lift_seconds": round(stage.seconds, 2),
            "propagate_seconds": round(stage.propagate_seconds, 2),
            "voxels": len(stage.table.keys),
            "structure_mib": round(stage.nbytes() / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10),
        }
        figures["rss_grew_mib"] = figures["peak_rss_mib"] - round(rss)
    else:
        figures["steps"] = max(r["distill_step"] for r in log if r.get("stage") == "distill")
    return trainer, figures


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.evaluate import semantic_metrics

    case = dataclasses.replace(case, preset=case.overrides.get("preset", case.preset))  # --set preset=gpu
    run = case.work / "teacher_views" / f"{Path(case.scene).name}-s{case.seed}-{case.variant}"
    trainer, figures = semantic_run(case, geometry(case), run, {})
    metrics = semantic_metrics(run, trainer, save_renders=False)
    return {"miou": metrics["miou"], "teacher_miou": metrics["teacher_miou"], **figures}


BENCHMARK = Benchmark(
    name="teacher_views",
    doc="the teachers on K views chosen by coverage, and the lifting's settings: 3D mIoU, lifted or distilled from "
    "one geometry",
    measure=measure,
    figures=("miou", "teacher_miou", "views", "coverage", "semantic_seconds"),
    scenes=("demo", "orbit"),
    variants={
        "all": UNFILTERED,
        **{f"k{k}": {**UNFILTERED, "teacher_views": k} for k in KS},
        **{name: {"semantic": "lift", **values} for name, values in LIFT.items()},
        "distill_all": {"semantic": "distill"},
        "distill_to_steps": {"semantic": "distill", "distill_minutes": 0.0},  # its steps, whatever the load
        "distill_k8": {"semantic": "distill", "teacher_views": 8},
    },
    repeats=1,
    teacher={"kind": "synthetic"},
)
