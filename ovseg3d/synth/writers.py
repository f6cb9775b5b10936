"""Writing a scene folder (:func:`synthesize`): images, labels, instances and 3D-OVS masks of every view, the
poses as LLFF ``poses_bounds.npy``, nerfstudio ``transforms.json`` or a COLMAP binary model, ``objects.json``
and ``scene.json``; rendered into a hidden sibling folder and moved into place when complete."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ovseg3d.data import colmap
from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE
from ovseg3d.data.llff import write_poses_bounds
from ovseg3d.data.nerfstudio import write_transforms_json
from ovseg3d.errors import UsageError
from ovseg3d.synth.cameras import SynthCameras, lens_coefficients, make_cameras
from ovseg3d.synth.config import SynthConfig, resolve_config
from ovseg3d.synth.layout import GROUND_HALF, build_scene
from ovseg3d.synth.raycast import SKY_HORIZON, SKY_ZENITH, SynthView, camera_rays, render_view
from ovseg3d.synth.scene import SynthScene

# the name in scene.json's "generator", by which synth recognises a folder it may write over: the module's name
# when the format was made, kept so that the scenes of earlier versions are recognised (and stay byte-identical)
GENERATOR = "ovseg3d.data.synth"
BOX_MARGIN = 0.025  # transforms.json scene box: the room grown by this share of its longest side on every face
COLMAP_MODELS = {LENS_PINHOLE: "PINHOLE", LENS_OPENCV: "OPENCV", LENS_FISHEYE: "OPENCV_FISHEYE"}
# SynthConfig fields added after version 1 of scene.json: left out of its "config" at their defaults, so that
# the files of an existing (pinhole, LLFF / transforms) scene stay byte-identical
_LATER_FIELDS = ("lens", "distortion", "n_points", "outdoor")


def _config_json(cfg: SynthConfig) -> dict:
    """``asdict(cfg)`` without the fields of :data:`_LATER_FIELDS` that hold their defaults, nor ``workers`` (how
    the scene was rendered, not what it is)."""
    out, default = asdict(cfg), SynthConfig()
    del out["workers"]
    for name in _LATER_FIELDS:
        if getattr(cfg, name) == getattr(default, name):
            del out[name]
    return out


def scene_to_json(cfg: SynthConfig, scene: SynthScene, cams: SynthCameras) -> dict:
    """The analytic description: config, room (outdoors the box holding the ground and buildings), light,
    classes, primitives, objects, cameras, and outdoors the sky."""
    out = {
        "generator": GENERATOR,
        "version": 1,
        "units": "metres",
        "up": [0.0, 0.0, 1.0],
        "config": _config_json(cfg),
        "room": {"min": scene.room_min.tolist(), "max": scene.room_max.tolist()},
        "light": {
            "direction": scene.light_dir.tolist(),
            "ambient": scene.ambient,
            "diffuse": scene.diffuse,
            "note": "directional light towards 'direction'; only objects cast shadows",
        },
        "classes": scene.classes,
        "primitives": [p.to_json() for p in scene.primitives],
        "objects": scene.objects,
        "cameras": cams.to_json(),
    }
    if scene.outdoor:  # a room's scene.json keeps its version 1 layout
        out["sky"] = {
            "zenith": list(SKY_ZENITH),
            "horizon": list(SKY_HORIZON),
            "note": "rays that hit nothing see the sky at infinity: the horizon colour at and below the horizon, "
            "the zenith colour straight up, blended by the square root of the sine of the elevation",
        }
    return out


_OUTPUTS = (
    "images",
    "labels",
    "instances",
    "segmentations",
    "poses_bounds.npy",
    "transforms.json",
    "sparse",
    "objects.json",
    "scene.json",
)


def _check_output(out: Path) -> None:
    """``out`` may be written: missing, empty, or a previous synth scene (whose files are replaced, others
    kept); refuse anything else, before anything is rendered."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        try:
            previous = json.loads((out / "scene.json").read_text()).get("generator")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != GENERATOR:
            raise UsageError(f"{out} is not empty and holds no synth scene (scene.json); refusing to write there")


