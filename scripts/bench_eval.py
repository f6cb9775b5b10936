#!/usr/bin/env python
"""Evaluation speed: ``ovseg3d eval`` on existing runs, with every marching step and with sample caps.

For each run and each ``--caps`` value (0 = every step, the exact rendering), times ``evaluate_run`` (render
every held-out view, PSNR / SSIM, panels) in this process and prints a table: held-out PSNR / SSIM, seconds,
seconds per view and pixels per second. With ``--old-code DIR`` (a checkout of an older ovseg3d, e.g. made with
``git worktree add DIR COMMIT``) the same runs are also evaluated by that code in a subprocess, for a
before / after on the same machine and the same field. Writes JSON (default ``bench/eval_speed.json``).

    python scripts/bench_eval.py bench/fox --caps 0 64 32
    python scripts/bench_eval.py bench/fox_old --old-code /work/old
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from ovseg3d.pipeline import evaluate as evaluate_run


@dataclass
class Args:
    runs: Annotated[list[Path], tyro.conf.Positional]
    """Run folders (trained by ovseg3d train)."""
    caps: list[int] = field(default_factory=lambda: [0])
    """--max-samples-per-ray values to time (0 = every step)."""
    old_code: Path | None = None
    """Also time `python -m ovseg3d.cli eval RUN` from this checkout of an older ovseg3d."""
    device: str = "cpu"
    out: Path = Path("bench/eval_speed.json")


def pixels(metrics: dict, run: Path) -> int:
    from ovseg3d.train import load_run_config, scene_of

    scene = scene_of(load_run_config(run))
    return sum(scene.width * scene.height for _ in metrics["per_view"])


def run_old(code: Path, run: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ovseg3d.cli", "eval", str(run.resolve())], cwd=code, env=env, check=True)
    seconds = time.perf_counter() - start
    return {**json.loads((run / "eval.json").read_text()), "wall": seconds}


def main(args: Args) -> None:
    rows = []
    for run in args.runs:
        if args.old_code is not None:
            m = run_old(args.old_code, run)
            rows.append(
                {
                    "run": str(run),
                    "code": str(args.old_code),
                    "cap": 0,
                    "seconds": round(m["wall"], 1),
                    "psnr": m["psnr"],
                    "ssim": m["ssim"],
                    "n_views": m["n_views"],
                    "pixels": pixels(m, run),
                }
            )
        for cap in args.caps:
            start = time.perf_counter()
            m = evaluate_run(run, args.device, True, cap)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "run": str(run),
                    "code": "this",
                    "cap": cap,
                    "seconds": round(seconds, 1),
                    "psnr": m["psnr"],
                    "ssim": m["ssim"],
                    "n_views": m["n_views"],
                    "pixels": pixels(m, run),
                }
            )
    print(f"{'run':<22} {'code':<10} {'cap':>4} {'PSNR':>6} {'SSIM':>6} {'s':>7} {'s/view':>7} {'px/s':>8}")
    for r in rows:
        r["seconds_per_view"] = round(r["seconds"] / r["n_views"], 2)
        r["pixels_per_second"] = round(r["pixels"] / r["seconds"])
        print(
            f"{Path(r['run']).name:<22} {Path(r['code']).name:<10} {r['cap']:>4} {r['psnr']:>6.2f} {r['ssim']:>6.3f} "
            f"{r['seconds']:>7.1f} {r['seconds_per_view']:>7.2f} {r['pixels_per_second']:>8}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": __import__("torch").get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
