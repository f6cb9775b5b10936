"""The distillation against its 2D teacher, and its ablations (``scripts/bench_distill.py`` folded): 3D against 2D
mIoU per scene, seeds of the distillation on one field.

Each scene trains one geometry (:func:`ovseg3d.bench.teacher_views.geometry`, with the overrides' seed: ``--set
seed=S``), kept under the work folder: a later run with the same ``--work`` distils it again with today's code (the
old ``--redistil``). Each (variant, seed) then distils the teacher onto that geometry for the preset's
``distill_steps`` (a step budget: ``distill_minutes`` is 0 unless set, so the machine's load moves no figure), with
one part of the method changed (:data:`VARIANTS`); a repeat's seed seeds the distillation alone (the old ``full``,
``seed1``, ``seed2``). The ``lift`` variants lift the teacher onto the same field for comparison (the old
``bench_lift.py --lift-only``). ``ovseg3d eval`` then scores each run.

Figures: ``miou`` and ``teacher_miou`` (the field's and the 2D teacher's mIoU on the annotated held-out views,
3D-OVS protocol), ``accuracy``, ``miou_gt_classes`` (over the classes each view's ground truth has),
``gt_shifted_1px_miou`` (the ground truth shifted one pixel: what a misregistration costs), ``train_miou`` (3D
mIoU on 8 training views against a generated scene's label maps: what to choose settings on), ``psnr`` (held out, dB),
``geometry_seconds`` and ``geometry_steps`` (the shared geometry's training), ``semantic_seconds`` and, by stage,
:func:`~ovseg3d.bench.teacher_views.semantic_run`'s (``steps``; a lifting's ``voxels``, ``structure_mib``,
``peak_rss_mib``). The ``default`` variant adds each class's ``iou_{CLASS}`` and ``teacher_iou_{CLASS}`` and, under
the simulated teacher, per object (issue 67: where does 3D beat its teacher?)
``object{I}_{CLASS}_as_{LOOK-ALIKE}_lean``, its mean lean toward its look-alike over the views that see it (20 pixels
or more), and ``..._wrong_views``, the share of them in which it leans past 0.5 (where the teacher takes it for the
look-alike).

    ovseg3d bench run distill --scenes demo ../shared/external-scenes/forward ../shared/external-scenes/orbit \\
        ../shared/external-scenes/outdoor-colmap-lens tilt10 tilt40 orbit_high --variants default negatives \\
        --out results/distill.json
    ovseg3d bench run distill --scenes demo --variants default lift lift_no_propagate --set steps=1500 max_minutes=0
    python -m ovseg3d.bench.distill results/distill.json     # the table of 3D against 2D per scene
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ovseg3d.bench.harness import Benchmark, Case
from ovseg3d.bench.teacher_views import LIFT, UNFILTERED, geometry, semantic_run

VARIANTS: dict[str, dict] = {
    "default": {},
    "per_view_teacher": {"teachers": {"syn_errors": "per-view"}},
    "negatives": {"teachers": {"class_relevancy": "negatives"}},  # LERF's form of the relevancy, for RDA and 2D
    "no_fda": {"fda_pos_weight": 0.0, "fda_neg_weight": 0.0},
    "no_rda": {"rda_weight": 0.0},
    "learned_selection": {"scale_selection": True},  # 3D-OVS's learned selection over the teacher's crop scales
    "plain_weights": {"sem_weight_power": 1.0},  # the plain radiance weights along the rays
    "no_coverage_weights": {"coverage_weights": False},
    "lift": UNFILTERED,  # without the view filter; the default lifting is lift_view_filter
    **{name: {"semantic": "lift", **values} for name, values in LIFT.items()},
}
"""Each a change of the method, distilled (or lifted) on the scene's one geometry."""
TRAIN_VIEWS = 8


