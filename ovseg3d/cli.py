"""The ``ovseg3d`` command: one subcommand per stage (``ovseg3d COMMAND --help`` for its options)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from ovseg3d import __version__
from ovseg3d.detect.head import DetectOptions
from ovseg3d.errors import UsageError, check_writable
from ovseg3d.export import ExportOptions
from ovseg3d.teachers.config import TeacherConfig


@dataclass
class EvalArgs:
    """Render the held-out views of a run, print PSNR / SSIM, and write RUN/eval.json."""

    run: Path
    """Run folder written by ovseg3d train."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    force: bool = False
    """Use the run even if its scene changed since training (images or poses that differ from the fingerprint
    in RUN/run.json)."""
    renders: bool = True
    """Also write ground truth | render | depth panels to RUN/renders/."""
    max_samples_per_ray: int = 0
    """Render with at most about this many samples per ray (every k-th marching step, k steps long): faster,
    slightly lower scores (instant-ngp's fox at 360x640: 64 -> 1.7x faster, -0.08 dB; 32 -> 2.7x, -0.23 dB).
    0 = every step, the exact rendering."""
    train_views: int = 3
    """Also render and score this many training views, spread through the sequence, and print their PSNR beside
    the held-out one: a field that fits its training views and not new ones does not generalise (a gap over
    5 dB is a warning line naming the likely cause). 0 = held-out views only."""
    every: int = 1
    """Score every N-th held-out view only (1 = all of them): a quick look at a long sequence. The figures are
    then of a subset; eval.json says so (n_views, views_every)."""


@dataclass
class ExtractArgs:
    """Run the 2D teachers over every view of a scene and cache their features (float16, memory-mapped, with a
    sidecar saying how they were made). A matching cache is reused, an interrupted one continued, a stale
    one rebuilt. Previews go to CACHE/preview/."""

    scene: Path
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
    classes: tuple[str, ...] = ()
    """Class names for a scene without segmentations/classes.txt (e.g. "chair, table, plant"): the teachers'
    relevancy is computed for them."""
    force: bool = False
    """Rebuild the cache even if it matches."""


@dataclass
class RenderArgs:
    """Render views of a run: rgb, depth, segmentation with a legend and, for each --query, LERF relevancy
    over the rgb; PNGs in RUN/renders/."""

    run: Path
    """Run folder written by ovseg3d train."""
    views: list[int] = dataclasses.field(default_factory=list)
    """View indices to render (default: the held-out views)."""
    query: list[str] = dataclasses.field(default_factory=list)
    """Free-text queries: one relevancy image each (needs a run trained with --teacher)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    force: bool = False
    """Use the run even if its scene changed since training (images or poses that differ from the fingerprint
    in RUN/run.json)."""


@dataclass
class ExportArgs:
    """Extract a labelled point cloud from a run: points on the field's surfaces (fused median depth of the
    training views), each with its colour, class, confidence, a relevancy per --query and optionally its CLIP
    feature (a run trained with --teacher none: positions and colours only). Writes RUN/export/points.ply
    (binary, for Open3D / MeshLab / CloudCompare), points.npz (everything) and points.json (classes, colours,
    queries)."""

    run: Path
    """Run folder written by ovseg3d train (with --teacher none the cloud has positions and colours only)."""
    options: Annotated[ExportOptions, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=ExportOptions)
    classes: tuple[str, ...] = ()
    """Class names to label the points with, for a run trained without any (no segmentations/classes.txt, no
    train --classes), read from its CLIP feature field: e.g. "chair, table, plant". A run with classes keeps its own."""
    output: Path | None = None
    """Folder for the files (default RUN/export)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    force: bool = False
    """Use the run even if its scene changed since training (images or poses that differ from the fingerprint
    in RUN/run.json)."""


