"""Held-out quality against training time (``scripts/benchmark.py``'s training half folded): the radiance field
alone, trained for ``max_minutes`` (5 when the preset says 0) with the learning-rate schedule ending there, scored on
the held-out views at marks of training time (evaluation not counted).

Figures: ``psnr`` and ``ssim`` at the end and, at each mark of :data:`MARKS` within the time, ``psnr_{S}s``,
``ssim_{S}s``, ``step_{S}s`` and ``occupied_{S}s`` (the occupancy grid's share occupied); ``steps_per_s``,
``samples_per_step`` (samples through the field a step), ``peak_rss_mib`` (the process's peak resident memory) and,
on a GPU, ``peak_cuda_mib``.

    ovseg3d bench run curve --scenes demo                                      # marks up to 5 min, cpu preset
    ovseg3d bench run curve --scenes demo --device cuda --set preset=gpu max_minutes=0.5 grid_impl=torch
    ovseg3d bench run curve --set max_minutes=10 target_samples=8192
"""

from __future__ import annotations

import dataclasses
import resource

from ovseg3d.bench.harness import Benchmark, Case

MARKS = (10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)
"""Training seconds at which the held-out views are scored (those within the time, and its end)."""


def measure(case: Case) -> dict[str, float]:
    import torch

    from ovseg3d.metrics import psnr, ssim
    from ovseg3d.train import Trainer, resolve_device, scene_of

    case = dataclasses.replace(case, preset=case.overrides.get("preset", case.preset))  # --set preset=gpu
    cfg = case.config()
    end = 60.0 * (cfg.max_minutes or 5.0)
    cfg = dataclasses.replace(cfg, scene=case.folder, steps=10**9, max_minutes=end / 60.0, chosen=tuple(case.overrides))
    device = resolve_device(case.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    scene = scene_of(cfg)
    trainer = Trainer(cfg, scene, device)
    marks = sorted({m for m in MARKS if m < end} | {end})
    figures: dict[str, float] = {}
    samples = 0.0
    while marks:
        samples += float(trainer.train_step().n_samples)
        if trainer.elapsed < marks[0]:
            continue
        mark = marks.pop(0)
        scores = []
        for i in scene.eval_ids:
            rgb, gt = trainer.render_view(scene.cameras, i, scene.near_far).rgb.cpu(), scene.image_float(i)
            scores.append((psnr(rgb, gt), ssim(rgb, gt)))
        figures["psnr"] = sum(s[0] for s in scores) / len(scores)
        figures["ssim"] = sum(s[1] for s in scores) / len(scores)
        figures |= {f"{k}_{mark:g}s": v for k, v in figures.items() if k in ("psnr", "ssim")}
        figures[f"step_{mark:g}s"] = trainer.step
        figures[f"occupied_{mark:g}s"] = trainer.grid.occupied_fraction()
        print(f"  {trainer.elapsed:7.1f} s  step {trainer.step:6}  PSNR {figures['psnr']:.2f}", flush=True)
    figures |= {
        "steps_per_s": trainer.step / trainer.elapsed,
        "samples_per_step": samples / trainer.step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
    }
    if device.type == "cuda":
        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


BENCHMARK = Benchmark(
    name="curve",
    doc="the radiance field's held-out PSNR / SSIM at marks of training time, steps a second, samples, memory",
    measure=measure,
    figures=("psnr", "ssim", "steps_per_s", "samples_per_step", "peak_rss_mib"),
    scenes=("demo",),
)
