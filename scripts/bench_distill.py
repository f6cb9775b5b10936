#!/usr/bin/env python
"""ovseg3d distillation benchmark: 3D segmentation against the 2D teacher, and the ablations.

For each scene, ``ovseg3d train`` runs the whole method (geometry, then distillation) with a preset and a
teacher, timed from start to end; the held-out annotated views are then scored (3D-OVS protocol: IoU per
class per annotated view, then the mean) for the field (``miou``) and the 2D teacher alone
(``teacher_miou``). Each ablation re-distils from the same geometry (``RUN/geometry.pt``), for as many steps as the full
run took, with one part of the method changed: no FDA, no RDA, 3D-OVS's learned selection over the teacher's
crop scales in place of the finest crop, or the plain radiance weights along the rays (``sem_weight_power`` 1).

Prints a table and writes JSON (default ``bench/distill.json``); runs go to ``bench/runs/``.

    python scripts/bench_distill.py                                  # demo + orbit, cpu preset, simulated teachers
    python scripts/bench_distill.py --scenes scenes/demo --ablations   # full method only
    python scripts/bench_distill.py --preset gpu --device cuda
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from ovseg3d import accel
from ovseg3d.config import apply_overrides, parse_overrides, resolve_base, write_toml
from ovseg3d.distill import distill_loop
from ovseg3d.pipeline import evaluate as evaluate_run
from ovseg3d.pipeline import train
from ovseg3d.run import GEOMETRY_CHECKPOINT, checkpoint_path, load_checkpoint, load_run_config
from ovseg3d.synth import SynthConfig, synthesize
from ovseg3d.teachers.config import TeacherConfig
from ovseg3d.train import load_trainer, resolve_device

GENERATED = {
    "orbit": SynthConfig(cameras="orbit", format="transforms", seed=3),
    "tilt10": SynthConfig(seed=31, elevation_deg=10.0),
    "tilt40": SynthConfig(seed=32, elevation_deg=40.0),
    "orbit_high": SynthConfig(
        cameras="orbit", format="transforms", seed=33, orbit_min_elevation_deg=35.0, orbit_max_elevation_deg=60.0
    ),
}
"""Scenes the benchmark generates itself (e.g. ``ovseg3d synth OUT --cameras orbit --format transforms --seed 3``):
seeds, tilts and camera paths that no setting was chosen on."""

ABLATIONS = {
    "seed1": {"seed": 1},  # the distillation's initialisation and pixel draws (its generator), the geometry kept
    "seed2": {"seed": 2},
    "per_view_teacher": {"teachers": {"syn_errors": "per-view"}},
    "negatives": {"teachers": {"class_relevancy": "negatives"}},  # LERF's form of the relevancy, for RDA and 2D
    "no_fda": {"fda_pos_weight": 0.0, "fda_neg_weight": 0.0},
    "no_rda": {"rda_weight": 0.0},
    "learned_selection": {"scale_selection": True},
    "plain_weights": {"sem_weight_power": 1.0},
    "no_coverage_weights": {"coverage_weights": False},
}


@dataclass
class Args:
    scenes: list[str] = field(default_factory=lambda: ["scenes/demo", "orbit"])
    """Scene folders, or names of generated scenes (orbit)."""
    preset: str = "cpu"
    teacher: str = "synthetic"
    """synthetic (needs the scene's labels/ and instances/) or clip (needs the CLIP and DINO weights)."""
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS))
    """Ablations to run (each re-distils from the full run's geometry); give none to skip them."""
    set: list[str] = field(default_factory=list)
    """Config overrides as key=value for every run (e.g. --set distill_steps=500)."""
    device: str = "auto"
    work: Path = Path("bench/runs")
    out: Path = Path("bench/distill.json")
    redistil: bool = False
    """Keep the geometry of the runs already in --work and re-distil them with today's teachers and distillation
    (the 'full' row then times the distillation alone): for a change of the semantic half only."""
    table: bool = False
    """Only print, from --out, the markdown table of 3D against 2D per scene: the method's seeds (full, seed1,
    seed2) with their median and range, and the other ablations' 2D and 3D."""
    objects: bool = False
    """Only print, from the runs already in --work, each object's lean under the persistent simulated teacher
    beside its class's 2D and 3D IoU (issue 67: where does 3D beat its teacher?)."""


def scene_folder(name: str, work: Path, generated: dict[str, SynthConfig] = GENERATED) -> Path:
    """A scene folder as given, or the generated scene of that name (made under ``work/../scenes`` once)."""
    if name in generated:
        path = work.parent / "scenes" / name
        if not (path / "scene.json").exists():
            print(f"generating scene '{name}' -> {path}", flush=True)
            synthesize(generated[name], path)
        return path
    return Path(name)


