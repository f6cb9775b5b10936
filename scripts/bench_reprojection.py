#!/usr/bin/env python
"""What a COLMAP model's mean reprojection error is made of, and whether its tail moves the cameras.

Every observation's error is measured from its image's camera and its 3D point (pixels of the model's images).
The table gives COLMAP's mean, which ``prepare`` reports (of each point's mean over its track), and the
observations' own mean, median, the 90th and 99th percentiles and the shares above 1 and
2 px. With ``--refilter PX`` the observations above ``PX`` are dropped (COLMAP's own filter, with its 1.5° least
triangulation angle), COLMAP's global bundle adjustment runs again, and the table gives the new error beside how
far the cameras moved, after a similarity alignment, as a share of the cameras' extent: a mean that falls while
the cameras stay put was a statistic of the tail, not of the poses (issue 49's 0.5 px on the bonsai;
docs/benchmarks.md). Prints a table and writes JSON::

    python scripts/bench_reprojection.py --model SCENE/sparse/0 --refilter 2 --out bench/reprojection.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from ovseg3d.metrics import similarity_alignment


@dataclass
class Args:
    model: Path
    """A COLMAP model folder (cameras, images, points3D; .bin or .txt)."""
    refilter: float = 0.0
    """Drop the observations above this many pixels and bundle-adjust again (0: only measure)."""
    out: Path = Path("bench/reprojection.json")


def observation_errors(rec) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 - a pycolmap.Reconstruction
    """``[N]`` every observation's reprojection error in pixels, and ``[N]`` the id of its 3D point."""
    errors, ids = [], []
    for image in rec.images.values():
        seen = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
        if not seen:
            continue
        xy = np.array([a for a, _ in seen])
        pid = np.array([b for _, b in seen])
        in_cam = image.cam_from_world() * np.array([rec.points3D[i].xyz for i in pid])
        errors.append(np.linalg.norm(rec.cameras[image.camera_id].img_from_cam(in_cam) - xy, axis=1))
        ids.append(pid)
    if not errors:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(errors), np.concatenate(ids)


def summary(rec) -> dict[str, float]:  # noqa: ANN001 - a pycolmap.Reconstruction
    """COLMAP's mean (of each point's mean error over its track, what ``prepare`` reports) and the observations'
    own statistics."""
    errors, _ = observation_errors(rec)
    count = len(errors)
    if not count:
        errors = np.zeros(1)  # no observation: zeros, not numpy's warnings
    p50, p90, p99 = np.percentile(errors, [50, 90, 99])
    return {
        "colmap_mean_px": round(float(rec.compute_mean_reprojection_error()), 3),
        "observations": count,
        "mean_px": round(float(errors.mean()), 3),
        "median_px": round(float(p50), 3),
        "p90_px": round(float(p90), 3),
        "p99_px": round(float(p99), 3),
        "above_1px": round(float(np.mean(errors > 1)), 4),
        "above_2px": round(float(np.mean(errors > 2)), 4),
    }


def camera_centres(rec, names: list[str]) -> np.ndarray:  # noqa: ANN001 - a pycolmap.Reconstruction
    """``[N, 3]`` the centres of the images ``names``, in that order."""
    centres = {im.name: im.projection_center() for im in rec.images.values()}
    return np.array([centres[n] for n in names])


def aligned_motion(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``[N]`` how far each of ``after``'s points lies from ``before``'s mapped onto it by the best similarity
    (:func:`~ovseg3d.metrics.similarity_alignment`), as a share of ``after``'s extent."""
    scale, rot, shift = similarity_alignment(before, after)
    extent = float(np.linalg.norm(after.max(0) - after.min(0))) or 1.0
    return np.linalg.norm(scale * before @ rot.T + shift - after, axis=1) / extent


def main(args: Args) -> dict:
    import pycolmap

    rec = pycolmap.Reconstruction(args.model)
    rows = {"model": summary(rec)}
    if args.refilter > 0:
        names = sorted(im.name for im in rec.images.values())
        before = camera_centres(rec, names)
        pycolmap.ObservationManager(rec).filter_all_points3D(args.refilter, 1.5)
        options = pycolmap.BundleAdjustmentOptions()
        options.print_summary = False
        pycolmap.bundle_adjustment(rec, options)
        pycolmap.ObservationManager(rec).filter_all_points3D(args.refilter, 1.5)
        moved = aligned_motion(before, camera_centres(rec, names))
        rows[f"refiltered at {args.refilter:g} px"] = {
            **summary(rec),
            "cameras_moved_median": round(float(np.median(moved)), 6),
            "cameras_moved_max": round(float(moved.max()), 6),
        }
    print(
        "| model | COLMAP's mean (of points) | observations | their mean | median | p90 | p99 | > 1 px | > 2 px "
        "| cameras moved (median / max) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        moved_cell = (
            f"{100 * r['cameras_moved_median']:.3f} / {100 * r['cameras_moved_max']:.3f} %"
            if "cameras_moved_median" in r
            else ""
        )
        print(
            f"| {name} | {r['colmap_mean_px']:.2f} | {r['observations']:,} | {r['mean_px']:.2f} | {r['median_px']:.2f} | {r['p90_px']:.2f} "
            f"| {r['p99_px']:.2f} | {100 * r['above_1px']:.1f} % | {100 * r['above_2px']:.1f} % | {moved_cell} |"
        )
    result = {"model": str(args.model), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
