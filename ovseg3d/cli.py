"""The ``ovseg3d`` command: one subcommand per stage (``ovseg3d COMMAND --help`` for its options)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from ovseg3d import __version__
from ovseg3d.detect.head import DetectOptions
from ovseg3d.errors import UsageError
from ovseg3d.export import ExportOptions
from ovseg3d.teachers.config import TeacherConfig


@dataclass
class EvalArgs:
    """Render the held-out views of a run, print PSNR / SSIM, and write RUN/eval.json."""

    run: Path = Path("runs/demo")
    """Run folder written by ovseg3d train."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    renders: bool = True
    """Also write ground truth | render | depth panels to RUN/renders/."""
    max_samples_per_ray: int = 0
    """Render with at most about this many samples per ray (every k-th marching step, k steps long): faster,
    slightly lower scores (instant-ngp's fox at 360x640: 64 -> 1.7x faster, -0.08 dB; 32 -> 2.7x, -0.23 dB).
    0 = every step, the exact rendering."""


@dataclass
class ExtractArgs:
    """Run the 2D teachers over every view of a scene and cache their features (float16, memory-mapped, with a
    sidecar saying how they were made). A matching cache is reused, an interrupted one continued, a stale
    one rebuilt. Previews go to CACHE/preview/."""

    scene: Path = Path("scenes/demo")
    """Scene folder: 3D-OVS / LLFF (poses_bounds.npy), nerfstudio / instant-ngp (transforms.json) or COLMAP
    (images/ + sparse/0/)."""
    teachers: Annotated[TeacherConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=TeacherConfig)
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    downscale: int = 0
    """Load the scene downscaled by this factor (what the synthetic teacher sees; real teachers read the
    original files, see --teacher-long-side); 0 = from --max-long-side. Use the same values as for train."""
    max_long_side: int = 640
    """With --downscale 0: the longest image side in pixels (640: the cpu preset's; 0 = full size)."""
    colmap_model: Path | None = None
    """A COLMAP sparse model folder (default: SCENE/sparse/0 or SCENE/sparse)."""
    force: bool = False
    """Rebuild the cache even if it matches."""


@dataclass
class RenderArgs:
    """Render views of a run: rgb, depth, segmentation with a legend and, for each --query, LERF relevancy
    over the rgb; PNGs in RUN/renders/."""

    run: Path = Path("runs/demo")
    """Run folder written by ovseg3d train."""
    views: list[int] = dataclasses.field(default_factory=list)
    """View indices to render (default: the held-out views)."""
    query: list[str] = dataclasses.field(default_factory=list)
    """Free-text queries: one relevancy image each (needs a run trained with --teacher)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""


@dataclass
class ExportArgs:
    """Extract a labelled point cloud from a run with a semantic field: points on the field's surfaces (fused
    median depth of the training views), each with its colour, class, confidence, a relevancy per --query and
    optionally its CLIP feature. Writes RUN/export/points.ply (binary, for Open3D / MeshLab / CloudCompare),
    points.npz (everything) and points.json (classes, colours, queries)."""

    run: Path = Path("runs/demo")
    """Run folder written by ovseg3d train (with --teacher synthetic|clip)."""
    options: Annotated[ExportOptions, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=ExportOptions)
    output: Path | None = None
    """Folder for the files (default RUN/export)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""


