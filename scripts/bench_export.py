#!/usr/bin/env python
"""ovseg3d export benchmark: how close the exported points lie to the true surfaces, how often their labels are
right, and how fast the viewer answers a free-text query.

For a run of a scene made by ``ovseg3d synth`` (default: ``bench/runs/demo`` from ``scripts/bench_distill.py``):

* **surface**: the share of exported points within 1 % of the scene's extent (the diagonal of the room, the
  box the true surfaces fill) of a true surface (``scene.json``'s analytic primitives), and the median
  distance;
* **labels**: the share of points whose label is the class of the nearest true surface (the 3D ground truth;
  points farther than 1 % of the extent from every surface are left out: they have no true class), and the
  same over the points clearly on one class's surface (within 5 mm of it, 2 cm clear of any other class's):
  near contacts a 2 cm depth error alone changes the nearest class;
* **completeness** (Tanks and Temples): the true surface is sampled by casting the training cameras' rays (one
  pixel in ``--truth-stride``) into ``scene.json``'s primitives, keeping the hits that at least one other
  training view also sees (in its frame, not occluded); precision (accuracy), recall (completeness) and F-score
  at 0.5 % and 1 % of the extent, overall and per true class;
* **query**: the time of one relevancy query over ``--query-points`` points (the cloud's features, repeated
  when it has fewer), as ``ovseg3d view`` computes it on each query, median over 20 queries.

Prints a table and writes JSON (default ``bench/export.json``).

    python scripts/bench_export.py
    python scripts/bench_export.py --run bench/runs/orbit --spacing 0.002
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from ovseg3d import accel
from ovseg3d.data.cameras import Cameras, image_rays, project_points
from ovseg3d.export import ExportOptions, extract_cloud, write_export
from ovseg3d.metrics import nearest_distances, surface_fscore
from ovseg3d.run import load_run_config
from ovseg3d.synth import class_distances
from ovseg3d.synth.raycast import cast_rays
from ovseg3d.synth.scene import scene_from_json
from ovseg3d.train import load_trainer
from ovseg3d.viewer import CloudQueries


@dataclass
class Args:
    run: Path = Path("bench/runs/demo")
    """A run (with a semantic field) of a scene made by ovseg3d synth."""
    spacing: float = ExportOptions.spacing
    """Voxel size of the fusion, as a share of the scene box's diagonal."""
    min_views: int = ExportOptions.min_views
    min_agreeing: int = ExportOptions.min_agreeing
    max_spread: float = ExportOptions.max_spread
    depth_tolerance: float = ExportOptions.depth_tolerance
    pixel_stride: int = ExportOptions.pixel_stride
    """Lift one pixel in N along each axis (0: chosen from the voxel size, as ovseg3d export does)."""
    max_seconds: float = 0.0
    """The export's time limit with --pixel-stride 0 (0: none, so the figures do not depend on the machine)."""
    query_points: int = 200_000
    truth_stride: int = 2
    """Sample the true surface at one pixel in N along each axis of the training views."""
    device: str = "cpu"
    out: Path = Path("bench/export.json")