def _partial_folder(out: Path) -> Path:
    """A fresh hidden sibling ``.NAME.tmp-PID`` of ``out`` to render into (the name :mod:`ovseg3d.atomic`
    uses, so that what a killed synth leaves there is tidied by the next one)."""
    from ovseg3d.atomic import recover_folder

    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    """Make the complete scene in ``tmp`` the scene in ``out``: one rename if ``out`` is missing; else the
    previous scene's files are replaced one by one (other files of ``out`` kept), ``scene.json`` last, so that
    ``out`` holds a ``scene.json`` (and is accepted by the next synth) at every moment."""
    if not out.exists():
        os.rename(tmp, out)
        return
    for name in _OUTPUTS:
        old, new = out / name, tmp / name
        if name == "scene.json":
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        if new.exists():
            os.rename(new, old)
    os.replace(tmp / "scene.json", out / "scene.json")


def annotated_views(n_views: int, n_annotated: int) -> list[int]:
    """Views that get 3D-OVS masks: evenly spread, never view 0 (when there are 2+ views)."""
    n = min(n_annotated, max(n_views - 1, 0))
    if n <= 0:
        return [0] if n_annotated > 0 and n_views == 1 else []
    return sorted({int(math.floor((k + 1) * n_views / (n + 1) + 0.5)) for k in range(n)})


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_view(out: Path, name: str, view: SynthView, classes: list[str], annotated: bool) -> None:
    """Image, label and instance maps, and (annotated views) one binary mask per visible class."""
    _save_png(out / "images" / f"{name}.png", np.round(view.rgb * 255.0).astype(np.uint8))
    _save_png(out / "labels" / f"{name}.png", view.label)
    inst_dtype = np.uint8 if view.instance.max() < 256 else np.uint16
    _save_png(out / "instances" / f"{name}.png", view.instance.astype(inst_dtype))
    if annotated:
        for c in np.unique(view.label[view.label != 255]):
            mask = np.where(view.label == c, 255, 0).astype(np.uint8)
            _save_png(out / "segmentations" / name / f"{classes[c]}.png", mask)


def point_views(n_views: int, k: int = 4) -> list[int]:
    """Up to ``k`` views evenly spread through the sequence: those whose surfaces seed ``points3D``."""
    return sorted({int(i) for i in np.linspace(0, n_views - 1, min(k, n_views)).round()})


