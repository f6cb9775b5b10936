"""The exported cloud: how close its points lie to a generated scene's true surfaces, how often their labels are
right, how much of the surface the training views see it completes, how fast a free-text query over it is answered,
and how much of what the field renders solidly it keeps. Folds ``scripts/bench_export.py`` and
``scripts/bench_coverage.py``.

A scene is a name of :data:`~ovseg3d.bench.harness.SCENES` or a folder. A folder holding ``run.json`` is a trained
run, measured as it is (:func:`trained_run`); any other scene is trained here first. The run is exported again into
the work folder with the variant's :data:`EXPORTS` options (every option of ``ovseg3d export`` at its default but
``max_seconds``: none, so that no figure depends on the machine's pace), or, with ``as_exported``, its own
``export/points.npz`` is read. Figures:

- **surface** (a scene with ``scene.json``, made by ``ovseg3d synth``): ``within_1pct``, the share of points within
  1 % of the room's diagonal of a true surface, and ``median_distance_mm``;
- **labels**: ``label_accuracy``, the share of those points whose label is the nearest true surface's class, and
  ``label_accuracy_clear`` over the points clearly on one class's surface (within 5 mm of it, 2 cm clear of any other
  class's: near contacts a 2 cm depth error alone changes the nearest class); per class ``accuracy_CLASS``;
- **completeness** (Tanks and Temples): the true surface sampled by the training cameras' rays (one pixel in
  :data:`TRUTH_STRIDE`), kept where another training view sees it too; ``precision_T``, ``recall_T``, ``fscore_T`` at
  T = 0.5 % and 1 % of the diagonal, and per true class ``CLASS_fscore_T`` ...;
- **query**: ``query_ms``, one relevancy query over :data:`QUERY_POINTS` points as ``ovseg3d view`` answers it, the
  median of 20;
- **coverage** (any run): the field renders :data:`COVERAGE_VIEWS` training views' median depth at 1/4 size; a pixel
  is confident where its opacity is at least 0.95; a cloud point agrees where its distance is within 2 % of that depth
  (in front where nearer), and a confident pixel is covered with an agreeing point within a pixel of it.
  ``coverage`` is the covered share of confident pixels (and by depth third, ``coverage_near/middle/far``);
  ``consistent_coverage`` the same over the pixels another training view's depth agrees with (an opaque backdrop
  painted differently per view is no surface); ``coverage_precision`` the agreeing share of agreeing and in-front
  points. Pictures of each view (confident dark grey, consistent light grey, covered green) go to the work folder.

The variant ``force`` reads a run whose scene changed since training (``ovseg3d export --force``); ``field_only``
trains the geometry alone (a capture without labels, whose cloud has none): ``--scenes PREPARED_BONSAI --variants
field_only+stride4``.

    ovseg3d bench run export                                    # the demo, trained here
    ovseg3d bench run export --variants stride1 no_spread
    ovseg3d bench run export --scenes RUN --variants as_exported --out results/coverage_bonsai.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ovseg3d.bench.harness import Benchmark, Case

EXPORTS: dict[str, dict[str, Any]] = {
    "default": {},
    "stride1": {"pixel_stride": 1},  # every pixel
    "stride2": {"pixel_stride": 2},
    "stride4": {"pixel_stride": 4},
    "no_spread": {"max_spread": 0.0},
    "spacing2": {"spacing": 0.002},
    "as_exported": {},  # the run's own export, read as it is
    "force": {},  # a run whose scene changed since training
    "field_only": {"features": False},  # the geometry stage alone: a capture without labels for a simulated teacher
}
"""Variant -> ``ExportOptions`` fields (joined by '+': ``stride1+force``)."""
COVERAGE_VIEWS, COVERAGE_STRIDE, OPACITY, TOL, RADIUS = 8, 4, 0.95, 0.02, 1
QUERY_POINTS, TRUTH_STRIDE = 200_000, 2


def trained_run(case: Case, last: str = "distill", export: Any = None, first: str = "teachers") -> Path:
    """The case's run: its scene folder when that is a run (``run.json``), else the scene trained from stage
    ``first`` through ``last`` with the case's config (the simulated teacher unless it says otherwise) into ``WORK/trained``, a folder
    per scene, preset, seed and overrides that later cases and benchmarks reuse (``ovseg3d run`` skips current
    stages)."""
    if (case.folder / "run.json").exists():
        return case.folder
    from ovseg3d.pipeline import run_scene, stage_range

    cfg = case.config()
    if cfg.teachers.kind == "auto":
        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="synthetic"))
    cfg = dataclasses.replace(cfg, device=case.device, chosen=tuple(case.overrides))
    key = json.dumps(case.overrides, sort_keys=True, default=str).encode()
    tag = f"-{hashlib.sha1(key).hexdigest()[:8]}" if case.overrides else ""
    run = case.work / "trained" / f"{Path(case.scene).name}-{case.preset}-s{case.seed}{tag}"
    result = run_scene(case.folder, run, stage_range(first, last), config=cfg, export=export)
    if result.status != "done":
        raise RuntimeError(f"{case.label}: {result.failed_stage} failed: {result.error}")
    return run


def case_folder(case: Case, kind: str) -> Path:
    """Where a case writes what it makes (an export, pictures, boxes): ``WORK/KIND/SCENE-VARIANT-sSEED``."""
    return case.work / kind / f"{Path(case.scene).name}-{case.variant.replace('+', '-')}-s{case.seed}"


def visible_truth(scene_json: dict, cams: Any, views: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Points of the true surface seen by at least two of ``views``: each view's rays cast into the scene's
    primitives, a hit kept when another view has it in frame with nothing nearer on the ray from its centre.
    Returns ``xyz [G, 3]`` and each point's class name."""
    from ovseg3d.data.cameras import image_rays, project_points
    from ovseg3d.synth.raycast import cast_rays
    from ovseg3d.synth.scene import scene_from_json

    scene = scene_from_json(scene_json)
    pts, cls, owner = [], [], []
    for v in views:
        origins, dirs = (t.double().numpy() for t in image_rays(cams, v))
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        t, prim = cast_rays(scene, origins, dirs)
        hit = np.isfinite(t)
        pts.append(origins[hit] + t[hit, None] * dirs[hit])
        cls.append(np.array([scene.primitives[i].cls for i in prim[hit]], dtype=object))
        owner.append(np.full(int(hit.sum()), v))
    xyz, cls, owner = np.concatenate(pts), np.concatenate(cls), np.concatenate(owner)
    seen = np.zeros(len(xyz), dtype=np.int64)
    for v in views:
        u, w, front = project_points(cams, v, torch.from_numpy(xyz).float())
        inside = (front & (u >= 0) & (u < cams.width) & (w >= 0) & (w < cams.height)).numpy()
        centre = cams.c2w[v, :, 3].double().numpy()
        ray = xyz[inside] - centre
        dist = np.linalg.norm(ray, axis=1)
        t, _ = cast_rays(scene, np.broadcast_to(centre, ray.shape).copy(), ray / dist[:, None])
        visible = np.zeros(len(xyz), bool)
        visible[np.flatnonzero(inside)] = t >= dist * (1 - 1e-4) - 1e-6
        seen += visible & (owner != v)
    return xyz[seen >= 1], cls[seen >= 1]


