#!/usr/bin/env python
"""Real-capture benchmark: the radiance field alone (``--teacher none``) on a scene as users bring it.

For each variant, ``ovseg3d train SCENE`` runs with the preset and the variant's overrides, then ``ovseg3d eval``
renders the held-out views (every 8th) and three training views. Prints a table (held-out PSNR / SSIM, the
training views' PSNR beside it, training steps and seconds, eval seconds) and writes JSON (default ``bench/real.json``); each variant's first held-out panel (ground truth | render
| depth) is copied to ``bench/<name>_<variant>.png``.

    python scripts/bench_real.py --scene /data/fox                         # instant-ngp's fox, as published
    python scripts/bench_real.py --scene /data/fox --variants default no_contraction no_appearance

The variants are ``ovseg3d bench run field``'s (``ovseg3d/bench/field.py``), which measures the same into a result
file; this script keeps its command line for ``scripts/gpu_session.sh``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from ovseg3d.bench.field import VARIANTS, variant_overrides
from ovseg3d.config import apply_overrides, parse_overrides, resolve_base
from ovseg3d.pipeline import evaluate as evaluate_run
from ovseg3d.pipeline import train


@dataclass
class Args:
    scene: Path
    """Scene folder (transforms.json, COLMAP images/ + sparse/0/, or LLFF)."""
    name: str = ""
    """Name in the table and file names (default: the scene folder's name)."""
    preset: str = "cpu"
    variants: list[str] = field(default_factory=lambda: ["default"])
    """Variants to run: names of VARIANTS, or several joined by '+' (e.g. cull+lr_steps)."""
    set: list[str] = field(default_factory=list)
    """Config overrides as key=value for every variant (e.g. --set max_minutes=30)."""
    work: Path = Path("bench/runs")
    """Run folders go here (replaced)."""
    out: Path = Path("bench/real.json")
    device: str = "auto"
    eval_max_samples: int = 0
    """Evaluation: march at most about this many samples per ray (0: every step; 64 keeps a CPU's eval short)."""
    eval_every: int = 1
    """Score every N-th held-out view only (1 = all): a sweep's quick comparison; the table's figures are then of
    that subset (the JSON says so)."""


def run_variant(args: Args, name: str, variant: str) -> dict:
    slug = f"{name}_{variant.replace('+', '-')}"  # folder and file names: no '+'
    run = args.work / slug
    if run.exists():
        shutil.rmtree(run)
    overrides = {**parse_overrides(args.set), **variant_overrides(variant)}
    cfg = resolve_base(args.preset, None)
    values = {**overrides, "scene": str(args.scene), "output": str(run), "device": args.device}
    cfg = apply_overrides(cfg, {**values, "teachers": {"kind": "none"}}, "bench_real")
    cfg = dataclasses.replace(cfg, chosen=tuple(overrides))  # a variant's values stand against [unbounded]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_run(run, args.device, True, args.eval_max_samples, every=args.eval_every)
    eval_seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    panels = sorted((run / "renders").glob("view_*.png"))
    picture = args.out.parent / f"{slug}.png"
    if panels:
        picture.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(panels[0], picture)
    return {
        "variant": variant,
        "overrides": overrides,
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "train_view_psnr": metrics.get("train_psnr"),
        "train_view_ssim": metrics.get("train_ssim"),
        "steps": log[-1]["step"] if log else 0,
        "train_psnr_last": log[-1]["psnr"] if log else None,
        "train_seconds": round(log[-1]["time"], 1) if log else None,
        "wall_seconds": round(seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "eval_views": len(metrics["per_view"]),
        "eval_every": args.eval_every,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "picture": str(picture),
    }


def main() -> None:
    args = tyro.cli(Args)
    name = args.name or args.scene.name
    unknown = [v for v in args.variants if any(p not in VARIANTS for p in v.split("+"))]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    rows = []
    for variant in args.variants:  # the JSON after each variant: a run stopped at its limit keeps what was done
        rows.append(run_variant(args, name, variant))
        write_rows(args, name, rows)
    print(f"\n{name}, preset {args.preset}")
    print(f"{'variant':<16} {'PSNR':>6} {'SSIM':>6} {'train-view PSNR':>15} {'steps':>6} {'train s':>8} {'eval s':>7}")
    for r in rows:
        seen = f"{r['train_view_psnr']:.2f}" if r["train_view_psnr"] is not None else "-"
        print(
            f"{r['variant']:<16} {r['psnr']:>6.2f} {r['ssim']:>6.3f} {seen:>15} {r['steps']:>6} {r['train_seconds']:>8} "
            f"{r['eval_seconds']:>7}"
        )
    print(f"wrote {args.out}")


def write_rows(args: Args, name: str, rows: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    results[name] = {"preset": args.preset, "scene": str(args.scene), "machine": machine, "rows": rows}
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
