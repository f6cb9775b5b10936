#!/usr/bin/env python
"""Capture masks: what a transient occluder costs the radiance field, with and without a mask over it.

The bundled demo scene is copied three times:

* ``clean``: as it is (the ceiling);
* ``occluded``: every training view gets a transient, a textured ellipse of its own colour and place (a person
  walking through, a hand), covering about ``--area`` of the image; the held-out views stay clean;
* ``masked``: the same images with ``masks/<image stem>.png`` that leave the ellipses out (0 = do not train).

Each trains the radiance field alone (``--teacher none``) for the same number of steps and is scored on the
clean held-out views. Prints a table and writes JSON (default ``bench/masks.json``).

    python scripts/bench_masks.py --steps 1500
    python scripts/bench_masks.py --scene /data/fox --steps 1800 --out bench/masks_fox.json --work bench/masks_fox
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tyro

from ovseg3d.data.loader import load_scene

DEMO = Path(__file__).resolve().parent.parent / "scenes" / "demo"


@dataclass
class Args:
    scene: Path = DEMO
    """The scene to copy, any format with its photos under images/ (the demo; instant-ngp's fox, ...)."""
    work: Path = Path("bench/masks")
    """Scenes and runs go here (replaced)."""
    out: Path = Path("bench/masks.json")
    preset: str = "cpu"
    steps: int = 1500
    """Geometry steps of every run (a step budget: the three runs get the same work)."""
    area: float = 0.12
    """Share of a training image each transient covers."""
    seed: int = 0


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


def make_scenes(args: Args) -> dict[str, Path]:
    scene = load_scene(args.scene)
    held_out = set(scene.eval_ids)
    paths = {name: args.work / name for name in ("clean", "occluded", "masked")}
    for path in paths.values():
        shutil.copytree(args.scene, path, ignore=shutil.ignore_patterns("features"))
    (paths["masked"] / "masks").mkdir()
    rng = np.random.default_rng(args.seed)
    covered = []
    for i, image_path in enumerate(scene.image_paths):
        if i in held_out:
            continue
        where = image_path.relative_to(args.scene)  # the same file in each copy (JPEGs re-encoded alike)
        image = iio.imread(image_path)[..., :3].copy()
        iio.imwrite(paths["clean"] / where, image)
        inside, colours = transient(image.shape[:2], args.area, rng)
        image[inside] = colours[inside]
        covered.append(float(inside.mean()))
        for name in ("occluded", "masked"):
            iio.imwrite(paths[name] / where, image)
        mask = paths["masked"] / "masks" / image_path.relative_to(args.scene / "images").with_suffix(".png")
        mask.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(mask, np.where(inside, 0, 255).astype(np.uint8))
    print(f"{len(covered)} training views occluded, {100 * np.mean(covered):.1f} % of each on average")
    return paths


def train_and_eval(scene: Path, run: Path, args: Args) -> dict:
    cli = [sys.executable, "-m", "ovseg3d.cli"]
    budget = ["--steps", str(args.steps), "--max-minutes", "0"]
    start = time.perf_counter()
    train = [*cli, "train", str(scene), "--output", str(run), "--preset", args.preset, "--teacher", "none", *budget]
    subprocess.run(train, check=True)
    seconds = time.perf_counter() - start
    subprocess.run([*cli, "eval", str(run)], check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((run / "eval.json").read_text())
    return {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "steps": metrics["step"], "seconds": round(seconds, 1)}


def main(args: Args) -> None:
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    scenes = make_scenes(args)
    rows = {name: train_and_eval(path, args.work / "runs" / name, args) for name, path in scenes.items()}
    print(f"\n{args.scene.name}: radiance field, preset {args.preset}, {args.steps} steps, held-out views clean")
    print(f"{'training images':<28} {'PSNR':>6} {'SSIM':>6} {'seconds':>8}")
    labels = {
        "clean": "clean",
        "occluded": "transients, no mask",
        "masked": "transients, masked out",
    }
    for name, r in rows.items():
        print(f"{labels[name]:<28} {r['psnr']:>6.2f} {r['ssim']:>6.3f} {r['seconds']:>8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = {"scene": str(args.scene), "preset": args.preset, "steps": args.steps, "area": args.area, "rows": rows}
    args.out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
