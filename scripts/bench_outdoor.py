#!/usr/bin/env python
"""Unbounded outdoor benchmark: a generated scene (objects on open ground under a sky, buildings tens of metres
away) photographed through a lens and posed as a COLMAP binary model, against the same images given to an older
ovseg3d as a pinhole LLFF scene.

1. ``ovseg3d synth`` writes the scene: ``--outdoor --cameras orbit --format colmap --lens opencv`` at 320x240.
2. An LLFF copy of it: the same PNGs, ``poses_bounds.npy`` from the COLMAP poses with the focal length only (no
   lens: LLFF has none) and per-view near / far from the sparse points' depths, and the same ground truth.
3. This ovseg3d trains on the COLMAP scene (preset, simulated teachers) and evaluates: held-out PSNR and mIoU.
4. With ``--old-code DIR`` (a checkout of an older ovseg3d, e.g. ``git worktree add /tmp/old b956242``), that code
   trains on the LLFF copy with the same preset and ``--teacher none`` and evaluates: held-out PSNR.

Prints a table and writes JSON (default ``bench/outdoor.json``).

    python scripts/bench_outdoor.py --old-code /tmp/old
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from ovseg3d.data import colmap
from ovseg3d.data.llff import write_poses_bounds
from ovseg3d.synth import SynthConfig, synthesize


@dataclass
class Args:
    work: Path = Path("bench/outdoor")
    """Scenes and runs go here (replaced)."""
    out: Path = Path("bench/outdoor.json")
    preset: str = "cpu"
    seed: int = 5
    lens: str = "opencv"
    old_code: Path | None = None
    """A checkout of an older ovseg3d to train on the LLFF copy (skipped when not given)."""
    set: list[str] = field(default_factory=list)
    """Config overrides key=value for this ovseg3d's run."""


def llff_copy(scene: Path, out: Path) -> Path:
    """The COLMAP scene as pinhole LLFF: same images and ground truth, focal only, near / far from the points."""
    model = colmap.read_model(colmap.find_model(scene))  # type: ignore[arg-type]
    images = sorted(model.images.values(), key=lambda im: im.name)
    out.mkdir(parents=True)
    for name in ("images", "labels", "instances", "segmentations"):
        if (scene / name).exists():
            shutil.copytree(scene / name, out / name)
    for name in ("objects.json",):
        if (scene / name).exists():
            shutil.copyfile(scene / name, out / name)
    c2w = np.stack([colmap.c2w_opengl(im) for im in images])
    cam = model.cameras[images[0].camera_id]
    fx = colmap.lens_of(cam)[0]
    near_far = []
    for pose in c2w:
        depth = (model.points - pose[:, 3]) @ -pose[:, 2]  # along the viewing axis
        depth = depth[depth > 1e-3]
        near_far.append([0.5 * np.percentile(depth, 1), 1.5 * np.percentile(depth, 99.5)])
    write_poses_bounds(out / "poses_bounds.npy", c2w, (cam.height, cam.width, fx), np.array(near_far))
    return out


def run_cli(code: Path | None, args: list[str]) -> float:
    """``python -m ovseg3d.cli ARGS`` with ``code`` first on the path (None: this ovseg3d); seconds."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ovseg3d.cli", *args], check=True, env=env, cwd=code or Path.cwd())
    return time.perf_counter() - start


def main() -> None:
    args = tyro.cli(Args)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    scene = args.work / "scene"
    cfg = SynthConfig(
        outdoor=True, cameras="orbit", format="colmap", lens=args.lens, width=320, height=240, seed=args.seed
    )
    start = time.perf_counter()
    synthesize(cfg, scene)
    print(f"synth: {time.perf_counter() - start:.0f} s")
    llff = llff_copy(scene, args.work / "llff")
    rows = {}
    run = args.work / "runs" / "new_colmap"
    extra = [f"--{kv.split('=')[0].replace('_', '-')}={kv.split('=', 1)[1]}" for kv in args.set]
    seconds = run_cli(
        None, ["train", str(scene.resolve()), "--output", str(run.resolve()), "--preset", args.preset, *extra]
    )
    run_cli(None, ["eval", str(run.resolve())])
    rows["new_colmap"] = {**_metrics(run), "wall_seconds": round(seconds, 1)}
    if args.old_code is not None:
        old = args.work / "runs" / "old_llff"
        train = ["train", str(llff.resolve()), "--output", str(old.resolve()), "--preset", args.preset]
        seconds = run_cli(args.old_code, [*train, "--teacher", "none"])
        run_cli(args.old_code, ["eval", str(old.resolve())])
        rows["old_llff"] = {**_metrics(old), "wall_seconds": round(seconds, 1)}
    print(f"\noutdoor scene (seed {args.seed}, {args.lens} lens, 320x240), preset {args.preset}")
    print(f"{'run':<12} {'PSNR':>6} {'SSIM':>6} {'mIoU':>6} {'teacher':>8} {'steps':>6}")
    for name, r in rows.items():
        miou = f"{r['miou']:.1f}" if r.get("miou") is not None else "-"
        teacher = f"{r['teacher_miou']:.1f}" if r.get("teacher_miou") is not None else "-"
        print(f"{name:<12} {r['psnr']:>6.2f} {r['ssim']:>6.3f} {miou:>6} {teacher:>8} {r['steps']:>6}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "lens": args.lens, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


def _metrics(run: Path) -> dict:
    m = json.loads((run / "eval.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = max((r["step"] for r in log if "step" in r), default=0)
    keys = ("psnr", "ssim", "miou", "miou_gt_classes", "teacher_miou", "per_class_iou")
    return {**{k: m.get(k) for k in keys}, "steps": steps}


if __name__ == "__main__":
    main()
