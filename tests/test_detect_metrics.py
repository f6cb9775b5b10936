"""Detection and pose metrics: oriented IoU, VoteNet-style AP / mAP, PASCAL3D viewpoint, yaw accuracy."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ovseg3d.detect.metrics import (
    angles_from_matrix,
    average_precision,
    box_iou,
    clip_polygon,
    footprint,
    geodesic_deg,
    match_detections,
    mean_ap,
    polygon_area,
    pose_errors,
    pose_matrix,
    pose_summary,
    rot_x,
    rot_z,
    viewpoint,
)

BOX = {"center": [1.0, 2.0, 0.5], "size": [2.0, 1.0, 1.0], "yaw": 0.0}


def _moved(box: dict, **kw) -> dict:
    return {**box, **kw}


def _det(cls: str, score: float, center=(0.0, 0.0, 0.5), yaw: float = 0.0, size=(1.0, 1.0, 1.0)) -> dict:
    return {"class": cls, "score": score, "center": list(center), "size": list(size), "yaw": yaw}


def _gt(cls: str, center=(0.0, 0.0, 0.5), yaw: float = 0.0, size=(1.0, 1.0, 1.0), symmetric: bool = False) -> dict:
    return {"class": cls, "center": list(center), "size": list(size), "yaw": yaw, "symmetric": symmetric}


# ------------------------------------------------------------------------------------------------ IoU


def test_footprint_is_ccw_rectangle_and_polygon_helpers():
    fp = footprint(np.array([0.0, 0.0, 0.0]), np.array([2.0, 1.0, 1.0]), math.pi / 2)
    np.testing.assert_allclose(fp, [[0.5, -1.0], [0.5, 1.0], [-0.5, 1.0], [-0.5, -1.0]], atol=1e-12)
    assert polygon_area(fp) == pytest.approx(2.0)
    assert polygon_area(fp[::-1]) == pytest.approx(-2.0)
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    shifted = square + [0.5, 0.25]
    assert polygon_area(clip_polygon(square, shifted)) == pytest.approx(0.5 * 0.75)
    assert len(clip_polygon(square, square + [3.0, 0.0])) == 0


def test_iou_known_answers():
    assert box_iou(BOX, BOX) == pytest.approx(1.0)
    assert box_iou(BOX, _moved(BOX, yaw=math.pi / 2)) == pytest.approx(1.0 / 3.0)
    assert box_iou(BOX, _moved(BOX, center=[1.5, 2.0, 0.5])) == pytest.approx(0.6)
    assert box_iou(BOX, _moved(BOX, center=[5.0, 2.0, 0.5])) == 0.0
    assert box_iou(BOX, _moved(BOX, center=[1.0, 2.0, 1.5])) == 0.0  # stacked: touching faces only
    # half the height overlapping: intersection 2 * 0.5 = 1, union 2 + 2 - 1
    assert box_iou(BOX, _moved(BOX, center=[1.0, 2.0, 1.0])) == pytest.approx(1.0 / 3.0)


def test_iou_accepts_attributes_and_tuples():
    obj = SimpleNamespace(center=np.array(BOX["center"]), size=np.array(BOX["size"]), yaw=math.pi / 2)
    tup = (BOX["center"], BOX["size"], 0.0)
    assert box_iou(obj, tup) == pytest.approx(1.0 / 3.0)


def test_iou_symmetric_and_invariant_to_half_turn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = {"center": rng.uniform(-1, 1, 3), "size": rng.uniform(0.5, 2, 3), "yaw": rng.uniform(-math.pi, math.pi)}
        b = {"center": rng.uniform(-1, 1, 3), "size": rng.uniform(0.5, 2, 3), "yaw": rng.uniform(-math.pi, math.pi)}
        assert box_iou(a, b) == pytest.approx(box_iou(b, a), abs=1e-12)
        assert box_iou(_moved(a, yaw=a["yaw"] + math.pi), b) == pytest.approx(box_iou(a, b), abs=1e-12)
    rotated = _moved(BOX, yaw=0.3)
    assert box_iou(rotated, _moved(rotated, yaw=0.3 + math.pi)) == pytest.approx(1.0)


def test_iou_of_45_degree_turned_square():
    # a unit square and the same turned 45 deg: intersection is a regular octagon of area 2 (sqrt 2 - 1)
    sq = {"center": [0, 0, 0], "size": [1, 1, 1], "yaw": 0.0}
    octagon = 2.0 * (math.sqrt(2.0) - 1.0)
    assert box_iou(sq, _moved(sq, yaw=math.pi / 4)) == pytest.approx(octagon / (2.0 - octagon))


# ------------------------------------------------------------------------------------------------ AP


def test_average_precision_hand_cases():
    assert average_precision([0.9, 0.8], [True, True], 2) == pytest.approx(1.0)
    assert average_precision([0.9], [True], 2) == pytest.approx(0.5)
    assert average_precision([0.9, 0.8], [True, False], 1) == pytest.approx(1.0)
    assert average_precision([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)
    # TP, FP, TP over 2 GT: recall 0.5 at precision 1, recall 1 at precision 2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # order comes from the scores, not the input order
    assert average_precision([0.7, 0.8, 0.9], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # FP, TP, TP over 2 GT: precision 0.5 at recall 0.5 is lifted to the later 2/3 by the envelope
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3)
    assert average_precision([], [], 3) == 0.0
    assert math.isnan(average_precision([0.5], [False], 0))


def test_map_perfect_detections():
    gts = [_gt("chair", (0, 0, 0.5)), _gt("chair", (3, 0, 0.5)), _gt("table", (0, 3, 0.5), yaw=0.4)]
    dets = [_det("chair", 0.9, (0, 0, 0.5)), _det("chair", 0.8, (3, 0, 0.5)), _det("table", 0.7, (0, 3, 0.5), 0.4)]
    m, per_class = mean_ap(dets, gts, 0.25)
    assert m == pytest.approx(100.0)
    assert per_class == {"chair": pytest.approx(100.0), "table": pytest.approx(100.0)}


def test_map_one_miss_of_two():
    gts = [_gt("chair", (0, 0, 0.5)), _gt("chair", (3, 0, 0.5))]
    m, per_class = mean_ap([_det("chair", 0.9, (0, 0, 0.5))], gts, 0.25)
    assert per_class["chair"] == pytest.approx(50.0)
    assert m == pytest.approx(50.0)


def test_map_duplicates():
    gts = [_gt("chair")]
    tp, dup = _det("chair", 0.9), _det("chair", 0.8, center=(0.1, 0.0, 0.5))
    table = match_detections([tp, dup], gts, 0.25)
    assert table == {"chair": ([0.9, 0.8], [True, False], 1)}
    assert mean_ap([tp, dup], gts, 0.25)[0] == pytest.approx(100.0)
    # a high-scoring false positive before the TP halves the AP
    fp = _det("chair", 0.95, center=(5.0, 0.0, 0.5))
    assert mean_ap([fp, tp], gts, 0.25)[0] == pytest.approx(50.0)
    # the higher-scored of two overlapping detections takes the GT, the other is the duplicate
    assert match_detections([dup, tp], gts, 0.25)["chair"] == ([0.9, 0.8], [True, False], 1)


def test_map_threshold_is_inclusive():
    gts = [_gt("sofa", size=(2.0, 1.0, 1.0))]
    shifted = _det("sofa", 0.9, center=(0.5, 0.0, 0.5), size=(2.0, 1.0, 1.0))  # IoU 0.6
    assert match_detections([shifted], gts, 0.6)["sofa"][1] == [True]
    assert match_detections([shifted], gts, 0.61)["sofa"][1] == [False]
    assert mean_ap([shifted], gts, 0.5)[0] == pytest.approx(100.0)
    assert mean_ap([shifted], gts, 0.7)[0] == pytest.approx(0.0)


def test_map_wrong_class_does_not_count():
    gts = [_gt("chair")]
    m, per_class = mean_ap([_det("table", 0.9)], gts, 0.25)
    assert per_class == {"chair": pytest.approx(0.0)}
    assert m == pytest.approx(0.0)
    # a higher-scored wrong-class box on the same GT neither steals it nor lowers the chair AP
    m, per_class = mean_ap([_det("table", 0.99), _det("chair", 0.5)], gts, 0.25)
    assert per_class == {"chair": pytest.approx(100.0)}
    assert m == pytest.approx(100.0)
    assert match_detections([_det("table", 0.9)], gts, 0.25)["table"] == ([0.9], [False], 0)


def test_map_mean_over_gt_classes_and_no_gt_error():
    gts = [_gt("chair"), _gt("lamp", (4, 0, 0.5))]
    m, per_class = mean_ap([_det("chair", 0.9)], gts, 0.25)
    assert per_class == {"chair": pytest.approx(100.0), "lamp": pytest.approx(0.0)}
    assert m == pytest.approx(50.0)
    with pytest.raises(ValueError, match="ground-truth"):
        mean_ap([_det("chair", 0.9)], [], 0.25)


# ------------------------------------------------------------------------------------------------ pose


def _look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV cam_to_world (x right, y down, z forward) at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    t = np.eye(4)
    t[:3, 0], t[:3, 1], t[:3, 2], t[:3, 3] = x, y, z, eye
    return t


def _cam_axis_rot(axis: int, angle: float) -> np.ndarray:
    """4x4 rotation about a camera axis (right-multiply a cam_to_world)."""
    r = np.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _angle_diff(a: float, b: float) -> float:
    return (a - b + math.pi) % (2 * math.pi) - math.pi


def test_rotations_and_pose_matrix_at_zero():
    np.testing.assert_allclose(rot_z(math.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rot_x(math.pi / 2) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    # camera x = object x, camera y (up) = object z, camera z (towards camera) = object -y
    np.testing.assert_allclose(pose_matrix(0, 0, 0), [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)
    # azimuth 90 deg: the camera is on the object's +x side
    np.testing.assert_allclose(pose_matrix(math.pi / 2, 0, 0)[2], [1, 0, 0], atol=1e-12)
    # elevation 90 deg: straight above
    np.testing.assert_allclose(pose_matrix(0.3, math.pi / 2, 0)[2], [0, 0, 1], atol=1e-12)


def test_geodesic_deg():
    assert geodesic_deg(np.eye(3), np.eye(3)) == pytest.approx(0.0, abs=1e-6)
    assert geodesic_deg(rot_z(0.1), rot_z(0.1 + math.radians(20))) == pytest.approx(20.0)
    assert geodesic_deg(rot_x(0.0), rot_x(math.pi)) == pytest.approx(180.0)
    assert geodesic_deg(rot_z(math.radians(170)), rot_z(math.radians(-170))) == pytest.approx(20.0)


def test_angles_from_matrix_inverts_pose_matrix():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a, e, t = rng.uniform(0, 2 * math.pi), rng.uniform(-1.4, 1.4), rng.uniform(-3.1, 3.1)
        r = pose_matrix(a, e, t)
        a2, e2, t2 = angles_from_matrix(r)
        assert a2 == pytest.approx(a) and e2 == pytest.approx(e) and t2 == pytest.approx(t)
        np.testing.assert_allclose(pose_matrix(a2, e2, t2), r, atol=1e-10)
    for _ in range(50):
        q, upper = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(upper))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        if abs(q[2, 2]) > 0.99:
            continue
        np.testing.assert_allclose(pose_matrix(*angles_from_matrix(q)), q, atol=1e-10)


def test_viewpoint_horizon_camera():
    # object at the origin, identity rotation; camera 5 m on its -y side looking at it
    a, e, t, d = viewpoint(np.eye(3), np.zeros(3), _look_at((0.0, -5.0, 0.0)))
    assert (a, e, t, d) == pytest.approx((0.0, 0.0, 0.0, 5.0), abs=1e-9)
    # camera 3 m on the +x side: azimuth 90 deg
    c2w = _look_at((3.0, 0.0, 0.0))
    a, e, t, d = viewpoint(np.eye(3), np.zeros(3), c2w)
    assert (a, e, t, d) == pytest.approx((math.pi / 2, 0.0, 0.0, 3.0), abs=1e-9)
    flip = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(pose_matrix(a, e, t), flip @ c2w[:3, :3].T, atol=1e-9)


def test_viewpoint_elevation_azimuth_distance():
    center = np.array([1.0, -2.0, 0.7])
    a0, e0, d0 = math.radians(40), math.radians(60), 4.0
    eye = center + d0 * np.array([math.cos(e0) * math.sin(a0), -math.cos(e0) * math.cos(a0), math.sin(e0)])
    c2w = _look_at(eye, center)
    a, e, t, d = viewpoint(np.eye(3), center, c2w)
    assert math.degrees(a) == pytest.approx(40.0)
    assert math.degrees(e) == pytest.approx(60.0)
    assert math.degrees(t) == pytest.approx(0.0, abs=1e-7)
    assert d == pytest.approx(4.0)
    np.testing.assert_allclose(pose_matrix(a, e, t), np.diag([1.0, -1.0, -1.0]) @ c2w[:3, :3].T, atol=1e-9)

    # moving the camera 30 deg counter-clockwise about +z through the object's centre: azimuth + 30 deg
    moved = center + rot_z(math.radians(30)) @ (eye - center)
    a2, e2, t2, d2 = viewpoint(np.eye(3), center, _look_at(moved, center))
    assert math.degrees(a2) == pytest.approx(70.0)
    assert (e2, t2, d2) == pytest.approx((e, t, d), abs=1e-9)

    # turning the object by +30 deg yaw instead: the camera is 30 deg further clockwise in the object frame
    a3, e3, _, d3 = viewpoint(rot_z(math.radians(30)), center, c2w)
    assert math.degrees(a3) == pytest.approx(10.0)
    assert (e3, d3) == pytest.approx((e, d))


def test_viewpoint_roll_changes_only_theta():
    c2w = _look_at((2.0, -3.0, 1.5))
    a, e, t, d = viewpoint(np.eye(3), np.zeros(3), c2w)
    rolled = c2w @ _cam_axis_rot(2, math.radians(20))  # about the optical axis
    a2, e2, t2, d2 = viewpoint(np.eye(3), np.zeros(3), rolled)
    assert math.degrees(_angle_diff(t2, t)) == pytest.approx(20.0)
    assert (a2, e2, d2) == pytest.approx((a, e, d))


def test_viewpoint_camera_not_looking_at_centre():
    # panning the camera 5 deg about its (horizontal-camera) vertical axis keeps the look-at viewpoint
    c2w = _look_at((0.0, -5.0, 0.0))
    panned = c2w @ _cam_axis_rot(1, math.radians(5))
    assert viewpoint(np.eye(3), np.zeros(3), panned) == pytest.approx((0.0, 0.0, 0.0, 5.0), abs=1e-9)
    # an object off to the side: azimuth and elevation come from the camera's position, not its direction
    a, e, t, d = viewpoint(np.eye(3), np.array([5.0, 0.0, 0.0]), c2w)
    assert math.degrees(a) == pytest.approx(-45.0 % 360.0)
    assert e == pytest.approx(0.0, abs=1e-9)
    assert t == pytest.approx(0.0, abs=1e-9)
    assert d == pytest.approx(5.0 * math.sqrt(2.0))


def test_pose_errors_and_summary():
    gts = [_gt("mug", (0, 0, 0.5), yaw=0.3), _gt("bowl", (3, 0, 0.5), yaw=0.0, symmetric=True)]
    dets = [_det("mug", 0.9, (0, 0, 0.5), yaw=0.3 + math.radians(20)), _det("bowl", 0.8, (3, 0, 0.5), yaw=1.5)]
    errors = pose_errors(dets, gts)
    assert errors == [pytest.approx(20.0)]
    assert pose_summary(errors) == {
        "pose_acc_pi6": pytest.approx(100.0),
        "pose_acc_pi18": pytest.approx(0.0),
        "pose_median_deg": pytest.approx(20.0),
    }
    # an unmatched non-symmetric GT counts as 180; an unmatched symmetric one counts as nothing
    gts2 = [*gts, _gt("mug", (6, 0, 0.5)), _gt("bowl", (9, 0, 0.5), symmetric=True)]
    errors2 = pose_errors(dets, gts2)
    assert errors2 == [pytest.approx(20.0), 180.0]
    assert pose_summary(errors2)["pose_acc_pi6"] == pytest.approx(50.0)
    assert pose_summary(errors2)["pose_median_deg"] == pytest.approx(100.0)
    # a wrong-class detection does not match
    assert pose_errors([_det("cup", 0.9, (0, 0, 0.5), yaw=0.3)], gts[:1]) == [180.0]
    # error wraps: 350 deg vs 0 deg is 10 deg
    near = pose_errors([_det("mug", 0.9, yaw=math.radians(350))], [_gt("mug", yaw=0.0)])
    assert near == [pytest.approx(10.0)]
    assert pose_summary([25.0, 5.0, 40.0]) == {
        "pose_acc_pi6": pytest.approx(200.0 / 3.0),
        "pose_acc_pi18": pytest.approx(100.0 / 3.0),
        "pose_median_deg": pytest.approx(25.0),
    }
    # the thresholds are strict: exactly 30 / 10 deg is wrong
    assert pose_summary([30.0, 10.0])["pose_acc_pi6"] == pytest.approx(50.0)
    assert pose_summary([30.0, 10.0])["pose_acc_pi18"] == pytest.approx(0.0)
    assert pose_summary([]) == {"pose_acc_pi6": None, "pose_acc_pi18": None, "pose_median_deg": None}
