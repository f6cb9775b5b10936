#!/usr/bin/env python
"""What a run's outputs keep of a scene with true boxes (``objects.json``): the floor's share of the exported cloud,
each object's height in the cloud, the boxes' mAP, and gravity from the exported cloud alone in turned world frames.

Issue 48's targets for ``../shared/external-scenes/forward`` (cpu preset): the floor at least 5 % of the cloud, each
object at least 80 % of its true height, mAP@0.25 >= 0.9 and mAP@0.5 >= 0.7, gravity within 5 deg in any frame.

- **floor share**: the points labelled floor, and the points within ``tau`` (1 % of the true boxes' and cameras'
  extent, see below) of the true floor plane (the boxes' lowest bottom, normal ``objects.json``'s up), over all.
- **height kept**: the points inside an object's true box (grown by ``tau`` on every side) cut into 20 slices along
  up; the share of slices that hold at least one point. A cloud that keeps only a box's top keeps little height.
- **mAP**: ``RUN/detections.json`` against ``objects.json`` (VoteNet protocol, as ``ovseg3d eval``).
- **gravity**: the export's points turned by random rotations (seeded) and given to ``detect`` alone, as
  ``ovseg3d detect points.npz`` gets them (no cameras, no hint), and the angle between the up it finds and the
  true up turned alike.

Prints a table and writes JSON::

    ovseg3d run ../shared/external-scenes/forward --output runs/ext_fwd --teacher synthetic
    python scripts/bench_outputs.py --scene ../shared/external-scenes/forward --run runs/ext_fwd
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tyro
from bench_family import random_rotations

from ovseg3d.data.loader import read_cameras
from ovseg3d.detect.head import DetectOptions, detect
from ovseg3d.detect.metrics import footprint
from ovseg3d.detect.results import detection_metrics
from ovseg3d.export import LabelledCloud, load_export


@dataclass
class Args:
    scene: Path
    """Scene folder with ``objects.json`` (boxes in the scene's world frame)."""
    run: Path
    """Run folder with ``export/points.npz`` and ``detections.json``."""
    frames: int = 8
    """Random world frames to try gravity in (besides the scene's own)."""
    tau: float = 0.01
    """Distance tolerance as a fraction of the scene's extent (the diagonal of the true boxes and the cameras)."""
    out: Path | None = None
    """JSON to write (default: RUN/outputs.json)."""


def inside_box(xyz: np.ndarray, obj: dict, up: np.ndarray, grow: float) -> np.ndarray:
    """Points inside ``obj``'s true box grown by ``grow`` on every side (the box stands along ``up``)."""
    centre, size = np.asarray(obj["center"], float), np.asarray(obj["size"], float)
    poly = footprint(centre, size, float(obj["yaw"]))  # [4, 2] corners in the xy plane, counter-clockwise
    rel_z = (xyz - centre) @ up
    keep = np.abs(rel_z) <= size[2] / 2 + grow
    for i in range(4):
        a, b = poly[i], poly[(i + 1) % 4]
        edge = (b - a) / np.linalg.norm(b - a)
        normal = np.array([edge[1], -edge[0]])  # outward for counter-clockwise corners
        keep &= (xyz[:, :2] - a) @ normal <= grow
    return keep


def height_kept(xyz: np.ndarray, obj: dict, up: np.ndarray, grow: float, slices: int = 20) -> tuple[float, int]:
    """Share of the object's ``slices`` height slices that hold a cloud point inside its grown box, and the points."""
    inside = inside_box(xyz, obj, up, grow)
    if not inside.any():
        return 0.0, 0
    size_z = float(obj["size"][2])
    bottom = float(np.asarray(obj["center"], float) @ up) - size_z / 2
    z = np.clip((xyz[inside] @ up - bottom) / size_z, 0.0, 1.0 - 1e-9)
    return len(np.unique((z * slices).astype(int))) / slices, int(inside.sum())


def gravity_errors(cloud: LabelledCloud, up: np.ndarray, frames: int, seed: int = 0) -> list[float]:
    """Degrees between the up ``detect`` finds from the cloud alone and the true one, in the scene's frame and in
    ``frames`` random ones (``nan`` where detect fails)."""
    rotations = [np.eye(3)] + random_rotations(frames, seed)[:frames]  # without the family's y-up turn
    errors = []
    for rot in rotations:
        turned = replace(cloud, xyz=(cloud.xyz.astype(np.float64) @ rot.T).astype(np.float32))
        opts = DetectOptions(depth_classifier=False, render_classifier=False)
        try:
            found = detect(turned, opts, None, None, None, lambda _m: None).up
        except Exception as exc:  # noqa: BLE001 - a failure in one frame is a result of this benchmark
            print(f"  detect failed in a turned frame: {exc}")
            errors.append(float("nan"))
            continue
        cos = float(np.clip(found @ (rot @ up), -1.0, 1.0))
        errors.append(float(np.degrees(np.arccos(cos))))
    return errors


def main(args: Args) -> None:
    meta = json.loads((args.scene / "objects.json").read_text())
    objects, up = meta["objects"], np.asarray(meta.get("up", [0, 0, 1]), float)
    if not np.allclose(up, [0, 0, 1]):
        raise SystemExit(f"{args.scene}/objects.json: boxes with up {up.tolist()}; this benchmark reads z-up boxes")
    cloud = load_export(args.run / "export" / "points.npz")
    xyz = cloud.xyz.astype(np.float64)
    corners = np.array([np.asarray(o["center"]) + np.asarray(o["size"]) * s for o in objects for s in (-0.5, 0.5)])
    centres = read_cameras(args.scene).c2w.numpy()[:, :3, 3]
    extent = float(np.linalg.norm(np.ptp(np.concatenate([corners, centres]), axis=0)))
    tau = args.tau * extent
    floor_z = min(float(np.asarray(o["center"]) @ up) - float(o["size"][2]) / 2 for o in objects)
    labelled = {c: float(np.mean(cloud.label == i)) for i, c in enumerate(cloud.classes)}
    on_floor = float(np.mean(np.abs(xyz @ up - floor_z) <= tau))
    heights = {}
    for o in objects:
        share, n = height_kept(xyz, o, up, tau)
        heights[o["class"]] = {"height_kept": round(share, 3), "points": n}
    metrics = detection_metrics(args.run / "detections.json", objects)
    grav = gravity_errors(cloud, up, args.frames)
    result = {
        "scene": str(args.scene),
        "run": str(args.run),
        "points": len(cloud),
        "tau": tau,
        "floor_labelled": labelled.get("floor"),
        "floor_geometric": on_floor,
        "objects": heights,
        "map25": metrics.get("map25"),
        "map50": metrics.get("map50"),
        "gravity_deg": [round(e, 2) for e in grav],
        "gravity_max_deg": float(np.nanmax(grav)) if not np.all(np.isnan(grav)) else None,
        "gravity_failed": int(np.isnan(grav).sum()),
    }
    print(f"{args.run}: {len(cloud):,} points, tau {tau:.4f}")
    fl = result["floor_labelled"]
    print(f"floor: {100 * fl:.1f} % labelled floor, " if fl is not None else "floor: no floor class, ", end="")
    print(f"{100 * on_floor:.1f} % within tau of the true floor")
    print("| object | height kept | points |\n| --- | --- | --- |")
    for name, h in heights.items():
        print(f"| {name} | {100 * h['height_kept']:.0f} % | {h['points']:,} |")
    if metrics:
        print(
            f"mAP@0.25 / @0.5: {metrics['map25']:.0f} / {metrics['map50']:.0f} (per class: {metrics['ap25']} / {metrics['ap50']})"
        )
    print(f"gravity from the cloud alone, scene frame then {args.frames} turned: {result['gravity_deg']} deg")
    out = args.out or args.run / "outputs.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
