"""``ovseg3d detect``: a run folder or a point cloud file in, ``detections.json`` out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ovseg3d.data.loader import camera_up
from ovseg3d.detect.head import DetectOptions, DetectResult, detect, usable_cloud, write_detections
from ovseg3d.detect.metrics import viewpoint
from ovseg3d.errors import MissingFileError, UsageError
from ovseg3d.export import LabelledCloud, load_export, read_ply


@dataclass
class Source:
    """What detection reads: the cloud, and for a run its text encoder, teacher config and cameras."""

    cloud: LabelledCloud
    run: Path | None = None
    text: object | None = None
    teachers: object | None = None
    c2w: np.ndarray | None = None  # [N, 3, 4] OpenGL camera-to-world of the run's views
    seconds: dict[str, float] = field(default_factory=dict)  # what loading took: "cloud", "CLIP"


def load_source(path: Path, device: torch.device, log=print) -> Source:  # noqa: ANN001
    """A run folder (its ``export/points.npz``), an export folder, or a ``.ply`` / ``.npz`` file; its cloud
    without points with NaN or infinite coordinates (:func:`~ovseg3d.detect.head.usable_cloud`). An export's
    ``points.ply`` and ``points.npz`` give the same cloud but for the features, which only the ``.npz`` has."""
    if not path.exists():
        raise MissingFileError(f"{path}: no such run folder or point cloud file")
    if path.is_file():
        if path.suffix.lower() == ".ply":
            return Source(usable_cloud(read_ply(path), str(path), log))
        if path.suffix.lower() == ".npz":
            return Source(usable_cloud(load_export(path), str(path), log))
        raise UsageError(f"{path}: not a point cloud (.ply or ovseg3d's points.npz) nor a run folder")
    if (path / "points.npz").exists():
        return Source(usable_cloud(load_export(path), str(path / "points.npz"), log))
    from ovseg3d.data.loader import read_cameras
    from ovseg3d.run import check_run, load_run_config
    from ovseg3d.teachers.extract import text_encoder

    start = time.perf_counter()
    check_run(path)
    npz = path / "export" / "points.npz"
    if not npz.exists():
        raise MissingFileError(f"{npz}: the run has no exported cloud yet (run: ovseg3d export {path} --features)")
    cloud = usable_cloud(load_export(npz), str(npz), log)
    cfg = load_run_config(path)
    c2w = read_cameras(cfg.scene).c2w.numpy()
    seconds = {"cloud": time.perf_counter() - start}
    text = None
    if cloud.feature is not None and cfg.teachers.kind != "none":
        start = time.perf_counter()
        text = text_encoder(cfg.teachers, device)
        seconds["CLIP"] = time.perf_counter() - start
    elif cloud.feature is None:
        log("the export has no features (ovseg3d export --features): classes come from the labels alone")
    return Source(cloud, path, text, cfg.teachers, c2w, seconds)


def clip_image_encoder(src: Source, clip_model: str, device: torch.device, log=print):  # noqa: ANN001
    """The CLIP image encoder of the image cues: ``clip_model`` (a hub name or a local folder), else the run's
    CLIP teacher; ``None`` (and a line saying why) when there is none."""
    from ovseg3d.teachers.clip import build_clip
    from ovseg3d.teachers.config import TeacherConfig

    if clip_model:
        return build_clip(TeacherConfig(kind="clip", clip_model=clip_model), device)
    if src.teachers is not None and getattr(src.teachers, "kind", "") == "clip":
        if src.text is not None and hasattr(src.text, "encode_crops"):
            return src.text  # the run's CLIP, loaded once for the text side already
        return build_clip(src.teachers, device)  # type: ignore[arg-type]
    log(
        "depth-map and render classifiers off: no CLIP image encoder (the run's teacher is simulated); "
        "--clip-model NAME|PATH"
    )
    return None


def render_classifier(src: Source, encoder, up: np.ndarray | None, device: torch.device):  # noqa: ANN001
    """CLIP on rgb renders of each instance from the run's radiance field, the cameras circling ``up``
    (``None`` without a run)."""
    if src.run is None or up is None:
        return None
    from ovseg3d.detect.rgbviews import RenderClassifier
    from ovseg3d.train import load_trainer

    return RenderClassifier(encoder, load_trainer(src.run, str(device)), torch.from_numpy(up).float())


def opencv_c2w(c2w: np.ndarray) -> np.ndarray:
    """``[3, 4]`` OpenGL camera-to-world -> ``[4, 4]`` OpenCV (x right, y down, z forward)."""
    out = np.eye(4)
    out[:3, :4] = c2w
    out[:3, 1:3] *= -1
    return out


FEATURE_LABEL_TEMPERATURE = 0.05
"""Temperature of ``softmax(cos(feature, text) / T)`` labelling a cloud from its features (the distillation's RDA
field temperature, which its features were trained at)."""


def label_from_features(cloud: LabelledCloud, classes: list[str], text, device: torch.device) -> LabelledCloud:  # noqa: ANN001
    """``cloud`` (without classes, with CLIP features) labelled with ``classes`` by its features against their text
    embeddings: probabilities, the most probable class and its probability per point."""
    import dataclasses

    from ovseg3d.data.loader import parse_classes
    from ovseg3d.losses import class_probabilities

    names = parse_classes(classes)
    emb = text.encode_text(names).float().to(device)
    feats = torch.from_numpy(cloud.feature.astype(np.float32)).to(device)
    probs = torch.cat([class_probabilities(f, emb, FEATURE_LABEL_TEMPERATURE) for f in feats.split(1 << 15)])
    confidence, label = probs.max(-1)
    return dataclasses.replace(
        cloud,
        classes=names,
        label=label.cpu().numpy().astype(np.int32),
        confidence=confidence.cpu().numpy().astype(np.float32),
        probs=probs.cpu().numpy().astype(np.float16),
    )


def describe_seconds(seconds: dict[str, float]) -> str:
    """One line of where a detection's seconds went: loading (the cloud, CLIP, the field), the gravity, the
    instances, and the boxes with the image cues' share of them (renders and CLIP per instance)."""
    loads = {k.removeprefix("load "): v for k, v in seconds.items() if k.startswith("load ")}
    cues = {k: v for k, v in seconds.items() if k.endswith(" cue")}
    parts = []
    if loads:
        inner = ", ".join(f"{k} {v:.1f}" for k, v in loads.items())
        parts.append(f"loading {sum(loads.values()):.1f} ({inner})")
    parts += [f"{k} {seconds[k]:.1f}" for k in ("gravity", "instances") if k in seconds]
    if "boxes" in seconds:
        inner = ", ".join(f"{k} {v:.1f}" for k, v in cues.items())
        parts.append(f"boxes {seconds['boxes']:.1f}" + (f" (of which {inner})" if inner else ""))
    return f"detect's seconds: {', '.join(parts)}; total {seconds.get('total', 0.0):.1f}"


