"""Metrics for open-vocabulary 3D detection and pose.

* Boxes are upright: ``center [3]``, ``size [3] = (L, W, H)`` with L along the box's local x after turning by
  ``yaw`` (radians) about world +z.
* ``box_iou``: oriented upright 3D IoU (footprint polygon intersection times vertical overlap).
* ``average_precision`` / ``match_detections`` / ``mean_ap``: VoteNet-style all-point AP per class, mAP in percent.
* Pose in the PASCAL3D+/ImageNet3D convention: ``R = Rz(theta) Rx(-(pi/2 - elevation)) Rz(-azimuth)`` maps object
  coordinates into a camera frame with x right, y up and z from the object towards the camera (the camera looks
  down -z). The camera sits at ``d (cos e sin a, -cos e cos a, sin e)`` in the object frame: azimuth 0 and
  elevation 0 put it on the object's -y side on the horizon, azimuth grows counter-clockwise about the object's
  +z (azimuth pi/2: camera on the +x side), elevation pi/2 is straight above.
* ``pose_errors`` / ``pose_summary``: yaw error of matched non-symmetric objects, accuracy at pi/6 and pi/18.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ovseg3d.errors import UsageError

# ------------------------------------------------------------------------------------------------ geometry


def _box(x: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """``(center [3], size [3], yaw)`` from a dict, an object with ``.center .size .yaw``, or a 3-tuple."""
    if isinstance(x, Mapping):
        center, size, yaw = x["center"], x["size"], x["yaw"]
    elif hasattr(x, "center"):
        center, size, yaw = x.center, x.size, x.yaw
    else:
        center, size, yaw = x
    return np.asarray(center, dtype=np.float64).reshape(3), np.asarray(size, dtype=np.float64).reshape(3), float(yaw)


def footprint(center: np.ndarray, size: np.ndarray, yaw: float) -> np.ndarray:
    """Ground-plane (x, y) corners of an upright box, counter-clockwise: ``[4, 2]``."""
    center, size = np.asarray(center, dtype=np.float64), np.asarray(size, dtype=np.float64)
    hl, hw = 0.5 * size[0], 0.5 * size[1]
    local = np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + center[:2]


def polygon_area(poly: np.ndarray) -> float:
    """Signed shoelace area of a polygon ``[N, 2]`` (positive when counter-clockwise; 0 for fewer than 3 points)."""
    poly = np.asarray(poly, dtype=np.float64)
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clip_polygon(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of ``subject [N, 2]`` inside the convex counter-clockwise ``clip [K, 2]``.

    Returns ``[M, 2]`` (``M = 0`` when they do not overlap); points on the clip's edges count as inside.
    """
    out = [np.asarray(p, dtype=np.float64) for p in np.asarray(subject, dtype=np.float64)]
    clip = np.asarray(clip, dtype=np.float64)
    eps = 1e-12
    for k in range(len(clip)):
        if not out:
            break
        a, b = clip[k], clip[(k + 1) % len(clip)]
        edge = b - a

        def side(p: np.ndarray, a: np.ndarray = a, edge: np.ndarray = edge) -> float:
            return float(edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]))

        points, out = out, []
        for i, cur in enumerate(points):
            prev = points[i - 1]
            s_cur, s_prev = side(cur), side(prev)
            if s_cur >= -eps:
                if s_prev < -eps:
                    out.append(prev + (cur - prev) * (s_prev / (s_prev - s_cur)))
                out.append(cur)
            elif s_prev >= -eps:
                out.append(prev + (cur - prev) * (s_prev / (s_prev - s_cur)))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def box_iou(a: Any, b: Any) -> float:
    """Oriented upright 3D IoU: footprint intersection area x vertical overlap / (vol_a + vol_b - intersection).

    ``a`` and ``b``: dicts with ``"center" "size" "yaw"``, objects with those attributes, or ``(center, size, yaw)``.
    """
    ca, sa, ya = _box(a)
    cb, sb, yb = _box(b)
    z_lo = max(ca[2] - 0.5 * sa[2], cb[2] - 0.5 * sb[2])
    z_hi = min(ca[2] + 0.5 * sa[2], cb[2] + 0.5 * sb[2])
    height = max(0.0, float(z_hi - z_lo))
    if height <= 0.0:
        return 0.0
    area = max(0.0, polygon_area(clip_polygon(footprint(ca, sa, ya), footprint(cb, sb, yb))))
    inter = area * height
    union = float(np.prod(sa) + np.prod(sb)) - inter
    return inter / union if union > 0.0 else 0.0


# ------------------------------------------------------------------------------------------------ detection


