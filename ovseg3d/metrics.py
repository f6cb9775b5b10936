"""Scores shared by every stage: image quality (PSNR, SSIM) and 3D-OVS segmentation (mIoU, accuracy).

Pure functions of tensors; the stages that report them (teacher extraction, evaluation, benchmarks) import them
from here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.errors import UsageError


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], any matching shapes; ``mask``: ``[H, W]`` bool of
    ``[H, W, C]`` images, the pixels to score (a capture's mask), all when ``None``."""
    if mask is not None:
        pred, target = pred[mask], target[mask]
    mse = F.mse_loss(pred.clamp(0, 1).float(), target.float())
    return float(-10.0 * torch.log10(mse.clamp(min=1e-12)))


def _gaussian_window(size: int, sigma: float) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, mask: Tensor | None = None) -> float:
    """Structural similarity (Wang et al. 2004) of ``[H, W, C]`` images in [0, 1].

    Gaussian window (11, sigma 1.5), constants ``(0.01)^2`` and ``(0.03)^2``, valid filtering,
    mean over pixels and channels: the variant NeRF papers report. ``mask``: ``[H, W]`` bool, the mean is over
    the windows centred on its pixels.
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
    index = num / den  # [C, 1, H', W']
    if mask is None:
        return float(index.mean())
    r, (hh, ww) = (len(g) - 1) // 2, index.shape[-2:]
    centred = mask[r : r + hh, r : r + ww].to(index.device)
    return float(index[..., centred].mean())


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


def nearest_distances(queries: Tensor, points: Tensor, chunk: int = 2048) -> Tensor:
    """``[Q]`` distance from each of ``queries [Q, 3]`` to its nearest of ``points [P, 3]`` (``inf`` when there
    are none), in chunks of queries so that memory stays at ``chunk x P``."""
    if not len(points):
        return torch.full((len(queries),), float("inf"), dtype=queries.dtype, device=queries.device)
    out = [torch.cdist(queries[s : s + chunk], points).min(1).values for s in range(0, len(queries), chunk)]
    return torch.cat(out) if out else queries.new_zeros(0)


def surface_fscore(to_truth: Tensor, to_cloud: Tensor, tau: float) -> dict[str, float]:
    """Tanks and Temples' scores of a reconstruction at threshold ``tau``: precision (accuracy), the share of
    the cloud's points within ``tau`` of the true surface (``to_truth [P]``: each point's distance to it);
    recall (completeness), the share of points sampled on the true surface within ``tau`` of the cloud
    (``to_cloud [G]``); and their harmonic mean, the F-score. An empty side scores 0."""
    precision = float((to_truth <= tau).float().mean()) if len(to_truth) else 0.0
    recall = float((to_cloud <= tau).float().mean()) if len(to_cloud) else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "fscore": f}


def similarity_alignment(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum ||s R src_i + t - dst_i||^2`` over points ``[N, 3]`` (Umeyama 1991, with
    the reflection case excluded): how camera centres of a reconstruction in its own frame and scale are
    compared with the truth."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var = (a**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var) if var > 0 else 1.0
    return scale, rot, mu_d - scale * rot @ mu_s


def trajectory_error(estimated: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Absolute trajectory error of camera centres ``[N, 3]`` after a similarity alignment onto ``truth``: the RMSE,
    the largest error, and the RMSE as a share of the true cameras' extent (the diagonal of their box)."""
    s, rot, t = similarity_alignment(estimated, truth)
    err = np.linalg.norm((s * estimated @ rot.T + t) - truth, axis=1)
    rmse = float(np.sqrt((err**2).mean()))
    extent = float(np.linalg.norm(truth.max(0) - truth.min(0)))
    return {"rmse": rmse, "max": float(err.max()), "rmse_share": rmse / extent if extent > 0 else float("nan")}