def scores(metrics: dict, seconds: float | None) -> dict:
    keys = (
        "miou",
        "miou_gt_classes",
        "accuracy",
        "per_class_iou",
        "per_view_iou",
        "teacher_miou",
        "teacher_miou_gt_classes",
        "teacher_accuracy",
        "psnr",
        "n_annotated_views",
        "gt_shifted_1px_miou",
    )
    row = {k: metrics[k] for k in keys if k in metrics}
    row["train_seconds_wall"] = None if seconds is None else round(seconds, 1)
    return row


def full_run(scene: Path, run: Path, args: Args, overrides: dict) -> dict:
    cfg = apply_overrides(resolve_base(args.preset, None), overrides, "--set")
    teachers = dataclasses.replace(cfg.teachers, kind=args.teacher)  # after --set, which may set teachers.*
    cfg = dataclasses.replace(
        cfg, scene=scene, output=run, teachers=teachers, device=args.device, chosen=tuple(overrides)
    )
    if run.exists():
        shutil.rmtree(run)
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    return scores(evaluate_run(run, args.device), seconds)


def ablation_run(full: Path, run: Path, overrides: dict, device: str) -> dict:
    """Re-distil ``full``'s geometry into ``run`` with ``overrides``; scores of its annotated views."""
    from ovseg3d.distill import Distiller
    from ovseg3d.teachers.extract import ensure_features

    if run.exists():
        shutil.rmtree(run)
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(full / "run.json", run / "run.json")
    # the same number of distillation steps as the full run (a step budget, not a time budget: the
    # comparison does not depend on the machine's load)
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    steps = max(r["distill_step"] for r in log if r.get("stage") == "distill")
    schedule = {"distill_steps": steps, "distill_minutes": 0.0}
    cfg = apply_overrides(load_run_config(full), {**overrides, **schedule}, "ablation")
    write_toml(dataclasses.replace(cfg, output=run), run / "config.toml")
    geometry = load_checkpoint(full / GEOMETRY_CHECKPOINT)
    torch.save(geometry, checkpoint_path(run, int(geometry["step"])))
    trainer = load_trainer(run, device)
    features = ensure_features(trainer.scene, cfg.teachers, trainer.device, log=lambda s: None)
    start = time.perf_counter()
    distill_loop(Distiller(trainer, features), run)
    seconds = time.perf_counter() - start
    row = scores(evaluate_run(run, device, save_renders=False), None)
    row["distill_seconds_wall"] = round(seconds, 1)
    return row