def run_detect(
    path: Path,
    opts: DetectOptions,
    clip_model: str = "",
    view: int | None = None,
    output: Path | None = None,
    device: torch.device | None = None,
    log=print,  # noqa: ANN001
) -> tuple[DetectResult, Path]:
    """Detect in ``path`` and write ``detections.json`` (next to the run, or to ``output``: a file, or a folder
    to write it in), whole or not at all. ``view``: also give each box's azimuth, elevation and in-plane angle
    seen from that training view (ImageNet3D)."""
    device = device or torch.device("cpu")
    started = time.perf_counter()
    src = load_source(path, device, log)
    loading = dict(src.seconds)
    hint = camera_up(src.c2w) if src.c2w is not None else None
    depth = render = None
    if opts.depth_classifier or opts.render_classifier:
        start = time.perf_counter()
        encoder = clip_image_encoder(src, clip_model, device, log)
        loading["CLIP"] = loading.get("CLIP", 0.0) + time.perf_counter() - start
        if encoder is not None:
            from ovseg3d.detect.depthmaps import DepthMapClassifier

            depth = DepthMapClassifier(encoder) if opts.depth_classifier else None
            start = time.perf_counter()
            render = render_classifier(src, encoder, hint, device) if opts.render_classifier else None
            if render is not None:
                loading["field"] = time.perf_counter() - start
    level = src.c2w[:, :, 0] if src.c2w is not None else None
    cloud = src.cloud
    if opts.classes and not cloud.classes and cloud.feature is not None and src.text is not None:
        cloud = label_from_features(cloud, opts.classes, src.text, device)
        log(
            f"the cloud had no classes: its {len(cloud)} points labelled {', '.join(cloud.classes)} from their CLIP features"
        )
    result = detect(cloud, opts, src.text, depth, hint, log, render, level=level)
    result.seconds = {**{f"load {k}": v for k, v in loading.items()}, **result.seconds}
    result.seconds["total"] = time.perf_counter() - started
    log(describe_seconds(result.seconds))
    extra: dict[int, dict[str, float]] = {}
    if view is not None:
        if src.c2w is None or not 0 <= view < len(src.c2w):
            raise UsageError(f"--view {view}: needs a run folder with a view of that index")
        cam = opencv_c2w(src.c2w[view])
        for i, d in enumerate(result.detections):
            a, e, t, dist = viewpoint(d.rotation, d.center, cam)
            extra[i] = {"view": view, "azimuth": a, "elevation": e, "theta": t, "distance": dist}
    if output is None:
        output = (src.run if src.run is not None else (path if path.is_dir() else path.parent)) / "detections.json"
    elif output.is_dir():
        output = output / "detections.json"
    write_detections(output, result, str(path.resolve()), opts, extra)
    return result, output
