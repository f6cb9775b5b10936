#!/usr/bin/env python
"""ovseg3d lifting benchmark (issue 68): training-free lifting against distillation, from the same geometry.

For each scene and seed, ``ovseg3d train`` runs the whole method with distillation (``bench_distill``'s full run: the
geometry, then the distillation); then each lifting variant lifts the teacher onto that run's geometry
(``RUN/geometry.pt``, the field before the distillation's joint RGB steps) in a run folder of its own, and every run's
annotated held-out views are scored (3D-OVS protocol) beside the 2D teacher's. Seconds are the semantic stage's own:
the distillation's steps (``log.jsonl``), the lifting's march, sums and propagation (its checkpoint excluded). Memory
is the lifted structure's size, and the process's peak resident memory while lifting. Every row records the load
average, since the machine may be shared.

Prints a table of medians (with the range over seeds) and writes JSON (default ``bench/lift.json``).

    python scripts/bench_lift.py                                     # the demo, 3 seeds, persistent teacher errors
    python scripts/bench_lift.py --scenes tilt10 tilt40 orbit_high --seeds 0
    python scripts/bench_lift.py --set teachers.syn_errors=per-view
    python scripts/bench_lift.py --table bench/lift.json                # the table of a result file again
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from bench_distill import Args as DistillArgs  # scripts/ is on the path when run as a script
from bench_distill import full_run, scene_folder

from ovseg3d import accel
from ovseg3d.config import apply_overrides, parse_overrides, write_toml
from ovseg3d.evaluate import semantic_metrics
from ovseg3d.lift import lift_training
from ovseg3d.run import GEOMETRY_CHECKPOINT, checkpoint_path, load_checkpoint, load_run_config
from ovseg3d.teachers.config import TeacherConfig
from ovseg3d.teachers.extract import ensure_features
from ovseg3d.train import Training, load_trainer, resolve_device

VARIANTS = {
    "lift": {},
    "lift_no_propagate": {"lift_propagate": 0},
    "lift_r64": {"lift_resolution": 64},
    "lift_r256": {"lift_resolution": 256},
    "lift_stride4": {"lift_stride": 4},
    "lift_full_dims": {"lift_clip_dim": 0, "lift_dino_dim": 0},
    "lift_scale_selection": {"scale_selection": True},
    "distill_to_steps": {"distill_minutes": 0.0},
}
"""Variants over each full run's geometry (config overrides over its config): lifting (``semantic = "lift"``), or, for
a name starting with ``distill``, the distillation again (``distill_to_steps``: its whole step budget, no time limit:
on a shared machine the preset's 4.5 minutes may end it early)."""


@dataclass
class Args:
    scenes: list[str] = field(default_factory=lambda: ["scenes/demo"])
    """Scene folders, or names of bench_distill's generated scenes (tilt10, tilt40, orbit_high, orbit)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of the full runs (the geometry and the distillation; the lifting has no randomness of its own)."""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    preset: str = "cpu"
    set: list[str] = field(default_factory=list)
    """Config overrides as key=value for every run (e.g. --set teachers.syn_errors=per-view)."""
    device: str = "auto"
    work: Path = Path("bench/runs/lift")
    out: Path = Path("bench/lift.json")
    reuse: bool = False
    """Reuse a full run already in --work (one that was distilled) instead of training it again."""
    table: list[Path] = field(default_factory=list)
    """Only print the tables of these result files (this script's JSON), running nothing."""


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def semantic_scores(run: Path, device: str) -> dict:
    """3D and 2D-teacher mIoU of a run's annotated held-out views (no PSNR, no renders)."""
    m = semantic_metrics(run, load_trainer(run, device), save_renders=False)
    keys = ("miou", "accuracy", "teacher_miou", "per_class_iou")
    return {k: m[k] for k in keys if k in m}


def _distilled(run: Path) -> bool:
    log = run / "log.jsonl"
    return log.exists() and '"stage": "distill"' in log.read_text()


def distill_log(run: Path) -> tuple[float, int]:
    """The distillation's own seconds and steps (its time budget may end it before its steps)."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    last = max((r for r in log if r.get("stage") == "distill"), key=lambda r: r["distill_step"])
    return last["time"], last["distill_step"]


def full(scene: Path, run: Path, args: Args, overrides: dict) -> dict:
    """The distilled run (``bench_distill``'s full run), its distillation's seconds and scores."""
    if not (args.reuse and (run / GEOMETRY_CHECKPOINT).exists() and _distilled(run)):
        base = DistillArgs(scenes=[], preset=args.preset, device=args.device, ablations=[])
        full_run(scene, run, base, overrides)
    seconds, steps = distill_log(run)
    cfg = load_run_config(run)
    row = {"seconds": round(seconds, 1), "steps": steps, "budget": [cfg.distill_steps, cfg.distill_minutes]}
    return {**row, "load": load(), **semantic_scores(run, args.device)}


def from_geometry(source: Path, run: Path, overrides: dict, device: str) -> Training:
    """A run folder ``run`` holding ``source``'s geometry (before its distillation) and config with ``overrides``."""
    if run.exists():
        shutil.rmtree(run)
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(source / "run.json", run / "run.json")
    cfg = apply_overrides(load_run_config(source), overrides, "variant")
    write_toml(dataclasses.replace(cfg, output=run), run / "config.toml")
    geometry = load_checkpoint(source / GEOMETRY_CHECKPOINT)
    torch.save(geometry, checkpoint_path(run, int(geometry["step"])))
    trainer = load_trainer(run, device)
    features = ensure_features(trainer.scene, cfg.teachers, trainer.device, log=lambda s: None)
    return Training(run, trainer, features, None, False, False)


def redistilled_run(source: Path, run: Path, overrides: dict, device: str) -> dict:
    """Distil ``source``'s geometry again in ``run`` with ``overrides``; seconds, steps and scores."""
    from ovseg3d.distill import distill_training

    before = load()
    distill_training(from_geometry(source, run, overrides, device))
    seconds, steps = distill_log(run)
    return {"seconds": round(seconds, 1), "steps": steps, "load": before, **semantic_scores(run, device)}


def lifted_run(source: Path, run: Path, overrides: dict, device: str) -> dict:
    """Lift the teacher onto ``source``'s geometry in ``run`` with ``overrides``; seconds, memory and scores."""
    training = from_geometry(source, run, {"semantic": "lift", **overrides}, device)
    before = load()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    lifted = lift_training(training)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    row = {
        "seconds": round(lifted.seconds, 2),
        "propagate_seconds": round(lifted.propagate_seconds, 2),
        "load": before,
        "voxels": len(lifted.table.keys),
        "structure_mib": round(lifted.nbytes() / 2**20, 1),
        "peak_rss_mib": round(peak, 0),
        "peak_rss_grew_mib": round(peak - rss, 0),
    }
    del lifted
    return {**row, **semantic_scores(run, device)}


def summary(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "—"
    med = statistics.median(values)
    return f"{med:.1f}" if len(values) == 1 else f"{med:.1f} ({min(values):.1f}-{max(values):.1f})"


def print_table(result: dict) -> None:
    print(
        f"\nlifting against distillation ({result['device']}, {result['teacher']} teacher; medians, range over seeds)"
    )
    print(f"{'scene':<12} {'variant':<22} {'mIoU 3D':>18} {'teacher 2D':>18} {'seconds':>20} {'MiB':>8} {'load':>6}")
    for scene, by_variant in result["scenes"].items():
        for variant, rows in by_variant.items():
            rows = list(rows.values())
            mib = summary(rows, "structure_mib") if variant.startswith("lift") else "—"
            loads = statistics.median(r["load"][0] for r in rows)
            print(
                f"{scene:<12} {variant:<22} {summary(rows, 'miou'):>18} {summary(rows, 'teacher_miou'):>18} "
                f"{summary(rows, 'seconds'):>20} {mib:>8} {loads:>6.1f}"
            )
    print("(seconds: the semantic stage alone; load: the 1-minute load average when the stage started, 2 cores)")


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if args.table:
        for path in args.table:
            print_table(json.loads(path.read_text()))
        return
    accel.configure_cpu_allocator()
    device = resolve_device(args.device)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"bench_lift: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    overrides = parse_overrides(args.set)
    errors = overrides.get("teachers", {}).get("syn_errors", TeacherConfig.syn_errors)
    result: dict = {**accel.machine_info(device), "teacher": f"synthetic ({errors} errors)", "scenes": {}}
    result["preset"], result["overrides"] = args.preset, overrides
    for name in args.scenes:
        scene = scene_folder(name, args.work)
        label = Path(name).name
        rows = result["scenes"].setdefault(label, {})
        for seed in args.seeds:
            run = args.work / f"{label}-s{seed}"
            print(f"\n== {label} seed {seed}: distillation -> {run}", flush=True)
            rows.setdefault("distill", {})[seed] = full(scene, run, args, {**overrides, "seed": seed})
            _write(result, args.out)
            for variant in args.variants:
                print(f"== {label} seed {seed}: {variant}", flush=True)
                out = args.work / f"{label}-s{seed}-{variant}"
                runner = redistilled_run if variant.startswith("distill") else lifted_run
                rows.setdefault(variant, {})[seed] = runner(run, out, VARIANTS[variant], args.device)
                _write(result, args.out)
    print_table(result)
    print(f"\nwrote {args.out}")


def _write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
