"""The radiance field alone (``--teacher none``): held-out PSNR / SSIM beside the training views', the gap, steps
and seconds, per scene and variant. Folds ``scripts/bench_unbounded.py`` (generated outdoor scenes),
``scripts/bench_real.py`` (real captures; ``scripts/gpu_session.sh field`` runs this benchmark on a GPU) and
``scripts/colour_check.py`` (the ``colour`` variant) into one benchmark.

A variant is a name of :data:`VARIANTS` or several joined by '+' (applied in order: ``lr_steps+proposal``); a scene
is a name of :data:`ovseg3d.bench.harness.SCENES` (the generated outdoor cases ``outdoor_seed5`` ... among them) or a
scene folder. The variants of :data:`PROTOCOL` change how the field is scored, not how it is trained: ``eval64``
marches at most about 64 samples a ray (a CPU's quick eval, as the older tables were measured), ``every4`` scores
every 4th held-out view only, ``colour`` also checks the colour of the fox's orange fur (:func:`colour_figures`).

    ovseg3d bench run field --scenes demo --variants default+eval64 lr_steps+eval64 --set steps=2500 max_minutes=0
    ovseg3d bench run field --scenes outdoor-colmap-lens --variants default no_distortion --set steps=1000 max_minutes=0
    ovseg3d bench run field --scenes outdoor_seed5 outdoor_seed6 outdoor_views16 outdoor_fine_texture
    ovseg3d bench run field --scenes /data/fox --variants depth_light no_depth --set steps=1300 max_minutes=0
    ovseg3d bench run field --scenes /data/fox --variants default+colour --set steps=1300 max_minutes=0
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

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
    "lr_exp": {"lr_schedule": "exp"},  # the exponential decay the presets had before the steps schedule
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
"""Named config overrides of the field."""

PROTOCOL: dict[str, dict] = {"eval64": {"max_samples_per_ray": 64}, "every4": {"every": 4}, "colour": {}}
"""Variants of the scoring, not of the training: :func:`ovseg3d.pipeline.evaluate`'s keyword arguments (``colour``
adds :func:`colour_figures`)."""


def variant_overrides(variant: str) -> dict:
    """The overrides of a variant: a name of VARIANTS, or several joined by '+' (applied in order)."""
    merged: dict = {}
    for part in variant.split("+"):
        merged.update(VARIANTS.get(part, {}))
    return merged


def scoring(variant: str) -> dict:
    """The evaluation's keyword arguments a variant's :data:`PROTOCOL` parts give."""
    return {k: v for part in variant.split("+") for k, v in PROTOCOL.get(part, {}).items()}


def train_field(case: Case, run: Path, renders: bool = False, **evaluation: int) -> dict[str, float]:
    """Train the field alone on the case's scene with its overrides into ``run`` (replaced), then score held-out and
    training views: PSNR / SSIM, the gap, steps, wall and training seconds, eval seconds, views scored, and on a
    GPU the peak memory in GiB."""
    import torch

    from ovseg3d.pipeline import evaluate, train

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
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(run, case.device, renders, **evaluation)  # every marching step by default, as `ovseg3d eval`
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    figures = {
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "train_view_psnr": metrics.get("train_psnr", float("nan")),
        "train_view_ssim": metrics.get("train_ssim", float("nan")),
        "gap": metrics.get("generalisation_gap", float("nan")),
        "steps": log[-1]["step"] if log else 0,
        "seconds": round(seconds, 1),
        "train_seconds": round(log[-1]["time"], 1) if log else 0.0,
        "eval_seconds": round(time.perf_counter() - start, 1),
        "eval_views": len(metrics["per_view"]),
    }
    if cuda:
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def colour_figures(run: Path, device: str = "cpu", views: int = 5) -> dict[str, float]:
    """Is the colour right (``scripts/colour_check.py``)? On the first ``views`` held-out views and ``views``
    training views spread over the set, keyed ``colour_heldout0_...``: the mean RGB of the fox's orange fur
    (``photo_r`` ... ``render_b``; a pixel is fur where red exceeds green by 0.1, green exceeds blue and the
    saturation is over 0.35) in the photo and the render, their saturations, the fur's pixels, the PSNR, and the
    PSNR after the best per-channel affine map from render to photo (``psnr_affine``: what an exposure or
    white-balance error would give back)."""
    import torch

    from ovseg3d.metrics import psnr
    from ovseg3d.train import load_trainer

    def saturation(x: torch.Tensor) -> torch.Tensor:
        return (x.max(-1).values - x.min(-1).values) / x.max(-1).values.clamp_min(1e-6)

    trainer = load_trainer(run, device, force=True)
    scene = trainer.scene
    held = [v for v in range(len(scene.image_paths)) if v not in set(scene.train_ids)][:views]
    step = max(1, len(scene.train_ids) // views)
    training = list(scene.train_ids)[step // 2 :: step][:views]
    out: dict[str, float] = {}
    for name, view in [*(("heldout", v) for v in held), *(("training", v) for v in training)]:
        with torch.no_grad():
            rgb = trainer.render_view(scene.cameras, view, scene.near_far).rgb.cpu()
        render, photo = rgb.reshape(-1, 3).double(), scene.image_float(view).reshape(-1, 3).double()
        fur = (photo[:, 0] > photo[:, 1] + 0.1) & (photo[:, 1] > photo[:, 2]) & (saturation(photo) > 0.35)
        design = torch.cat([render, torch.ones(len(render), 1, dtype=render.dtype)], 1)
        mapped = (design @ torch.linalg.lstsq(design, photo).solution).clamp(0, 1)
        row = {
            "pixels": float(fur.sum()),
            "psnr": float(psnr(rgb, scene.image_float(view))),
            "psnr_affine": float(-10 * torch.log10(((mapped - photo) ** 2).mean())),
        }
        if fur.any():
            for what, x in (("photo", photo[fur]), ("render", render[fur])):
                row |= {f"{what}_{c}": float(v) for c, v in zip("rgb", x.mean(0), strict=True)}
                row[f"{what}_saturation"] = float(saturation(x).mean())
        out |= {f"colour_{name}{view}_{k}": round(v, 4) for k, v in row.items()}
    return out


def measure(case: Case) -> dict[str, float]:
    """Train and score the field (:func:`train_field`), with the colour check when the variant asks for it."""
    run = case.work / "field" / f"{Path(case.scene).name}-{case.variant.replace('+', '-')}-s{case.seed}"
    figures = train_field(case, run, **scoring(case.variant))
    if "colour" in case.variant.split("+"):
        figures |= colour_figures(run, case.device)
    return figures


BENCHMARK = Benchmark(
    name="field",
    doc="the radiance field alone: held-out PSNR / SSIM, the training views' PSNR and the gap, steps, seconds",
    measure=measure,
    figures=("psnr", "ssim", "train_view_psnr", "gap", "steps", "seconds"),
    scenes=("outdoor_seed5", "outdoor_seed6", "outdoor_views16", "outdoor_fine_texture"),
    variants={**{name: variant_overrides(name) for name in VARIANTS}, **{name: {} for name in PROTOCOL}},
    default_variants=("default",),
    repeats=1,
)
