"""Image metrics and ``ovseg3d eval``: render the held-out views of a run and score them.

Writes ``RUN/eval.json`` (metrics; other stages' keys kept) and, unless ``--no-renders``, per held-out view
``RUN/renders/view_NNN.png`` (ground truth | render | depth) and per annotated view ``seg_eval_NNN.png``
(image | ground truth | 2D teacher | ours). ``ovseg3d render`` writes other names (``rgb_``, ``depth_``,
``seg_``, ``rel_``), so neither overwrites the other's pictures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ovseg3d import accel
from ovseg3d.data.scene import Scene
from ovseg3d.errors import UsageError
from ovseg3d.metrics import psnr, segmentation_metrics, shifted_gt_miou, ssim
from ovseg3d.render.renderer import RenderOutput


def update_eval_json(run: Path, metrics: dict, log=print) -> Path:  # noqa: ANN001
    """Merge ``metrics`` into ``RUN/eval.json`` (keys written by other stages are kept), whole or not at all.
    An unreadable file (truncated, not JSON, not an object) never costs the new metrics: one warning line,
    and the file is replaced by them."""
    from ovseg3d.atomic import write_json

    path = run / "eval.json"
    current: dict = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
            if not isinstance(current, dict):
                raise ValueError(f"a JSON {type(current).__name__}, not an object")
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = " ".join(str(exc).split())[:120]
            log(f"warning: {path} was unreadable ({reason}): writing this evaluation's metrics alone over it")
            current = {}
    current.update(metrics)
    write_json(path, current)
    return path


GAP_WARNING_DB = 5.0
"""A held-out PSNR this far below the training views' is a field that does not generalise: one warning line."""


def training_views(train_ids: list[int], n: int) -> list[int]:
    """``n`` training views spread evenly through the training sequence (all of them when there are fewer)."""
    if n <= 0 or not train_ids:
        return []
    if n >= len(train_ids):
        return list(train_ids)
    if n == 1:
        return [train_ids[0]]
    return [train_ids[round(i * (len(train_ids) - 1) / (n - 1))] for i in range(n)]


def gap_warning(metrics: dict, trainer) -> str | None:  # noqa: ANN001
    """One line when the held-out PSNR is more than :data:`GAP_WARNING_DB` below the training views', naming the
    likely cause; ``None`` otherwise (or without training views scored)."""
    if "train_psnr" not in metrics:
        return None
    gap = metrics["train_psnr"] - metrics["psnr"]
    if gap <= GAP_WARNING_DB:
        return None
    n_train = len(trainer.scene.train_ids)
    if trainer.contracted and trainer.cfg.init_optical_depth > 5.0:
        cause = (
            f"an unbounded field that started as thick fog (--init-optical-depth {trainer.cfg.init_optical_depth:g}), "
            "fitted by fog in front of each camera: train with the default 2"
        )
    elif n_train < 20:
        cause = f"{n_train} training views are few for this scene: the field fits each view with fog between them"
    elif trainer.step < 500:
        cause = f"a short run ({trainer.step} steps)"
    else:
        cause = (
            "floaters that only the training views need (look at the depth panels in renders/), or poses that do "
            "not agree with each other"
        )
    return (
        f"warning: held-out PSNR {metrics['psnr']:.1f} dB is {gap:.1f} dB below the training views' "
        f"{metrics['train_psnr']:.1f} dB (the field does not generalise); likely cause: {cause}"
    )


def score_view(trainer, view: int, max_samples_per_ray: int = 0) -> tuple[dict, RenderOutput]:  # noqa: ANN001
    """Render one view of the trainer's scene and score it against its photo (on the pixels its mask keeps):
    ``{"view", "psnr", "ssim"[, "masked_pixels"]}`` and the render."""
    scene = trainer.scene
    out = trainer.render_view(scene.cameras, view, scene.near_far, max_samples_per_ray)
    gt, rgb, mask = scene.image_float(view), out.rgb.cpu(), scene.masks.get(view)
    row = {"view": view, "psnr": psnr(rgb, gt, mask), "ssim": ssim(rgb, gt, mask=mask)}
    return (row if mask is None else {**row, "masked_pixels": int((~mask).sum())}), out


