#!/usr/bin/env python
"""ovseg3d detection benchmark: mAP@0.25 / @0.5 (VoteNet protocol) and pose Acc@pi/6 against the scenes'
objects.json, with and without the size prior, the depth-map classifier and the render classifier, and the
time of ``detect`` on a 500k-point cloud.

Each scene needs a trained run with a semantic field: ``bench/runs/NAME`` is reused when it exists (the
distillation benchmark writes it), else trained here with the cpu preset and simulated teachers. Its cloud is
exported with features (``RUN/export``, reused when present), then ``ovseg3d detect`` runs once per variant.
Prints a table and writes JSON (default ``bench/detect.json``).

    python scripts/bench_detect.py                         # demo, orbit, forward2
    python scripts/bench_detect.py --scenes scenes/demo
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import tyro
from bench_distill import GENERATED, full_run, scene_folder
from bench_distill import Args as DistillArgs

from ovseg3d.data.loader import camera_up
from ovseg3d.detect.head import DetectOptions, detect
from ovseg3d.detect.results import detection_metrics
from ovseg3d.detect.source import load_source, run_detect
from ovseg3d.export import ExportOptions, extract_cloud, load_export, write_export
from ovseg3d.synth import SynthConfig

SCENES = {
    **GENERATED,
    "forward2": SynthConfig(seed=7, classes=["mug", "chair", "book", "soda can", "tennis ball"]),
}
"""Generated scenes: the distillation benchmark's orbit scene, and a second forward-facing scene with two
objects that have a front (``ovseg3d synth OUT --seed 7 --classes mug chair book "soda can" "tennis ball"``)."""

VARIANTS = {
    "full": {},
    "no_size_prior": {"size_prior": False},
    "no_depth_classifier": {"depth_classifier": False},
    "no_render_classifier": {"render_classifier": False},
}


@dataclass
class Args:
    scenes: list[str] = field(default_factory=lambda: ["scenes/demo", "orbit", "forward2"])
    """Scene folders, or names of generated scenes (orbit, forward2)."""
    clip_model: str = ""
    """CLIP for the depth-map and render classifiers (a hub name or local folder); without it, and with
    simulated teachers, there is no image encoder and both are off in every variant."""
    speed_points: int = 500_000
    """Size of the cloud ``detect`` is timed on (the demo's cloud, jittered copies)."""
    device: str = "cpu"
    work: Path = Path("bench/runs")
    out: Path = Path("bench/detect.json")


def ensure_run(scene: Path, run: Path, device: str) -> None:
    if (run / "eval.json").exists() and "miou" in json.loads((run / "eval.json").read_text()):
        return
    print(f"training {run} (cpu preset, simulated teachers)", flush=True)
    full_run(scene, run, DistillArgs(device=device), {})


def ensure_export(run: Path, device: str) -> float | None:
    """Export with features unless a featured export exists; the seconds it took (``None`` if reused)."""
    npz = run / "export" / "points.npz"
    if npz.exists() and load_export(npz).feature is not None:
        return None
    opts = ExportOptions(features=True)
    start = time.perf_counter()
    cloud = extract_cloud(run, opts, device)
    write_export(cloud, run / "export", run, opts)
    return time.perf_counter() - start


def speed(run: Path, n_points: int, device: torch.device) -> dict:
    """Median of three ``detect`` calls on ``run``'s cloud grown to ``n_points`` by jittered copies."""
    src = load_source(run, device, log=lambda s: None)
    cloud = src.cloud
    copies = max(1, -(-n_points // len(cloud)))
    rng = np.random.default_rng(0)
    idx = np.tile(np.arange(len(cloud)), copies)[:n_points]
    big = cloud.subset(idx)
    big.xyz = big.xyz + rng.normal(0, cloud.voxel_size / 4, big.xyz.shape).astype(np.float32)
    big.voxel_size = cloud.voxel_size / copies**0.5
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = detect(big, DetectOptions(), src.text, None, camera_up(src.c2w), log=lambda s: None)
        times.append(time.perf_counter() - start)
    return {
        "points": len(big),
        "seconds": round(statistics.median(times), 2),
        "stages": {k: round(v, 2) for k, v in result.seconds.items()},
        "boxes": len(result.detections),
    }


def main(args: Args) -> dict:
    device = torch.device(args.device)
    result: dict = {"scenes": {}, "clip_model": args.clip_model or None}
    for name in args.scenes:
        scene = scene_folder(name, args.work, SCENES)
        run = args.work / Path(name).name
        ensure_run(scene, run, args.device)
        export_s = ensure_export(run, args.device)
        objects = json.loads((scene / "objects.json").read_text())["objects"]
        rows = {}
        for variant, change in VARIANTS.items():
            opts = replace(DetectOptions(), **change)
            out = run / ("detections.json" if variant == "full" else f"detections_{variant}.json")
            start = time.perf_counter()
            det, _ = run_detect(run, opts, args.clip_model, output=out, device=device, log=lambda s: None)
            m = detection_metrics(out, objects)
            rows[variant] = {k: round(v, 1) if k.startswith("map") else v for k, v in m.items()}
            rows[variant] |= {"n_objects": len(objects), "seconds": round(time.perf_counter() - start, 2)}
            rows[variant]["depth_classifier_used"] = any("depth" in d.cues for d in det.detections)
            rows[variant]["render_classifier_used"] = any("render" in d.cues for d in det.detections)
        eval_json = json.loads((run / "eval.json").read_text())
        result["scenes"][Path(name).name] = {
            "run": str(run),
            "miou": eval_json.get("miou"),
            "export_seconds": None if export_s is None else round(export_s, 1),
            "variants": rows,
        }
    result["speed"] = speed(args.work / Path(args.scenes[0]).name, args.speed_points, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return result


def _fmt(v) -> str:  # noqa: ANN001
    return "-" if v is None else f"{v:.1f}"


def print_table(result: dict) -> None:
    print(f"{'scene':<10} {'variant':<20} {'mAP@.25':>8} {'mAP@.5':>7} {'Acc@pi/6':>9} {'pose med':>9} {'boxes':>6}")
    for name, s in result["scenes"].items():
        for variant, r in s["variants"].items():
            print(
                f"{name:<10} {variant:<20} {_fmt(r['map25']):>8} {_fmt(r['map50']):>7} {_fmt(r['pose_acc_pi6']):>9} "
                f"{_fmt(r['pose_median_deg']):>9} {r['n_detections']:>6}"
            )
    sp = result["speed"]
    print(f"detect on {sp['points']} points: {sp['seconds']} s (median of 3; stages {sp['stages']})")


if __name__ == "__main__":
    main(tyro.cli(Args))
