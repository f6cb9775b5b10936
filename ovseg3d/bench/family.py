"""Generated scene families (issue 37): do the field, the exported cloud, gravity and the boxes hold on scenes that
nothing was tuned on? Folds ``scripts/bench_family.py`` (and registers ``scripts/bench_outdoor.py``'s scene).

The members, registered in :data:`ovseg3d.bench.harness.SCENES` on import, are scenes of ``ovseg3d synth`` with
seeds of their own: forward rooms ``forward_s1_tilt10`` ... ``forward_s5_tilt35`` (the camera patch tilted down
10-35°; 10: the floor at a grazing angle), orbit rooms ``orbit_s1``, ``orbit_s2``, the outdoor ``outdoor_s1``; also
``outdoor_lens5``, bench_outdoor's phone lens and COLMAP model (``ovseg3d bench run whole --scenes outdoor_lens5``
is that script's whole method). A folder of ``ovseg3d synth``, or a finished run of one, may be given too. Each
runs every stage (simulated teachers, a step budget, no export time limit: no figure depends on the machine's pace)
into a run later cases reuse (:func:`ovseg3d.bench.export.trained_run`; delete its ``detections.json`` to detect
again). Figures:

* ``psnr`` / ``train_psnr``, ``miou`` / ``teacher_miou``: held-out and training-view PSNR, the field's and the 2D
  teacher's mIoU;
* ``precision_1pct``, ``recall_1pct``, ``fscore_1pct`` (and ``_0.5pct``; ``recall_1pct_CLASS`` per true class):
  Tanks and Temples' scores of the exported cloud against the true surface two training views see, at 1 % (0.5 %)
  of the room's diagonal;
* ``gravity_own_deg`` / ``gravity_worst_deg``: ``estimate_up``, each camera first rolled at random (σ 3°: a
  hand-held camera is not level), against the true up in the scene's frame and the worst of 7 (:data:`FRAMES`);
* ``map25`` / ``map50``: ``detect``'s boxes against ``objects.json``.

The ``spread...`` variants export the field again with that ``--max-spread`` (0: none) and score that cloud (and
``detect`` on it) instead. The variants of :data:`EXTRAS`, joined with '+', add figures:

* ``oracle``: ``oracle_recall_1pct`` (``_0.5pct``, per class), the export's agreement rule applied to perfect
  geometry (every training pixel's true point, kept where enough other views' true depth agrees);
* ``box_oracle``: ``box_oracle_map25`` / ``_map50``, ``detect`` on the visible true surface with true labels;
* ``depth_errors``: per true class, over every 4th training view at half size: ``depth_CLASS_opaque`` (the share as
  opaque as the export wants), ``_median_rel_error`` of the field's median depth, ``_within_0.5pct``,
  ``_within_2pct``, and with an occupancy grid ``_grid_marched`` (the true surface's cell is marched) and
  ``_grid_emptied`` (it has density, but the visibility record emptied it).

    ovseg3d bench run family                                   # 5 forward tilts, 2 orbits, 1 outdoor
    ovseg3d bench run family --variants default spread0.15 spread0.3 spread0   # + other spread filters
    ovseg3d bench run family --variants default+box_oracle+depth_errors default+oracle
    ovseg3d bench run family --scenes orbit_s1 --variants random_background+no_visibility+depth_errors \\
        random_background+visibility+depth_errors --repeats 3 --set distill_steps=100 --out results/family_walls.json
    ovseg3d bench run family --work bench/family_rbg --variants random_background random_background+spread0
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovseg3d.bench.harness import OUTDOOR, SCENES, Benchmark, Case, Scene

MEMBERS: dict[str, dict[str, Any]] = {
    **{
        f"forward_s{s}_tilt{10 + 25 * i / 4:.0f}": {"seed": s, "elevation_deg": 10 + 25 * i / 4}
        for i, s in enumerate(range(1, 6))
    },
    **{f"orbit_s{s}": {"seed": s, "cameras": "orbit", "format": "transforms"} for s in (1, 2)},
    "outdoor_s1": {"seed": 1, "outdoor": True, "format": "colmap", "width": 240, "height": 180},
}
"""The family: name -> ``SynthConfig`` fields of its scene (the default scenes of this benchmark)."""
for _name, _synth in {**MEMBERS, "outdoor_lens5": {**OUTDOOR, "seed": 5}}.items():
    SCENES.setdefault(_name, Scene(_name, synth=_synth, note="a generated scene of the family benchmark"))

BUDGET = {"steps": 1500, "max_minutes": 0.0, "distill_steps": 600, "distill_minutes": 0.0}
SPREADS = (0.0, 0.08, 0.15, 0.3)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": BUDGET,
    "random_background": {**BUDGET, "background": "random"},
    "no_visibility": {**BUDGET, "occ_visibility_eps": 0.0},
    "visibility": {**BUDGET, "occ_visibility_eps": 1e-3},
    **{f"spread{s:g}": BUDGET for s in SPREADS},
    **{name: BUDGET for name in ("oracle", "box_oracle", "depth_errors")},
}
EXTRAS = ("oracle", "box_oracle", "depth_errors")
"""Variants that add figures (slower: the oracle's cloud is every training pixel's true point)."""
ROLL_DEG, TRUTH_STRIDE = 3.0, 2


def random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` rotations drawn uniformly (QR of a Gaussian matrix, sign-fixed)."""
    rng, rots = np.random.default_rng(seed), []
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        rots.append(q * np.sign(np.linalg.det(q)))  # a rotation, not a reflection
    return rots