def evaluate_run(
    run: Path,
    device_name: str = "auto",
    save_renders: bool = True,
    max_samples_per_ray: int = 0,
    more: Callable[[Scene], dict] | None = None,
    train_views: int = 3,
    every: int = 1,
) -> dict:
    """Render every held-out view of ``run`` and compute PSNR / SSIM (and the segmentation scores of a run
    with a semantic field); writes ``RUN/eval.json``. ``max_samples_per_ray`` > 0 renders faster with fewer
    samples (0: every marching step). ``more(scene)``: scores of later stages to add (the pipeline's eval adds
    the detections' mAP this way). ``train_views``: also score this many training views (``train_psnr``,
    ``train_ssim``, ``generalisation_gap``: how much better the field does on what it was trained on).
    ``every``: score every N-th held-out view only (recorded as ``views_every``)."""
    from ovseg3d.train import load_trainer, save_panel

    accel.configure_cpu_allocator()
    trainer = load_trainer(run, device_name)
    scene = trainer.scene
    if not scene.eval_ids:
        raise UsageError(f"{scene.root}: no held-out views to evaluate")
    per_view = []
    masked_whole = [i for i in scene.eval_ids if i in scene.masks and not bool(scene.masks[i].any())]
    for i in scene.eval_ids[::every]:
        if i in masked_whole:
            continue  # nothing to score
        row, out = score_view(trainer, i, max_samples_per_ray)
        per_view.append(row)
        if save_renders:
            save_panel(run, scene, i, out)
    if not per_view:
        raise UsageError(f"{scene.root}: the masks of the {len(scene.eval_ids)} held-out views leave no pixel to score")
    seen = [
        score_view(trainer, i, max_samples_per_ray)[0]
        for i in training_views([v for v in scene.train_ids if v not in scene.eval_ids], train_views)
        if i not in scene.masks or bool(scene.masks[i].any())
    ]
    metrics = {
        **semantic_metrics(run, trainer, save_renders),
        **(more(scene) if more is not None else {}),
        "psnr": sum(v["psnr"] for v in per_view) / len(per_view),
        "ssim": sum(v["ssim"] for v in per_view) / len(per_view),
        "n_views": len(per_view),
        "views_every": every,
        "views_masked_whole": masked_whole,
        "max_samples_per_ray": max_samples_per_ray,
        "step": trainer.step,
        "train_seconds": round(trainer.elapsed, 2),
        "per_view": per_view,
    }
    if seen:
        metrics["train_psnr"] = sum(v["psnr"] for v in seen) / len(seen)
        metrics["train_ssim"] = sum(v["ssim"] for v in seen) / len(seen)
        metrics["generalisation_gap"] = metrics["train_psnr"] - metrics["psnr"]
        metrics["train_views"] = seen
        warning = gap_warning(metrics, trainer)
        if warning is not None:
            metrics["gap_warning"] = warning
    update_eval_json(run, metrics)
    return metrics