def average_precision(scores: Sequence[float], is_tp: Sequence[bool], n_gt: int) -> float:
    """All-point AP (VoteNet / VOC2010+): area under the non-increasing envelope of precision over recall.

    Detections are sorted by descending score (stable). In [0, 1]; ``nan`` when ``n_gt == 0``.
    """
    if n_gt <= 0:
        return float("nan")
    scores_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    tp_arr = np.asarray(is_tp, dtype=bool).reshape(-1)
    if len(scores_arr) == 0:
        return 0.0
    order = np.argsort(-scores_arr, kind="stable")
    tp = np.cumsum(tp_arr[order].astype(np.float64))
    fp = np.cumsum((~tp_arr[order]).astype(np.float64))
    recall = tp / n_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _greedy_assign(dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], iou_thr: float) -> list[int]:
    """For each detection, the index of the GT (same class) it matches, or -1.

    Greedy by descending score: a detection takes the still-unmatched GT of its class with the highest IoU, if that
    IoU is ``>= iou_thr``.
    """
    assigned = [-1] * len(dets)
    taken = [False] * len(gts)
    order = sorted(range(len(dets)), key=lambda i: -float(dets[i]["score"]))
    for i in order:
        best, best_iou = -1, -1.0
        for j, gt in enumerate(gts):
            if taken[j] or gt["class"] != dets[i]["class"]:
                continue
            iou = box_iou(dets[i], gt)
            if iou > best_iou:
                best, best_iou = j, iou
        if best >= 0 and best_iou >= iou_thr:
            assigned[i] = best
            taken[best] = True
    return assigned


def match_detections(
    dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], iou_thr: float
) -> dict[str, tuple[list[float], list[bool], int]]:
    """Per class: ``(scores, is_tp, n_gt)``, scores in descending order, over every class of a GT or a detection.

    Dicts have ``"class" "center" "size" "yaw"`` (detections also ``"score"``). Greedy by descending score, each
    detection takes the unmatched GT of its class with the highest IoU; it is a TP when that IoU is ``>= iou_thr``
    (VoteNet uses ``>``). A detection whose overlapping GTs are all matched already is a FP (duplicate). Unlike
    VoteNet, which takes the best GT over all of them and calls it a FP if that one is taken, the best GT is sought
    among the unmatched ones (as in COCO).
    """
    assigned = _greedy_assign(dets, gts, iou_thr)
    classes = sorted({str(g["class"]) for g in gts} | {str(d["class"]) for d in dets})
    out: dict[str, tuple[list[float], list[bool], int]] = {}
    for cls in classes:
        idx = [i for i, d in enumerate(dets) if str(d["class"]) == cls]
        idx.sort(key=lambda i: -float(dets[i]["score"]))
        n_gt = sum(1 for g in gts if str(g["class"]) == cls)
        out[cls] = ([float(dets[i]["score"]) for i in idx], [assigned[i] >= 0 for i in idx], n_gt)
    return out


def mean_ap(
    dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], iou_thr: float
) -> tuple[float, dict[str, float]]:
    """``(mAP, {class: AP})``, both in percent (0-100), over the classes with at least one GT.

    Detections of classes without a GT have no AP and do not enter the mean. Raises ``ValueError`` without GT.
    """
    if len(gts) == 0:
        raise UsageError("mean_ap needs at least one ground-truth box (got none)")
    per_class = {
        cls: 100.0 * average_precision(scores, is_tp, n_gt)
        for cls, (scores, is_tp, n_gt) in match_detections(dets, gts, iou_thr).items()
        if n_gt > 0
    }
    return float(np.mean(list(per_class.values()))), per_class


# ------------------------------------------------------------------------------------------------ pose


def rot_x(a: float) -> np.ndarray:
    """Right-handed rotation by ``a`` radians about +x: ``[3, 3]``."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_z(a: float) -> np.ndarray:
    """Right-handed rotation by ``a`` radians about +z: ``[3, 3]``."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_matrix(azimuth: float, elevation: float, theta: float) -> np.ndarray:
    """PASCAL3D+/ImageNet3D camera-from-object rotation ``Rz(theta) Rx(-(pi/2 - elevation)) Rz(-azimuth)``.

    Its rows are the camera's x (right), y (up) and z (object -> camera) axes in object coordinates; the third row
    is ``(cos e sin a, -cos e cos a, sin e)``: ``pose_matrix(0, 0, 0)`` has the camera on the object's -y side.
    """
    return rot_z(theta) @ rot_x(-(0.5 * math.pi - elevation)) @ rot_z(-azimuth)