FRAMES = [*random_rotations(5), np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])]  # and z up -> y up
"""The world frames gravity is checked in besides the scene's own: 5 random rotations and nerfstudio's y-up."""


def rolled(c2w: np.ndarray, roll_deg: float, seed: int = 0) -> np.ndarray:
    """``c2w`` with each camera turned about its viewing axis (column 2) by a normal random angle (degrees)."""
    angles = np.radians(np.random.default_rng(seed).normal(0.0, roll_deg, len(c2w)))[:, None]
    right, up = c2w[:, :, 0], c2w[:, :, 1]
    out = c2w.copy()
    out[:, :, 0] = np.cos(angles) * right + np.sin(angles) * up
    out[:, :, 1] = -np.sin(angles) * right + np.cos(angles) * up
    return out


def gravity_errors(cloud: Any, c2w: np.ndarray, rotations: list[np.ndarray]) -> list[float]:  # noqa: ANN401
    """Degrees between ``estimate_up`` (the cameras' up as hint, their right vectors as the level cue, the floor's
    points as ground) and the turned true up (+z), in the scene's own frame and each of ``rotations``."""
    from ovseg3d.data.loader import camera_up
    from ovseg3d.detect.gravity import estimate_up
    from ovseg3d.detect.head import SUPPORT_CLASSES, point_spacing

    xyz = cloud.xyz.astype(np.float64)
    spacing = cloud.voxel_size or point_spacing(xyz)
    floor = np.isin(cloud.label, [i for i, c in enumerate(cloud.classes) if c.lower() in SUPPORT_CLASSES])
    ground = floor if floor.sum() >= 30 else None
    errors = []
    for rot in [np.eye(3), *rotations]:
        turned = c2w.copy()
        turned[:, :, :3] = rot @ c2w[:, :, :3]
        turned[:, :, 3] = c2w[:, :, 3] @ rot.T
        up = estimate_up(xyz @ rot.T, 8 * spacing, hint=camera_up(turned), ground=ground, level=turned[:, :, 0])
        errors.append(float(np.degrees(np.arccos(np.clip(up @ (rot @ np.array([0.0, 0, 1])), -1, 1)))))
    return errors


def oracle_recall(trainer: Any, scene_json: dict, truth: tuple, extent: float) -> dict[str, float]:  # noqa: ANN401
    """The recall of a cloud made by the export's multi-view agreement from the true depth of every training
    pixel (one in :data:`TRUTH_STRIDE`), at 0.5 % and 1 % of ``extent``, overall and per true class."""
    import torch

    from ovseg3d.data.cameras import image_rays
    from ovseg3d.export import ExportOptions, agreeing_views
    from ovseg3d.metrics import nearest_distances
    from ovseg3d.synth.raycast import cast_rays
    from ovseg3d.synth.scene import scene_from_json

    scene, cams, opts = scene_from_json(scene_json), trainer.scene.cameras.scaled(1 / TRUTH_STRIDE), ExportOptions()
    depths, points = {}, {}
    for v in trainer.scene.train_ids:
        origins, dirs = (t.double().numpy() for t in image_rays(cams, v))
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        t, _ = cast_rays(scene, origins, dirs)
        hit = np.isfinite(t)
        depths[v] = torch.from_numpy(np.where(hit, t, np.nan)).float()
        points[v] = torch.from_numpy(origins[hit] + t[hit, None] * dirs[hit]).float()
    agree = [
        p[agreeing_views(p, depths, cams, v, opts.depth_tolerance) >= opts.min_agreeing] for v, p in points.items()
    ]
    to_cloud = nearest_distances(torch.from_numpy(truth[0]).float(), torch.cat(agree)).numpy()
    out = {}
    for share, tag in ((0.005, "0.5pct"), (0.01, "1pct")):
        out[f"oracle_recall_{tag}"] = float((to_cloud <= share * extent).mean())
        for c in np.unique(truth[1]):
            out[f"oracle_recall_{tag}_{c}"] = float((to_cloud[truth[1] == c] <= share * extent).mean())
    return out