def semantic_metrics(run: Path, trainer, save_renders: bool = True) -> dict:
    """3D segmentation and 2D-teacher scores on the annotated views (3D-OVS protocol); ``{}`` for a run
    without a semantic field or a scene without annotations. ``save_renders``: ``RUN/renders/seg_eval_NNN.png``,
    image | ground truth | 2D teacher | ours per annotated view (``ovseg3d render`` writes ``seg_NNN.png``)."""
    from ovseg3d.images import colorize_labels, save_png, side_by_side
    from ovseg3d.lift import load_semantics
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.teachers.extract import ensure_features, teacher_labels

    scene = trainer.scene
    distiller = load_semantics(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    if distiller is None or not scene.segmentations or not scene.classes:
        return {}
    # the 2D teacher's own labels of the annotated views, for comparison: read from its cache (memory-mapped)
    views = sorted(scene.segmentations)
    # only the annotated views (a run with --teacher-views may have left them out: they are extracted now)
    features = ensure_features(scene, trainer.cfg.teachers, trainer.device, log=lambda s: None, views=views)
    ours = {v: distiller.segment(scene.cameras, v, scene.near_far) for v in views}
    teacher = {v: teacher_labels(features, v, scene.width, scene.height) for v in views}
    masks = {v: scene.segmentations[v] for v in views}
    m = segmentation_metrics(ours, masks, scene.classes)
    t = segmentation_metrics(teacher, masks, scene.classes)
    if save_renders:
        n = len(scene.classes)
        for v in views:
            gt = torch.where(scene.segmentations[v].any(0), scene.segmentations[v].double().argmax(0), n)
            panel = side_by_side(scene.image_float(v), *(colorize_labels(x, n) for x in (gt, teacher[v], ours[v])))
            save_png(run / "renders" / f"seg_eval_{v:03d}.png", panel)
    return {
        "miou": m["miou"],
        "miou_gt_classes": m["miou_gt_classes"],
        "accuracy": m["accuracy"],
        "per_class_iou": m["per_class_iou"],
        "per_view_iou": m["per_view_iou"],
        "teacher_miou": t["miou"],
        "teacher_miou_gt_classes": t["miou_gt_classes"],
        "teacher_accuracy": t["accuracy"],
        "teacher_per_class_iou": t["per_class_iou"],
        "gt_shifted_1px_miou": shifted_gt_miou(masks, scene.classes),
        "n_annotated_views": m["n_views"],
        "annotated_views_trained": bool(set(views) & set(scene.train_ids)),
    }


def per_view_table(per_view: dict[str, dict[str, float]]) -> str:
    """The per-view, per-class IoUs as a text table ('-': the class is in neither the view's ground truth
    nor its prediction; 0 where the prediction has a class the ground truth lacks)."""
    names = list(dict.fromkeys(name for row in per_view.values() for name in row))
    width = max([6, *(len(n) for n in names)])
    lines = [f"{'view':>6} " + " ".join(f"{n:>{width}}" for n in names)]
    for view, row in per_view.items():
        cells = (f"{row[n]:>{width}.1f}" if n in row else f"{'-':>{width}}" for n in names)
        lines.append(f"{view:>6} " + " ".join(cells))
    return "\n".join(lines)


def format_table(metrics: dict) -> str:
    lines = [f"{'view':>6} {'PSNR':>8} {'SSIM':>7}"]
    for v in metrics["per_view"]:
        lines.append(f"{v['view']:>6} {v['psnr']:>8.2f} {v['ssim']:>7.4f}")
    lines.append(f"{'mean':>6} {metrics['psnr']:>8.2f} {metrics['ssim']:>7.4f}")
    if "train_psnr" in metrics:
        views = ", ".join(str(v["view"]) for v in metrics.get("train_views", []))
        lines.append(
            f"{'train':>6} {metrics['train_psnr']:>8.2f} {metrics['train_ssim']:>7.4f}  (training views {views}: "
            f"held out {metrics['generalisation_gap']:.2f} dB below them)"
        )
    if metrics.get("gap_warning"):
        lines.append(metrics["gap_warning"])
    masked = sum(1 for v in metrics["per_view"] if v.get("masked_pixels"))
    if masked:
        lines.append(f"({masked} of these views are scored on the pixels their masks keep)")
    if metrics.get("views_masked_whole"):
        lines.append(f"(held-out views {metrics['views_masked_whole']} are masked whole: not scored)")
    if "miou" in metrics:
        lines.append(
            f"segmentation on {metrics['n_annotated_views']} annotated views: mIoU {metrics['miou']:.1f} "
            f"(2D teacher {metrics['teacher_miou']:.1f}), accuracy {metrics['accuracy']:.1f} "
            f"(teacher {metrics['teacher_accuracy']:.1f}); over each view's own classes "
            f"{metrics['miou_gt_classes']:.1f} (teacher {metrics['teacher_miou_gt_classes']:.1f})"
        )
        if "per_view_iou" in metrics:
            lines.append(per_view_table(metrics["per_view_iou"]))
        if "gt_shifted_1px_miou" in metrics:
            lines.append(f"(the ground truth moved by one pixel scores mIoU {metrics['gt_shifted_1px_miou']:.1f})")
    if "map25" in metrics:
        pose = metrics["pose_acc_pi6"]
        lines.append(
            f"detection ({metrics['n_detections']} boxes): mAP@0.25 {metrics['map25']:.1f}, mAP@0.5 "
            f"{metrics['map50']:.1f}, pose Acc@pi/6 "
            + ("n/a (no object with a front)" if pose is None else f"{pose:.1f}")
        )
    return "\n".join(lines)