def completeness(scene_json: dict, run: Path, cloud_xyz: np.ndarray, extent: float, stride: int) -> dict:
    """Precision, recall and F-score of the cloud against the true surface the training views see, at 0.5 % and
    1 % of ``extent``, overall and per class (recall per true class; precision per the nearest surface's)."""
    from ovseg3d.metrics import nearest_distances, surface_fscore
    from ovseg3d.synth import class_distances
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras.scaled(1 / stride) if stride > 1 else trainer.scene.cameras
    truth, truth_cls = visible_truth(scene_json, cams, list(trainer.scene.train_ids))
    to_cloud = nearest_distances(torch.from_numpy(truth).float(), torch.from_numpy(cloud_xyz).float()).numpy()
    by_class, names = class_distances(scene_json, cloud_xyz)
    to_truth, near_cls = by_class.min(1), names[by_class.argmin(1)]
    out: dict = {"truth_points": len(truth)}
    for share in (0.005, 0.01):
        key, tau = f"tau_{share * 100:g}pct", share * extent
        out[key] = surface_fscore(torch.from_numpy(to_truth), torch.from_numpy(to_cloud), tau)
        out[key]["per_class"] = {
            str(c): surface_fscore(
                torch.from_numpy(to_truth[near_cls == c]), torch.from_numpy(to_cloud[truth_cls == c]), tau
            )
            for c in np.unique(truth_cls)
        }
    return out