def objects(run: Path, metrics: dict) -> dict[str, float]:
    """Each class's 2D and 3D IoU on the annotated views (``metrics``: ``run``'s scores) and, under the simulated
    teacher, each object's lean and wrong views (see the module's doc)."""
    import torch

    from ovseg3d.data.loader import load_scene
    from ovseg3d.run import load_run_config
    from ovseg3d.teachers.extract import scene_key
    from ovseg3d.teachers.synthetic import SyntheticClip

    out = {}
    for prefix, table in (("iou", "per_class_iou"), ("teacher_iou", "teacher_per_class_iou")):
        out |= {f"{prefix}_{c.replace(' ', '_')}": v for c, v in metrics.get(table, {}).items() if v is not None}
    cfg = load_run_config(run)
    if cfg.teachers.kind != "synthetic":
        return out
    scene = load_scene(cfg.scene)
    clip = SyntheticClip(scene.classes, cfg.teachers, scene_key(scene))
    leans: dict[tuple[int, int], list[tuple[int, float]]] = {}
    n = len(scene.classes)
    for v in range(len(scene)):
        labels, instances = scene.labels[v].long().clamp(max=n), scene.instances[v].long()
        regions = torch.where(instances > 0, instances, -1 - labels)  # as the teacher's: stuff without instances
        ids, counts = torch.unique(regions, return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            cls = int(torch.mode(labels[regions == i]).values)
            if c >= 20 and cls < n:
                leans.setdefault((i, cls), []).append(clip.lean(i, cls, v))
    name = [c.replace(" ", "_") for c in scene.classes]
    for (i, cls), draws in sorted(leans.items()):
        label = f"object{i}_{name[cls]}_as_{name[draws[0][0]]}"
        out[f"{label}_lean"] = sum(x for _, x in draws) / len(draws)
        out[f"{label}_wrong_views"] = sum(x > 0.5 for _, x in draws) / len(draws)
    return out


def train_miou(run: Path, device: str, n: int = TRAIN_VIEWS) -> dict[str, float]:
    """The run's 3D mIoU on ``n`` training views spread through the sequence, against the scene's label maps (a
    generated scene has them for every view; ``{}`` without): the figure to choose settings on, never the held-out
    views that are reported."""
    import torch

    from ovseg3d.evaluate import training_views
    from ovseg3d.lift import load_semantics
    from ovseg3d.metrics import segmentation_metrics
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, device)
    scene = trainer.scene
    views = training_views([v for v in scene.train_ids if v not in scene.eval_ids and v in scene.labels], n)
    semantics = load_semantics(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    if semantics is None or not views or not scene.classes:
        return {}
    classes = torch.arange(len(scene.classes)).view(-1, 1, 1)
    masks = {v: scene.labels[v].long().unsqueeze(0) == classes for v in views}
    ours = {v: semantics.segment(scene.cameras, v, scene.near_far) for v in views}
    return {"train_miou": segmentation_metrics(ours, masks, scene.classes)["miou"]}


def measure(case: Case) -> dict[str, float]:
    """Distil (or lift) the case's variant on the scene's one geometry, then score it as ``ovseg3d eval``."""
    from ovseg3d.pipeline import evaluate

    case = dataclasses.replace(case, preset=case.overrides.get("preset", case.preset))  # --set preset=gpu
    source = geometry(case, per_seed=False)
    run = case.work / "distill" / f"{Path(case.scene).name}-{case.variant}-s{case.seed}"
    _, figures = semantic_run(case, source, run, {"distill_minutes": case.overrides.get("distill_minutes", 0.0)})
    metrics = evaluate(run, case.device, save_renders=False, train_views=0)
    keys = ("miou", "teacher_miou", "accuracy", "miou_gt_classes", "gt_shifted_1px_miou", "psnr")
    figures |= {k: metrics[k] for k in keys if metrics.get(k) is not None}
    figures |= train_miou(run, case.device)
    log = [json.loads(line) for line in (source / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "stage" not in r and "time" in r]  # the geometry's log records
    figures["geometry_seconds"] = round(steps[-1]["time"], 1) if steps else 0.0
    figures["geometry_steps"] = steps[-1].get("step", 0) if steps else 0
    if case.variant == "default":
        figures |= objects(run, metrics)
    return figures


def markdown_table(data: dict) -> str:
    """3D against 2D per scene from a result of this benchmark: the ``default`` variant's seeds, their median and
    range and the median's gain over the 2D teacher, then each other variant's 2D / 3D medians and its 3D against the
    ``default`` median (a lifting's: lifting against distillation on the same field)."""
    figures = data["figures"]
    scenes = list(dict.fromkeys(k.split("/")[0] for k in figures if k.endswith("/default/miou")))
    others = sorted({k.split("/")[1] for k in figures if k.endswith("/miou")} - {"default"})
    head = ["scene", "held-out dB", "2D", "3D, seeds", "3D median (range)", "3D − 2D"]
    head += [f"{v}: 2D / 3D" for v in others]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for scene in scenes:
        miou, teacher = figures[f"{scene}/default/miou"], figures[f"{scene}/default/teacher_miou"]["median"]
        psnr = figures.get(f"{scene}/default/psnr")
        cells = [
            scene,
            f"{psnr['median']:.2f}" if psnr else "—",
            f"{teacher:.1f}",
            " / ".join(f"{x:.1f}" for x in miou["runs"]),
            f"**{miou['median']:.1f}** ({miou['min']:.1f}-{miou['max']:.1f})",
            f"{miou['median'] - teacher:+.1f}",
        ]
        for v in others:
            two, three = figures.get(f"{scene}/{v}/teacher_miou"), figures.get(f"{scene}/{v}/miou")
            if two and three:
                cells.append(f"{two['median']:.1f} / {three['median']:.1f} ({three['median'] - miou['median']:+.1f})")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BENCHMARK = Benchmark(
    name="distill",
    doc="distillation against its 2D teacher on one field per scene: 3D and 2D mIoU over distillation seeds, "
    "the ablations and the lifting beside them",
    measure=measure,
    figures=("miou", "teacher_miou", "accuracy", "psnr", "semantic_seconds", "geometry_seconds"),
    scenes=("demo", "orbit"),
    variants=VARIANTS,
    repeats=3,
    teacher={"kind": "synthetic"},
)

if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(markdown_table(json.loads(Path(path).read_text())))