def boxes(trainer: Any, cloud: Any, path: Path, objects: list) -> dict[str, float]:  # noqa: ANN401
    """mAP@0.25 / @0.5 of ``detect`` (defaults, the run's cameras as its level cue, as ``ovseg3d detect`` has
    them) on ``cloud``, its boxes written to ``path``."""
    from ovseg3d.data.loader import camera_up
    from ovseg3d.detect.head import DetectOptions, detect, write_detections
    from ovseg3d.detect.results import detection_metrics

    c2w = trainer.scene.cameras.c2w.double().numpy()
    opts = DetectOptions()
    found = detect(cloud, opts, None, None, camera_up(c2w), lambda s: None, None, level=c2w[:, :, 0])
    write_detections(path, found, path.stem, opts)
    scores = detection_metrics(path, objects)
    return {"map25": scores.get("map25", float("nan")), "map50": scores.get("map50", float("nan"))}


def box_oracle(trainer: Any, truth: tuple, path: Path, objects: list) -> dict[str, float]:  # noqa: ANN401
    """:func:`boxes` on the visible true surface (one point per voxel of the export's grid, true classes)."""
    from ovseg3d.export import ExportOptions, LabelledCloud

    voxel = ExportOptions().spacing * trainer.diag
    _, first = np.unique(np.floor(truth[0] / voxel).astype(np.int64), axis=0, return_index=True)
    xyz, names = truth[0][first], truth[1][first]
    classes = sorted(set(names.tolist()))
    label = np.array([classes.index(c) for c in names], np.int32)
    n = len(xyz)
    probs, views = np.eye(len(classes), dtype=np.float16)[label], np.full(n, 2, np.int32)
    rgb, confidence = np.zeros((n, 3), np.uint8), np.ones(n, np.float32)
    cloud = LabelledCloud(xyz.astype(np.float32), rgb, views, label, confidence, probs, {}, None, classes, voxel)
    return {f"box_oracle_{k}": v for k, v in boxes(trainer, cloud, path, objects).items()}


def depth_errors(trainer: Any, scene_json: dict) -> dict[str, float]:  # noqa: ANN401
    """Per true class, the field's median depth against the true depth and the occupancy grid at the true surface
    (see the module's docstring), over every 4th training view at half size."""
    import torch

    from ovseg3d.data.cameras import image_rays
    from ovseg3d.export import depth_map
    from ovseg3d.render.occupancy import OccupancyGrid
    from ovseg3d.synth.raycast import cast_rays
    from ovseg3d.synth.scene import scene_from_json

    scene, cams = scene_from_json(scene_json), trainer.scene.cameras.scaled(1 / 2)
    grid = trainer.grid if isinstance(trainer.grid, OccupancyGrid) else None  # proposals: no grid to ask
    if grid is not None:  # cells whose remembered opacity passes the grid's threshold, marched or not
        dense = (grid.occs > torch.clamp(grid.occs[grid.seen].mean(), max=trainer.cfg.occ_threshold)) & grid.seen
    rows: dict[str, list] = {k: [] for k in ("cls", "err", "opacity", "marched", "emptied")}
    for v in list(trainer.scene.train_ids)[::4]:
        depth, _, opacity = depth_map(trainer, cams, v, 0.0, 0.0)
        origins, dirs = (t.double().numpy() for t in image_rays(cams, v))
        norm = np.linalg.norm(dirs, axis=1)
        t, prim = cast_rays(scene, origins, dirs / norm[:, None])
        hit = np.isfinite(t)
        rows["cls"].append(np.array([scene.primitives[i].cls for i in prim[hit]], dtype=object))
        rows["err"].append(np.abs(depth.double().numpy()[hit] * norm[hit] - t[hit]) / t[hit])
        rows["opacity"].append(opacity.numpy()[hit])
        if grid is not None:
            flat, inside = grid._cell_coords(
                torch.from_numpy(origins[hit] + t[hit, None] * dirs[hit] / norm[hit, None]).float()
            )
            marched = inside & grid.binaries.view(-1)[flat]
            rows["marched"].append(marched.numpy())
            rows["emptied"].append((inside & dense.view(-1)[flat] & ~marched).numpy())
    cls, err, opacity = (np.concatenate(rows[k]) for k in ("cls", "err", "opacity"))
    out = {}
    for c in np.unique(cls):
        m = cls == c
        out |= {
            f"depth_{c}_opaque": float((opacity[m] >= 0.9).mean()),
            f"depth_{c}_median_rel_error": float(np.nanmedian(err[m])),
            f"depth_{c}_within_0.5pct": float((err[m] <= 0.005).mean()),
            f"depth_{c}_within_2pct": float((err[m] <= 0.02).mean()),
        }
        if grid is not None:
            out[f"depth_{c}_grid_marched"] = float(np.concatenate(rows["marched"])[m].mean())
            out[f"depth_{c}_grid_emptied"] = float(np.concatenate(rows["emptied"])[m].mean())
    return out