def surface(scene_json: dict, run: Path, xyz: np.ndarray, label: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The surface, label and completeness figures of a cloud of a generated scene (see the module's docstring)."""
    from ovseg3d.synth import class_distances

    extent = float(np.linalg.norm(np.subtract(scene_json["room"]["max"], scene_json["room"]["min"])))
    by_class, names = class_distances(scene_json, xyz)
    ranked = np.sort(by_class, 1)
    dist, true_cls = ranked[:, 0], names[by_class.argmin(1)]
    near = dist < 0.01 * extent
    clear = (dist < 0.005) & (ranked[:, 1] - dist > 0.02)  # on a surface, clear of every other class's
    right = np.array(classes, dtype=object)[np.clip(label, 0, None)] == true_cls
    out = {
        "within_1pct": float(near.mean()),
        "median_distance_mm": 1000 * float(np.median(dist)),
        "label_accuracy": float(right[near].mean()),
        "label_accuracy_clear": float(right[clear].mean()),
    }
    for c in np.unique(true_cls[near]):
        out[f"accuracy_{c}"] = float(right[near & (true_cls == c)].mean())
        if (clear & (true_cls == c)).any():
            out[f"clear_accuracy_{c}"] = float(right[clear & (true_cls == c)].mean())
    complete = completeness(scene_json, run, xyz, extent, TRUTH_STRIDE)
    out["truth_points"] = complete.pop("truth_points")
    for tau, scores in complete.items():
        out |= {f"{k}_{tau[4:]}": v for k, v in scores.items() if k != "per_class"}
        out |= {f"{c}_{k}_{tau[4:]}": v for c, s in scores["per_class"].items() for k, v in s.items()}
    return out


def query_ms(cloud: Any, run: Path) -> float:
    """Median milliseconds of 20 relevancy queries over the cloud's features repeated to :data:`QUERY_POINTS`."""
    from ovseg3d.run import load_run_config
    from ovseg3d.teachers.extract import text_encoder
    from ovseg3d.viewer import CloudQueries

    feats = F.normalize(torch.from_numpy(cloud.feature.astype(np.float32)), dim=-1)
    feats = feats.repeat(-(-QUERY_POINTS // len(feats)), 1)[:QUERY_POINTS].contiguous()
    queries = CloudQueries(cloud, feats, text_encoder(load_run_config(run).teachers, torch.device("cpu")))
    words, times = cloud.classes or ["object"], []
    for i in range(20):
        start = time.perf_counter()
        queries.relevancy(words[i % len(words)])
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


@torch.no_grad()
def view_coverage(depth: torch.Tensor, points: torch.Tensor, cams: Any, view: int) -> tuple[torch.Tensor, ...]:
    """For one view: ``[H, W]`` confident pixels (finite ``depth``) and covered ones, and the cloud's agreeing and
    in-front points there (counts)."""
    from ovseg3d.data.cameras import project_points

    h, w = cams.height, cams.width
    depth = depth.view(h, w)
    u, v, front = project_points(cams, view, points)
    col, row = torch.floor(u).long(), torch.floor(v).long()
    inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row = col[inside], row[inside]
    dist = (points[inside] - cams.c2w[view, :, 3].to(points.device)).norm(dim=-1)
    seen = depth[row, col]
    agree = torch.isfinite(seen) & ((dist - seen).abs() <= TOL * seen)
    ahead = torch.isfinite(seen) & (dist < seen * (1 - TOL))
    hit = torch.zeros(h, w, device=depth.device)
    hit[row[agree], col[agree]] = 1.0
    hit = F.max_pool2d(hit[None, None], 2 * RADIUS + 1, stride=1, padding=RADIUS)[0, 0]
    confident = torch.isfinite(depth)
    return confident, confident & (hit > 0), agree.sum(), ahead.sum()


def coverage(run: Path, xyz: np.ndarray, device: str, pictures: Path) -> dict[str, float]:
    """The coverage figures of a cloud against its run's field (see the module's docstring)."""
    import imageio.v3 as iio

    from ovseg3d.data.cameras import image_rays
    from ovseg3d.export import agreeing_views, depth_map
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, device)
    points = torch.from_numpy(xyz.astype(np.float32)).to(trainer.device)
    train_ids = list(trainer.scene.train_ids)
    ids = [train_ids[i] for i in np.linspace(0, len(train_ids) - 1, COVERAGE_VIEWS).round().astype(int)]
    cams = trainer.scene.cameras.to(trainer.device).scaled(1 / COVERAGE_STRIDE)
    every = {v: depth_map(trainer, cams, v, OPACITY)[0] for v in train_ids}
    n = dict.fromkeys(("confident", "covered", "consistent", "consistent_covered", "agree", "ahead"), 0)
    thirds = np.zeros((3, 2))  # [near / middle / far] x [confident, covered]
    pictures.mkdir(parents=True, exist_ok=True)
    for view in sorted(set(ids)):
        depth = every[view]
        confident, covered, agree, ahead = view_coverage(depth, points, cams, view)
        origins, dirs = image_rays(cams, view)
        solid = confident.view(-1)
        consistent = torch.zeros_like(solid)
        found = origins[solid] + depth[solid, None] * dirs[solid]
        consistent[solid.nonzero()[:, 0][agreeing_views(found, every, cams, view, TOL) >= 1]] = True
        consistent = consistent.view(confident.shape)
        counts = (confident, covered, consistent, consistent & covered)
        for key, value in zip(n, [*(int(c.sum()) for c in counts), int(agree), int(ahead)]):
            n[key] += value
        if confident.any():
            d = depth.view(confident.shape)[confident]
            third = torch.bucketize(d, torch.quantile(d, torch.tensor([1 / 3, 2 / 3], device=d.device)))
            for t in range(3):
                thirds[t] += (int((third == t).sum()), int((covered[confident] & (third == t)).sum()))
        pic = np.zeros((*confident.shape, 3), np.uint8)
        for mask, grey in ((confident, 110), (consistent, 170)):
            pic[mask.cpu().numpy()] = grey
        pic[covered.cpu().numpy()] = (40, 200, 60)
        iio.imwrite(pictures / f"coverage_{view:04d}.png", pic)
    out = {
        "coverage": n["covered"] / max(n["confident"], 1),
        "consistent_coverage": n["consistent_covered"] / max(n["consistent"], 1),
        "coverage_precision": n["agree"] / max(n["agree"] + n["ahead"], 1),
        "coverage_views": len(set(ids)),
        **{f"n_{k}": float(v) for k, v in n.items()},
    }
    return out | {f"coverage_{name}": c / max(t, 1) for name, (t, c) in zip(("near", "middle", "far"), thirds)}


def export_options(variant: str) -> Any:
    """The ``ExportOptions`` of a variant (names of :data:`EXPORTS` joined by '+'): with features, no time limit."""
    from ovseg3d.export import ExportOptions

    options = {k: v for part in variant.split("+") for k, v in EXPORTS[part].items()}
    return ExportOptions(**{"max_seconds": 0.0, "features": True, **options})


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.export import extract_cloud, load_export, write_export
    from ovseg3d.run import allow_changed_scene, load_run_config

    parts, opts = case.variant.split("+"), export_options(case.variant)
    run = trained_run(case, "geometry", first="geometry") if "field_only" in parts else trained_run(case)
    out = case_folder(case, "export")
    with allow_changed_scene("force" in parts):
        start = time.perf_counter()
        if "as_exported" in parts:
            cloud = load_export(run / "export" / "points.npz")
        else:
            cloud = extract_cloud(run, opts, case.device)
            write_export(cloud, out / "export", run, opts)
        figures = {"points": float(len(cloud)), "voxel_mm": 1000 * cloud.voxel_size}
        if "as_exported" not in parts:
            figures["export_seconds"] = round(time.perf_counter() - start, 1)
        if cloud.feature is not None:
            figures["query_ms"] = query_ms(cloud, run)
        figures |= coverage(run, cloud.xyz, case.device, out / "coverage")
        scene_json = Path(load_run_config(run).scene) / "scene.json"
        if scene_json.exists():
            figures |= surface(json.loads(scene_json.read_text()), run, cloud.xyz, cloud.label, list(cloud.classes))
    return figures


BENCHMARK = Benchmark(
    name="export",
    doc="the exported cloud: against a generated scene's true surfaces, labels, completeness, query time, coverage",
    measure=measure,
    figures=("points", "coverage", "consistent_coverage", "coverage_precision"),
    scenes=("demo",),
    # field_only trains no teacher: the config says so, and so does the result file's teacher record
    variants={**dict.fromkeys(EXPORTS, {}), "field_only": {"teachers": {"kind": "none"}}},
    default_variants=("default",),
    teacher={"kind": "synthetic"},
)
