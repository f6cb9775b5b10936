"""Capture masks: what a transient occluder costs the radiance field, with and without a mask over it.

The scene is copied three times: ``clean`` (as it is, the ceiling); ``occluded`` (every training view gets a
transient, a textured ellipse of its own colour and place covering about ``AREA`` of the image, as a person walking
through; the held-out views stay clean); ``masked`` (the same images with ``masks/<image stem>.png`` that leave the
ellipses out). Each trains the radiance field alone for the same number of steps and is scored on the clean
held-out views. A repeat's seed places the transients and seeds the training.

    ovseg3d bench run masks                       # the demo, 1,500 steps, 3 seeds
    ovseg3d bench run masks --repeats 1 --set steps=100
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from ovseg3d.bench.harness import Benchmark, Case

AREA = 0.12
"""Share of a training image each transient covers."""


def transient(shape: tuple[int, int], area: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured ellipse of ``area`` of an ``(H, W)`` image: its ``[H, W]`` bool footprint and ``[H, W, 3]``
    uint8 colours (a random hue with stripes and noise)."""
    h, w = shape
    ry = np.sqrt(area * h * w / np.pi * 1.6)  # taller than wide, as a person
    rx = area * h * w / (np.pi * ry)
    cy, cx = rng.uniform(ry * 0.5, h - ry * 0.5), rng.uniform(rx * 0.5, w - rx * 0.5)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    base = rng.uniform(30, 225, 3)
    stripes = 40 * np.sin(yy / rng.uniform(2, 6))[..., None]
    noise = rng.normal(0, 15, (h, w, 3))
    return inside, np.clip(base + stripes + noise, 0, 255).astype(np.uint8)


def make_scenes(source: Path, work: Path, seed: int, area: float = AREA) -> dict[str, Path]:
    """The clean, occluded and masked copies of ``source`` under ``work`` (replaced)."""
    import imageio.v3 as iio

    from ovseg3d.data.loader import load_scene

    scene = load_scene(source)
    held_out = set(scene.eval_ids)
    paths = {name: work / name for name in ("clean", "occluded", "masked")}
    for path in paths.values():
        if path.exists():
            shutil.rmtree(path)
        shutil.copytree(source, path, ignore=shutil.ignore_patterns("features"))
    (paths["masked"] / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for i, image_path in enumerate(scene.image_paths):
        if i in held_out:
            continue
        where = image_path.relative_to(source)  # the same file in each copy (JPEGs re-encoded alike)
        image = iio.imread(image_path)[..., :3].copy()
        iio.imwrite(paths["clean"] / where, image)
        inside, colours = transient(image.shape[:2], area, rng)
        image[inside] = colours[inside]
        for name in ("occluded", "masked"):
            iio.imwrite(paths[name] / where, image)
        mask = paths["masked"] / "masks" / image_path.relative_to(source / "images").with_suffix(".png")
        mask.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(mask, np.where(inside, 0, 255).astype(np.uint8))
    return paths


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.pipeline import evaluate, train

    work = case.work / "masks" / f"{case.scene}-{case.variant}-s{case.seed}"
    scenes = make_scenes(case.folder, work / "scenes", case.seed)
    figures = {}
    for name, scene in scenes.items():
        run = work / "runs" / name
        if run.exists():
            shutil.rmtree(run)
        cfg = case.config()
        teachers = dataclasses.replace(cfg.teachers, kind="none")
        train(dataclasses.replace(cfg, scene=scene, output=run, teachers=teachers, device=case.device))
        metrics = evaluate(run, case.device, save_renders=False)
        figures[f"{name}_psnr"] = metrics["psnr"]
        figures[f"{name}_ssim"] = metrics["ssim"]
    return figures


BENCHMARK = Benchmark(
    name="masks",
    doc="transient occluders in the training photos: no mask, masked out, clean (held-out PSNR / SSIM)",
    measure=measure,
    figures=("clean_psnr", "occluded_psnr", "masked_psnr", "clean_ssim", "occluded_ssim", "masked_ssim"),
    scenes=("demo",),
    variants={"default": {"steps": 1500, "max_minutes": 0.0}},
    repeats=3,
)