def _surface_samples(
    cams: SynthCameras, i: int, view: SynthView, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random surface points ``[n, 3]`` seen by view ``i``'s pixel centres and their colours
    ``[n, 3]`` uint8 (the written image's)."""
    origins, dirs = camera_rays(cams, i, 1)
    dist = view.distance.reshape(-1)  # type: ignore[union-attr]
    hit = np.nonzero(np.isfinite(dist))[0]
    pick = np.sort(rng.choice(hit, size=min(n, len(hit)), replace=False))
    colors = np.round(view.rgb.reshape(-1, 3)[pick] * 255.0).astype(np.uint8)
    return origins[pick] + dist[pick, None] * dirs[pick], colors


def colmap_model(cams: SynthCameras, image_names: list[str], points: np.ndarray, colors: np.ndarray):
    """A :class:`.colmap.ColmapModel` of the cameras: one shared camera (PINHOLE, OPENCV or OPENCV_FISHEYE),
    one image per view with the world-to-camera pose ``x_cam = R x + t`` in OpenCV axes
    (``R = (R_gl diag(1, -1, -1))ᵀ``, ``t = -R c``), and the points (errors 0, empty tracks)."""
    model_name = COLMAP_MODELS[cams.lens]
    params = [cams.fx, cams.fy, cams.cx, cams.cy]
    if cams.lens != LENS_PINHOLE:
        params += np.asarray(cams.coeffs[:4], dtype=np.float64).tolist()
    camera = colmap.ColmapCamera(1, model_name, cams.width, cams.height, np.asarray(params, dtype=np.float64))
    images = {}
    for i, name in enumerate(image_names):
        w2c = (cams.c2w[i, :, :3] * np.array([1.0, -1.0, -1.0])).T
        tvec = -w2c @ cams.c2w[i, :, 3]
        images[i + 1] = colmap.ColmapImage(i + 1, colmap.rotmat_to_qvec(w2c), tvec, 1, name)
    errors, tracks = np.zeros(len(points)), np.zeros(len(points), dtype=np.int64)
    return colmap.ColmapModel({1: camera}, images, points, colors, errors, tracks)


def _check_format(cfg: SynthConfig) -> None:
    if cfg.supersample < 1 or cfg.n_views < 1:
        raise UsageError("supersample and n_views must be at least 1")
    if cfg.format not in ("llff", "transforms", "colmap"):
        raise UsageError(f"unknown format {cfg.format!r}; known: llff, transforms, colmap")
    lens, _ = lens_coefficients(cfg)
    if cfg.format == "llff" and lens != LENS_PINHOLE:
        raise UsageError(
            f"LLFF (poses_bounds.npy) has no lens model: use --format colmap or transforms with --lens {cfg.lens}"
        )
    if cfg.format == "colmap" and cfg.n_points < 1:
        raise UsageError("n_points must be at least 1")


def _lens_keys(cams: SynthCameras) -> dict:
    """transforms.json's ``camera_model`` and coefficients of a lens (nothing for a pinhole)."""
    c = [float(v) for v in cams.coeffs[:4]]
    if cams.lens == LENS_OPENCV:
        return {"camera_model": "OPENCV", "k1": c[0], "k2": c[1], "p1": c[2], "p2": c[3]}
    if cams.lens == LENS_FISHEYE:
        return {"camera_model": "OPENCV_FISHEYE", "k1": c[0], "k2": c[1], "k3": c[2], "k4": c[3]}
    return {}


def _near_far(depth: np.ndarray, outdoor: bool) -> tuple[float, float]:
    """LLFF near / far of a view's pixel-centre depth ``[H, W]``: a room's 0.9 x its least and 1.1 x its
    greatest; outdoors (sky at infinity) 0.9 x the 0.1st and 1.1 x the 99.9th percentile of the surfaces' depth
    (far may be hundreds of metres)."""
    if not outdoor:
        return 0.9 * depth.min(), 1.1 * depth.max()
    surface = depth[np.isfinite(depth) & (depth > 0)]
    if len(surface) == 0:  # all sky
        return 0.1, 2.0 * GROUND_HALF
    lo, hi = np.percentile(surface, [0.1, 99.9])
    return 0.9 * float(lo), 1.1 * float(hi)


def synthesize(cfg: SynthConfig, out: Path) -> Path:
    """Render a synthetic scene with ground truth into the folder ``out`` and return it.

    Writes ``images/NN.png``, ``poses_bounds.npy``, ``transforms.json`` or ``sparse/0/{cameras,images,
    points3D}.bin``, ``segmentations/`` (``classes.txt`` and masks of the annotated views), ``labels/``,
    ``instances/``, ``objects.json`` and ``scene.json``. Raises ``ValueError`` if ``out`` is non-empty and not a
    previous synth output, or for a lens that LLFF cannot hold. An outdoor scene's settings are first resolved
    (:func:`resolve_config`) and written so into ``scene.json``. The scene is rendered into a hidden sibling
    folder and moved into ``out`` when complete: an interrupted or failed synth leaves ``out`` as it was.
    """
    out = Path(out)
    cfg = resolve_config(cfg)
    _check_format(cfg)
    scene = build_scene(cfg)
    cams = make_cameras(cfg, scene)
    if cams.lens != LENS_PINHOLE:  # raises before anything is written if the lens folds inside the image
        cams.pixel_dirs(np.linspace(0.0, cfg.width, 4 * cfg.width + 1), np.array([0.0, cfg.height]))
        cams.pixel_dirs(np.array([0.0, cfg.width]), np.linspace(0.0, cfg.height, 4 * cfg.height + 1))
    _check_output(out)
    # rendered into a hidden sibling and moved into place at the end: Ctrl-C, an error or a full disk leaves
    # ``out`` as it was (and the same command can run again), never a half-written scene
    target = Path(os.path.realpath(out))
    tmp = _partial_folder(target)
    try:
        _write_scene(cfg, scene, cams, tmp)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_WORKER_SCENE: tuple[SynthScene, SynthCameras, int, float] | None = None


def _start_worker(scene: SynthScene, cams: SynthCameras, supersample: int, texture_scale: float) -> None:
    global _WORKER_SCENE
    _WORKER_SCENE = (scene, cams, supersample, texture_scale)


def _render_in_worker(i: int) -> SynthView:
    assert _WORKER_SCENE is not None
    scene, cams, supersample, texture_scale = _WORKER_SCENE
    return render_view(scene, cams, i, supersample, texture_scale)


def _rendered_views(cfg: SynthConfig, scene: SynthScene, cams: SynthCameras) -> Iterator[SynthView]:
    """Every view, in order: rendered here, or by ``cfg.workers`` processes (fresh interpreters, ``spawn``: the
    parent may hold torch's threads, which do not survive a fork)."""
    workers = min(cfg.workers if cfg.workers > 0 else os.cpu_count() or 1, cfg.n_views)
    if workers <= 1:
        for i in range(cfg.n_views):
            yield render_view(scene, cams, i, cfg.supersample, cfg.texture_scale)
        return
    args = (scene, cams, cfg.supersample, cfg.texture_scale)
    context = multiprocessing.get_context("spawn")
    # one thread a worker: a view renders as fast on one thread as on its library's several (measured: 1.8 s
    # for 500x375 either way), and more would only compete with the other workers
    saved = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=args)
        with pool:
            yield from pool.map(_render_in_worker, range(cfg.n_views))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _write_scene(cfg: SynthConfig, scene: SynthScene, cams: SynthCameras, out: Path) -> None:
    """Render every view of ``scene`` and write the scene's files into the empty folder ``out``."""
    digits = max(2, len(str(cfg.n_views - 1)))
    names = [f"{i:0{digits}d}" for i in range(cfg.n_views)]
    annotated = set(annotated_views(cfg.n_views, cfg.n_annotated))
    seeds = point_views(cfg.n_views) if cfg.format == "colmap" else []
    rng = np.random.default_rng([cfg.seed, 2])
    samples: list[tuple[np.ndarray, np.ndarray]] = []
    near_far = np.zeros((cfg.n_views, 2))
    for i, (name, view) in enumerate(zip(names, _rendered_views(cfg, scene, cams))):
        near_far[i] = _near_far(view.depth, scene.outdoor)
        _write_view(out, name, view, scene.classes, i in annotated)
        if i in seeds:
            share = cfg.n_points // len(seeds) + (seeds.index(i) < cfg.n_points % len(seeds))
            samples.append(_surface_samples(cams, i, view, share, rng))
    (out / "segmentations").mkdir(exist_ok=True)
    (out / "segmentations" / "classes.txt").write_text("\n".join(scene.classes) + "\n")
    if cfg.format == "llff":
        write_poses_bounds(out / "poses_bounds.npy", cams.c2w[:, :3, :4], (cfg.height, cfg.width, cams.fx), near_far)
    elif cfg.format == "colmap":
        points, colors = np.concatenate([p for p, _ in samples]), np.concatenate([c for _, c in samples])
        colmap.write_model(out / "sparse" / "0", colmap_model(cams, [f"{n}.png" for n in names], points, colors))
    else:
        # the scene box holds the room with a margin: walls and floor lying on the box's faces would have
        # to be drawn by its last half cell (measured on the orbit scene: 22.3 dB held out without the
        # margin, 24.0 with it)
        margin = BOX_MARGIN * float((scene.room_max - scene.room_min).max())
        box = {"aabb": [(scene.room_min - margin).tolist(), (scene.room_max + margin).tolist()]}
        write_transforms_json(
            out / "transforms.json",
            cams.c2w,
            cams.fx,
            cams.fy,
            cams.cx,
            cams.cy,
            cams.width,
            cams.height,
            [f"images/{n}.png" for n in names],
            extra={**_lens_keys(cams), **({} if scene.outdoor else box)},  # outdoors unbounded: no box
        )
    objects = {"up": [0.0, 0.0, 1.0], "objects": scene.objects}
    (out / "objects.json").write_text(json.dumps(objects, indent=2) + "\n")
    (out / "scene.json").write_text(json.dumps(scene_to_json(cfg, scene, cams), indent=1) + "\n")