def _write(result: dict, path: Path) -> None:
    """Write the JSON after every run: a partial result survives an interruption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def object_rows(run: Path) -> list[dict]:
    """Per object of a run's scene (persistent simulated teacher): its class, its mean lean toward its look-alike
    over the views that see it (20 pixels or more), the share of those views in which it leans past 0.5 (where the teacher
    takes it for the look-alike), and its class's IoU in 2D (the teacher) and 3D (the field) on the annotated views."""
    from ovseg3d.data.loader import load_scene
    from ovseg3d.teachers.extract import scene_key
    from ovseg3d.teachers.synthetic import SyntheticClip

    cfg = load_run_config(run)
    scene = load_scene(cfg.scene)
    metrics = json.loads((run / "eval.json").read_text())
    clip = SyntheticClip(scene.classes, cfg.teachers, scene_key(scene))
    leans: dict[tuple[int, int], list[tuple[int, float]]] = {}
    n = len(scene.classes)
    for v in range(len(scene)):
        labels, instances = scene.labels[v].long().clamp(max=n), scene.instances[v].long()
        regions = torch.where(instances > 0, instances, -1 - labels)  # as the teacher's: stuff without instances
        ids, counts = torch.unique(regions, return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            cls = int(torch.mode(labels[regions == i]).values)
            if c < 20 or cls >= n:
                continue
            leans.setdefault((i, cls), []).append(clip.lean(i, cls, v))
    rows = []
    for (i, cls), draws in sorted(leans.items()):
        name = scene.classes[cls]
        rows.append(
            {
                "instance": i,
                "class": name,
                "look_alike": scene.classes[draws[0][0]],
                "views": len(draws),
                "mean_lean": round(sum(x for _, x in draws) / len(draws), 3),
                "wrong_views": round(sum(x > 0.5 for _, x in draws) / len(draws), 3),
                "iou_2d": metrics.get("teacher_per_class_iou", {}).get(name),
                "iou_3d": metrics.get("per_class_iou", {}).get(name),
            }
        )
    return rows


def print_objects(work: Path) -> None:
    """:func:`object_rows` of every full run under ``work`` (one with its geometry, an eval.json and a simulated
    teacher), or of its re-distillation (``--redistil``'s ``NAME-method``) where there is one."""
    print(
        f"{'scene':<20} {'object':<16} {'look-alike':<16} {'views':>5} {'lean':>5} {'wrong':>6} {'2D IoU':>7} {'3D IoU':>7}"
    )
    full = sorted(p for p in work.iterdir() if (p / GEOMETRY_CHECKPOINT).is_file())
    latest = [
        p.with_name(f"{p.name}-method") if (p.with_name(f"{p.name}-method") / "eval.json").exists() else p for p in full
    ]
    for run in (p for p in latest if (p / "eval.json").exists()):
        if load_run_config(run).teachers.kind != "synthetic":
            continue
        for r in object_rows(run):
            iou2, iou3 = (f"{x:7.1f}" if x is not None else "      —" for x in (r["iou_2d"], r["iou_3d"]))
            print(
                f"{run.name:<20} {r['class']:<16} {r['look_alike']:<16} {r['views']:>5} {r['mean_lean']:>5.2f} "
                f"{r['wrong_views']:>6.0%} {iou2} {iou3}"
            )


SEEDS = ("full", "seed1", "seed2")


def markdown_table(result: dict) -> str:
    """3D against 2D per scene from a result of this script: each seed's mIoU, their median and range, the
    median's gain over the 2D teacher, and each other ablation's 2D / 3D."""
    others = sorted({a for rows in result["scenes"].values() for a in rows} - set(SEEDS))
    head = ["scene", "held-out dB", "2D", "3D, seeds", "3D median (range)", "3D − 2D"] + [
        f"{a}: 2D / 3D" for a in others
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, rows in result["scenes"].items():
        runs = [rows[a]["miou"] for a in SEEDS if a in rows]
        teacher = rows["full"]["teacher_miou"]
        median = statistics.median(runs)
        cells = [
            label,
            f"{rows['full']['psnr']:.2f}",
            f"{teacher:.1f}",
            " / ".join(f"{x:.1f}" for x in runs),
            f"**{median:.1f}** ({min(runs):.1f}-{max(runs):.1f})",
            f"{median - teacher:+.1f}",
        ]
        cells += [f"{rows[a]['teacher_miou']:.1f} / {rows[a]['miou']:.1f}" if a in rows else "—" for a in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())))
        return
    if args.objects:
        print_objects(args.work)
        return
    accel.configure_cpu_allocator()
    device = resolve_device(args.device)
    unknown = sorted(set(args.ablations) - set(ABLATIONS))
    if unknown:
        raise SystemExit(f"bench_distill: unknown ablation(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}")
    overrides = parse_overrides(args.set)
    teacher = args.teacher
    if teacher == "synthetic":  # which simulated teacher: its errors are the whole question (issue 67)
        errors = overrides.get("teachers", {}).get("syn_errors", TeacherConfig.syn_errors)
        teacher = f"synthetic ({errors} errors)"
    result: dict = {
        **accel.machine_info(device),
        "preset": args.preset,
        "teacher": teacher,
        "overrides": overrides,
        "scenes": {},
    }
    runs = {}
    for name in args.scenes:  # the full runs first: their wall time is a target, so nothing else may run
        scene = scene_folder(name, args.work)
        label = Path(name).name
        runs[label] = run = args.work / label
        if args.redistil:
            if not (run / GEOMETRY_CHECKPOINT).is_file():
                raise SystemExit(f"bench_distill: --redistil needs {run / GEOMETRY_CHECKPOINT} (run without it first)")
            print(f"\n== {label}: full method, re-distilled on {run}'s geometry", flush=True)
            result["scenes"][label] = {"full": ablation_run(run, args.work / f"{label}-method", {}, args.device)}
        else:
            print(f"\n== {label}: full method ({args.preset} preset, {args.teacher} teacher) -> {run}", flush=True)
            result["scenes"][label] = {"full": full_run(scene, run, args, overrides)}
        _write(result, args.out)
    for ablation in args.ablations:  # each ablation over every scene before the next: a cut-short run has whole rows
        for label, run in runs.items():
            print(f"\n== {label}: {ablation}", flush=True)
            rows = result["scenes"][label]
            rows[ablation] = ablation_run(run, args.work / f"{label}-{ablation}", ABLATIONS[ablation], args.device)
            _write(result, args.out)
    print(f"\ndistillation benchmark ({result['device']}, preset {args.preset}, {teacher} teacher)")
    print(
        f"{'scene':<8} {'variant':<18} {'mIoU':>6} {'own cls':>7} {'acc':>6} {'teacher mIoU':>13} {'gain':>6} "
        f"{'train s':>8} {'GT moved 1 px':>13}"
    )
    for label, rows in result["scenes"].items():
        for variant, r in rows.items():
            t = r.get("train_seconds_wall") or r.get("distill_seconds_wall")
            gain = r["miou"] - r["teacher_miou"]
            print(
                f"{label:<8} {variant:<18} {r['miou']:>6.1f} {r['miou_gt_classes']:>7.1f} {r['accuracy']:>6.1f} "
                f"{r['teacher_miou']:>13.1f} {gain:>+6.1f} {t:>8.0f} {r.get('gt_shifted_1px_miou', float('nan')):>13.1f}"
            )
    print("(own cls: mIoU over the classes each view's ground truth has; train s: the whole train for 'full',")
    print(" the distillation alone for the ablations; GT moved 1 px: the ground truth itself shifted by one pixel,")
    print(" what a one-pixel misregistration costs on these views)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
