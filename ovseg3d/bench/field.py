"""The radiance field alone (``--teacher none``): held-out PSNR / SSIM beside the training views', the gap, steps
and seconds, per scene and variant. Folds ``scripts/bench_unbounded.py`` (generated outdoor scenes) and the variants
of ``scripts/bench_real.py`` (whose command line stays for ``scripts/gpu_session.sh``) into one benchmark.

A variant is a name of :data:`VARIANTS` or several joined by '+' (applied in order: ``lr_steps+proposal``); a scene
is a name of :data:`ovseg3d.bench.harness.SCENES` (the generated outdoor cases ``outdoor_seed5`` ... among them) or a
scene folder.

    ovseg3d bench run field --scenes demo --variants default lr_steps --set steps=2500 max_minutes=0
    ovseg3d bench run field --scenes outdoor-colmap-lens --variants default no_distortion --set steps=1000 max_minutes=0
    ovseg3d bench run field --scenes outdoor_seed5 outdoor_seed6 outdoor_views16 outdoor_fine_texture
    ovseg3d bench run field --scenes /data/fox --variants depth_light no_depth --set steps=1300 max_minutes=0
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

from ovseg3d.bench.harness import Benchmark, Case

VARIANTS: dict[str, dict] = {
    "default": {},
    "grid": {"sampler": "grid"},
    "proposal": {"sampler": "proposal"},
    "no_contraction": {"contraction": "none"},
    "cube": {"contraction": "cube"},
    "appearance": {"appearance_dim": 16},
    "no_learned_background": {"learned_background": False},
    "random_background": {"learned_background": False, "background": "random"},
    "lr_steps": {"lr_schedule": "steps", "lr_warmup_steps": 100},
    "no_visibility": {"occ_visibility_eps": 0.0},
    "visibility": {"occ_visibility_eps": 1e-3},  # the visibility record as it was the default before issue 48
    # the bounded scenes' start as the unbounded ones': clear air, no visibility record (issue 48 item 2)
    "clear": {"start": "clear", "occ_visibility_eps": 0.0},
    "fog": {"start": "fog", "occ_visibility_eps": 1e-3},  # the bounded scenes' start before it
    "cull": {"alpha_thre": 0.01, "train_early_stop": True},
    "roi2": {"roi_scale": 2.0},
    "no_depth": {"depth_weight": 0.0},  # the depth prior off, whatever the preset says
    "depth": {"depth_weight": 0.02, "depth_rays": 256},
    "depth_strong": {"depth_weight": 0.1, "depth_rays": 256},
    "depth_light": {"depth_weight": 0.005, "depth_rays": 64},  # a quarter of the weight on a quarter of the rays
    "depth_anneal": {"depth_weight": 0.005, "depth_rays": 64, "depth_sigma_start": 0.2},  # band 20 % -> own
    "depth_until": {"depth_weight": 0.01, "depth_rays": 64, "depth_until": 0.5},  # falls to 0 by half (URF's)
    # nerfacc's NGPRadianceField: 16 levels of 2 features up to 4096 (the gpu preset: 8 x 4 up to 2048)
    "grid16": {"n_levels": 16, "n_features_per_level": 2, "max_resolution": 4096},
    "no_weight_decay": {"weight_decay": 0.0},
    "distortion": {"distortion_weight": 0.01},  # mip-NeRF 360's distortion loss at its own weight
    "distortion_light": {"distortion_weight": 0.003},
    "no_distortion": {"distortion_weight": 0.0},
    "samples128k": {"target_samples": 131072},  # half the gpu preset's samples a step: more, cheaper steps
    # nerfacc's proposal example's samples: 256 -> 96 -> 48 a ray, 4,096 rays a step (with the proposal sampler)
    "prop_nerfacc": {"proposal_samples": (256, 96), "proposal_field_samples": 48, "target_samples": 196608},
}
"""Named config overrides of the field (``scripts/bench_real.py --variants`` reads them from here)."""


def variant_overrides(variant: str) -> dict:
    """The overrides of a variant: a name of VARIANTS, or several joined by '+' (applied in order)."""
    merged: dict = {}
    for part in variant.split("+"):
        merged.update(VARIANTS[part])
    return merged


def measure(case: Case) -> dict[str, float]:
    """Train the field alone on the case's scene with its overrides, then score held-out and training views."""
    from ovseg3d.pipeline import evaluate, train

    run = case.work / "field" / f"{case.scene}-{case.variant.replace('+', '-')}-s{case.seed}"
    if run.exists():
        shutil.rmtree(run)
    cfg = case.config()
    cfg = dataclasses.replace(
        cfg,
        scene=case.folder,
        output=run,
        device=case.device,
        teachers=dataclasses.replace(cfg.teachers, kind="none"),
        chosen=tuple(case.overrides),  # a variant's values stand against the preset's [unbounded] table
    )
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    metrics = evaluate(run, case.device, save_renders=False)  # every marching step, as `ovseg3d eval`
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "train_view_psnr": metrics.get("train_psnr", float("nan")),
        "gap": metrics.get("generalisation_gap", float("nan")),
        "steps": log[-1]["step"] if log else 0,
        "seconds": round(seconds, 1),
    }


BENCHMARK = Benchmark(
    name="field",
    doc="the radiance field alone: held-out PSNR / SSIM, the training views' PSNR and the gap, steps, seconds",
    measure=measure,
    figures=("psnr", "ssim", "train_view_psnr", "gap", "steps", "seconds"),
    scenes=("outdoor_seed5", "outdoor_seed6", "outdoor_views16", "outdoor_fine_texture"),
    variants={name: variant_overrides(name) for name in VARIANTS},
    repeats=1,
)
