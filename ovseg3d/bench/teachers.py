"""The 2D teachers' cost at real model size (issues 28, 49, 68): seconds a photo for 3D-OVS's crops and for dense
CLIP with either proxy, FDA's DINO features from the proxy's pass or its own on a 16:9 frame, the real teachers over
a whole scene, and the simulated teacher's 2D mIoU. Folds ``scripts/bench_teachers.py`` and
``scripts/bench_fda_reuse.py``.

The models are CLIP ViT-B/16 and DINO ViT-B/8 with random weights (``tests/tiny_models.py``, made once under
``WORK/models``): their seconds are real, their labels mean nothing. Other models are given by ``--set
teachers.clip_model=DIR teachers.dino_model=DIR``. A photo is the scene's first, resized to each size of
:data:`SIZES` (its content does not change the cost). The precision is the config's (``teachers.half``: float16 on
a GPU, bfloat16 on a CPU that has it; the variant ``float32`` turns it off: ``--variants crops+float32``).

Variants, and their figures besides ``seconds`` (a 1000x750 photo's; the frame's; the scene's):

* ``crops``: ``crops_per_s`` over four CLIP batches (``teachers.clip_batch``) of the 4032x3024 photo,
  ``dino_seconds`` (FDA's DINO pass), per size ``crops_WxH`` and ``seconds_WxH`` (a photo's crops at that rate);
  ``scene_30_minutes``. ``crops_full``: each size's crops, their relevancy and the DINO pass run and timed instead.
  open_clip's crops: ``--set teachers.clip_backend=open_clip`` (``pip install 'ovseg3d[openclip]'``).
* ``dense_window`` / ``dense_image``: dense CLIP (ProxyCLIP) with a DINO pass per window / one a photo: per size
  ``windows_WxH``, ``map_seconds_WxH`` (the dense map) and ``seconds_WxH`` (with its class relevancy and FDA's DINO
  features); ``scene_30_minutes``. The speed-up over the crops: a ``crops`` case's ``seconds_WxH`` over these.
* ``fda`` (``fda_s8``: DINO ViT-S/8): a 960x544 frame's teachers with FDA's DINO pass of its own
  (``twice_seconds``; ``fda_pass_seconds`` that pass) and from the proxy's pass resampled (``once_seconds``;
  ``fda_reused_seconds``), ``load_1min``; the resampled tokens against FDA's own (:func:`compare`).
* ``extract``: the config's real teachers over every view, as ``ovseg3d extract``: ``views_per_s``,
  ``crops_per_s`` (crops), ``peak_gib`` (a GPU).
* ``synthetic``: the simulated teacher over every view: ``mib_per_view``, the 2D teacher's ``miou``, ``accuracy``.

    ovseg3d bench run teachers --variants crops dense_window dense_image synthetic --out results/teachers.json
    ovseg3d bench run teachers --variants crops_full     # every crop of both photos (an hour on a CPU)
    ovseg3d bench run teachers --variants fda fda_s8 --repeats 3 --set teachers.half=false
    ovseg3d bench run teachers --device cuda --scenes scenes/demo --set teachers.clip_batch=256
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ovseg3d.bench.harness import ROOT, Benchmark, Case

SIZES = ((1000, 750), (4032, 3024))
"""A 3D-OVS photo, and the phone photo it was shrunk from."""
FRAME = (960, 544)
"""A 16:9 video frame (FDA's grid is coarser than the image proxy's)."""
VIT_S8 = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6}
DENSE = {"clip_features": "dense", "dense_proxy": "image"}


def tiny_models() -> Any:
    """``tests/tiny_models.py`` of the checkout, or of the working folder where ovseg3d is installed elsewhere."""
    for folder in (ROOT / "tests", Path.cwd() / "tests"):
        if (folder / "tiny_models.py").exists() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    import tiny_models

    return tiny_models


def real_model(folder: Path, name: str) -> Path:
    """``folder/NAME`` with random weights, made once: ``clip-vit-b16``, ``dino-vit-b8`` or ``dino-vit-s8``."""
    tm, path = tiny_models(), folder / name
    if not (path / "config.json").exists() and name.startswith("clip"):
        tm.save_tiny_clip(path, image_size=224, projection_dim=512, vision=tm.VIT_B16, text=tm.TEXT_B)
    elif not (path / "config.json").exists():
        sizes = VIT_S8 if name.endswith("s8") else tm.VIT_B8
        tm.save_tiny_dino(path, "vit", sizes=sizes | {"image_size": 224, "patch_size": 8})
    return path


def teacher_config(case: Case) -> Any:
    """The case's teachers, with random real-size models wherever the config names no model folder (open_clip's
    ``ViT-B-16`` with random weights where ``teachers.clip_backend=open_clip`` names no weights file)."""
    from ovseg3d.teachers.clip import clip_backend, import_open_clip

    cfg = case.config().teachers
    s8 = "fda_s8" in case.variant.split("+")
    models = case.work / "models"
    if not Path(cfg.clip_model).is_dir() and cfg.clip_backend != "open_clip":
        cfg = dataclasses.replace(cfg, clip_model=str(real_model(models, "clip-vit-b16")))
    if not Path(cfg.dino_model).is_dir() or s8:
        cfg = dataclasses.replace(cfg, dino_model=str(real_model(models, "dino-vit-s8" if s8 else "dino-vit-b8")))
    if clip_backend(cfg) == "open_clip" and not Path(cfg.clip_pretrained).is_file():
        name = "ViT-B-16" if "/" in cfg.clip_model else cfg.clip_model
        weights = models / f"openclip-{name}.pt"
        if not weights.exists():
            torch.save(import_open_clip().create_model(name).state_dict(), weights)
        cfg = dataclasses.replace(cfg, clip_model=name, clip_pretrained=str(weights))
    return dataclasses.replace(cfg, kind="clip")


@functools.cache
def first_photo(folder: Path) -> Path:
    from ovseg3d.data.loader import load_scene

    return load_scene(folder).image_paths[0]


def photo(folder: Path, width: int, height: int) -> Any:
    """The scene's first photo resized to ``width`` x ``height``, as a teacher view."""
    import numpy as np
    from PIL import Image

    from ovseg3d.teachers.base import TeacherView

    image = Image.open(first_photo(folder)).convert("RGB").resize((width, height), Image.BICUBIC)
    return TeacherView(0, torch.from_numpy(np.array(image)))


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its seconds, a GPU's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def crops(case: Case, cfg: Any, device: torch.device, clip: Any, dino: Any) -> dict[str, float]:
    from ovseg3d.teachers.clip import count_crops, crop_boxes, feature_size, multiscale_features
    from ovseg3d.teachers.extract import shrink_features
    from ovseg3d.teachers.relevancy import class_relevancy

    big = photo(case.folder, *SIZES[-1])
    batch = cfg.clip_batch
    boxes = crop_boxes(big.width, big.height, 10)[: 4 * batch]
    clip.encode_crops(big, boxes[:batch])  # warm-up
    _, seconds = timed(
        device, lambda: [clip.encode_crops(big, boxes[i : i + batch]) for i in range(0, len(boxes), batch)]
    )
    dino.encode_patches(big)
    _, dino_seconds = timed(device, lambda: dino.encode_patches(big))
    figures = {"crops_per_s": len(boxes) / seconds, "dino_seconds": dino_seconds}
    text = clip.encode_text([f"class {i}" for i in range(8)])
    for w, h in SIZES:
        figures[f"crops_{w}x{h}"] = count_crops(w, h, cfg)
        figures[f"seconds_{w}x{h}"] = figures[f"crops_{w}x{h}"] / figures["crops_per_s"]
        if "crops_full" in case.variant.split("+"):
            view = photo(case.folder, w, h)

            def whole(view: Any = view, w: int = w, h: int = h) -> None:
                feats = multiscale_features(clip, view, cfg, feature_size(w, h, cfg.relevancy_long_side), None)
                class_relevancy(feats, text)
                shrink_features(feats, *feature_size(w, h, cfg.feature_long_side))
                dino.encode_patches(view)

            figures[f"seconds_{w}x{h}"] = timed(device, whole)[1]
    return figures


