#!/usr/bin/env python
"""ovseg3d scene-family benchmark (issue 37): do the exported clouds, gravity and boxes hold on generated scenes
that nothing was tuned on?

Each member is a scene of ``ovseg3d synth`` with its own seed: forward-facing rooms whose camera patch is
tilted down from ``--min-tilt`` deg (10: the floor seen at a grazing angle; lower, the camera patch would
dip under the floor, as the objects' centre is about 0.1 m up) to ``--max-tilt`` deg (``--elevation-deg``), orbit rooms and outdoor scenes. Each goes through every stage (``run_scene``: cpu
preset, simulated teachers, a fixed step budget so the figures do not depend on the machine's load), then:

* **held out / train**: ``eval``'s PSNR on held-out and training views, mIoU of the field and of the teacher;
* **completeness** (Tanks and Temples, as ``scripts/bench_export.py``): precision, recall and F-score of the
  exported cloud against the true surface at least two training views see, at 0.5 % and 1 % of the room's
  diagonal, per class;
* **gravity in any frame**: the cloud and the cameras turned by ``--rotations`` random rotations (COLMAP-like
  frames) and into a y-up frame (nerfstudio's); ``estimate_up`` with the cameras' up as its hint; the largest
  angle to the turned true up (+z);
* **boxes**: mAP@0.25 / @0.5 (VoteNet, upright IoU) of ``detect``'s boxes against ``objects.json``.

The members' runs are kept under ``--work`` and reused when finished (delete one to redo it). Prints a table and
writes JSON after every member (default ``bench/family.json``).

    python scripts/bench_family.py                                  # 5 forward tilts, 2 orbits, 1 outdoor
    python scripts/bench_family.py --forward-seeds 11 12 --orbit-seeds --outdoor-seeds
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro
from bench_export import completeness, visible_truth

from ovseg3d import accel
from ovseg3d.config import ConfigError, apply_overrides, resolve_base
from ovseg3d.data.loader import camera_up
from ovseg3d.detect.gravity import estimate_up
from ovseg3d.detect.head import SUPPORT_CLASSES, DetectOptions, detect, point_spacing, write_detections
from ovseg3d.detect.results import detection_metrics
from ovseg3d.detect.source import run_detect
from ovseg3d.export import ExportOptions, LabelledCloud, extract_cloud, load_export
from ovseg3d.pipeline import run_scene
from ovseg3d.synth import SynthConfig, synthesize
from ovseg3d.train import Trainer, load_trainer


@dataclass
class Args:
    forward_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """One forward-facing room per seed, their tilts spread evenly from --min-tilt to --max-tilt."""
    min_tilt: float = 10.0
    max_tilt: float = 35.0
    orbit_seeds: list[int] = field(default_factory=lambda: [1, 2])
    outdoor_seeds: list[int] = field(default_factory=lambda: [1])
    steps: int = 1500
    """Geometry steps of each run (no time budget)."""
    distill_steps: int = 600
    rotations: int = 5
    """Random world rotations the gravity is checked under (besides the scene's own frame and y-up)."""
    roll_deg: float = 3.0
    """The gravity check rolls each camera about its view axis by a random angle of this standard deviation
    (degrees) first: the generator's cameras are exactly level, a hand-held camera's are not."""
    regravity: bool = False
    """Measure gravity again and run ``detect`` again (its boxes' mAP) for members already finished, after a change
    to either, keeping their other figures."""
    truth_stride: int = 2
    """Sample the true surface at one pixel in N of the training views."""
    spreads: list[float] = field(default_factory=list)
    """Also export each finished member with these --max-spread values (0: no spread filter) and score their
    completeness and boxes (``detect`` on each cloud) beside the default's: how much of the missing surface the
    spread filter removes."""
    oracle: bool = False
    """Also score the export's agreement rule with perfect geometry: every training pixel's true surface point,
    kept where --min-agreeing other views' true depth agrees within --depth-tolerance (the export's rule), against
    the same true surface: the completeness the rule allows at all."""
    depth_errors: bool = False
    """Also score the field's depth per true class: over every 4th training view at half size, the share of
    pixels whose opacity reaches the export's 0.9, the median relative error of the median depth against the
    true depth, and the shares within 0.5 % and 2 % (where the field puts each surface, before any filter); and what
    the occupancy grid says at the true surface: the share of its pixels whose cell is marched, and the share whose
    cell has the field's density but was emptied by the visibility record (``--occ-visibility-eps``)."""
    box_oracle: bool = False
    """Also run ``detect`` on the true surface the training views see (points on the export's voxel grid, true
    classes, each object's points one instance): the mAP that perfect geometry and labels allow, half-seen
    objects and all."""
    scenes: list[Path] = field(default_factory=list)
    """Also these scenes of ``ovseg3d synth`` (folders with scene.json), e.g. ``scenes/demo``: linked into
    ``--work``'s scenes/ under their folder's name."""
    set: list[str] = field(default_factory=list)
    """Training settings over the cpu preset, ``KEY=VALUE`` (TOML values), e.g. ``background='random'``; give
    such a run its own ``--work`` (the scenes can be links to the family's)."""
    device: str = "cpu"
    work: Path = Path("bench/family")
    out: Path = Path("bench/family.json")


def members(args: Args) -> dict[str, SynthConfig]:
    """The family: name -> the synth settings of its scene."""
    out: dict[str, SynthConfig] = {}
    n = len(args.forward_seeds)
    for i, seed in enumerate(args.forward_seeds):
        tilt = args.min_tilt + (args.max_tilt - args.min_tilt) * i / max(1, n - 1)
        out[f"forward_s{seed}_tilt{tilt:.0f}"] = SynthConfig(seed=seed, elevation_deg=tilt)
    for seed in args.orbit_seeds:
        out[f"orbit_s{seed}"] = SynthConfig(seed=seed, cameras="orbit", format="transforms")
    for seed in args.outdoor_seeds:
        out[f"outdoor_s{seed}"] = SynthConfig(seed=seed, outdoor=True, format="colmap", width=240, height=180)
    for path in args.scenes:
        link = args.work / "scenes" / path.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        out[path.name] = SynthConfig(**json.loads((path / "scene.json").read_text()).get("config", {}))
    return out


def random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` rotations drawn uniformly (QR of a Gaussian matrix, sign-fixed), then the z-up -> y-up turn."""
    rng = np.random.default_rng(seed)
    rots = []
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        rots.append(q if np.linalg.det(q) > 0 else -q)
    rots.append(np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))  # z up -> y up (x, y, z) -> (x, z, -y)
    return rots


def rolled(c2w: np.ndarray, roll_deg: float, seed: int = 0) -> np.ndarray:
    """``c2w`` with each camera turned about its viewing axis (column 2) by a normal random angle (degrees)."""
    if roll_deg <= 0:
        return c2w
    angles = np.radians(np.random.default_rng(seed).normal(0.0, roll_deg, len(c2w)))[:, None]
    right, up = c2w[:, :, 0], c2w[:, :, 1]
    out = c2w.copy()
    out[:, :, 0] = np.cos(angles) * right + np.sin(angles) * up
    out[:, :, 1] = -np.sin(angles) * right + np.cos(angles) * up
    return out


def gravity_errors(run: Path, rotations: list[np.ndarray], roll_deg: float = 0.0) -> dict:
    """Degrees between ``estimate_up`` (the cameras' up as hint, their right vectors as the level cue, each camera
    rolled by ``roll_deg`` at random first) and the turned true up (+z), in the scene's own frame and each
    turned one."""
    cloud = load_export(run / "export" / "points.npz")
    c2w = rolled(load_trainer(run, "cpu").scene.cameras.c2w.double().numpy(), roll_deg)
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
        truth = rot @ np.array([0.0, 0.0, 1.0])
        errors.append(float(np.degrees(np.arccos(np.clip(up @ truth, -1, 1)))))
    return {
        "own_frame_deg": round(errors[0], 3),
        "worst_deg": round(max(errors), 3),
        "all_deg": errors,
        "roll_deg": roll_deg,
    }


def training_settings(args: Args) -> dict:
    """``--set``'s settings as a table; one line (and exit) for a value TOML cannot read or an unknown key."""
    try:
        extra = tomllib.loads("\n".join(args.set)) if args.set else {}
        apply_overrides(resolve_base("cpu", None), extra, "--set")
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise SystemExit(f"bench_family: --set {' '.join(args.set)}: {exc}") from None
    return extra


def scored_boxes(name: str, args: Args, detections: Path) -> dict:
    """mAP and pose errors (:func:`detection_metrics`) of ``detections`` against ``name``'s ``objects.json``."""
    objects = json.loads((args.work / "scenes" / name / "objects.json").read_text())["objects"]
    return detection_metrics(detections, objects)


def cloud_boxes(name: str, args: Args, cloud: LabelledCloud, tag: str) -> dict:
    """mAP of ``detect`` (defaults, the run's cameras as its level cue, as ``ovseg3d detect`` has them) on
    ``cloud``, written to ``RUN/detections_<tag>.json``."""
    run = args.work / "runs" / name
    c2w = load_trainer(run, "cpu").scene.cameras.c2w.double().numpy()
    opts = DetectOptions()
    result = detect(cloud, opts, None, None, camera_up(c2w), lambda s: None, None, level=c2w[:, :, 0])
    path = run / f"detections_{tag}.json"
    write_detections(path, result, tag, opts)
    return scored_boxes(name, args, path)


def regravity(name: str, row: dict, args: Args) -> None:
    """``row``'s gravity measured again and ``detect`` run again on its finished run (``--regravity``)."""
    run = args.work / "runs" / name
    before = row["gravity"]["worst_deg"]
    row["gravity"] = gravity_errors(run, random_rotations(args.rotations), args.roll_deg)
    print(f"{name}: gravity, worst of the frames {before:.2f} -> {row['gravity']['worst_deg']:.2f} deg", flush=True)
    run_detect(run, DetectOptions(), log=lambda s: None)
    boxes = scored_boxes(name, args, run / "detections.json")
    print(
        f"{name}: mAP@0.25 / 0.5 {row['map25']} / {row['map50']} -> {boxes.get('map25')} / {boxes.get('map50')}",
        flush=True,
    )
    row["map25"], row["map50"] = boxes.get("map25"), boxes.get("map50")


def measure(name: str, synth: SynthConfig, args: Args) -> dict:
    scene, run = args.work / "scenes" / name, args.work / "runs" / name
    if not (scene / "scene.json").exists():
        print(f"generating {name} -> {scene}", flush=True)
        synthesize(synth, scene)
    cfg = resolve_base("cpu", None)
    budget = {"steps": args.steps, "max_minutes": 0.0, "distill_steps": args.distill_steps, "distill_minutes": 0.0}
    settings = training_settings(args)
    cfg = apply_overrides(cfg, budget | settings, "bench_family")
    cfg = dataclasses.replace(cfg, chosen=tuple(settings))  # --set stands against [unbounded]
    cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="synthetic"), device=args.device)
    start = time.perf_counter()
    # no export time limit: the figures must not depend on the machine's pace
    export = ExportOptions(max_seconds=0.0)
    result = run_scene(scene, run, config=cfg, export=export, log=lambda s: print(f"  {name}: {s}", flush=True))
    seconds = time.perf_counter() - start
    ev = json.loads((run / "eval.json").read_text())
    scene_json = json.loads((scene / "scene.json").read_text())
    room = np.array(scene_json["room"]["max"]) - np.array(scene_json["room"]["min"])
    extent = float(np.linalg.norm(room))
    cloud = load_export(run / "export" / "points.npz")
    complete = completeness(scene_json, run, cloud.xyz, extent, args.truth_stride)
    objects = json.loads((scene / "objects.json").read_text())["objects"]
    boxes = detection_metrics(run / "detections.json", objects)
    return {
        "synth": {k: v for k, v in dataclasses.asdict(synth).items() if v != getattr(SynthConfig(), k)},
        "seconds": round(seconds, 1),
        "stage_seconds": result.seconds,
        "psnr_heldout": ev.get("psnr"),
        "psnr_train": ev.get("train_psnr"),
        "miou": ev.get("miou"),
        "teacher_miou": ev.get("teacher_miou"),
        "points": len(cloud),
        "relaxed": bool(json.loads((run / "export" / "points.json").read_text()).get("relaxed")),
        "completeness": complete,
        "gravity": gravity_errors(run, random_rotations(args.rotations), args.roll_deg),
        "map25": boxes.get("map25"),
        "map50": boxes.get("map50"),
        "n_objects": len(objects),
    }


def spread_rows(name: str, args: Args) -> dict:
    """Completeness at 1 % of the extent of ``name``'s run exported with each of ``--spreads``."""
    scene, run = args.work / "scenes" / name, args.work / "runs" / name
    scene_json = json.loads((scene / "scene.json").read_text())
    extent = float(np.linalg.norm(np.array(scene_json["room"]["max"]) - np.array(scene_json["room"]["min"])))
    rows = {}
    for spread in args.spreads:
        cloud = extract_cloud(
            run, ExportOptions(max_spread=spread, relax_below=0, max_seconds=0.0), args.device, log=lambda s: None
        )
        c = completeness(scene_json, run, cloud.xyz, extent, args.truth_stride)["tau_1pct"]
        rows[f"{spread:g}"] = {"points": len(cloud), **{k: c[k] for k in ("precision", "recall", "fscore")}}
        rows[f"{spread:g}"]["recall_per_class"] = {k: round(v["recall"], 3) for k, v in c["per_class"].items()}
        boxes = cloud_boxes(name, args, cloud, f"spread_{spread:g}")
        rows[f"{spread:g}"] |= {"map25": boxes.get("map25"), "map50": boxes.get("map50")}
        print(
            f"{name} --max-spread {spread:g}: {len(cloud)} points, P/R/F "
            + "/".join(f"{100 * c[k]:.1f}" for k in ("precision", "recall", "fscore"))
            + f", mAP@0.25 / 0.5 {boxes.get('map25')} / {boxes.get('map50')}",
            flush=True,
        )
    return rows


def oracle_row(name: str, args: Args) -> dict:
    """Completeness at 0.5 % and 1 % of a cloud made by the export's multi-view agreement from true depth."""
    from ovseg3d.data.cameras import image_rays
    from ovseg3d.export import agreeing_views
    from ovseg3d.metrics import nearest_distances, surface_fscore
    from ovseg3d.synth.raycast import cast_rays
    from ovseg3d.synth.scene import scene_from_json

    scene_dir, run = args.work / "scenes" / name, args.work / "runs" / name
    scene_json = json.loads((scene_dir / "scene.json").read_text())
    extent = float(np.linalg.norm(np.array(scene_json["room"]["max"]) - np.array(scene_json["room"]["min"])))
    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras.scaled(1 / args.truth_stride)
    views = list(trainer.scene.train_ids)
    scene = scene_from_json(scene_json)
    depths, points = {}, {}
    for v in views:
        origins, dirs = (t.double().numpy() for t in image_rays(cams, v))
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        t, _ = cast_rays(scene, origins, dirs)
        depths[v] = torch.from_numpy(np.where(np.isfinite(t), t, np.nan)).float()
        hit = np.isfinite(t)
        points[v] = torch.from_numpy(origins[hit] + t[hit, None] * dirs[hit]).float()
    opts = ExportOptions()
    kept = [p[agreeing_views(p, depths, cams, v, opts.depth_tolerance) >= opts.min_agreeing] for v, p in points.items()]
    cloud = torch.cat(kept)
    truth, truth_cls = visible_truth(scene_json, cams, views)
    to_cloud = nearest_distances(torch.from_numpy(truth).float(), cloud).numpy()
    row = {"points": len(cloud), "rule": f"{opts.min_agreeing}+ other views within {opts.depth_tolerance}"}
    for share in (0.005, 0.01):
        recall = surface_fscore(torch.zeros(1), torch.from_numpy(to_cloud), share * extent)["recall"]
        per = {str(c): float((to_cloud[truth_cls == c] <= share * extent).mean()) for c in np.unique(truth_cls)}
        row[f"recall_{share * 100:g}pct"] = recall
        row[f"recall_{share * 100:g}pct_per_class"] = per
    print(
        f"{name} oracle (true depth, the export's agreement rule): recall at 1 % {100 * row['recall_1pct']:.1f}",
        flush=True,
    )
    return row


def dense_cells(trainer: Trainer) -> torch.Tensor:
    """Flat ``[R^3]`` bools: the cells of the trainer's occupancy grid whose remembered step opacity is above the
    grid's threshold (capped at the mean, as its updates set it), whether or not the grid marches them."""
    grid = trainer.grid
    threshold = torch.clamp(grid.occs[grid.seen].mean(), max=trainer.cfg.occ_threshold)
    return (grid.occs > threshold) & grid.seen


def depth_error_row(name: str, args: Args) -> dict:
    """Per true class: opacity and relative depth error of the field's median depth (see ``--depth-errors``)."""
    from ovseg3d.data.cameras import image_rays
    from ovseg3d.export import depth_map
    from ovseg3d.render.occupancy import OccupancyGrid
    from ovseg3d.synth.raycast import cast_rays
    from ovseg3d.synth.scene import scene_from_json

    scene_dir, run = args.work / "scenes" / name, args.work / "runs" / name
    scene = scene_from_json(json.loads((scene_dir / "scene.json").read_text()))
    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras.scaled(1 / 2)
    cls_all, err_all, opacity_all, marched_all, hidden_all = [], [], [], [], []
    grid = trainer.grid if isinstance(trainer.grid, OccupancyGrid) else None  # proposals: no grid to ask
    dense = dense_cells(trainer) if grid is not None else None
    for v in list(trainer.scene.train_ids)[::4]:
        depth, _, opacity = depth_map(trainer, cams, v, 0.0, 0.0)
        origins, dirs = (t.double().numpy() for t in image_rays(cams, v))
        norm = np.linalg.norm(dirs, axis=1)
        t, prim = cast_rays(scene, origins, dirs / norm[:, None])
        hit = np.isfinite(t)
        cls_all.append(np.array([scene.primitives[i].cls for i in prim[hit]], dtype=object))
        err_all.append(np.abs(depth.double().numpy()[hit] * norm[hit] - t[hit]) / t[hit])
        opacity_all.append(opacity.numpy()[hit])
        if grid is not None:  # the cell at the true surface: marched, or dense but not marched (the record's doing)
            surface = torch.from_numpy(origins[hit] + t[hit, None] * dirs[hit] / norm[hit, None]).float()
            flat, inside = grid._cell_coords(surface)
            marched = inside & grid.binaries.view(-1)[flat]
            marched_all.append(marched.numpy())
            hidden_all.append((inside & dense[flat] & ~marched).numpy())
    cls, err, opacity = np.concatenate(cls_all), np.concatenate(err_all), np.concatenate(opacity_all)
    if grid is not None:
        marched, hidden = np.concatenate(marched_all), np.concatenate(hidden_all)
    rows = {}
    for c in np.unique(cls):
        m = cls == c
        rows[str(c)] = {
            "pixels": int(m.sum()),
            "opaque": round(float((opacity[m] >= 0.9).mean()), 3),
            "median_rel_error": round(float(np.nanmedian(err[m])), 4),
            "within_0.5pct": round(float((err[m] <= 0.005).mean()), 3),
            "within_2pct": round(float((err[m] <= 0.02).mean()), 3),
            "grid_marched_at_surface": None if grid is None else round(float(marched[m].mean()), 3),
            "grid_emptied_by_visibility": None if grid is None else round(float(hidden[m].mean()), 3),
        }
    print(f"{name} field depth per class (opaque / median relative error / within 2 % / grid marched at the true")
    print("  surface / emptied there by the visibility record though the field has density):")
    for c, r in rows.items():
        cells = [r["grid_marched_at_surface"], r["grid_emptied_by_visibility"]]
        print(
            f"  {c:<12} {r['opaque']:.2f} / {r['median_rel_error']:.3f} / {r['within_2pct']:.2f} / "
            + " / ".join("-" if x is None else f"{x:.2f}" for x in cells)
        )
    return rows


def box_oracle_row(name: str, args: Args) -> dict:
    """mAP of ``detect`` on the visible true surface of ``name`` (fused on the export's voxel grid, true labels)."""
    scene_dir, run = args.work / "scenes" / name, args.work / "runs" / name
    scene_json = json.loads((scene_dir / "scene.json").read_text())
    trainer = load_trainer(run, "cpu")
    cams = trainer.scene.cameras.scaled(1 / args.truth_stride)
    truth, truth_cls = visible_truth(scene_json, cams, list(trainer.scene.train_ids))
    voxel = ExportOptions().spacing * trainer.diag
    _, first = np.unique(np.floor(truth / voxel).astype(np.int64), axis=0, return_index=True)
    xyz, names = truth[first], truth_cls[first]
    classes = sorted(set(names.tolist()))
    label = np.array([classes.index(c) for c in names], np.int32)
    n = len(xyz)
    cloud = LabelledCloud(
        xyz=xyz.astype(np.float32),
        rgb=np.zeros((n, 3), np.uint8),
        views=np.full(n, 2, np.int32),
        label=label,
        confidence=np.ones(n, np.float32),
        probs=np.eye(len(classes), dtype=np.float16)[label],
        relevancy={},
        feature=None,
        classes=classes,
        voxel_size=voxel,
    )
    boxes = cloud_boxes(name, args, cloud, "box_oracle")
    print(f"{name} box oracle (true surface and labels): mAP@0.25 / 0.5 {boxes.get('map25')} / {boxes.get('map50')}")
    return {"points": n, "map25": boxes.get("map25"), "map50": boxes.get("map50")}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}" if v <= 1.0 else f"{v:.1f}"


def print_table(rows: dict) -> None:
    head = (
        f"{'member':<22} {'PSNR held/train':>16} {'mIoU':>5} {'points':>7} {'P/R/F @1%':>17} "
        f"{'R @0.5%':>7} {'grav max':>8} {'mAP25/50':>11}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<22} failed: {r['error']}")
            continue
        c1, c05 = r["completeness"]["tau_1pct"], r["completeness"]["tau_0.5pct"]
        prf = f"{_pct(c1['precision'])}/{_pct(c1['recall'])}/{_pct(c1['fscore'])}"
        print(
            f"{name:<22} {r['psnr_heldout']:>7.2f}/{r['psnr_train'] or float('nan'):<8.2f} "
            f"{_pct(r['miou']):>5} {r['points']:>7} {prf:>17} {_pct(c05['recall']):>7} "
            f"{r['gravity']['worst_deg']:>7.2f}° {_pct(r['map25'])}/{_pct(r['map50'])}"
        )
        weak = {c: v["recall"] for c, v in c1["per_class"].items() if v["recall"] < 0.9}
        if weak:
            print(f"{'':<22} recall < 90 % at 1 %: " + ", ".join(f"{c} {100 * v:.0f}" for c, v in weak.items()))


def main(args: Args) -> dict:
    accel.configure_cpu_allocator()
    training_settings(args)  # a bad --set fails here, before any member
    rows: dict = {}
    if args.out.exists():
        rows = json.loads(args.out.read_text()).get("members", {})
    for name, synth in members(args).items():
        try:
            if name not in rows or "error" in rows[name]:
                rows[name] = measure(name, synth, args)
            elif args.regravity:
                regravity(name, rows[name], args)
            if args.oracle:
                rows[name]["oracle"] = oracle_row(name, args)
            if args.depth_errors:
                rows[name]["depth_errors"] = depth_error_row(name, args)
            if args.box_oracle:
                rows[name]["box_oracle"] = box_oracle_row(name, args)
            if args.spreads:
                rows[name]["spreads"] = rows[name].get("spreads", {}) | spread_rows(name, args)
        except Exception as exc:  # noqa: BLE001 - one failed member is a row, not the end of the benchmark
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": str(args), "members": rows}, indent=2, default=str) + "\n")
    print_table(rows)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
