"""Run the teachers over every view of a scene into the cache, or reuse a cache that still matches.

``ensure_features`` is what ``ovseg3d extract`` and ``ovseg3d train`` call: it reuses a complete cache made
with the same settings from the same inputs, continues an interrupted one, and rebuilds a stale one. ``eval``
reads the teacher's own labels from it, with its routine lines silenced; a cache it finds missing, stale or
unfinished is still said in one line (its ``notice``). ``render``, ``export`` and ``view`` need no cache: a
checkpoint keeps the teacher space its field was trained in (``ovseg3d.distill.TeacherSpace``); only a
checkpoint from before that reaches the cache, through ``load_distiller``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ovseg3d.data.loader import read_rgb, resize_box
from ovseg3d.data.scene import Scene
from ovseg3d.images import colorize_labels, pca_rgb, resize_rgb, save_png, side_by_side
from ovseg3d.metrics import segmentation_metrics
from ovseg3d.teachers import cache
from ovseg3d.teachers.base import CropEncoder, PatchEncoder, TeacherView, precision_text
from ovseg3d.teachers.clip import build_clip, clip_backend, count_crops, feature_size, multiscale_features
from ovseg3d.teachers.config import TeacherConfig, TeacherError
from ovseg3d.teachers.dense import ProxyClip
from ovseg3d.teachers.hub import require_model
from ovseg3d.teachers.relevancy import (
    CANONICAL_NEGATIVES,
    class_relevancy,
    negatives_relevancy,
    teacher_segmentation,
)

_REAL_SETTINGS = (
    "clip_features",
    "clip_model",
    "clip_backend",
    "clip_pretrained",
    "clip_scales",
    "clip_stride",
    "clip_grow",
    "feature_long_side",
    "relevancy_long_side",
    "class_relevancy",
    "teacher_long_side",
    "dino_model",
    "dino_long_side",
    "half",
    "teacher_seed",
)
_CROP_SETTINGS = ("clip_scales", "clip_stride", "clip_grow")
_DENSE_SETTINGS = ("dense_short_side", "dense_window", "dense_stride", "dense_proxy", "proxy_beta", "proxy_gamma")
_SYNTHETIC_SETTINGS = (
    "clip_scales",
    "clip_stride",
    "clip_grow",
    "clip_batch",
    "feature_long_side",
    "relevancy_long_side",
    "class_relevancy",
    "teacher_seed",
    "syn_dim",
    "syn_noise",
    "syn_confusion",
    "syn_view_noise",
    "syn_errors",
    "syn_lean",
    "syn_lean_view",
    "syn_absorb",
    "syn_stuff_bleed",
    "dino_long_side",
    "syn_dino_dim",
    "syn_dino_texture",
    "syn_dino_noise",
)
Log = Callable[[str], None]


def cache_path(scene: Scene, cfg: TeacherConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(scene.root) / "features" / cfg.kind


def _file_hash(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_hash(*tensors: Tensor | None) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
    return h.hexdigest()


def source_size(scene: Scene, cfg: TeacherConfig) -> tuple[int, int]:
    """``(W, H)`` of the images the teachers see."""
    if cfg.kind == "synthetic":
        return scene.width, scene.height
    from ovseg3d.data.loader import image_size

    w, h = image_size(scene.image_paths[0])
    return feature_size(w, h, cfg.teacher_long_side) if cfg.teacher_long_side > 0 else (w, h)


def expected_meta(scene: Scene, cfg: TeacherConfig) -> dict[str, Any]:
    """The sidecar a cache of ``scene`` made with ``cfg`` must have (without running any model)."""
    keys = _SYNTHETIC_SETTINGS if cfg.kind == "synthetic" else _REAL_SETTINGS
    if cfg.dense():  # the crops' settings do not shape a dense map; the windows' do
        keys = tuple(k for k in keys if k not in _CROP_SETTINGS) + _DENSE_SETTINGS
    settings = {k: _jsonable(getattr(cfg, k)) for k in keys}
    if cfg.kind == "synthetic":
        from ovseg3d.teachers.synthetic import SyntheticClip

        settings["clip_batch"] = SyntheticClip.batch_size  # the batches its noise is drawn in, not cfg's
        inputs = [_tensor_hash(scene.images[i], scene.labels.get(i), scene.instances.get(i)) for i in range(len(scene))]
    else:
        inputs = [_file_hash(p) for p in scene.image_paths]
    return {
        "format": cache.CACHE_FORMAT,
        "teacher": cfg.kind,
        "settings": settings,
        "classes": list(scene.classes),
        "source_size": list(source_size(scene, cfg)),
        "inputs": inputs,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def scene_key(scene: Scene) -> str:
    """What tells one scene from another for the simulated teacher: its first view's image, labels and instances
    (a generated scene's seed, tilt or layout changes them; renaming or moving its folder does not)."""
    return _tensor_hash(scene.images[0], scene.labels.get(0), scene.instances.get(0))[:16]


def build_teachers(scene: Scene, cfg: TeacherConfig, device: torch.device) -> tuple[CropEncoder, PatchEncoder]:
    """The CLIP-like and DINO-like encoders for ``cfg.kind``."""
    if cfg.kind == "synthetic":
        from ovseg3d.teachers.synthetic import SyntheticClip, SyntheticDino

        missing = [i for i in range(len(scene)) if i not in scene.labels or i not in scene.instances]
        if missing:
            raise TeacherError(
                f"{scene.root}: the synthetic teacher needs labels/ and instances/ maps for every view "
                f"(view {missing[0]} has none); use --teacher clip"
            )
        return SyntheticClip(scene.classes, cfg, scene_key(scene)), SyntheticDino(cfg)
    if cfg.kind == "clip":
        from ovseg3d.teachers.dino import TransformersDino

        # both models are checked before either loads: a missing DINO fails without waiting for CLIP to load
        if cfg.dense() and clip_backend(cfg) != "transformers":
            raise TeacherError(
                f"--clip-features dense runs on a transformers CLIP, not open_clip's {cfg.clip_model}: give a "
                "transformers model (--clip-model openai/clip-vit-base-patch16) or --clip-features crops"
            )
        if clip_backend(cfg) == "transformers":
            require_model(cfg.clip_model, "CLIP model", "--clip-model")
        require_model(cfg.dino_model, "DINO model", "--dino-model")
        return build_clip(cfg, device), TransformersDino(cfg.dino_model, device, cfg.dino_long_side, cfg.half)
    raise TeacherError(f"no teacher to extract (--teacher {cfg.kind}); choose clip or synthetic")


def text_encoder(cfg: TeacherConfig, device: torch.device) -> CropEncoder:
    """The teacher's text side, for free-text queries (the CLIP model for real teachers)."""
    if cfg.kind == "synthetic":
        from ovseg3d.teachers.synthetic import SyntheticText

        return SyntheticText(cfg.syn_dim, cfg.teacher_seed)  # type: ignore[return-value]
    from ovseg3d.teachers.clip import build_clip

    return build_clip(cfg, device)


def teacher_view(scene: Scene, index: int, cfg: TeacherConfig) -> TeacherView:
    """View ``index`` as the teachers see it: the original image file for real teachers (independent of the
    training downscale), the loaded image with its label and instance maps for simulated ones."""
    if cfg.kind == "synthetic":
        return TeacherView(index, scene.images[index], scene.labels.get(index), scene.instances.get(index))
    image = read_rgb(scene.image_paths[index])
    w, h = source_size(scene, cfg)
    if (image.shape[1], image.shape[0]) != (w, h):
        image = resize_box(image, w, h)
    return TeacherView(index, torch.from_numpy(np.array(image)))


def _view_generator(cfg: TeacherConfig, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.teacher_seed * 1_000_003 + index)


def ensure_features(
    scene: Scene,
    cfg: TeacherConfig,
    device: torch.device,
    force: bool = False,
    log: Log = tqdm.write,
    notice: Log | None = tqdm.write,
    views: Sequence[int] | None = None,
    teachers: tuple[CropEncoder, PatchEncoder] | None = None,
) -> cache.TeacherFeatures:
    """A matching feature cache for ``scene``: reused, continued or (re)built. It holds every view, or with
    ``views`` (``--teacher-views``) at least those, and the features returned are read on those alone;
    ``teachers``: the models already loaded (:func:`build_teachers`), else they are loaded here when needed.

    ``log`` gets every line. The lines a user must see whichever stage asks, that the cache is missing,
    stale (and why) or unfinished and is being built, rebuilt or continued now (long, and it changes what the
    run's semantic field is read against), also go to ``notice`` (printed by default; ``None``: ``log``
    only), so that they are said when a stage silences ``log``: ``eval`` does, and so does
    :func:`~ovseg3d.distill.load_distiller` for a checkpoint without its teacher space."""

    def say(line: str) -> None:
        log(line)
        if notice is not None and notice != log:  # bound methods (tqdm.write) are new objects each time
            notice(line)

    cfg.check()
    wanted = sorted(set(range(len(scene)) if views is None else views))
    if any(not 0 <= v < len(scene) for v in wanted):
        raise TeacherError(f"teacher views {wanted}: the scene has views 0 to {len(scene) - 1}")
    chosen = None if views is None else wanted
    of = f"{len(wanted)} of {len(scene)} views" if chosen is not None else f"{len(scene)} views"
    path = cache_path(scene, cfg)
    expected = expected_meta(scene, cfg)
    lock = cache.FolderLock.of(path)  # holds nothing while the folder does not exist

    def waiting() -> None:
        say(f"teacher features: waiting for another run writing {path}")

    def after_another_run() -> cache.TeacherFeatures:
        """Another run held the folder: what it wrote once it is done, if that is what this run needs."""
        lock.shared(waiting)
        if not force and (features := _reuse(path, expected, wanted, chosen, of, log, lock)) is not None:
            return features
        raise TeacherError(
            f"teacher features: another run is reading {path}, made with other settings or views than this "
            "run's; wait for it to end, or give this run its own --cache-dir DIR"
        )

    lock.shared(waiting)
    if not force and (features := _reuse(path, expected, wanted, chosen, of, log, lock)) is not None:
        return features
    lock.release()
    if not lock.exclusive():  # another run reads the folder, or writes it
        return after_another_run()
    stored = cache.read_meta(path)  # again, now that no other run can change it
    meta = None
    if force:
        log(f"teacher features: rebuilding {path} (--force)")
    elif stored is None and (path / "meta.json").exists():
        say(f"teacher features: {path / 'meta.json'} is unreadable: rebuilding {path} now")
    elif stored is None:
        say(f"teacher features: none in {path} yet: extracting them now ({of})")
    elif (features := _reuse(path, expected, wanted, chosen, of, log, lock)) is not None:
        lock.shared()  # made by a run that held the folder between this one's two looks
        return features
    elif (reason := cache.stale_reason(stored, expected)) is None:
        done = stored.get("done", [])
        left = f"; {len(set(wanted) - set(done))} of the {of} asked for to extract" if chosen is not None else ""
        say(f"teacher features: continuing {path} ({len(done)}/{len(scene)} views done{left})")
        meta = stored
    else:
        say(f"teacher features: rebuilding {path}, which is stale ({reason})")
    start = time.perf_counter()
    if teachers is None:
        teachers = build_teachers(scene, cfg, device)  # before touching the folder: a failure loses nothing
    dense = dense_encoder(cfg, teachers)  # so are bad window settings, which need the models' patch sizes
    loading = time.perf_counter() - start
    if meta is None:
        path.mkdir(parents=True, exist_ok=True)
        if not lock.exclusive():  # the folder is new: its lock file too
            return after_another_run()
        cache.clear(path)
        meta = cache.new_meta(expected)
    clock = extract_into(path, scene, cfg, teachers, meta, dense, wanted)
    precision = f" ({precision_text(device, cfg.half)})" if cfg.kind == "clip" else ""
    log(describe_seconds({"models": loading, **clock}, cfg.dense()) + precision)
    features = cache.open_features(path, chosen)
    write_previews(features, scene)
    lock.shared()  # others may read it now
    features.lock = lock
    return features


def _reuse(
    path: Path,
    expected: dict[str, Any],
    wanted: list[int],
    chosen: list[int] | None,
    of: str,
    log: Log,
    lock: cache.FolderLock,
) -> cache.TeacherFeatures | None:
    """The cache at ``path``, held by ``lock``, if it holds what ``expected`` and ``wanted`` ask for, else ``None``."""
    stored = cache.read_meta(path)
    if stored is None or cache.stale_reason(stored, expected) is not None:
        return None
    if not set(wanted) <= set(stored.get("done", [])):
        return None
    log(f"teacher features: reusing {path}" + (f" ({of})" if chosen is not None else ""))
    features = cache.open_features(path, chosen)
    features.lock = lock
    return features


def dense_encoder(cfg: TeacherConfig, teachers: tuple[CropEncoder, PatchEncoder]) -> ProxyClip | None:
    """The dense CLIP of ``cfg`` over ``teachers`` (``None`` for crops); a one-line error for bad window settings."""
    if not cfg.dense():
        return None
    clip, dino = teachers
    settings = (cfg.dense_short_side, cfg.dense_window, cfg.dense_stride, cfg.proxy_beta, cfg.proxy_gamma)
    return ProxyClip(clip, dino, *settings, proxy=cfg.dense_proxy)


def extract_into(
    path: Path,
    scene: Scene,
    cfg: TeacherConfig,
    teachers: tuple[CropEncoder, PatchEncoder],
    meta: dict[str, Any],
    dense: ProxyClip | None = None,
    views: Sequence[int] | None = None,
) -> dict[str, float]:
    """Run the teachers over those of ``views`` (default: all) not yet in ``meta["done"]``, writing each as it
    finishes (the CLIP maps from ``dense`` when given, else from crops); the seconds of each part
    (:func:`describe_seconds`). ``meta["complete"]`` once every view of the scene is done."""
    clip, dino = teachers
    clock = dict.fromkeys(("images", "CLIP", "DINO", "writing"), 0.0)
    lap = 0.0  # set where the views start: each part then runs from the end of the one before

    def tick(part: str) -> None:  # a part ends where its results are on the host: a GPU's queue is drained there
        nonlocal lap
        now = time.perf_counter()
        clock[part] += now - lap
        lap = now

    text = clip.encode_text(scene.classes) if scene.classes else torch.zeros(0, clip.embedding_dim)
    np.save(path / "text.npy", text.numpy().astype(np.float32))
    canonical = clip.encode_text(list(CANONICAL_NEGATIVES)) if cfg.class_relevancy == "negatives" else None
    src_w, src_h = meta["source_size"]
    rel_w, rel_h = feature_size(src_w, src_h, cfg.relevancy_long_side)
    out_w, out_h = feature_size(src_w, src_h, min(cfg.feature_long_side, cfg.relevancy_long_side))
    done = set(meta["done"])
    todo = [i for i in (range(len(scene)) if views is None else sorted(views)) if i not in done]
    arrays = cache.open_arrays(path, "r+") if done else None
    text_on: dict[torch.device, Tensor] = {}  # the class texts on the crops' device, moved once per scene
    start = time.perf_counter()
    per_view, unit = (dense.windows(src_w, src_h), "window") if dense else (count_crops(src_w, src_h, cfg), "crop")
    with tqdm(total=len(todo) * per_view, unit=unit, desc=f"{cfg.kind} teacher") as bar:
        lap = time.perf_counter()
        for i in todo:
            view = teacher_view(scene, i, cfg)
            tick("images")
            if dense is not None:
                feats = dense.encode_view(view, (rel_w, rel_h), bar.update)  # [1, h, w, D]
            else:
                feats = multiscale_features(clip, view, cfg, (rel_w, rel_h), _view_generator(cfg, i), bar.update)
            if feats.device not in text_on:
                text_on[feats.device] = text.to(feats.device)
            if canonical is None:
                rel = class_relevancy(feats, text_on[feats.device]).cpu()  # [S, h, w, C]
            else:
                rel = negatives_relevancy(feats, text_on[feats.device], canonical.to(feats.device)).cpu()
            feats = shrink_features(feats, out_w, out_h).cpu()  # the view's one copy back
            reused = dense.fda_patches(view) if dense is not None else None
            tick("CLIP")
            patches = reused if reused is not None else dino.encode_patches(view)  # [hd, wd, Dd]
            tick("DINO")
            if arrays is None:
                n, s = len(scene), feats.shape[0]
                arrays = cache.create_arrays(
                    path,
                    {
                        "clip": (n, out_h, out_w, s, feats.shape[-1]),
                        "relevancy": (n, rel_h, rel_w, s, len(scene.classes)),
                        "dino": (n, *patches.shape),
                    },
                )
                meta["shapes"] = {k: list(v.shape) for k, v in arrays.items()}
                meta["models"] = {"clip": (dense or clip).name, "dino": dino.name}
            arrays["clip"][i] = feats.permute(1, 2, 0, 3).numpy()
            arrays["relevancy"][i] = rel.permute(1, 2, 0, 3).numpy()
            arrays["dino"][i] = patches.numpy()
            for a in arrays.values():
                a.flush()
            meta["done"] = sorted([*meta["done"], i])
            cache.write_meta(path, meta)
            tick("writing")
    meta["complete"] = len(meta["done"]) == len(scene)
    meta["seconds"] = round(meta.get("seconds", 0.0) + time.perf_counter() - start, 2)
    cache.write_meta(path, meta)
    return clock


def describe_seconds(seconds: dict[str, float], dense: bool) -> str:
    """One line of where the teachers' seconds went: loading the models, reading the images, CLIP (with DINO's
    image-wide pass where the dense maps made it and FDA reuses it), DINO on its own, writing the cache."""
    names = {"models": "loading the models", "images": "reading the images", "writing": "writing the cache"}
    if dense:
        names["CLIP"] = "dense CLIP (DINO's pass within it)"
    parts = [f"{names.get(k, k)} {v:.1f}" for k, v in seconds.items() if k != "DINO" or v > 0.0]
    return f"teachers' seconds: {', '.join(parts)}; total {sum(seconds.values()):.1f}"


def shrink_features(features: Tensor, width: int, height: int) -> Tensor:
    """Area-average ``[S, H, W, D]`` unit features to ``width x height`` and renormalise."""
    if features.shape[1:3] == (height, width):
        return features
    small = F.interpolate(features.permute(0, 3, 1, 2), size=(height, width), mode="area")
    return F.normalize(small.permute(0, 2, 3, 1), dim=-1)


def resolve_kind(scene: Scene, log: Callable[[str], None] = tqdm.write) -> str:
    """``--teacher auto``: the simulated teachers for a scene with ``labels/`` and ``instances/`` for every
    view (a generated one), else the real CLIP + DINO."""
    if len(scene.labels) == len(scene) and len(scene.instances) == len(scene):
        log(
            "teacher: synthetic (the scene has labels/ and instances/ for every view; --teacher clip for the real ones)"
        )
        return "synthetic"
    log("teacher: clip (CLIP + DINO; --teacher none trains the radiance field alone)")
    return "clip"


def teacher_labels(features: cache.TeacherFeatures, view: int, width: int, height: int) -> Tensor:
    """The 2D teacher's own segmentation of a view at ``width x height``: ``[H, W]`` long."""
    rel = features.view_relevancy(view)  # [S, h, w, C]
    up = F.interpolate(rel.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
    return teacher_segmentation(up.permute(0, 2, 3, 1))


def teacher_scores(features: cache.TeacherFeatures, scene: Scene) -> dict | None:
    """mIoU / accuracy of the 2D teacher alone on the annotated views (``None`` without annotations)."""
    if not scene.segmentations or not scene.classes:
        return None
    preds = {v: teacher_labels(features, v, scene.width, scene.height) for v in scene.segmentations}
    return segmentation_metrics(preds, scene.segmentations, scene.classes)


def preview_views(scene: Scene, n: int = 4) -> list[int]:
    """Views to preview: the annotated ones, else ``n`` spread over the scene."""
    if scene.segmentations:
        return sorted(scene.segmentations)[:n]
    return sorted({round(k * (len(scene) - 1) / max(n - 1, 1)) for k in range(min(n, len(scene)))})


def write_previews(features: cache.TeacherFeatures, scene: Scene) -> list[Path]:
    """``preview/view_NNN.png``: image | CLIP features (PCA, middle scale) | teacher labels | DINO (PCA)."""
    paths = []
    shown = features.usable(preview_views(scene))
    if features.views is not None and not shown:  # --teacher-views left out the usual ones: the first chosen
        shown = features.views[:1]
    for v in shown:
        height = 2 * scene.height if scene.height < 200 else scene.height
        image = resize_rgb(scene.image_float(v).numpy(), height)
        clip = features.view_clip(v)[features.n_scales // 2]
        panels = [image, resize_rgb(pca_rgb(clip), height)]
        if features.classes:
            labels = teacher_labels(features, v, scene.width, scene.height)
            panels.append(resize_rgb(colorize_labels(labels, len(features.classes)), height))
        panels.append(resize_rgb(pca_rgb(torch.from_numpy(np.asarray(features.dino[v], dtype=np.float32))), height))
        path = features.path / "preview" / f"view_{v:03d}.png"
        save_png(path, side_by_side(*panels))
        paths.append(path)
    return paths


def describe(features: cache.TeacherFeatures) -> dict[str, Any]:
    """A summary for the command line and benchmarks."""
    n = features.clip.shape[0]
    return {
        "path": str(features.path),
        "teacher": features.meta["teacher"],
        "models": features.meta.get("models", {}),
        "views": n,
        "clip_shape": list(features.clip.shape[1:]),
        "dino_shape": list(features.dino.shape[1:]),
        "mib_per_view": round(features.nbytes() / n / 2**20, 3),
        "seconds": features.meta.get("seconds"),
    }