def dense(case: Case, cfg: Any, device: torch.device, clip: Any, dino: Any) -> dict[str, float]:
    from ovseg3d.teachers.clip import feature_size
    from ovseg3d.teachers.extract import dense_encoder
    from ovseg3d.teachers.relevancy import class_relevancy

    proxy = dense_encoder(cfg, (clip, dino))
    text = clip.encode_text([f"class {i}" for i in range(8)])
    proxy.encode_view(photo(case.folder, cfg.dense_window, cfg.dense_window), (8, 8))  # warm-up: one window
    figures: dict[str, float] = {}
    for w, h in SIZES:
        view = photo(case.folder, w, h)
        size = feature_size(w, h, cfg.relevancy_long_side)
        feats, figures[f"map_seconds_{w}x{h}"] = timed(device, functools.partial(proxy.encode_view, view, size))
        rest = timed(
            device, lambda f=feats, v=view: (class_relevancy(f, text.to(f.device)), fda_features(proxy, dino, v))
        )
        figures[f"seconds_{w}x{h}"] = figures[f"map_seconds_{w}x{h}"] + rest[1]
        figures[f"windows_{w}x{h}"] = proxy.windows(w, h)
    return figures


def fda_features(proxy: Any, dino: Any, view: Any) -> torch.Tensor:
    """FDA's DINO features as extraction makes them: from the proxy's image-wide pass where it can, else its own."""
    patches = proxy.fda_patches(view)
    return dino.encode_patches(view) if patches is None else patches


