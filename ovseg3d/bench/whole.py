"""The whole method, every stage of :func:`ovseg3d.pipeline.run_scene` (teachers, geometry, distillation, export,
detect, eval) on a scene with the simulated teacher, as the quickstart runs it: held-out PSNR / SSIM, mIoU beside
the 2D teacher's, the boxes' mAP and pose accuracy, and each stage's seconds. A repeat's seed seeds the training.

    ovseg3d bench run whole --scenes demo --repeats 3 --out results/quickstart.json   # the quickstart, 3 seeds
    ovseg3d bench run whole --scenes orbit --set teachers.syn_errors=per-view
"""

from __future__ import annotations

import dataclasses
import json
import shutil

from ovseg3d.bench.harness import Benchmark, Case

SCORES = ("psnr", "ssim", "miou", "teacher_miou", "map25", "map50", "pose_acc_pi6")
"""``RUN/eval.json``'s scores kept (those a scene cannot give, such as poses without objects with a front, are left
out of its figures)."""


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.pipeline import run_scene

    run = case.work / "whole" / f"{case.scene.replace('/', '_')}-{case.variant}-s{case.seed}"
    if run.exists():
        shutil.rmtree(run)
    cfg = case.config()
    if cfg.teachers.kind == "auto":
        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="synthetic"))
    cfg = dataclasses.replace(cfg, device=case.device, chosen=tuple(case.overrides))
    result = run_scene(case.folder, run, config=cfg)
    if result.status != "done":
        raise RuntimeError(f"{case.label}: {result.failed_stage} failed: {result.error}")
    scores = json.loads((run / "eval.json").read_text())  # all of them: the run's summary keeps fewer (no poses)
    figures = {k: float(scores[k]) for k in SCORES if scores.get(k) is not None}
    figures |= {f"{stage}_seconds": s for stage, s in result.seconds.items()}
    figures["seconds"] = round(sum(result.seconds.values()), 1)
    return figures


BENCHMARK = Benchmark(
    name="whole",
    doc="every stage on a scene with the simulated teacher: PSNR, mIoU against the 2D teacher, mAP, seconds",
    measure=measure,
    figures=("psnr", "miou", "teacher_miou", "seconds"),
    scenes=("demo",),
    repeats=3,
    teacher={"kind": "synthetic"},
)
