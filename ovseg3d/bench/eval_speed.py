"""Evaluation speed (``scripts/bench_eval.py`` folded): ``ovseg3d eval`` of a run, with every marching step or a cap
on the samples a ray (``max_samples_per_ray``), timed in this process: every held-out view rendered, scored and
saved as a panel, and three training views scored.

A scene that is a run folder (``ovseg3d train``'s) is evaluated as it is; any other scene trains its radiance field
once first (the preset's, ``--teacher none``; kept under the work folder, shared by the variants). Figures: held-out
``psnr`` and ``ssim``, ``seconds``, ``seconds_per_view``, ``pixels_per_second`` and ``views``.

    ovseg3d bench run eval_speed --scenes bench/fox --variants every_step cap64 cap32
    ovseg3d bench run eval_speed --scenes demo --set steps=500 max_minutes=0

To compare with an older ovseg3d, time ``python -m ovseg3d.cli eval RUN`` in a checkout of it (``git worktree add``)
on a copy of the same run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ovseg3d.bench.harness import Benchmark, Case
from ovseg3d.bench.teacher_views import key


def trained(case: Case) -> Path:
    """The case's run: its scene when that is a run folder, else a field trained on it once (without the cap)."""
    from ovseg3d.pipeline import train

    if (case.folder / "config.toml").exists():
        return case.folder
    base = {k: v for k, v in case.overrides.items() if k != "max_samples_per_ray"}
    run = case.work / "eval_speed" / f"{Path(case.scene).name}-s{case.seed}-{key(base)}"
    if not (run / "eval_speed.done").exists():
        cfg = dataclasses.replace(case, overrides=base).config()
        teachers = dataclasses.replace(cfg.teachers, kind="none")
        train(dataclasses.replace(cfg, scene=case.folder, output=run, device=case.device, teachers=teachers))
        (run / "eval_speed.done").touch()
    return run


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.pipeline import evaluate
    from ovseg3d.run import load_run_config
    from ovseg3d.train import scene_of

    case = dataclasses.replace(case, preset=case.overrides.get("preset", case.preset))  # --set preset=gpu
    run = trained(case)
    start = time.perf_counter()
    m = evaluate(run, case.device, True, case.config().max_samples_per_ray)
    seconds = time.perf_counter() - start
    scene = scene_of(load_run_config(run))
    return {
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "seconds": round(seconds, 1),
        "views": m["n_views"],
        "seconds_per_view": seconds / m["n_views"],
        "pixels_per_second": m["n_views"] * scene.width * scene.height / seconds,  # the held-out views' pixels
    }


BENCHMARK = Benchmark(
    name="eval_speed",
    doc="ovseg3d eval's seconds on a run, every marching step or capped samples a ray: PSNR / SSIM, s a view, px/s",
    measure=measure,
    figures=("psnr", "ssim", "seconds", "seconds_per_view"),
    scenes=("demo",),
    variants={"every_step": {"max_samples_per_ray": 0}, **{f"cap{n}": {"max_samples_per_ray": n} for n in (64, 32)}},
)
