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

``--lift-only`` runs no distillation: each seed's geometry is trained with ``semantic = "lift"`` (``ovseg3d train
--semantic lift``: the geometry, then the lift, scored as ``lift``), or taken from ``--geometries`` (a folder of
bench_distill's full runs, ``LABEL/geometry.pt``) where that folder holds the scene's run with that seed: the very
geometry the distillation was measured on. The distillation's figures come from ``--distill-results`` (bench_distill's
JSON: the median and range of its ``full``, ``seed1`` and ``seed2`` runs, distillation seeds over one geometry).

    python scripts/bench_lift.py --lift-only --distill-results bench/distill_stop67.json \\
        --geometries /work/scratch/bench/runs --scenes /work/scratch/ext/forward --seeds 0 1 \\
        --variants lift lift_no_propagate --set steps=1500 max_minutes=0 --cache bench/features
    python scripts/bench_lift.py --table bench/lift_scenes.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import statistics
import time
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
    lift_only: bool = False
    """No distillation: the geometry trained with ``semantic = "lift"`` (or taken from --geometries), then the
    lifting variants; the distillation's figures from --distill-results."""
    distill_results: Path | None = None
    """bench_distill's JSON for the table's distillation columns (its full, seed1 and seed2 runs)."""
    geometries: Path | None = None
    """A folder of runs with ``LABEL/geometry.pt`` (bench_distill's full runs): a seed whose run is there (the same
    ``seed`` in its config) is lifted (and, without --lift-only, distilled again) on that geometry instead of a new
    one."""
    cache: Path | None = None
    """Teacher feature caches in ``CACHE/LABEL-ERRORS`` (``teachers.cache_dir``) instead of the scene's
    ``features/``, which other runs on a shared machine may be rebuilding with other teacher settings."""


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


def stored_geometry(args: Args, label: str, seed: int) -> Path | None:
    """``--geometries``' run of the scene ``label`` trained with ``seed``, if there is one."""
    if args.geometries is None:
        return None
    run = args.geometries / label
    if (run / GEOMETRY_CHECKPOINT).is_file() and load_run_config(run).seed == seed:
        return run
    return None


def lift_log(run: Path) -> dict:
    """The lift stage's record in a run's ``log.jsonl`` (its seconds, voxels and bytes)."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in log if r.get("stage") == "lift"][-1]


def trained_lift(scene: Path, run: Path, args: Args, overrides: dict) -> dict:
    """``ovseg3d train --semantic lift`` (the geometry, then the lift) in ``run``; the lift's figures and scores."""
    from bench_distill import scores

    from ovseg3d.config import resolve_base
    from ovseg3d.pipeline import train

    overrides = {**overrides, "semantic": "lift"}
    if not (args.reuse and (run / GEOMETRY_CHECKPOINT).exists() and (run / "log.jsonl").exists()):
        cfg = apply_overrides(resolve_base(args.preset, None), overrides, "--set")
        cfg = dataclasses.replace(cfg, scene=scene, output=run, device=args.device, chosen=tuple(overrides))
        if run.exists():
            shutil.rmtree(run)
        before = load()
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
    else:
        before, wall = None, None
    record = lift_log(run)
    geometry_log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    geometry = [r for r in geometry_log if "stage" not in r and "step" in r]
    row = {
        "seconds": round(record["time"], 2),
        "load": before or load(),
        "train_seconds_wall": None if wall is None else round(wall, 1),
        "geometry_steps": geometry[-1]["step"] if geometry else None,
        "geometry_seconds": geometry[-1]["time"] if geometry else None,
        "voxels": record["voxels"],
        "structure_mib": round(record["bytes"] / 2**20, 1),
    }
    scored = scores(semantic_metrics(run, load_trainer(run, args.device), save_renders=False), None)
    scored.pop("train_seconds_wall", None)
    return {**row, **scored}


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


def distill_figures(path: Path) -> dict[str, dict]:
    """Per scene of bench_distill's JSON: its teacher's mIoU and the median and range of its seeds' 3D mIoU and
    distillation seconds (``full``, ``seed1``, ``seed2``)."""
    result = json.loads(path.read_text())
    out = {}
    for label, rows in result["scenes"].items():
        runs = [rows[k] for k in ("full", "seed1", "seed2") if k in rows]
        mious = [r["miou"] for r in runs]
        seconds = [r.get("distill_seconds_wall") or r.get("train_seconds_wall") for r in runs]
        out[label] = {
            "source": str(path),
            "teacher_miou": runs[0]["teacher_miou"],
            "mious": mious,
            "miou": statistics.median(mious),
            "miou_range": [min(mious), max(mious)],
            "seconds": statistics.median(s for s in seconds if s is not None),
            "seconds_range": [min(s for s in seconds if s is not None), max(s for s in seconds if s is not None)],
        }
    return out