@dataclass
class ViewArgs:
    """Open a run in the browser (viser): its labelled point cloud coloured by rgb, class or the relevancy of a
    free-text query typed in the panel, a class legend with toggles, the training cameras, and renders of the
    field from the browser's camera. Shows RUN/export/points.npz at once; an export without CLIP features (ovseg3d
    export without --features) answers queries after 'compute features' in the panel; a run with no export yet
    has its cloud extracted first, with features (ovseg3d run exports with them)."""

    run: Path
    """Run folder written by ovseg3d train (with --teacher synthetic|clip)."""
    port: int = 8080
    """Port of the web page (http://localhost:PORT), 1-65535; 0: any free port."""
    host: str = "127.0.0.1"
    """Interface to listen on: 127.0.0.1 is this machine only; 0.0.0.0 shares the scene (and renders of it)
    with anyone who can reach this machine."""
    max_points: int = 200_000
    """Show at most this many points (a random subset)."""
    point_size: float = 0.0
    """Point size in world units (0: the typical distance between neighbouring points of the cloud)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    force: bool = False
    """Use the run even if its scene changed since training (images or poses that differ from the fingerprint
    in RUN/run.json)."""


@dataclass
class DetectArgs:
    """Find objects in a labelled point cloud: oriented upright 3D boxes with class names, scores and poses
    (gravity from flat surfaces, one instance per connected piece of each label, boxes fitted upright, classes
    from the distilled labels and features and, with a CLIP model, from depth maps of each instance and rgb
    renders of it from the run's field; the size prior filters and re-scores, at the scene's scale in metres per
    unit: --scale, or estimated from the objects' sizes). Writes detections.json, which ovseg3d view draws and
    ovseg3d eval scores against a scene's objects.json."""

    source: Path
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
    force: bool = False
    """Use the run even if its scene changed since training (images or poses that differ from the fingerprint
    in RUN/run.json)."""


@dataclass
class BatchArgs:
    """Run the pipeline (teachers, geometry, distill, export, detect, eval) over many scenes, each into its own
    run folder RUNS/<scene name>: in parallel as Ray tasks (pip install -e ".[batch]"), else one after another.
    A scene that fails is reported and the others go on; the same command again skips the stages that finished
    and continues an interrupted scene from its checkpoint. Writes RUNS/summary.json and RUNS/summary.csv."""

    output: Path
    """Folder of the run folders (RUNS/<scene name>) and of summary.json / summary.csv."""
    scenes: Annotated[list[str], tyro.conf.Positional, tyro.conf.arg(metavar="SCENES")] = dataclasses.field(
        default_factory=list
    )
    """Scene folders, globs ('scenes/*': quoted, or expanded by the shell) or text files listing scene folders
    one per line (# comments)."""
    preset: str = "cpu"
    """Training preset from configs/ (tiny, cpu, gpu)."""
    config: Path | None = None
    """A TOML config file applied over the preset (any ovseg3d train setting)."""
    teacher: Literal["preset", "auto", "none", "clip", "synthetic"] = "preset"
    """The 2D teachers: 'auto' (synthetic for a generated scene with labels, else clip), 'clip', 'synthetic',
    'none' (no semantic field: the distill, export and detect stages have nothing to work on); 'preset': as the
    preset / --config says (auto)."""
    from_stage: Literal["teachers", "geometry", "distill", "export", "detect", "eval"] = "teachers"
    """The first stage to run (stages before it must have run: a later stage needs their files)."""
    to_stage: Literal["teachers", "geometry", "distill", "export", "detect", "eval"] = "eval"
    """The last stage to run."""
    steps: int = 0
    """Geometry steps per scene (0: the preset's)."""
    max_minutes: float = -1.0
    """Geometry time limit per scene in minutes (0: none; -1: the preset's, 3 for cpu)."""
    distill_steps: int = 0
    """Distillation steps per scene (0: the preset's)."""
    distill_minutes: float = -1.0
    """Distillation time limit per scene in minutes (0: none; -1: the preset's, 4.5 for cpu)."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda' (with Ray, a scene sees a GPU only with --gpus-per-scene above 0)."""
    address: str | None = None
    """Run on this Ray cluster ('auto': the one started on this machine with ray start; or HOST:PORT) instead
    of a Ray started for this batch over this machine's cores and GPUs. Its workers need ovseg3d and the scene
    and RUNS folders at the same paths."""
    cpus_per_scene: float = 1.0
    """CPU cores per scene (Ray runs as many scenes at a time as the cores allow; torch uses this many
    threads in each)."""
    gpus_per_scene: float = 0.0
    """GPUs per scene (0.5: two scenes share one GPU)."""
    no_ray: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Run the scenes one after another in this process, without Ray."""
    export: Annotated[ExportOptions, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=ExportOptions)
    detect: Annotated[DetectOptions, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=DetectOptions)


def _one_paragraph_field_docs() -> None:
    """Let ``--help`` reflow every option's text. tyro takes a field's docstring from docstring_parser, which keeps
    the source's indentation on each line after the first; tyro then keeps a line break before every line that
    does not start with a letter, so every docstring longer than a line printed with its source's line breaks.
    Here each docstring's lines are joined (blank lines still part paragraphs). Nothing is done where tyro's
    internals differ from the version this was written for (1.0)."""
    from tyro import _docstrings

    original = getattr(_docstrings, "parse_docstring_from_object", None)
    if original is None or getattr(original, "joined", False):
        return

    def joined(obj: object) -> dict[str, str]:
        docs = original(obj)
        return {
            name: "\n\n".join(" ".join(part.split()) for part in re.split(r"\n\s*\n", text))
            for name, text in docs.items()
        }

    joined.joined = True  # type: ignore[attr-defined]
    _docstrings.parse_docstring_from_object = joined


def _parse(cls, args: list[str], prog: str, **kwargs):  # noqa: ANN001, ANN202 - tyro's own signature
    """``tyro.cli`` with a parse error (an unknown option, a value of the wrong type) as one line (UsageError)
    instead of tyro's box; --help prints as tyro prints it."""
    _one_paragraph_field_docs()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = tyro.cli(cls, args=args, prog=prog, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            sys.stderr.write(err.getvalue())
            raise
        text = [line.strip(" │╭╮╰╯─┃━┏┓┗┛") for line in err.getvalue().splitlines()]
        words = [t for t in text if t and not t.startswith("For full helptext")]
        if "Argument helptext:" in words:  # the option's help after the error: --help shows it
            words = words[: words.index("Argument helptext:")]
        words = words[1:] if len(words) > 1 else words  # the box's title ("Unrecognized options") repeats
        raise UsageError(
            "; ".join(words or ["bad options"]) + f" (ovseg3d {prog.split()[1]} --help lists them)"
        ) from None
    sys.stderr.write(err.getvalue())  # tyro's warnings, if any
    return parsed


def _positional(args: list[str], flag: str) -> list[str]:
    """Let the first bare argument stand for ``flag`` (``ovseg3d train SCENE`` = ``--scene SCENE``)."""
    if args and not args[0].startswith("-"):
        return [flag, args[0], *args[1:]]
    return args


def _given(args: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in args for f in flags)


def _require(args: list[str], flag: str, what: str, usage: str) -> None:
    """One line asking for the folder a command works on (there is no default run or scene to fall back to)."""
    if not _given(args, flag, "-h", "--help"):
        raise UsageError(f"give the {what}: {usage}")


def _at_least(option: str, value: float, low: float, note: str = "") -> None:
    """Reject ``--option value`` below ``low`` before any work, in one line naming the option."""
    if value < low:
        raise UsageError(f"--{option} {value}: must be at least {low}{note}")


def _within(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise UsageError(f"--{option} {value}: must be between {low} and {high}")


def cmd_synth(args: list[str]) -> int:
    from ovseg3d.synth import SynthConfig, synthesize

    out = None
    if args and not args[0].startswith("-"):
        out, args = Path(args[0]), args[1:]
    cfg = _parse(
        SynthConfig,
        args=args,
        prog="ovseg3d synth OUT",
        description="Render a procedural scene (textured objects of named classes in a room, or outdoors on open "
        "ground under a sky with buildings: --outdoor) with full "
        "ground truth to the folder OUT, in 3D-OVS/LLFF, nerfstudio or COLMAP (binary, sparse/0/) format, "
        "through a pinhole, OpenCV or fisheye lens.",
    )
    if out is None:
        raise UsageError("give the output folder: ovseg3d synth OUT [options]")
    _at_least("width", cfg.width, 1)
    _at_least("height", cfg.height, 1)
    _at_least("n-objects", cfg.n_objects, 0)
    _at_least("n-annotated", cfg.n_annotated, 0)
    _at_least("workers", cfg.workers, 0)
    check_writable(out, "the output folder", "give another OUT", beside=True)  # written beside OUT, moved in
    path = synthesize(cfg, out)
    print(f"wrote {path}")
    return 0


def cmd_prepare(args: list[str]) -> int:
    from ovseg3d.prepare import PrepareConfig, prepare

    usage = "ovseg3d prepare PHOTOS_OR_VIDEO OUT [options]"
    given = []
    while args and not args[0].startswith("-") and len(given) < 2:
        given, args = [*given, Path(args[0])], args[1:]
    cfg = _parse(
        PrepareConfig,
        args=args,
        prog=usage,
        description="Make a scene of a folder of photos or of a video: frames or photos upright at a working size, "
        "SIFT features, matching, mapping (incremental or global) and bundle adjustment with pycolmap (COLMAP on the "
        "CPU, no separate install), the model turned so that the cameras' up is +z. Writes OUT/images/ and OUT/sparse/0/ "
        "(what ovseg3d train reads), images_2/4/8, database.db and prepare.json (what was registered, the "
        "reprojection error, the seconds of each step). OUT appears only when whole; run the same command again "
        "to resume an interrupted one.",
    )
    if len(given) < 2:
        raise UsageError(f"give the photos (a folder) or a video, and the scene folder to write: {usage}")
    _at_least("frames", cfg.frames, 3)
    _at_least("max-long-side", cfg.max_long_side, 0, " (0: full size)")
    _at_least("max-features", cfg.max_features, 64)
    if cfg.sift_first_octave is not None:
        _at_least("sift-first-octave", cfg.sift_first_octave, -1)
    _at_least("overlap", cfg.overlap, 1)
    _at_least("loop-pairs", cfg.loop_pairs, 0)
    if cfg.mapping_threads == 0 or cfg.mapping_threads < -1:
        raise UsageError(f"--mapping-threads {cfg.mapping_threads}: give 1 or more, or -1 for all")
    if any(k < 2 for k in cfg.downscales):
        raise UsageError(f"--downscales must be factors of 2 or more, got {list(cfg.downscales)}")
    check_writable(given[1], "the scene folder", "give another OUT", beside=True)
    prepare(given[0], given[1], cfg)
    return 0


def cmd_train(args: list[str]) -> int:
    from ovseg3d.config import TrainConfig, chosen_keys, resolve_base
    from ovseg3d.pipeline import train
    from ovseg3d.run import load_run_config

    args = _positional(args, "--scene")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="cpu")
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--output", type=Path, default=None)
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(args)
    resumed = known.resume and known.output is not None and (known.output / "config.toml").exists()
    if resumed:
        base = dataclasses.replace(load_run_config(known.output), resume=True)
    else:
        base = resolve_base(known.preset, known.config)
    cfg = _parse(TrainConfig, args=args, default=base, prog="ovseg3d train SCENE --output RUN")
    chosen = chosen_keys(args, known.config)  # by flag or in the --config file
    if not resumed:
        cfg = dataclasses.replace(cfg, chosen=chosen)
    # the scene and the run folder are asked for (no scenes/demo -> runs/demo by default); a --config file that
    # names them (a copy of RUN/config.toml) or --resume of a run folder count as giving them
    if not (resumed or "scene" in chosen):
        raise UsageError("give the scene folder: ovseg3d train SCENE --output RUN")
    if "output" not in chosen:
        raise UsageError(f"give the run folder to write: ovseg3d train {cfg.scene} --output RUN")
    check_writable(cfg.output, "the run folder", "give a writable --output")
    train(cfg)
    return 0


def cmd_extract(args: list[str]) -> int:
    from ovseg3d.data.loader import load_scene
    from ovseg3d.teachers.extract import describe, ensure_features, resolve_kind, teacher_scores
    from ovseg3d.train import resolve_device

    args = _positional(args, "--scene")
    _require(args, "--scene", "scene folder", "ovseg3d extract SCENE [options]")
    a = _parse(ExtractArgs, args=args, prog="ovseg3d extract SCENE")
    _at_least("downscale", a.downscale, 0, " (0: from --max-long-side)")
    _at_least("max-long-side", a.max_long_side, 0, " (0: full size)")
    cache = a.teachers.cache_dir or a.scene / "features" / ("" if a.teachers.kind == "auto" else a.teachers.kind)
    if a.scene.is_dir() and (a.force or not Path(cache).exists()):  # a complete cache may be read-only
        check_writable(Path(cache), "the feature cache folder", "write it elsewhere with --cache-dir DIR")
    scene = load_scene(
        a.scene, a.downscale, max_long_side=a.max_long_side, colmap_model=a.colmap_model, classes=a.classes
    )
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

    args = _positional(args, "--run")
    _require(args, "--run", "run folder", "ovseg3d render RUN [options]")
    a = _parse(RenderArgs, args=args, prog="ovseg3d render RUN")
    for v in a.views:
        _at_least("views", v, 0)
    if a.run.is_dir():
        check_writable(a.run / "renders", "the renders folder", "copy the run to a writable folder")
    from ovseg3d.run import allow_changed_scene

    with allow_changed_scene(a.force):
        paths = render_run(a.run, a.views, a.query, a.device)
    print(f"wrote {len(paths)} images to {a.run / 'renders'}")
    return 0


def cmd_eval(args: list[str]) -> int:
    from ovseg3d.evaluate import format_table
    from ovseg3d.pipeline import evaluate

    args = _positional(args, "--run")
    _require(args, "--run", "run folder", "ovseg3d eval RUN [options]")
    a = _parse(EvalArgs, args=args, prog="ovseg3d eval RUN")
    _at_least("max-samples-per-ray", a.max_samples_per_ray, 0, " (0: every step)")
    _at_least("train-views", a.train_views, 0, " (0: held-out views only)")
    _at_least("every", a.every, 1, " (1: every held-out view)")
    if a.run.is_dir():  # writes RUN/eval.json, and RUN/renders/ unless --no-renders
        hint = "copy the run to a writable folder"
        check_writable(a.run, "the run folder", hint + " (eval writes RUN/eval.json)")
        if a.renders:
            check_writable(a.run / "renders", "the renders folder", hint + ", or --no-renders")
    from ovseg3d.run import allow_changed_scene

    with allow_changed_scene(a.force):
        metrics = evaluate(a.run, a.device, a.renders, a.max_samples_per_ray, a.train_views, a.every)
    print(format_table(metrics))
    print(f"wrote {a.run / 'eval.json'}")
    return 0


def _check_export_options(o: ExportOptions) -> None:
    if o.spacing <= 0:
        raise UsageError(f"--spacing {o.spacing}: must be positive (a share of the scene box's diagonal)")
    _at_least("min-views", o.min_views, 1)
    _within("min-opacity", o.min_opacity, 0.0, 1.0)
    _at_least("max-spread", o.max_spread, 0.0, " (0: keep all)")
    _at_least("min-agreeing", o.min_agreeing, 0)
    _at_least("depth-tolerance", o.depth_tolerance, 0.0)
    _at_least("relax-below", o.relax_below, 0, " (0: never relax the thresholds)")
    _at_least("view-stride", o.view_stride, 1)
    _at_least("pixel-stride", o.pixel_stride, 0, " (0: chosen from the fusion's voxel size)")
    _at_least("max-seconds", o.max_seconds, 0.0, " (0: no limit)")
    _at_least("chunk", o.chunk, 1)


def cmd_export(args: list[str]) -> int:
    from ovseg3d.export import extract_cloud, write_export

    args = _positional(args, "--run")
    _require(args, "--run", "run folder", "ovseg3d export RUN [options]")
    a = _parse(ExportArgs, args=args, prog="ovseg3d export RUN")
    _check_export_options(a.options)
    out = a.output or a.run / "export"
    if a.run.is_dir():
        check_writable(out, "the export folder", "write it elsewhere with --output DIR", beside=True)
    from ovseg3d.run import allow_changed_scene

    with allow_changed_scene(a.force):
        cloud = extract_cloud(a.run, a.options, a.device, classes=a.classes)
    paths = write_export(cloud, out, a.run, a.options)
    counts = ", ".join(
        f"{c} {int((cloud.label == i).sum())}" for i, c in enumerate(cloud.classes) if (cloud.label == i).any()
    )
    print(f"{len(cloud)} points{f' ({counts})' if counts else ''} -> {', '.join(str(p) for p in paths)}")
    return 0


def _check_detect_options(o: DetectOptions) -> None:
    _at_least("eps", o.eps, 0.0, " (0: 3 x the point spacing)")
    _at_least("min-points", o.min_points, 1)
    _at_least("min-score", o.min_score, 0.0)
    _at_least("scale", o.scale, 0.0, " (metres per scene unit; 0: estimated)")
    _within("nms-iou", o.nms_iou, 0.0, 1.0)
    _at_least("front-threshold", o.front_threshold, 0.0)
    if o.up is not None and not any(o.up):
        raise UsageError("--up 0 0 0: give a direction, e.g. --up 0 0 1")


def cmd_detect(args: list[str]) -> int:
    from ovseg3d.detect.source import run_detect
    from ovseg3d.train import resolve_device

    args = _positional(args, "--source")
    _require(args, "--source", "run folder or point cloud", "ovseg3d detect RUN|CLOUD [options]")
    a = _parse(DetectArgs, args=args, prog="ovseg3d detect RUN|CLOUD")
    _check_detect_options(a.options)
    if a.view is not None:
        _at_least("view", a.view, 0)
    if a.output is not None:  # a file, or an existing folder to write detections.json into
        folder = a.output if a.output.is_dir() else a.output.absolute().parent
        check_writable(folder, "the folder of --output", "give a writable --output")
    elif a.source.exists():  # detections.json goes into the run / export folder, or next to the cloud file
        folder = a.source if a.source.is_dir() else a.source.parent
        check_writable(folder, "the folder", "write detections.json elsewhere with --output FILE")
    from ovseg3d.run import allow_changed_scene, check_scene

    if a.source.is_dir() and (a.source / "run.json").is_file():  # a run folder: made from the same scene?
        check_scene(a.source, a.force)
    with allow_changed_scene(a.force):
        result, path = run_detect(a.source, a.options, a.clip_model, a.view, a.output, resolve_device(a.device))
    for d in result.detections:
        pose = "symmetric" if d.symmetric else f"yaw {d.yaw * 57.29578:+.0f} deg"
        size = " x ".join(f"{v:.2f}" for v in d.size)
        print(f"  {d.name:<16} {d.score:.2f}  centre {np.round(d.center, 2).tolist()}  size {size}  {pose}")
    print(f"wrote {path}")
    return 0


def cmd_view(args: list[str]) -> int:
    from ovseg3d.viewer import Viewer, check_listen, is_loopback, load_queries, point_size

    args = _positional(args, "--run")
    _require(args, "--run", "run folder", "ovseg3d view RUN [options]")
    a = _parse(ViewArgs, args=args, prog="ovseg3d view RUN")
    _at_least("max-points", a.max_points, 1)
    _at_least("point-size", a.point_size, 0.0, " (0: from the cloud's point spacing)")
    check_listen(a.host, a.port)  # before loading the run (which may extract its cloud for minutes)
    from ovseg3d.run import allow_changed_scene

    with allow_changed_scene(a.force):
        queries, trainer, distiller = load_queries(a.run, a.max_points, a.device)
    size = a.point_size or point_size(queries.cloud)
    viewer = Viewer(queries, trainer, distiller, a.host, a.port, size, a.run, a.max_points)
    port = viewer.server.get_port()
    url_host = "localhost" if is_loopback(a.host) or a.host in ("0.0.0.0", "::", "") else a.host
    print(f"ovseg3d view: {len(queries.cloud)} points of {a.run} at http://{url_host}:{port} (Ctrl-C stops)")
    if not is_loopback(a.host):
        print(
            f"ovseg3d view: listening on {a.host or 'every interface'}:{port}: anyone who can reach this machine "
            "can see the scene and render it (--host 127.0.0.1 keeps it to this machine)",
            file=sys.stderr,
        )
    try:
        viewer.server.sleep_forever()
    except KeyboardInterrupt:
        viewer.stop()
    return 0


def cmd_batch(args: list[str]) -> int:
    from tqdm import tqdm

    from ovseg3d.batch import find_scenes, format_summary, run_batch, write_summary
    from ovseg3d.config import chosen_keys, resolve_base
    from ovseg3d.pipeline import stage_range

    usage = "ovseg3d batch SCENES... --output RUNS [options]"
    _require(args, "--output", "folder for the runs", usage)
    a = _parse(BatchArgs, args=args, prog="ovseg3d batch --output RUNS")
    if not a.scenes:
        raise UsageError(f"give the scenes (folders, globs or list files): {usage}")
    stages = stage_range(a.from_stage, a.to_stage)
    _at_least("steps", a.steps, 0, " (0: the preset's)")
    _at_least("distill-steps", a.distill_steps, 0, " (0: the preset's)")
    _at_least("max-minutes", a.max_minutes, -1, " (0: no limit; -1: the preset's)")
    _at_least("distill-minutes", a.distill_minutes, -1, " (0: no limit; -1: the preset's)")
    if a.cpus_per_scene <= 0:
        raise UsageError(f"--cpus-per-scene {a.cpus_per_scene}: must be above 0")
    _at_least("gpus-per-scene", a.gpus_per_scene, 0)
    if a.no_ray and a.address is not None:
        raise UsageError("--address needs Ray: drop --no-ray")
    _check_export_options(a.export)
    _check_detect_options(a.detect)
    cfg = dataclasses.replace(resolve_base(a.preset, a.config), chosen=chosen_keys([], a.config))
    overrides: dict[str, object] = {"device": a.device}
    if a.steps:
        overrides["steps"] = a.steps
    if a.distill_steps:
        overrides["distill_steps"] = a.distill_steps
    if a.max_minutes >= 0:
        overrides["max_minutes"] = a.max_minutes
    if a.distill_minutes >= 0:
        overrides["distill_minutes"] = a.distill_minutes
    if a.teacher != "preset":
        overrides["teachers"] = dataclasses.replace(cfg.teachers, kind=a.teacher)
    cfg = dataclasses.replace(cfg, **overrides)
    scenes = find_scenes(a.scenes)
    check_writable(a.output, "the runs folder", "give a writable --output")
    results = run_batch(
        scenes,
        a.output,
        stages,
        cfg,
        a.export,
        a.detect,
        address=a.address,
        cpus_per_scene=a.cpus_per_scene,
        gpus_per_scene=a.gpus_per_scene,
        use_ray=not a.no_ray,
        log=tqdm.write,
    )
    paths = write_summary(results, a.output)
    print(format_summary(results))
    print(f"wrote {' and '.join(str(p) for p in paths)}")
    return 0 if all(r.status == "done" for r in results) else 1


RUN_USAGE = 'ovseg3d run INPUT --output RUN [--classes "chair, table"] [--view] [train options]'
RUN_HELP = f"""usage: {RUN_USAGE}

From photos or a video to a text-queryable 3D scene, every stage in order: prepare (INPUT is a folder of photos or
a video: its scene goes to RUN/scene/; a scene folder is used as it is), the 2D teachers, the radiance field, the
distillation, the export of the labelled cloud (with its CLIP features, so the viewer answers free-text queries at
once) and, with classes, the 3D boxes. Each stage resumes and skips finished work: the same command continues an
interrupted run. Ends with where the outputs are and the line that opens the viewer.

  INPUT             a scene folder (poses_bounds.npy, transforms.json or a COLMAP model), a folder of photos, or a
                    video
  --output RUN      the run folder
  --classes NAMES   the class names to label and detect, e.g. "chair, table, plant" (a scene's own
                    segmentations/classes.txt is used where it has one). Without any, the run answers free-text
                    queries in the viewer only (LERF's way) and has no boxes
  --view            open the viewer at the end (ovseg3d view RUN)
  --frames N        a video: keep N frames, the sharpest of each of N equal stretches (default: the preset's
                    [prepare] table; the cpu preset's 60 keep the whole run of a phone video within about 15
                    minutes on 2 cores; without a table, 150)
  --preset NAME     tiny, cpu (default) or gpu; every option of `ovseg3d train` passes through (ovseg3d train --help)
"""


def _scene_folder(path: Path) -> bool:
    from ovseg3d.data.loader import detect_format

    try:
        detect_format(path)
    except ValueError:  # SceneError: not a scene folder
        return False
    return True


def run_prepare_config(preset: str, frames: int | None, source: Path, log=print):  # noqa: ANN001, ANN201
    """``ovseg3d run``'s :class:`~ovseg3d.prepare.PrepareConfig`: the preset's ``[prepare]`` table (the ``cpu``
    preset's keeps a whole run from a video within a laptop's budget), ``--frames`` over it; one line says what
    was taken."""
    from ovseg3d.config import preset_prepare
    from ovseg3d.prepare import PrepareConfig

    table = preset_prepare(preset)
    known = {f.name for f in dataclasses.fields(PrepareConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(f"preset {preset}'s [prepare] table: unknown key(s) {', '.join(unknown)}")
    if frames is not None:
        if frames < 3:
            raise UsageError(f"--frames {frames}: at least 3 frames make a scene")
        table = {**table, "frames": frames}
    cfg = PrepareConfig(**table)
    if table:
        what = ", ".join(f"{k} = {v}" for k, v in table.items() if k != "frames" or source.is_file())
        log(f"ovseg3d run: prepare with {what} (preset {preset}'s [prepare]{', --frames' if frames else ''})")
    return cfg


def cmd_run(args: list[str]) -> int:
    from tqdm import tqdm

    from ovseg3d.config import TrainConfig, chosen_keys, resolve_base
    from ovseg3d.pipeline import run_scene

    if not args or args[0] in ("-h", "--help"):
        print(RUN_HELP)
        return 0
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--output", type=Path, default=None)
    pre.add_argument("--view", action="store_true")
    pre.add_argument("--preset", default="cpu")
    pre.add_argument("--config", type=Path, default=None)
    pre.add_argument("--frames", type=int, default=None)
    known, rest = pre.parse_known_args(args)
    if not rest or rest[0].startswith("-"):
        raise UsageError(f"give the photos, video or scene folder: {RUN_USAGE}")
    source, rest = Path(rest[0]), rest[1:]
    if known.output is None:
        raise UsageError(f"give the run folder to write: {RUN_USAGE}")
    if not source.exists():
        raise UsageError(f"{source}: not found (give a scene folder, a folder of photos or a video)")
    run: Path = known.output
    check_writable(run, "the run folder", "give another --output")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    if _scene_folder(source):
        scene = source
    else:
        from ovseg3d.prepare import prepare

        scene = run / "scene"
        if _scene_folder(scene):
            tqdm.write(f"ovseg3d run: {scene} is prepared already (delete it to prepare {source} again)")
        else:
            prepare(source, scene, run_prepare_config(known.preset, known.frames, source))
            seconds["prepare"] = round(time.perf_counter() - started, 3)
    base = resolve_base(known.preset, known.config)
    cfg = _parse(TrainConfig, args=["--scene", str(scene), "--output", str(run), *rest], default=base, prog=RUN_USAGE)
    cfg = dataclasses.replace(cfg, chosen=chosen_keys(rest, known.config))
    stages = ["teachers", "geometry", "distill", "export", "detect"]
    from ovseg3d.data.loader import scene_classes

    if cfg.teachers.kind == "none":
        stages = ["geometry"]
        tqdm.write("ovseg3d run: --teacher none: the radiance field alone (no semantic field, cloud or boxes)")
    elif not scene_classes(scene, cfg.classes):
        stages.remove("detect")
        tqdm.write(
            "ovseg3d run: no classes (--classes or the scene's segmentations/classes.txt): the run keeps its CLIP "
            "feature field and answers free-text queries in the viewer; no boxes"
        )
    result = run_scene(scene, run, stages, cfg, ExportOptions(features=True), DetectOptions(), log=tqdm.write)
    seconds.update(result.seconds)
    seconds["total"] = round(time.perf_counter() - started, 3)
    print("stage      seconds" + "".join(f"\n{k:<10} {v:>7.1f}" for k, v in seconds.items()))
    outputs = [str(p) for p in (run / "export" / "points.ply", run / "detections.json", run / "renders") if p.exists()]
    print(f"outputs in {run}: " + (", ".join(outputs) or "the field's checkpoints"))
    if (run / "export" / "points.npz").exists():
        print(f"next: ovseg3d view {run}    (ovseg3d eval {run}: the held-out views' PSNR)")
    else:
        print(f"next: ovseg3d eval {run}    (the held-out views' PSNR)")
    if known.view:
        return cmd_view([str(run)])
    return 0


def cmd_bench(args: list[str]) -> int:
    from ovseg3d.bench.cli import main as bench_main

    return bench_main(args)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "prepare": (
        cmd_prepare,
        "make a scene (COLMAP images/ + sparse/0/) of a folder of photos or a video, with pycolmap",
    ),
    "synth": (cmd_synth, "render a procedural scene with ground truth (3D-OVS/LLFF, transforms.json or COLMAP)"),
    "extract": (cmd_extract, "run the 2D teachers (CLIP, DINO, or simulated) over a scene into a feature cache"),
    "train": (cmd_train, "fit a hash-grid radiance field to a scene folder"),
    "render": (cmd_render, "write rgb / depth / segmentation / query-relevancy PNGs of a run's views"),
    "eval": (cmd_eval, "score a run's held-out views (PSNR, SSIM) into RUN/eval.json"),
    "export": (cmd_export, "write a run's labelled point cloud (PLY, NPZ, JSON)"),
    "detect": (cmd_detect, "find oriented 3D boxes with class names and poses in a labelled point cloud"),
    "view": (cmd_view, "browse a run's labelled point cloud and ask it free-text queries (viser)"),
    "batch": (cmd_batch, "run every stage over many scenes (in parallel with Ray), with a summary of them all"),
    "run": (cmd_run, "from photos, a video or a scene to a labelled cloud, boxes and the viewer, in one command"),
    "bench": (cmd_bench, "run a benchmark into results/, or make the README's and docs' tables from results/"),
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


# What each command leaves behind when Ctrl-C stops it (only train can be continued: --resume).
INTERRUPTED = {
    "prepare": "the work so far is kept in OUT.partial: the same command resumes it",
    "synth": "nothing was written (the partial scene was removed; OUT is as it was)",
    "extract": "the views extracted so far are kept in the cache: the same command continues from them",
    "train": "the last checkpoint is kept (the same command with --resume continues from it); a run that had "
    "saved none was removed",
    "render": "the images written so far are in RUN/renders",
    "eval": "RUN/eval.json was not updated (the renders written so far are in RUN/renders)",
    "export": "nothing was written (a previous export is kept whole)",
    "detect": "nothing was written",
    "view": "stopped",
    "batch": "each scene's finished stages and checkpoints are kept: the same command continues from them",
    "run": "each finished stage and the last checkpoint are kept: the same command continues from them",
    "bench": "the runs so far are kept in --work; no result file was written",
}
# What to do about an output folder that cannot be written, by command.
WRITE_HINTS = {
    "prepare": "give another OUT",
    "synth": "give another OUT",
    "extract": "write the cache elsewhere with --cache-dir DIR",
    "train": "give another --output",
    "render": "copy the run to a writable folder",
    "eval": "copy the run to a writable folder, or --no-renders",
    "export": "write elsewhere with --output DIR",
    "detect": "write elsewhere with --output FILE",
    "view": "",
    "batch": "give another --output",
    "run": "give another --output",
}
# How to use less memory, by command (all: --device cpu, where host memory is larger).
MEMORY_HINTS = {
    "prepare": "a smaller --max-long-side or --max-features",
    "synth": "a smaller --width / --height or --supersample",
    "extract": "a smaller --clip-batch or --max-long-side",
    "train": "fewer rays per step (--rays-per-step, --sem-rays), a smaller --eval-chunk or --max-long-side",
    "render": "fewer --views",
    "eval": "--max-samples-per-ray 64",
    "export": "a smaller --chunk, a larger --view-stride",
    "detect": "fewer --classes",
    "view": "a smaller --max-points",
    "batch": "fewer scenes at a time (a larger --cpus-per-scene)",
    "run": "a smaller --max-long-side or --rays-per-step",
}


def _first_line(text: str) -> str:
    lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
    return lines[0] if lines else ""


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain, or torch.save's ``[enforce fail at inline_container.cc]`` /
    ``PytorchStreamWriter failed writing file`` (how a full disk reaches it)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "inline_container.cc" in text or "PytorchStreamWriter failed writing" in text or "file write failed" in text
    )


def _os_error_line(exc: OSError, hint: str) -> str:
    """One line for a file-system error: the path, what went wrong, what to do."""
    path = str(exc.filename) if exc.filename is not None else ""
    if exc.filename2 is not None:
        path += f" -> {exc.filename2}"
    what = exc.strerror or _first_line(str(exc)) or type(exc).__name__
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return f"{path or 'a file'}: {why}: " + (f"{hint}, or make it writable" if hint else "check its permissions")
    if isinstance(exc, FileExistsError):
        return f"{path}: already exists; remove it" + (f" or {hint}" if hint else "")
    if isinstance(exc, IsADirectoryError):
        return f"{path}: is a folder where a file was expected"
    if isinstance(exc, NotADirectoryError):
        return f"{path}: a part of it is a file where a folder was expected"
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file or folder"
    return f"{path}: {what}" if path else f"{type(exc).__name__}: {what}"


def _explain(name: str, exc: Exception) -> tuple[str, int]:
    """The one line for an expected failure (exit 2), or the bug line (exit 1; the caller shows the
    traceback)."""
    if isinstance(exc, UsageError):
        return f"error: {exc}", 2
    hint = WRITE_HINTS.get(name, "")
    if _is_disk_full(exc):
        where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        return f"error: no space left on the device{where}: free some disk space" + (f", or {hint}" if hint else ""), 2
    if _is_out_of_memory(exc):
        more = MEMORY_HINTS.get(name, "")
        return f"error: out of memory ({_first_line(exc)[:160]}): try {more + ', or ' if more else ''}--device cpu", 2
    if isinstance(exc, OSError):
        return f"error: {_os_error_line(exc, hint)}", 2
    return (
        f"internal error: {type(exc).__name__}: {_first_line(exc)[:200]}. This is a bug in ovseg3d (or a library "
        f"under it): please report it with the traceback above and the version ({__version__})",
        1,
    )


def main(argv: list[str] | None = None) -> int:
    """``ovseg3d [--debug] COMMAND [options]``. A failure the user can fix (bad input or options, a file or
    folder that cannot be read or written, a full disk, out of memory) is one line and exit status 2; anything
    else is a bug: its traceback, one line saying so, and exit status 1. ``--debug`` (anywhere) or
    ``OVSEG3D_DEBUG=1`` shows the traceback of every failure."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("OVSEG3D_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    if "--debug" in argv:
        debug, argv = True, [a for a in argv if a != "--debug"]
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
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"ovseg3d {name}: interrupted: {INTERRUPTED[name]}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends here: one line, or a bug's traceback
        line, code = _explain(name, exc)
        if debug or code == 1:
            traceback.print_exc()
        print(f"ovseg3d {name}: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
