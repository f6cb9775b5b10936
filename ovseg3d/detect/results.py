"""``detections.json`` read back and scored: the boxes of a run for the viewer, and mAP / pose accuracy against a
scene's ``objects.json`` for ``ovseg3d eval``."""

from __future__ import annotations

import json
from pathlib import Path

from ovseg3d.detect.metrics import mean_ap, pose_errors, pose_summary
from ovseg3d.errors import UsageError

DETECTIONS = "detections.json"
"""Oriented boxes of a run: ``{"up": [0, 0, 1], "boxes": [{"class", "center", "size", "yaw", "score"}]}`` in the
world frame (``yaw``: radians about +z, ``size``: extents along the box's own x, y, z), as ``objects.json``;
``ovseg3d detect`` adds ``rotation`` (world-from-object), which wins over ``yaw`` when present."""


def read_detections(path: Path) -> list[dict]:
    """The boxes of a detections file, ``[]`` if there is none; a malformed file is a one-line error."""
    if not path.exists():
        return []
    try:
        boxes = json.loads(path.read_text())["boxes"]
        for b in boxes:
            if len(b["center"]) != 3 or len(b["size"]) != 3 or not isinstance(b["class"], str):
                raise UsageError("center and size need 3 numbers, class a name")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: not a detections file ({exc})") from None
    return boxes


def detection_metrics(detections: Path, objects: list[dict]) -> dict:
    """mAP@0.25 / @0.5 (VoteNet) of a ``detections.json`` against ``objects`` (``objects.json``'s entries),
    and the yaw errors of the objects with a front with their accuracy at pi/6 and pi/18 and median; ``{}``
    without detections or objects."""
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
