#!/usr/bin/env python
"""ovseg3d benchmark: hash-grid throughput and radiance-field training speed / quality.

Prints tables and writes JSON (default ``bench/benchmark.json``):

* ``hashgrid``: forward+backward points/s of the torch hash grid (eager and compiled) and, on a
  CUDA GPU with tinycudann installed, of tiny-cuda-nn, for the preset's grid and Instant-NGP's.
* ``training``: held-out PSNR / SSIM against training wall time on a scene (evaluation time is not
  counted), steps/s, samples per step, peak memory.

    python scripts/benchmark.py                         # demo scene, cpu preset, marks up to 5 min
    python scripts/benchmark.py --preset gpu --marks 10 20 30
    python scripts/benchmark.py --skip-train            # hash grid only
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from ovseg3d import accel
from ovseg3d.config import apply_overrides, parse_overrides, resolve_base
from ovseg3d.field.hashgrid import HashGridConfig, TorchHashGrid, make_hash_grid
from ovseg3d.metrics import psnr, ssim
from ovseg3d.train import Trainer, resolve_device, scene_of


@dataclass
class Args:
    scene: Path = Path("scenes/demo")
    """Scene to train on."""
    preset: str = "cpu"
    """Train preset (configs/NAME.toml)."""
    marks: list[float] = field(default_factory=lambda: [30.0, 60.0, 120.0, 180.0, 300.0])
    """Training seconds at which the held-out views are scored."""
    set: list[str] = field(default_factory=list)
    """Config overrides as key=value (e.g. --set max_samples_per_ray=16)."""
    device: str = "auto"
    grid_points: int = 1 << 16
    """Points per hash-grid forward+backward."""
    skip_train: bool = False
    skip_grid: bool = False
    out: Path = Path("bench/benchmark.json")


def _time(fn, repeat: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def bench_hashgrid(cfg: HashGridConfig, n: int, device: torch.device) -> list[dict]:
    x = torch.rand(n, 3, device=device)
    rows = []
    variants: list[tuple[str, torch.nn.Module]] = [("torch eager", TorchHashGrid(cfg).to(device))]
    variants.append(("torch compiled", TorchHashGrid(cfg, compile=True).to(device)))
    if accel.tcnn(device) is not None:
        variants.append(("tinycudann", make_hash_grid(cfg, device, "tcnn")))
    for name, grid in variants:

        def step(grid=grid):
            grid(x).float().sum().backward()

        t0 = time.perf_counter()
        step()  # includes compilation for the compiled variant
        first = time.perf_counter() - t0
        sec = _time(step, 5 if device.type == "cpu" else 50, device)
        rows.append(
            {
                "grid": dataclasses.asdict(cfg),
                "impl": name,
                "points": n,
                "seconds": sec,
                "points_per_s": n / sec,
                "first_call_s": first,
            }
        )
    return rows


def bench_training(args: Args, device: torch.device) -> dict:
    cfg = resolve_base(args.preset, None)
    overrides = parse_overrides(args.set)
    # the learning-rate schedule runs over the whole curve (it ends at the last mark)
    cfg = apply_overrides(cfg, {**overrides, "max_minutes": max(args.marks) / 60.0, "steps": 10**9}, "--set")
    cfg = dataclasses.replace(cfg, chosen=tuple(overrides))
    scene = scene_of(dataclasses.replace(cfg, scene=args.scene))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, scene, device)
    curve, samples = [], 0
    marks = sorted(args.marks)
    while marks:
        stats = trainer.train_step()
        samples += stats.n_samples
        if trainer.elapsed >= marks[0]:
            marks.pop(0)
            scores = []
            for i in scene.eval_ids:
                out = trainer.render_view(scene.cameras, i, scene.near_far)
                gt = scene.image_float(i)
                scores.append((psnr(out.rgb.cpu(), gt), ssim(out.rgb.cpu(), gt)))
            point = {
                "train_seconds": round(trainer.elapsed, 1),
                "step": trainer.step,
                "psnr": sum(s[0] for s in scores) / len(scores),
                "ssim": sum(s[1] for s in scores) / len(scores),
                "occupied": trainer.grid.occupied_fraction(),
            }
            curve.append(point)
            print(
                f"  {point['train_seconds']:>7.1f}s step {point['step']:>6}  PSNR {point['psnr']:.2f}  SSIM {point['ssim']:.4f}",
                flush=True,
            )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "scene": str(args.scene),
        "preset": args.preset,
        "overrides": overrides,
        "views": {"train": len(scene.train_ids), "eval": len(scene.eval_ids), "size": [scene.width, scene.height]},
        "steps_per_s": trainer.step / trainer.elapsed,
        "samples_per_step": samples / trainer.step,
        "peak_rss_mb": peak_rss,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "curve": curve,
    }


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    accel.configure_cpu_allocator()
    device = resolve_device(args.device)
    result: dict = accel.machine_info(device)
    if not args.skip_grid:
        preset = resolve_base(args.preset, None).field_config().grid
        ngp = HashGridConfig(16, 2, 19, 16, 1.447)
        rows = bench_hashgrid(preset, args.grid_points, device) + bench_hashgrid(ngp, args.grid_points, device)
        result["hashgrid"] = rows
        print(f"\nhash grid forward+backward, {args.grid_points} points ({result['device']})")
        print(f"{'levels x F, log2 T':<20} {'impl':<16} {'ms':>9} {'Mpoints/s':>10} {'first call s':>13}")
        for r in rows:
            g = r["grid"]
            label = f"{g['n_levels']} x {g['n_features_per_level']}, {g['log2_hashmap_size']}"
            print(
                f"{label:<20} {r['impl']:<16} {r['seconds'] * 1e3:>9.1f} {r['points_per_s'] / 1e6:>10.3f} {r['first_call_s']:>13.1f}"
            )
    if not args.skip_train:
        print(f"\ntraining {args.scene} with preset '{args.preset}' ({result['device']})")
        result["training"] = t = bench_training(args, device)
        print(f"{'train s':>8} {'step':>7} {'PSNR':>7} {'SSIM':>7}")
        for p in t["curve"]:
            print(f"{p['train_seconds']:>8.1f} {p['step']:>7} {p['psnr']:>7.2f} {p['ssim']:>7.4f}")
        print(
            f"steps/s {t['steps_per_s']:.2f}, samples/step {t['samples_per_step']:.0f}, peak RSS {t['peak_rss_mb']:.0f} MB"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
