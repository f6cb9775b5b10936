#!/usr/bin/env python
"""Unbounded scenes, held out against seen: how well the radiance field generalises on outdoor scenes it was not
tuned on.

Each case is a scene (``ovseg3d synth --outdoor`` variants written here: other seeds, view counts, ground
textures, distances, focal lengths, no anti-aliasing; or a folder given with ``--scenes``, such as
``../shared/external-scenes/outdoor-colmap-lens``). Each is trained with the preset and ``--teacher none`` (the
radiance field alone) under every ``--settings`` entry, then evaluated: held-out PSNR / SSIM beside three training
views' PSNR, and the gap. Prints a table and writes JSON (default ``bench/unbounded.json``).

    python scripts/bench_unbounded.py                                     # the generated family, default settings
    python scripts/bench_unbounded.py --cases seed5 --scenes ../shared/external-scenes/outdoor-colmap-lens \\
        --settings default sampler=grid "init_optical_depth=10"           # what each change is worth
    python scripts/bench_unbounded.py --cases seed7_views16 seed7_views24 seed7_views32 seed7_views40 --steps 1000
                                                                          # held out against the number of views
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from ovseg3d.cli import main as cli

BASE = [
    "--outdoor",
    "--cameras",
    "orbit",
    "--format",
    "colmap",
    "--lens",
    "opencv",
    "--width",
    "320",
    "--height",
    "240",
]
CASES: dict[str, list[str]] = {
    "seed5": ["--seed", "5", "--n-views", "30"],
    "seed6": ["--seed", "6", "--n-views", "30"],
    "views16": ["--seed", "7", "--n-views", "16"],
    "views40": ["--seed", "8", "--n-views", "40"],
    "far": ["--seed", "9", "--n-views", "30", "--orbit-distance", "3.0"],
    "fine_texture": ["--seed", "10", "--n-views", "30", "--texture-scale", "3"],
    "no_antialias": ["--seed", "11", "--n-views", "30", "--supersample", "1"],
    "wide_lens": ["--seed", "12", "--n-views", "30", "--fov-deg", "80"],
}
# The view-count sweep: one world (seed 7, the views16 case's), only the number of cameras on the orbit changes.
for _n in (16, 20, 24, 32, 40):
    CASES[f"seed7_views{_n}"] = ["--seed", "7", "--n-views", str(_n)]


@dataclass
class Args:
    cases: list[str] = field(default_factory=lambda: ["seed5", "seed6", "views16", "fine_texture"])
    """Generated outdoor scenes to run (names of CASES; none: only --scenes)."""
    scenes: list[Path] = field(default_factory=list)
    """Scene folders to run as they are (e.g. ../shared/external-scenes/outdoor-colmap-lens)."""
    settings: list[str] = field(default_factory=lambda: ["default"])
    """Config overrides per row, 'default' or comma-separated key=value (e.g. sampler=grid)."""
    preset: str = "cpu"
    steps: int = 0
    """Train for this many steps instead of the preset's time budget (0: the preset's)."""
    work: Path = Path("bench/unbounded")
    out: Path = Path("bench/unbounded.json")


def _flags(setting: str) -> list[str]:
    if setting == "default":
        return []
    flags = []
    for item in setting.split(","):
        key, value = item.split("=", 1)
        flags += [f"--{key.replace('_', '-')}", value]
    return flags


def run_case(args: Args, name: str, scene: Path, setting: str) -> dict:
    run = args.work / "runs" / f"{name}_{setting.replace('=', '-').replace(',', '_')}"
    shutil.rmtree(run, ignore_errors=True)
    train = ["train", str(scene), "--output", str(run), "--preset", args.preset, "--teacher", "none"]
    if args.steps > 0:
        train += ["--steps", str(args.steps), "--max-minutes", "0"]
    start = time.perf_counter()
    assert cli([*train, *_flags(setting)]) == 0, f"train failed: {name} {setting}"
    seconds = time.perf_counter() - start
    assert cli(["eval", str(run)]) == 0, f"eval failed: {name} {setting}"
    metrics = json.loads((run / "eval.json").read_text())
    cfg = (run / "config.toml").read_text()
    sampler = next(
        (line.split("=")[1].strip().strip('"') for line in cfg.splitlines() if line.startswith("sampler")), "?"
    )
    return {
        "case": name,
        "setting": setting,
        "sampler": sampler,
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "train_view_psnr": metrics["train_psnr"],
        "gap": metrics["generalisation_gap"],
        "steps": metrics["step"],
        "train_seconds": round(seconds, 1),
        "render": str(run / "renders" / f"view_{metrics['per_view'][0]['view']:03d}.png"),
    }


def main() -> None:
    args = tyro.cli(Args)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}: choose from {', '.join(CASES)}")
    scenes: list[tuple[str, Path]] = []
    for case in args.cases:
        folder = args.work / "scenes" / case
        if not folder.exists():
            assert cli(["synth", str(folder), *BASE, *CASES[case], "--workers", "0"]) == 0
        scenes.append((case, folder))
    scenes += [(p.name, p) for p in args.scenes]
    rows = []
    for name, scene in scenes:
        for setting in args.settings:
            rows.append(run_case(args, name, scene, setting))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=2) + "\n")
    print(f"\npreset {args.preset}" + (f", {args.steps} steps" if args.steps else ""))
    print(f"{'scene':<22} {'setting':<24} {'sampler':<9} {'held-out':>8} {'SSIM':>6} {'train views':>11} {'gap':>6}")
    for r in rows:
        print(
            f"{r['case']:<22} {r['setting']:<24} {r['sampler']:<9} {r['psnr']:>8.2f} {r['ssim']:>6.3f} "
            f"{r['train_view_psnr']:>11.2f} {r['gap']:>6.2f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