def measure(case: Case) -> dict[str, float]:
    """Every stage on the member (a finished run reused), then the figures of the module's docstring."""
    from ovseg3d.bench.export import trained_run
    from ovseg3d.export import ExportOptions

    run = trained_run(case, "eval", ExportOptions(max_seconds=0.0))
    parts = case.variant.split("+")
    spreads = [float(p[len("spread") :]) for p in parts if p.startswith("spread")]
    extras = [p for p in parts if p in EXTRAS]
    return figures_of(run, spreads[-1] if spreads else None, case.device, extras)


def figures_of(
    run: Path, spread: float | None = None, device: str = "cpu", extras: Sequence[str] = ()
) -> dict[str, float]:
    """The figures of a finished run of a generated scene; with ``spread``, of its field exported again with that
    ``--max-spread`` (and ``detect`` on that cloud); ``extras``: names of :data:`EXTRAS` also measured."""
    from ovseg3d.bench.export import completeness, visible_truth
    from ovseg3d.detect.results import detection_metrics
    from ovseg3d.export import ExportOptions, extract_cloud, load_export
    from ovseg3d.pipeline import read_stages
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, "cpu")
    scores, scene = json.loads((run / "eval.json").read_text()), Path(trainer.scene.root)
    scene_json = json.loads((scene / "scene.json").read_text())
    objects = json.loads((scene / "objects.json").read_text())["objects"]
    extent = float(np.linalg.norm(np.array(scene_json["room"]["max"]) - np.array(scene_json["room"]["min"])))
    figures = {k: float(scores[k]) for k in ("psnr", "train_psnr", "miou", "teacher_miou") if scores.get(k) is not None}
    if spread is not None:
        cloud = extract_cloud(run, ExportOptions(max_spread=spread, relax_below=0, max_seconds=0.0), device, log=print)
        figures |= boxes(trainer, cloud, run / f"detections_spread{spread:g}.json", objects)
    else:
        cloud = load_export(run / "export" / "points.npz")
        found = detection_metrics(run / "detections.json", objects)
        figures |= {k: found.get(k, float("nan")) for k in ("map25", "map50")}
        figures["relaxed"] = float(bool(json.loads((run / "export" / "points.json").read_text()).get("relaxed")))
    complete = completeness(scene_json, run, cloud.xyz, extent, TRUTH_STRIDE)
    for tag in ("0.5pct", "1pct"):
        figures |= {f"{k}_{tag}": v for k, v in complete[f"tau_{tag}"].items() if k != "per_class"}
        figures |= {f"recall_{tag}_{c}": v["recall"] for c, v in complete[f"tau_{tag}"]["per_class"].items()}
    gravity = gravity_errors(cloud, rolled(trainer.scene.cameras.c2w.double().numpy(), ROLL_DEG), FRAMES)
    figures |= {"points": len(cloud.xyz), "n_objects": len(objects), "gravity_own_deg": gravity[0]}
    figures["gravity_worst_deg"] = max(gravity)
    if {"oracle", "box_oracle"} & set(extras):
        cams = trainer.scene.cameras.scaled(1 / TRUTH_STRIDE)
        truth = visible_truth(scene_json, cams, list(trainer.scene.train_ids))
        if "oracle" in extras:
            figures |= oracle_recall(trainer, scene_json, truth, extent)
        if "box_oracle" in extras:
            figures |= box_oracle(trainer, truth, run / "detections_box_oracle.json", objects)
    if "depth_errors" in extras:
        figures |= depth_errors(trainer, scene_json)
    seconds = {f"{stage}_seconds": r.get("seconds", 0.0) for stage, r in read_stages(run).items()}
    return {**figures, **seconds, "seconds": round(sum(seconds.values()), 1)}


BENCHMARK = Benchmark(
    name="family",
    doc="generated scenes nothing was tuned on: PSNR, mIoU, the cloud's completeness, gravity in 7 frames, boxes",
    measure=measure,
    figures=("psnr", "points", "fscore_1pct", "recall_1pct", "gravity_worst_deg", "map25", "map50", "seconds"),
    scenes=tuple(MEMBERS),
    variants=VARIANTS,
    default_variants=("default",),
    teacher={"kind": "synthetic"},
)