def print_scene_table(result: dict) -> None:
    """The --lift-only table: per scene, the teacher, the distillation (from its result file) and the lifting."""
    print(f"\nlifting per scene ({result['device']}, {result['teacher']} teacher; lift: median (range) over seeds)")
    head = (
        "| scene | 2D teacher | distill 3D median (range) | lift 3D | lift no-propagate 3D | lift s | distill s | "
        "voxels / MiB | load | lift − distill | lift ≥ 2D, within 1 of distill |"
    )
    print(head)
    print("|" + " --- |" * 11)
    for label, rows in result["scenes"].items():
        d = result.get("distill", {}).get(label)
        lift = list(rows.get("lift", {}).values())
        nop = list(rows.get("lift_no_propagate", {}).values())
        if not lift:
            continue
        med = statistics.median(r["miou"] for r in lift)
        teacher = lift[0]["teacher_miou"]
        dcell = f"{d['miou']:.1f} ({d['miou_range'][0]:.1f}-{d['miou_range'][1]:.1f})" if d else "—"
        dsec = f"{d['seconds']:.0f} ({d['seconds_range'][0]:.0f}-{d['seconds_range'][1]:.0f})" if d else "—"
        gap = f"{med - d['miou']:+.1f}" if d else "—"
        ok = "—" if not d else ("yes" if med >= teacher and med >= d["miou"] - 1 else "no")
        runs = f" [{len(lift)} run{'s' if len(lift) > 1 else ''}]"
        voxels = f"{statistics.median(r['voxels'] for r in lift):.0f} / {summary(lift, 'structure_mib')}"
        loads = "/".join(f"{r['load'][0]:.1f}" for r in lift)
        print(
            f"| {label} | {teacher:.1f} | {dcell} | {summary(lift, 'miou')}{runs} | {summary(nop, 'miou')} | "
            f"{summary(lift, 'seconds')} | {dsec} | {voxels} | {loads} | {gap} | {ok} |"
        )
    print("(lift s: the lift alone (march, sums, propagation); distill s: its 300 steps; load: 1-min load average)")


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
            result = json.loads(path.read_text())
            print_scene_table(result) if result.get("lift_only") else print_table(result)
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
    result["lift_only"] = args.lift_only
    result["commit"] = _commit()
    if args.distill_results is not None:
        result["distill"] = distill_figures(args.distill_results)
    for name in args.scenes:
        scene = scene_folder(name, args.work)
        label = Path(name).name
        rows = result["scenes"].setdefault(label, {})
        scene_overrides = overrides
        if args.cache is not None:
            cache = (args.cache / f"{label}-{errors}").resolve()
            scene_overrides = {**overrides, "teachers": {**overrides.get("teachers", {}), "cache_dir": str(cache)}}
        for seed in args.seeds:
            stored = stored_geometry(args, label, seed)
            run = args.work / f"{label}-s{seed}"
            base = scene_overrides  # over the source's config: the teacher, its cache
            if args.lift_only and stored is None:
                print(f"\n== {label} seed {seed}: geometry and lift (--semantic lift) -> {run}", flush=True)
                row = trained_lift(scene, run, args, {**scene_overrides, "seed": seed})
                rows.setdefault("lift", {})[seed] = {**row, "geometry": str(run)}
                _write(result, args.out)
                source = run
            elif args.lift_only:
                source = stored
            elif stored is not None:
                print(f"\n== {label} seed {seed}: distillation again on {stored}'s geometry -> {run}", flush=True)
                again = {**base, "distill_minutes": 0.0}  # its step budget, whatever the load
                rows.setdefault("distill", {})[seed] = {
                    **redistilled_run(stored, run, again, args.device),
                    "geometry": str(stored),
                }
                _write(result, args.out)
                source = stored
            else:
                print(f"\n== {label} seed {seed}: distillation -> {run}", flush=True)
                rows.setdefault("distill", {})[seed] = full(scene, run, args, {**scene_overrides, "seed": seed})
                _write(result, args.out)
                source, base = run, {}
            for variant in args.variants:
                if variant == "lift" and seed in rows.get("lift", {}):
                    continue  # the trained run's own lift
                if args.lift_only and variant.startswith("distill"):
                    continue
                print(f"== {label} seed {seed}: {variant}", flush=True)
                out = args.work / f"{label}-s{seed}-{variant}"
                runner = redistilled_run if variant.startswith("distill") else lifted_run
                row = runner(source, out, {**base, **VARIANTS[variant]}, args.device)
                rows.setdefault(variant, {})[seed] = {**row, "geometry": str(source)}
                _write(result, args.out)
    print_scene_table(result) if args.lift_only else print_table(result)
    print(f"\nwrote {args.out}")


def _commit() -> str:
    """The checkout's commit, with ``+dirty`` where ovseg3d/ has uncommitted changes (others edit it meanwhile)."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "ovseg3d") else "")


def _write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
