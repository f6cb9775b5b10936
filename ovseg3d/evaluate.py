"""Image metrics and ``ovseg3d eval``: render the held-out views of a run and score them.

Writes ``RUN/eval.json`` (metrics; other stages' keys kept) and, unless ``--no-renders``, per held-out view
``RUN/renders/view_NNN.png`` (ground truth | render | depth) and per annotated view ``seg_eval_NNN.png``
(image | ground truth | 2D teacher | ours). ``ovseg3d render`` writes other names (``rgb_``, ``depth_``,
``seg_``, ``rel_``), so neither overwrites the other's pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d import accel
from ovseg3d.errors import UsageError


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], any matching shapes."""
    mse = F.mse_loss(pred.clamp(0, 1).float(), target.float())
    return float(-10.0 * torch.log10(mse.clamp(min=1e-12)))


def _gaussian_window(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of ``[H, W, C]`` images in [0, 1].

    Gaussian window (11, sigma 1.5), constants ``(0.01)^2`` and ``(0.03)^2``, valid filtering,
    mean over pixels and channels: the variant NeRF papers report.
    """
    x = pred.clamp(0, 1).double().permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    y = target.double().permute(2, 0, 1)[:, None]
    g = _gaussian_window(min(window, x.shape[-1], x.shape[-2]), sigma)
    kx, ky = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kx), ky)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


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


def evaluate_run(run: Path, device_name: str = "auto", save_renders: bool = True, max_samples_per_ray: int = 0) -> dict:
    """Render every held-out view of ``run`` and compute PSNR / SSIM; writes ``RUN/eval.json``.
    ``max_samples_per_ray`` > 0 renders faster with fewer samples (0: every marching step)."""
    from ovseg3d.train import load_trainer, save_panel

    accel.configure_cpu_allocator()
    trainer = load_trainer(run, device_name)
    scene = trainer.scene
    if not scene.eval_ids:
        raise UsageError(f"{scene.root}: no held-out views to evaluate")
    per_view = []
    for i in scene.eval_ids:
        out = trainer.render_view(scene.cameras, i, scene.near_far, max_samples_per_ray)
        gt = scene.image_float(i)
        rgb = out.rgb.cpu()
        per_view.append({"view": i, "psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt)})
        if save_renders:
            save_panel(run, scene, i, out)
    metrics = {
        **semantic_metrics(run, trainer, save_renders),
        **detection_metrics(run / "detections.json", [o.as_json() for o in scene.objects]),
        "psnr": sum(v["psnr"] for v in per_view) / len(per_view),
        "ssim": sum(v["ssim"] for v in per_view) / len(per_view),
        "n_views": len(per_view),
        "max_samples_per_ray": max_samples_per_ray,
        "step": trainer.step,
        "train_seconds": round(trainer.elapsed, 2),
        "per_view": per_view,
    }
    update_eval_json(run, metrics)
    return metrics


def semantic_metrics(run: Path, trainer, save_renders: bool = True) -> dict:
    """3D segmentation and 2D-teacher scores on the annotated views (3D-OVS protocol); ``{}`` for a run
    without a semantic field or a scene without annotations. ``save_renders``: ``RUN/renders/seg_eval_NNN.png``,
    image | ground truth | 2D teacher | ours per annotated view (``ovseg3d render`` writes ``seg_NNN.png``)."""
    from ovseg3d.distill import load_distiller
    from ovseg3d.images import colorize_labels, save_png, side_by_side
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.teachers.extract import teacher_labels

    scene = trainer.scene
    loaded = load_distiller(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    if loaded is None or not scene.segmentations or not scene.classes:
        return {}
    distiller, features = loaded
    views = sorted(scene.segmentations)
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


def detection_metrics(detections: Path, objects: list[dict]) -> dict:
    """mAP@0.25 / @0.5 (VoteNet) of a ``detections.json`` against ``objects`` (``objects.json``'s entries),
    and the yaw errors of the objects with a front with their accuracy at pi/6 and pi/18 and median; ``{}``
    without detections or objects."""
    from ovseg3d.detect.metrics import mean_ap, pose_errors, pose_summary
    from ovseg3d.viewer import read_detections

    if not objects or not detections.exists():
        return {}
    boxes = read_detections(detections)
    map25, ap25 = mean_ap(boxes, objects, 0.25)
    map50, ap50 = mean_ap(boxes, objects, 0.5)
    errors = pose_errors(boxes, objects)
    return {
        "map25": map25,
        "map50": map50,
        "ap25": ap25,
        "ap50": ap50,
        **pose_summary(errors),
        "pose_errors_deg": [round(e, 1) for e in errors],
        "n_detections": len(boxes),
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


def class_ious(pred: Tensor, masks: Tensor) -> tuple[Tensor, int, int]:
    """IoU per class of one view (3D-OVS protocol, REFERENCE.md §1).

    Args:
        pred: ``[H, W]`` predicted class index.
        masks: ``[C, H, W]`` bool ground-truth masks; pixels in no mask are ignored.

    Returns:
        ``[C]`` IoU (NaN where the class is in neither the prediction nor the ground truth),
        correctly labelled pixels, and labelled pixels.
    """
    n_cls = masks.shape[0]
    valid = masks.any(0)
    onehot = torch.nn.functional.one_hot(pred.long().clamp(0, n_cls - 1), n_cls).permute(2, 0, 1).bool()
    onehot &= valid
    inter = (onehot & masks).flatten(1).sum(1).double()
    union = (onehot | masks).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))
    gt = masks.double().argmax(0)
    correct = int(((pred.long() == gt) & valid).sum())
    return iou, correct, int(valid.sum())


def shifted_gt_miou(masks: dict[int, Tensor], classes: list[str]) -> float:
    """mIoU of the ground truth itself moved by one pixel: the mean of a step right and a step down.

    How much a one-pixel misregistration costs on these views. Objects a few pixels wide lose a large
    share of their IoU to it, so it tells how close to 100 a method can be expected to come on them.
    """
    labels = {v: m.double().argmax(0) for v, m in masks.items()}
    right = {v: torch.cat([g[:, :1], g[:, :-1]], 1) for v, g in labels.items()}
    down = {v: torch.cat([g[:1], g[:-1]], 0) for v, g in labels.items()}
    return round(sum(segmentation_metrics(p, masks, classes)["miou"] for p in (right, down)) / 2, 2)


def segmentation_metrics(preds: dict[int, Tensor], masks: dict[int, Tensor], classes: list[str]) -> dict:
    """mIoU (mean of every defined per-class, per-view IoU), pixel accuracy and per-class IoU, in percent.

    A class that a view's ground truth lacks but its prediction has scores 0 in that view, however few its
    pixels: one stray pixel costs as much as a missed object. ``miou_gt_classes`` is the same mean over only
    the classes each view's ground truth has (the stray pixels still count against the class they belong
    to), reported beside ``miou`` so that the two kinds of error can be told apart. ``per_view_iou`` holds
    every term of the mean: view -> class -> IoU, for the classes in the view's ground truth or prediction.
    """
    if not masks:
        raise UsageError("no annotated views (segmentations/) to score segmentation on")
    ious, present, correct, total = [], [], 0, 0
    for view, gt in masks.items():
        iou, c, t = class_ious(preds[view], gt)
        ious.append(iou)
        present.append(gt.flatten(1).any(1))
        correct, total = correct + c, total + t
    table = torch.stack(ious)  # [V, C]
    defined = ~torch.isnan(table)
    in_gt = torch.stack(present)
    per_class = {
        name: round(100 * float(table[defined[:, i], i].mean()), 2)
        for i, name in enumerate(classes)
        if defined[:, i].any()
    }
    per_view = {
        str(view): {name: round(100 * float(row[i]), 2) for i, name in enumerate(classes) if not row[i].isnan()}
        for view, row in zip(masks, table)
    }
    return {
        "miou": round(100 * float(table[defined].mean()), 2),
        "miou_gt_classes": round(100 * float(table[in_gt].mean()), 2),
        "accuracy": round(100 * correct / max(total, 1), 2),
        "per_class_iou": per_class,
        "per_view_iou": per_view,
        "n_views": len(masks),
    }