def visible_truth(scene_json: dict, cams: Cameras, views: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Points of the true surface seen by at least two of ``views``: each view's rays cast into the scene's
    primitives, a hit kept when another view has it in frame with nothing nearer on the ray from its centre.
    Returns ``xyz [G, 3]`` and each point's class name."""
    scene = scene_from_json(scene_json)
    pts, cls, owner = [], [], []
    for v in views:
        origins, dirs = (t.double().numpy() for t in image_rays(cams, v))
        t, prim = cast_rays(scene, origins, dirs / np.linalg.norm(dirs, axis=1, keepdims=True))
        hit = np.isfinite(t)
        pts.append(origins[hit] + t[hit, None] * dirs[hit] / np.linalg.norm(dirs[hit], axis=1, keepdims=True))
        cls.append(np.array([scene.primitives[i].cls for i in prim[hit]], dtype=object))
        owner.append(np.full(int(hit.sum()), v))
    xyz, cls, owner = np.concatenate(pts), np.concatenate(cls), np.concatenate(owner)
    seen = np.zeros(len(xyz), dtype=np.int64)
    x = torch.from_numpy(xyz).float()
    for v in views:
        u, w, front = project_points(cams, v, x)
        inside = (front & (u >= 0) & (u < cams.width) & (w >= 0) & (w < cams.height)).numpy()
        centre = cams.c2w[v, :, 3].double().numpy()
        ray = xyz[inside] - centre
        dist = np.linalg.norm(ray, axis=1)
        t, _ = cast_rays(scene, np.broadcast_to(centre, ray.shape).copy(), ray / dist[:, None])
        visible = np.zeros(len(xyz), bool)
        visible[np.flatnonzero(inside)] = t >= dist * (1 - 1e-4) - 1e-6
        seen += visible & (owner != v)
    keep = seen >= 1
    return xyz[keep], cls[keep]


def completeness(scene_json: dict, run: Path, cloud_xyz: np.ndarray, extent: float, stride: int) -> dict:
    """Precision, recall and F-score of the cloud against the true surface the training views see, at 0.5 % and
    1 % of ``extent``, overall and per class (recall per true class; precision per the nearest surface's)."""
    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras.scaled(1 / stride) if stride > 1 else trainer.scene.cameras
    truth, truth_cls = visible_truth(scene_json, cams, list(trainer.scene.train_ids))
    to_cloud = nearest_distances(torch.from_numpy(truth).float(), torch.from_numpy(cloud_xyz).float()).numpy()
    by_class, names = class_distances(scene_json, cloud_xyz)
    to_truth, near_cls = by_class.min(1), names[by_class.argmin(1)]
    out: dict = {"truth_points": len(truth)}
    for share in (0.005, 0.01):
        tau = share * extent
        key = f"tau_{share * 100:g}pct"
        out[key] = surface_fscore(torch.from_numpy(to_truth), torch.from_numpy(to_cloud), tau)
        out[key]["per_class"] = {
            str(c): surface_fscore(
                torch.from_numpy(to_truth[near_cls == c]), torch.from_numpy(to_cloud[truth_cls == c]), tau
            )
            for c in np.unique(truth_cls)
        }
    return out


def main(args: Args) -> dict:
    accel.configure_cpu_allocator()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_run_config(args.run)
    scene_json = json.loads((Path(cfg.scene) / "scene.json").read_text())
    opts = ExportOptions(
        spacing=args.spacing,
        min_views=args.min_views,
        min_agreeing=args.min_agreeing,
        max_spread=args.max_spread,
        depth_tolerance=args.depth_tolerance,
        pixel_stride=args.pixel_stride,
        max_seconds=args.max_seconds,
        features=True,
    )
    start = time.perf_counter()
    lines: list[str] = []
    cloud = extract_cloud(args.run, opts, args.device, log=lambda s: (lines.append(s), print(s)))
    seconds = time.perf_counter() - start
    write_export(cloud, args.run / "export", args.run, opts)

    room = np.array(scene_json["room"]["max"]) - np.array(scene_json["room"]["min"])
    extent = float(np.linalg.norm(room))
    by_class, names = class_distances(scene_json, cloud.xyz)
    ranked = np.sort(by_class, 1)
    dist, true_cls = ranked[:, 0], names[by_class.argmin(1)]
    near = dist < 0.01 * extent
    # on a surface and clear of every other class's surface: where the nearest class is beyond doubt
    clear = (dist < 0.005) & (ranked[:, 1] - dist > 0.02)
    pred = np.array(cloud.classes)[np.clip(cloud.label, 0, None)]
    per_class = {}
    for c in np.unique(true_cls[near]):
        is_c, clear_c = near & (true_cls == c), clear & (true_cls == c)
        per_class[str(c)] = {
            "points": int(is_c.sum()),
            "accuracy": float((pred == c)[is_c].mean()),
            "clear_points": int(clear_c.sum()),
            "clear_accuracy": float((pred == c)[clear_c].mean()) if clear_c.any() else None,
        }

    from ovseg3d.teachers.config import TeacherConfig
    from ovseg3d.teachers.extract import text_encoder

    feats = F.normalize(torch.from_numpy(cloud.feature.astype(np.float32)), dim=-1)
    reps = -(-args.query_points // len(feats))
    feats = feats.repeat(reps, 1)[: args.query_points].contiguous()
    teachers: TeacherConfig = cfg.teachers
    queries = CloudQueries(cloud, feats, text_encoder(teachers, torch.device("cpu")))
    words = cloud.classes or ["object"]
    times = []
    for i in range(20):
        t = time.perf_counter()
        queries.relevancy(words[i % len(words)])
        times.append(1000 * (time.perf_counter() - t))

    complete = completeness(scene_json, args.run, cloud.xyz, extent, args.truth_stride)
    result = {
        "run": str(args.run),
        "scene": str(cfg.scene),
        "n_points": len(cloud),
        "voxel_size_m": cloud.voxel_size,
        "extent_m": extent,
        "within_1pct_extent": float(near.mean()),
        "median_distance_m": float(np.median(dist)),
        "label_accuracy": float((pred == true_cls)[near].mean()),
        "label_accuracy_clear": float((pred == true_cls)[clear].mean()),
        "per_class": per_class,
        "completeness": complete,
        "options": {
            k: getattr(opts, k)
            for k in ("spacing", "min_views", "min_agreeing", "max_spread", "depth_tolerance", "pixel_stride")
        },
        "export_log": lines,
        "export_seconds": round(seconds, 1),
        "query_points": args.query_points,
        "query_ms_median": float(np.median(times)),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{'metric':<34} value")
    print(f"{'points':<34} {len(cloud)} (voxel {cloud.voxel_size * 1000:.1f} mm)")
    print(f"{'within 1% of extent of a surface':<34} {100 * result['within_1pct_extent']:.1f} %")
    print(f"{'median distance':<34} {1000 * result['median_distance_m']:.1f} mm")
    print(f"{'label accuracy (3D ground truth)':<34} {100 * result['label_accuracy']:.1f} %")
    print(f"{'  clear of other surfaces':<34} {100 * result['label_accuracy_clear']:.1f} %")
    for c, v in per_class.items():
        clear_txt = f"; clear: {100 * v['clear_accuracy']:.1f} % of {v['clear_points']}" if v["clear_points"] else ""
        print(f"{'  ' + c:<34} {100 * v['accuracy']:.1f} % of {v['points']}{clear_txt}")
    for key in ("tau_0.5pct", "tau_1pct"):
        c = complete[key]
        print(
            f"{'P / R / F at ' + key[4:].replace('pct', ' %'):<34} {100 * c['precision']:.1f} / "
            f"{100 * c['recall']:.1f} / {100 * c['fscore']:.1f}  (true surface: {complete['truth_points']} points)"
        )
        for cls_name, v in c["per_class"].items():
            print(
                f"{'  ' + cls_name:<34} {100 * v['precision']:.1f} / {100 * v['recall']:.1f} / {100 * v['fscore']:.1f}"
            )
    print(f"{'export time':<34} {seconds:.1f} s")
    print(f"{f'query over {args.query_points} points':<34} {result['query_ms_median']:.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