@dataclass
class ViewArgs:
    """Open a run in the browser (viser): its labelled point cloud coloured by rgb, class or the relevancy of a
    free-text query typed in the panel, a class legend with toggles, the training cameras, and renders of the
    field from the browser's camera. Reads RUN/export/points.npz when it has features (ovseg3d export
    --features), else extracts the cloud first."""

    run: Path = Path("runs/demo")
    """Run folder written by ovseg3d train (with --teacher synthetic|clip)."""
    port: int = 8080
    """Port of the web page (http://localhost:PORT)."""
    host: str = "0.0.0.0"
    """Interface to listen on (127.0.0.1: this machine only)."""
    max_points: int = 200_000
    """Show at most this many points (a random subset)."""
    point_size: float = 0.0
    """Point size in world units (0: the export's voxel size)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""


@dataclass
class DetectArgs:
    """Find objects in a labelled point cloud: oriented upright 3D boxes with class names, scores and poses
    (gravity from flat surfaces, one instance per connected piece of each label, boxes fitted upright, classes
    from the distilled labels and features and, with a CLIP model, from depth maps of each instance and rgb
    renders of it from the run's field; the size prior filters and re-scores, at the scene's scale in metres per
    unit: --scale, or estimated from the objects' sizes). Writes detections.json, which ovseg3d view draws and
    ovseg3d eval scores against a scene's objects.json."""

    source: Path = Path("runs/demo")
    """A run folder (reads RUN/export/points.npz; writes RUN/detections.json), an export folder, or a .ply /
    points.npz file (any PLY with x y z; labels and colours used when present)."""
    options: Annotated[DetectOptions, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=DetectOptions)
    clip_model: str = ""
    """CLIP for the depth-map and render classifiers: a hub name or a local folder (default: the run's CLIP
    teacher; none for simulated teachers)."""
    view: int | None = None
    """Also give each box's azimuth, elevation and in-plane angle seen from this view of the run (ImageNet3D)."""
    output: Path | None = None
    """Where to write detections.json (default: the run folder, or next to the cloud)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""


def _positional(args: list[str], flag: str) -> list[str]:
    """Let the first bare argument stand for ``flag`` (``ovseg3d train SCENE`` = ``--scene SCENE``)."""
    if args and not args[0].startswith("-"):
        return [flag, args[0], *args[1:]]
    return args


def cmd_synth(args: list[str]) -> int:
    from ovseg3d.data.synth import SynthConfig, synthesize

    out = None
    if args and not args[0].startswith("-"):
        out, args = Path(args[0]), args[1:]
    cfg = tyro.cli(
        SynthConfig,
        args=args,
        prog="ovseg3d synth OUT",
        description="Render a procedural scene (textured objects of named classes in a room, or outdoors on open "
        "ground under a sky with buildings: --outdoor) with full "
        "ground truth to the folder OUT, in 3D-OVS/LLFF, nerfstudio or COLMAP (binary, sparse/0/) format, "
        "through a pinhole, OpenCV or fisheye lens.",
    )
    if out is None:
        print("ovseg3d synth: error: give the output folder: ovseg3d synth OUT [options]", file=sys.stderr)
        return 2
    path = synthesize(cfg, out)
    print(f"wrote {path}")
    return 0


def cmd_train(args: list[str]) -> int:
    from ovseg3d.config import TrainConfig, resolve_base
    from ovseg3d.run import load_run_config
    from ovseg3d.train import train

    args = _positional(args, "--scene")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="cpu")
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--output", type=Path, default=None)
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(args)
    if known.resume and known.output is not None and (known.output / "config.toml").exists():
        base = dataclasses.replace(load_run_config(known.output), resume=True)
    else:
        base = resolve_base(known.preset, known.config)
    cfg = tyro.cli(TrainConfig, args=args, default=base, prog="ovseg3d train SCENE")
    train(cfg)
    return 0


def cmd_extract(args: list[str]) -> int:
    from ovseg3d.data.loader import load_scene
    from ovseg3d.teachers.extract import describe, ensure_features, resolve_kind, teacher_scores
    from ovseg3d.train import resolve_device

    a = tyro.cli(ExtractArgs, args=_positional(args, "--scene"), prog="ovseg3d extract SCENE")
    scene = load_scene(a.scene, a.downscale, max_long_side=a.max_long_side, colmap_model=a.colmap_model)
    if a.teachers.kind == "auto":
        a.teachers = dataclasses.replace(a.teachers, kind=resolve_kind(scene, print))
    features = ensure_features(scene, a.teachers, resolve_device(a.device), force=a.force)
    info = describe(features)
    print(
        f"{info['views']} views -> {info['path']}: CLIP {info['clip_shape']} (h, w, scales, dim), "
        f"DINO {info['dino_shape']}, {info['mib_per_view']} MiB per view, {info['seconds']} s to extract"
    )
    scores = teacher_scores(features, scene)
    if scores is not None:
        print(
            f"2D teacher alone on {scores['n_views']} annotated views: mIoU {scores['miou']:.1f}, "
            f"accuracy {scores['accuracy']:.1f}"
        )
    return 0


def cmd_render(args: list[str]) -> int:
    from ovseg3d.renders import render_run

    a = tyro.cli(RenderArgs, args=_positional(args, "--run"), prog="ovseg3d render RUN")
    paths = render_run(a.run, a.views, a.query, a.device)
    print(f"wrote {len(paths)} images to {a.run / 'renders'}")
    return 0


def cmd_eval(args: list[str]) -> int:
    from ovseg3d.evaluate import evaluate_run, format_table

    a = tyro.cli(EvalArgs, args=_positional(args, "--run"), prog="ovseg3d eval RUN")
    if a.max_samples_per_ray < 0:
        raise UsageError(f"--max-samples-per-ray {a.max_samples_per_ray}: must be 0 (every step) or more")
    metrics = evaluate_run(a.run, a.device, a.renders, a.max_samples_per_ray)
    print(format_table(metrics))
    print(f"wrote {a.run / 'eval.json'}")
    return 0


def cmd_export(args: list[str]) -> int:
    from ovseg3d.export import extract_cloud, write_export

    a = tyro.cli(ExportArgs, args=_positional(args, "--run"), prog="ovseg3d export RUN")
    cloud = extract_cloud(a.run, a.options, a.device)
    paths = write_export(cloud, a.output or a.run / "export", a.run, a.options)
    counts = ", ".join(
        f"{c} {int((cloud.label == i).sum())}" for i, c in enumerate(cloud.classes) if (cloud.label == i).any()
    )
    print(f"{len(cloud)} points ({counts}) -> {', '.join(str(p) for p in paths)}")
    return 0


def cmd_detect(args: list[str]) -> int:
    from ovseg3d.detect.source import run_detect
    from ovseg3d.train import resolve_device

    a = tyro.cli(DetectArgs, args=_positional(args, "--source"), prog="ovseg3d detect RUN|CLOUD")
    result, path = run_detect(a.source, a.options, a.clip_model, a.view, a.output, resolve_device(a.device))
    for d in result.detections:
        pose = "symmetric" if d.symmetric else f"yaw {d.yaw * 57.29578:+.0f} deg"
        size = " x ".join(f"{v:.2f}" for v in d.size)
        print(f"  {d.name:<16} {d.score:.2f}  centre {np.round(d.center, 2).tolist()}  size {size}  {pose}")
    print(f"wrote {path}")
    return 0


def cmd_view(args: list[str]) -> int:
    from ovseg3d.viewer import Viewer, load_queries

    a = tyro.cli(ViewArgs, args=_positional(args, "--run"), prog="ovseg3d view RUN")
    queries, trainer, distiller = load_queries(a.run, a.max_points, a.device)
    size = a.point_size or max(queries.cloud.voxel_size, 1e-3)
    viewer = Viewer(queries, trainer, distiller, a.host, a.port, size, a.run)
    print(
        f"ovseg3d view: {len(queries.cloud)} points of {a.run} at http://localhost:{viewer.server.get_port()} (Ctrl-C stops)"
    )
    try:
        viewer.server.sleep_forever()
    except KeyboardInterrupt:
        viewer.stop()
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "synth": (cmd_synth, "render a procedural scene with ground truth (3D-OVS/LLFF, transforms.json or COLMAP)"),
    "extract": (cmd_extract, "run the 2D teachers (CLIP, DINO, or simulated) over a scene into a feature cache"),
    "train": (cmd_train, "fit a hash-grid radiance field to a scene folder"),
    "render": (cmd_render, "write rgb / depth / segmentation / query-relevancy PNGs of a run's views"),
    "eval": (cmd_eval, "score a run's held-out views (PSNR, SSIM) into RUN/eval.json"),
    "export": (cmd_export, "write a run's labelled point cloud (PLY, NPZ, JSON)"),
    "detect": (cmd_detect, "find oriented 3D boxes with class names and poses in a labelled point cloud"),
    "view": (cmd_view, "browse a run's labelled point cloud and ask it free-text queries (viser)"),
}


def _usage() -> str:
    lines = [
        f"ovseg3d {__version__}: open-vocabulary 3D scene understanding from posed photos",
        "",
        "usage: ovseg3d COMMAND [options]   (ovseg3d COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "quickstart: ovseg3d train scenes/demo --output runs/demo && ovseg3d eval runs/demo"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ovseg3d.config import ConfigError
    from ovseg3d.data.scene import SceneError
    from ovseg3d.run import RunError
    from ovseg3d.teachers.config import TeacherError

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ovseg3d: error: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][0](rest)
    except (SceneError, RunError, ConfigError, TeacherError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"ovseg3d {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ovseg3d {name}: interrupted (the last checkpoint is kept; --resume continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
