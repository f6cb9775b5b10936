"""Boxes and what a run's outputs keep of a scene with true boxes (``objects.json``). Folds
``scripts/bench_detect.py`` and ``scripts/bench_outputs.py``.

The run is the scene's folder when that is a trained run (``run.json``; its export read as it is), else the scene
trained here with the simulated teacher and exported with features and no time limit, as ``ovseg3d run`` does
(:func:`ovseg3d.bench.export.trained_run`; a run exported without features by another benchmark is exported again). ``detect`` then runs once per variant (:data:`DETECTS`: the full head,
and without the size prior, the depth-map classifier or the render classifier; ``--set teachers.clip_model=CLIP``
gives the two classifiers an image encoder, else, with the simulated teacher, both are off in every variant),
writing its boxes to the work folder. Figures:

- ``map25``, ``map50``: mAP@0.25 / @0.5 against ``objects.json`` (VoteNet protocol, as ``ovseg3d eval``);
  ``pose_acc_pi6``, ``pose_median_deg`` over the objects with a front; ``boxes``, ``seconds``; ``depth_classifier``,
  ``render_classifier``: 1 where a box took that cue;
- with the variant ``full`` also: ``detect_500k_seconds`` (median of three ``detect`` calls on the cloud grown to
  500,000 points by jittered copies, and each stage's seconds); ``floor_labelled``, the share of the cloud labelled
  floor, and ``floor_geometric``, within tau (1 % of the extent of the true boxes and the cameras) of the true floor;
  ``height_CLASS``, the share of 20 slices along up of an object's true box (grown by tau) that hold a point (a cloud
  that keeps only a box's top keeps little height); ``gravity_max_deg`` (and per frame ``gravity_deg_I``,
  ``gravity_failed``): the up ``detect`` finds from the cloud alone (no cameras, no hint), in the scene's frame and
  :data:`FRAMES` random ones, against the true up turned alike.

    ovseg3d bench run detect                                    # demo, orbit, forward2
    ovseg3d bench run detect --scenes RUN --variants full --out results/outputs_forward.json
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ovseg3d.bench.export import case_folder, trained_run
from ovseg3d.bench.harness import SCENES, Benchmark, Case, Scene

SCENES.setdefault(  # for the harness's registry (a second forward room with two objects that have a front)
    "forward2", Scene("forward2", synth={"seed": 7, "classes": ["mug", "chair", "book", "soda can", "tennis ball"]})
)
DETECTS: dict[str, dict[str, bool]] = {
    "full": {},
    "no_size_prior": {"size_prior": False},
    "no_depth_classifier": {"depth_classifier": False},
    "no_render_classifier": {"render_classifier": False},
}
"""Variant -> ``DetectOptions`` fields."""
FRAMES, SPEED_POINTS, SLICES, TAU = 8, 500_000, 20, 0.01


def quiet(_line: str) -> None:
    pass


def random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` rotations drawn uniformly (QR of a Gaussian matrix, sign-fixed)."""
    rng, rots = np.random.default_rng(seed), []
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        rots.append(q if np.linalg.det(q) > 0 else -q)
    return rots


def inside_box(xyz: np.ndarray, obj: dict, grow: float) -> np.ndarray:
    """Points inside ``obj``'s true box (z up) grown by ``grow`` on every side."""
    from ovseg3d.detect.metrics import footprint

    centre, size = np.asarray(obj["center"], float), np.asarray(obj["size"], float)
    poly = footprint(centre, size, float(obj["yaw"]))  # [4, 2] corners in the xy plane, counter-clockwise
    keep = np.abs(xyz[:, 2] - centre[2]) <= size[2] / 2 + grow
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        edge = (b - a) / np.linalg.norm(b - a)
        keep &= (xyz[:, :2] - a) @ np.array([edge[1], -edge[0]]) <= grow  # outward normal
    return keep


def height_kept(xyz: np.ndarray, obj: dict, grow: float) -> float:
    """Share of the object's :data:`SLICES` height slices that hold a cloud point inside its grown box."""
    inside = inside_box(xyz, obj, grow)
    bottom = float(obj["center"][2]) - float(obj["size"][2]) / 2
    z = np.clip((xyz[inside, 2] - bottom) / float(obj["size"][2]), 0.0, 1.0 - 1e-9)
    return len(np.unique((z * SLICES).astype(int))) / SLICES


def gravity_errors(cloud: Any, frames: int) -> list[float]:
    """Degrees between the up ``detect`` finds from the cloud alone and the true one (+z), in the scene's frame and
    ``frames`` random ones (``nan`` where detect fails)."""
    from ovseg3d.detect.head import DetectOptions, detect

    errors, opts = [], DetectOptions(depth_classifier=False, render_classifier=False)
    for rot in [np.eye(3), *random_rotations(frames)]:
        turned = dataclasses.replace(cloud, xyz=(cloud.xyz.astype(np.float64) @ rot.T).astype(np.float32))
        try:
            found = detect(turned, opts, None, None, None, quiet).up
        except Exception as exc:  # noqa: BLE001 - a failure in one frame is a result of this benchmark
            print(f"  detect failed in a turned frame: {exc}")
            errors.append(float("nan"))
            continue
        errors.append(float(np.degrees(np.arccos(np.clip(found @ rot[:, 2], -1.0, 1.0)))))
    return errors