def angles_from_matrix(rotation: np.ndarray) -> tuple[float, float, float]:
    """Inverse of ``pose_matrix``: ``(azimuth in [0, 2pi), elevation in [-pi/2, pi/2], theta in (-pi, pi]``.

    At elevation +-pi/2 only ``theta - azimuth`` (top) / ``theta + azimuth`` (bottom) is determined.
    """
    r = np.asarray(rotation, dtype=np.float64)
    elevation = math.asin(float(np.clip(r[2, 2], -1.0, 1.0)))
    azimuth = math.atan2(r[2, 0], -r[2, 1]) % (2.0 * math.pi)
    theta = math.atan2(-r[0, 2], r[1, 2])
    return azimuth, elevation, theta


def geodesic_deg(r1: np.ndarray, r2: np.ndarray) -> float:
    """Angle of ``r1.T @ r2`` in degrees (= ``||logm(r1.T r2)||_F / sqrt(2)``), in [0, 180]."""
    cos = 0.5 * (float(np.trace(np.asarray(r1).T @ np.asarray(r2))) - 1.0)
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


_OPENCV_TO_PASCAL = np.diag([1.0, -1.0, -1.0])  # (x right, y down, z forward) -> (x right, y up, z backward)


def viewpoint(
    object_rotation: np.ndarray, object_center: np.ndarray, cam_to_world: np.ndarray
) -> tuple[float, float, float, float]:
    """``(azimuth, elevation, theta, distance)`` of an OpenCV camera (x right, y down, z forward) seen from an object.

    ``object_rotation`` is world-from-object ``[3, 3]``, ``cam_to_world`` ``[4, 4]``. Azimuth and elevation are
    those of the camera's position in the object frame (see the module docstring), distance its distance to the
    centre. PASCAL3D's model has the camera look at the object's centre; a camera that does not is first turned by
    the smallest rotation that makes it, and theta is read from that camera. For a camera that does look at the
    centre, ``pose_matrix(azimuth, elevation, theta)`` equals its camera-from-object rotation (y and z flipped).
    """
    r_wo = np.asarray(object_rotation, dtype=np.float64)
    t = np.asarray(cam_to_world, dtype=np.float64)
    position = r_wo.T @ (t[:3, 3] - np.asarray(object_center, dtype=np.float64))
    distance = float(np.linalg.norm(position))
    r_co = _OPENCV_TO_PASCAL @ t[:3, :3].T @ r_wo  # rows: camera axes in object coordinates
    if distance > 0.0:
        toward = position / distance
        back = r_co[2]
        v = np.cross(back, toward)
        c = float(np.dot(back, toward))
        if c > -1.0 + 1e-12:
            k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
            turn = np.eye(3) + k + k @ k / (1.0 + c)  # smallest rotation taking `back` to `toward`
            r_co = r_co @ turn.T
    azimuth, elevation, theta = angles_from_matrix(r_co)
    return azimuth, elevation, theta, distance


def pose_errors(
    dets: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], iou_thr: float = 0.25
) -> list[float]:
    """Yaw errors in degrees of the non-symmetric GTs, in GT order.

    Matching as in ``match_detections`` (same class, greedy by score, IoU ``>= iou_thr``) over all GTs; a GT with
    ``"symmetric"`` true (missing: false) contributes nothing. A matched GT gives
    ``geodesic_deg(Rz(yaw_pred), Rz(yaw_gt))``; an unmatched one 180.
    """
    assigned = _greedy_assign(dets, gts, iou_thr)
    det_of_gt = {j: i for i, j in enumerate(assigned) if j >= 0}
    errors = []
    for j, gt in enumerate(gts):
        if bool(gt.get("symmetric", False)):
            continue
        if j in det_of_gt:
            errors.append(geodesic_deg(rot_z(float(dets[det_of_gt[j]]["yaw"])), rot_z(float(gt["yaw"]))))
        else:
            errors.append(180.0)
    return errors


def pose_summary(errors: Sequence[float]) -> dict[str, float | None]:
    """``pose_acc_pi6`` / ``pose_acc_pi18``: percent of errors below 30 / 10 degrees; ``pose_median_deg``.

    All ``None`` for no errors.
    """
    if len(errors) == 0:
        return {"pose_acc_pi6": None, "pose_acc_pi18": None, "pose_median_deg": None}
    e = np.asarray(errors, dtype=np.float64)
    return {
        "pose_acc_pi6": 100.0 * float(np.mean(e < 30.0)),
        "pose_acc_pi18": 100.0 * float(np.mean(e < 10.0)),
        "pose_median_deg": float(np.median(e)),
    }