def compare(resampled: torch.Tensor, direct: torch.Tensor) -> dict[str, float]:
    """The resampled unit tokens ``[H, W, C]`` against FDA's own: their cosines (mean, 5th percentile, least; and
    with the field's mean token removed), beside what a cosine means in this field (random pairs', neighbours'),
    and the mean error of the pairwise cosines FDA computes."""
    r, d = resampled.flatten(0, 1), direct.flatten(0, 1)
    cos = (r * d).sum(-1)
    pairs = torch.randint(0, len(d), (2, 20000), generator=torch.Generator().manual_seed(0))
    mean = d.mean(0)
    unit = functools.partial(torch.nn.functional.normalize, dim=-1)
    centred = (unit(r - mean) * unit(d - mean)).sum(-1)
    return {
        "cos_mean": cos.mean().item(),
        "cos_p5": cos.quantile(0.05).item(),
        "cos_min": cos.min().item(),
        "centred_cos_mean": centred.mean().item(),
        "random_pairs_cos": (d[pairs[0]] * d[pairs[1]]).sum(-1).mean().item(),
        "neighbours_cos": (direct[:, 1:] * direct[:, :-1]).sum(-1).mean().item(),
        "similarity_mae": (r @ r.T - d @ d.T).abs().mean().item(),
    }


def fda(case: Case, cfg: Any, device: torch.device, clip: Any, dino: Any) -> dict[str, float]:
    from ovseg3d.teachers.extract import dense_encoder

    proxy = dense_encoder(dataclasses.replace(cfg, **DENSE), (clip, dino))
    view = photo(case.folder, *FRAME)
    proxy.encode_view(view, (8, 8))  # warm-up
    dino.encode_patches(view)
    figures = {"load_1min": os.getloadavg()[0]}
    encode = functools.partial(proxy.encode_view, view, (160, 90))
    twice, figures["fda_pass_seconds"] = timed(device, encode)[1], timed(device, lambda: dino.encode_patches(view))[1]
    once, (reused, figures["fda_reused_seconds"]) = (
        timed(device, encode)[1],
        timed(device, lambda: proxy.fda_patches(view)),
    )
    if reused is None:
        raise RuntimeError(f"{case.label}: the proxy's DINO pass was not reused (the frame is not wider than 4:3)")
    figures["twice_seconds"] = twice + figures["fda_pass_seconds"]
    figures["once_seconds"] = once + figures["fda_reused_seconds"]
    figures["seconds"] = figures["once_seconds"]
    return figures | compare(reused.float(), dino.encode_patches(view).float())


def extract(case: Case, cfg: Any, device: torch.device) -> dict[str, float]:
    """The teachers over every view of the scene, as ``ovseg3d extract`` (forced: nothing taken from a cache)."""
    from ovseg3d.data.loader import load_scene
    from ovseg3d.teachers.clip import count_crops
    from ovseg3d.teachers.extract import describe, ensure_features, teacher_scores

    scene = load_scene(case.folder)
    cfg = dataclasses.replace(cfg, cache_dir=case.work / "teachers" / f"{Path(case.scene).name}-{case.variant}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    feats, seconds = timed(device, lambda: ensure_features(scene, cfg, device, force=True, log=lambda s: None))
    views = len(scene.image_paths)
    figures = {"seconds": seconds, "views": views, "views_per_s": views / seconds}
    if cfg.kind == "synthetic":
        scores = teacher_scores(feats, scene) or {}
        kept = {k: scores[k] for k in ("miou", "accuracy") if scores.get(k) is not None}
        return figures | kept | {"mib_per_view": describe(feats)["mib_per_view"]}
    if not cfg.dense():
        figures["crops_per_s"] = count_crops(scene.width, scene.height, cfg) * views / seconds
    if device.type == "cuda":
        figures["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return figures


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.teachers.extract import build_teachers
    from ovseg3d.train import resolve_device

    device = resolve_device(case.device)
    parts = case.variant.split("+")
    if "synthetic" in parts:
        return extract(case, dataclasses.replace(case.config().teachers, kind="synthetic"), device)
    cfg = teacher_config(case)
    if "extract" in parts:
        return extract(case, cfg, device)
    clip, dino = build_teachers(None, cfg, device)  # type: ignore[arg-type]
    if "fda" in parts or "fda_s8" in parts:
        return fda(case, cfg, device, clip, dino)
    figures = (dense if cfg.dense() else crops)(case, cfg, device, clip, dino)
    one = f"seconds_{SIZES[0][0]}x{SIZES[0][1]}"
    bits = 32 if clip.dtype is None else torch.finfo(clip.dtype).bits
    return figures | {"seconds": figures[one], "scene_30_minutes": 30 * figures[one] / 60, "bits": bits}


BENCHMARK = Benchmark(
    name="teachers",
    doc="the 2D teachers at real size: seconds a photo, crops against dense CLIP, FDA's DINO pass reused, mIoU",
    measure=measure,
    figures=("seconds",),
    scenes=("demo",),
    variants={
        "crops": {"teachers": {"clip_features": "crops"}},
        "crops_full": {"teachers": {"clip_features": "crops"}},
        "dense_window": {"teachers": {"clip_features": "dense", "dense_proxy": "window"}},
        "dense_image": {"teachers": DENSE},
        "fda": {"teachers": DENSE},
        "fda_s8": {"teachers": DENSE},
        "extract": {},
        "synthetic": {},
        "float32": {"teachers": {"half": False}},
    },
    default_variants=("crops", "dense_window", "dense_image", "synthetic"),  # crops_full: about an hour on 2 cores
    repeats=1,
    teacher={"kind": "clip", "weights": "random"},
)