def outputs(run: Path, scene: Path, objects: list[dict], cloud: Any) -> dict[str, float]:
    """Floor share, height kept and gravity of a run's cloud (see the module's docstring)."""
    from ovseg3d.data.loader import read_cameras

    xyz = cloud.xyz.astype(np.float64)
    corners = np.array([np.asarray(o["center"]) + np.asarray(o["size"]) * s for o in objects for s in (-0.5, 0.5)])
    centres = read_cameras(scene).c2w.numpy()[:, :3, 3]
    tau = TAU * float(np.linalg.norm(np.ptp(np.concatenate([corners, centres]), axis=0)))
    floor_z = min(float(o["center"][2]) - float(o["size"][2]) / 2 for o in objects)
    out = {"tau": tau, "floor_geometric": float(np.mean(np.abs(xyz[:, 2] - floor_z) <= tau))}
    if "floor" in cloud.classes:
        out["floor_labelled"] = float(np.mean(cloud.label == list(cloud.classes).index("floor")))
    out |= {f"height_{o['class']}": height_kept(xyz, o, tau) for o in objects}
    gravity = gravity_errors(cloud, FRAMES)
    out |= {f"gravity_deg_{i}": e for i, e in enumerate(gravity)}
    out["gravity_failed"] = float(np.isnan(gravity).sum())
    if not np.all(np.isnan(gravity)):
        out["gravity_max_deg"] = float(np.nanmax(gravity))
    return out


def speed(run: Path, device: Any) -> dict[str, float]:
    """Median seconds of three ``detect`` calls on the run's cloud grown to :data:`SPEED_POINTS` by jittered
    copies, and each stage's."""
    from ovseg3d.data.loader import camera_up
    from ovseg3d.detect.head import DetectOptions, detect
    from ovseg3d.detect.source import load_source

    src = load_source(run, device, log=quiet)
    copies = max(1, -(-SPEED_POINTS // len(src.cloud)))
    big = src.cloud.subset(np.tile(np.arange(len(src.cloud)), copies)[:SPEED_POINTS])
    jitter = np.random.default_rng(0).normal(0, src.cloud.voxel_size / 4, big.xyz.shape)
    big.xyz, big.voxel_size = big.xyz + jitter.astype(np.float32), src.cloud.voxel_size / copies**0.5
    times = []
    for _ in range(3):
        start = time.perf_counter()
        found = detect(big, DetectOptions(), src.text, None, camera_up(src.c2w), log=quiet)
        times.append(time.perf_counter() - start)
    stages = {f"detect_500k_{k}_seconds": round(v, 2) for k, v in found.seconds.items()}
    return {"detect_500k_seconds": round(statistics.median(times), 2), **stages}


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.detect.head import DetectOptions
    from ovseg3d.detect.results import detection_metrics
    from ovseg3d.detect.source import run_detect
    from ovseg3d.export import ExportOptions, extract_cloud, load_export, write_export
    from ovseg3d.run import load_run_config
    from ovseg3d.train import resolve_device

    export = ExportOptions(features=True, max_seconds=0.0)
    run = trained_run(case, "eval", export)
    if run != case.folder and load_export(run / "export").feature is None:  # exported by another benchmark
        write_export(extract_cloud(run, export, case.device), run / "export", run, export)
    scene = Path(load_run_config(run).scene)
    meta = json.loads((scene / "objects.json").read_text())
    if not np.allclose(meta.get("up", [0, 0, 1]), [0, 0, 1]):
        raise RuntimeError(f"{scene}/objects.json: boxes with up {meta['up']}; this benchmark reads z-up boxes")
    device = resolve_device(case.device)
    out = case_folder(case, "detect") / "detections.json"
    start = time.perf_counter()
    opts = dataclasses.replace(DetectOptions(), **DETECTS[case.variant])
    clip = case.overrides.get("teachers", {}).get("clip_model", "")  # only when given: the preset names one
    found, _ = run_detect(run, opts, clip, output=out, device=device, log=quiet)
    figures = {"seconds": round(time.perf_counter() - start, 2), "boxes": float(len(found.detections))}
    metrics = {"map25": 0.0, "map50": 0.0, **detection_metrics(out, meta["objects"])}  # {} without boxes
    for key, value in metrics.items():
        if isinstance(value, dict):  # ap25, ap50 per class
            figures |= {f"{key}_{c}": float(v) for c, v in value.items() if v is not None}
        elif isinstance(value, int | float):
            figures[key] = float(value)
    for cue in ("depth", "render"):
        figures[f"{cue}_classifier"] = float(any(cue in d.cues for d in found.detections))
    eval_json = run / "eval.json"
    if eval_json.exists() and "miou" in (scores := json.loads(eval_json.read_text())):
        figures["miou"] = scores["miou"]
    if case.variant == "full":
        figures |= outputs(run, scene, meta["objects"], load_export(run / "export" / "points.npz"))
        figures |= speed(run, device)
    return figures


BENCHMARK = Benchmark(
    name="detect",
    doc="boxes: mAP@0.25 / @0.5, pose Acc@pi/6 per detect variant; floor, heights, gravity and detect's pace (full)",
    measure=measure,
    figures=("map25", "map50", "boxes", "seconds"),
    scenes=("demo", "orbit", "forward2"),
    variants=dict.fromkeys(DETECTS, {}),
    teacher={"kind": "synthetic"},
)
