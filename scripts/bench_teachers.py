#!/usr/bin/env python
"""ovseg3d teacher benchmark: CLIP crop throughput per backend, per-image extraction cost and cache size
for a 3D-OVS-size photo, and the simulated teacher's mIoU.

Prints tables and writes JSON (default ``bench/teachers.json``):

* ``clip``: crops/s of ViT-B/16 CLIP per backend (transformers, open_clip when it loads) and precision, and
  what that means for one 3D-OVS-size image (all crops of the three scales).
* ``dino``: seconds per image of DINO ViT-B/8 at ``--dino-long-side``.
* ``per_image``: crops, cache MiB per image; with ``--full-image``, the whole per-image pipeline (crops ->
  CLIP -> splat -> relevancy, DINO) run and timed on one synthetic image of ``--image-size``.
* ``dense``: ``--clip-features dense`` (ProxyCLIP: CLIP ViT-B/16 values, DINO ViT-B/8 proxy attention, windows of
  336 px) per photo of each ``--dense-sizes``: windows (one CLIP and one DINO pass each), seconds for the dense
  map, its relevancy and the DINO pass of FDA, against the crops' seconds at the measured crop rate (same
  precision), and what a 30-photo scene costs.
* ``synthetic``: simulated teachers on ``--scene``: extraction time, cache size, 2D teacher mIoU / accuracy.

The CLIP and DINO models have the real architectures (ViT-B/16, ViT-B/8) with random weights: weights do
not change the cost, and none can be downloaded here.

    python scripts/bench_teachers.py                     # throughput + synthetic teacher on the demo scene
    python scripts/bench_teachers.py --full-image        # + one 4032x3024 image end to end (minutes on a CPU)
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import TEXT_B, VIT_B8, VIT_B16, save_tiny_clip, save_tiny_dino  # noqa: E402

from ovseg3d.data.loader import load_scene  # noqa: E402
from ovseg3d.teachers.base import TeacherView, half_dtype  # noqa: E402
from ovseg3d.teachers.clip import (  # noqa: E402
    OpenClip,
    TransformersClip,
    count_crops,
    crop_boxes,
    feature_size,
    multiscale_features,
)
from ovseg3d.teachers.config import TeacherConfig, TeacherError  # noqa: E402
from ovseg3d.teachers.dino import TransformersDino  # noqa: E402
from ovseg3d.teachers.extract import describe, ensure_features, shrink_features, teacher_scores  # noqa: E402
from ovseg3d.teachers.relevancy import class_relevancy  # noqa: E402
from ovseg3d.train import resolve_device  # noqa: E402


@dataclass
class Args:
    scene: Path = Path("scenes/demo")
    """Scene for the simulated teacher (needs labels/ and instances/)."""
    image_size: tuple[int, int] = (4032, 3024)
    """Width and height of the 3D-OVS-size image."""
    n_classes: int = 8
    """Classes assumed for the relevancy part of the cache size."""
    crops: int = 32
    """Crops timed per backend and precision (after one warm-up batch)."""
    batch: int = 32
    """Crops per CLIP forward pass in the throughput rows (a GPU wants more: the gpu session uses 256)."""
    backends: list[str] = field(default_factory=lambda: ["transformers", "open_clip"])
    full_image: bool = False
    """Also run one image of --image-size through the whole pipeline (slow on a CPU)."""
    device: str = "auto"
    threads: int = 0
    skip_synthetic: bool = False
    dense: bool = True
    """Time --clip-features dense on --dense-sizes."""
    dense_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(1000, 750), (4032, 3024)])
    out: Path = Path("bench/teachers.json")


def _view(width: int, height: int) -> TeacherView:
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, height // 16, width // 16, generator=g)
    image = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear")[0].permute(1, 2, 0)
    return TeacherView(0, (image * 255).to(torch.uint8))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_encoder(backend: str, half: bool, device: torch.device, tmp: Path):
    if backend == "transformers":
        folder = tmp / "clip-b16"
        if not folder.exists():
            save_tiny_clip(folder, image_size=224, projection_dim=512, vision=VIT_B16, text=TEXT_B)
        return TransformersClip(str(folder), device, half)
    from ovseg3d.teachers.clip import import_open_clip

    open_clip = import_open_clip()
    weights = tmp / "openclip-b16.pt"
    if not weights.exists():
        torch.save(open_clip.create_model("ViT-B-16").state_dict(), weights)
    return OpenClip("ViT-B-16", str(weights), device, half)


def bench_clip(args: Args, device: torch.device, tmp: Path) -> list[dict]:
    w, h = args.image_size
    view = _view(w, h)
    boxes = crop_boxes(w, h, 10)[: args.crops]
    per_image = count_crops(w, h, TeacherConfig())
    rows = []
    for backend in args.backends:
        for half in (False, True):
            try:
                enc = build_encoder(backend, half, device, tmp)
            except TeacherError as exc:
                rows.append({"backend": backend, "skipped": str(exc)})
                break
            precision = str(enc.dtype).replace("torch.", "") if enc.dtype is not None else "float32"
            if half and enc.dtype is None:
                continue  # no reduced precision on this device
            batch = min(len(boxes), args.batch)
            enc.encode_crops(view, boxes[:batch])  # warm-up
            _sync(device)
            start = time.perf_counter()
            for i in range(0, len(boxes), batch):
                enc.encode_crops(view, boxes[i : i + batch])
            _sync(device)
            rate = len(boxes) / (time.perf_counter() - start)
            rows.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "crops_per_s": round(rate, 2),
                    "crops_per_image": per_image,
                    "s_per_image": round(per_image / rate, 1),
                }
            )
    return rows


def bench_dino(args: Args, device: torch.device, tmp: Path) -> dict:
    folder = tmp / "dino-b8"
    if not folder.exists():
        save_tiny_dino(folder, "vit", sizes=VIT_B8 | {"image_size": 224})
    cfg = TeacherConfig()
    dino = TransformersDino(str(folder), device, cfg.dino_long_side, cfg.half)
    view = _view(*args.image_size)
    dino.encode_patches(view)
    _sync(device)
    start = time.perf_counter()
    out = dino.encode_patches(view)
    _sync(device)
    precision = str(dino.dtype).replace("torch.", "") if dino.dtype is not None else "float32"
    return {
        "model": "ViT-B/8",
        "precision": precision,
        "grid": list(out.shape),
        "s_per_image": round(time.perf_counter() - start, 2),
    }


def cache_bytes(args: Args, cfg: TeacherConfig, dino_grid: list[int]) -> dict:
    w, h = args.image_size
    fw, fh = feature_size(w, h, cfg.feature_long_side)
    rw, rh = feature_size(w, h, cfg.relevancy_long_side)
    s = cfg.n_scales()
    parts = {
        "clip": fw * fh * s * 512 * 2,
        "relevancy": rw * rh * s * args.n_classes * 2,
        "dino": dino_grid[0] * dino_grid[1] * dino_grid[2] * 2,
    }
    return {k + "_mib": round(v / 2**20, 2) for k, v in parts.items()} | {
        "total_mib": round(sum(parts.values()) / 2**20, 2)
    }


def full_image(args: Args, device: torch.device, tmp: Path) -> dict:
    cfg = TeacherConfig()
    enc = build_encoder("transformers", cfg.half, device, tmp)
    folder = tmp / "dino-b8"
    dino = TransformersDino(str(folder), device, cfg.dino_long_side, cfg.half)
    w, h = args.image_size
    view = _view(w, h)
    text = enc.encode_text([f"class {i}" for i in range(args.n_classes)])
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=count_crops(w, h, cfg), unit="crop") as bar:
        feats = multiscale_features(enc, view, cfg, feature_size(w, h, cfg.relevancy_long_side), None, bar.update)
    clip_s = time.perf_counter() - start
    class_relevancy(feats, text)
    shrink_features(feats, *feature_size(w, h, cfg.feature_long_side))
    dino.encode_patches(view)
    _sync(device)
    return {
        "clip_s": round(clip_s, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "crops": count_crops(w, h, cfg),
    }


def bench_dense(args: Args, device: torch.device, tmp: Path, crop_rows: list[dict]) -> list[dict]:
    """Dense (ProxyCLIP) teachers per photo size, beside the crops at the crop rate measured in ``crop_rows``."""
    from ovseg3d.teachers.extract import dense_encoder

    cfg = TeacherConfig(clip_features="dense")
    enc = build_encoder("transformers", cfg.half, device, tmp)
    folder = tmp / "dino-b8"
    if not folder.exists():
        save_tiny_dino(folder, "vit", sizes=VIT_B8 | {"image_size": 224})
    dino = TransformersDino(str(folder), device, cfg.dino_long_side, cfg.half)
    precision = str(enc.dtype).replace("torch.", "") if enc.dtype is not None else "float32"
    rate = next(
        (r["crops_per_s"] for r in crop_rows if r.get("backend") == "transformers" and r.get("precision") == precision),
        None,
    )
    text = enc.encode_text([f"class {i}" for i in range(args.n_classes)])
    rows = []
    for proxy, (w, h) in [(p, size) for p in ("window", "image") for size in args.dense_sizes]:
        dense = dense_encoder(dataclasses.replace(cfg, dense_proxy=proxy), (enc, dino))
        dense.encode_view(_view(cfg.dense_window, cfg.dense_window), (8, 8))  # warm-up: one window
        view = _view(w, h)
        _sync(device)
        start = time.perf_counter()
        feats = dense.encode_view(view, feature_size(w, h, cfg.relevancy_long_side))
        _sync(device)
        map_s = time.perf_counter() - start
        class_relevancy(feats, text.to(feats.device))
        if dense.fda_patches(view) is None:  # FDA's own DINO pass, as extraction runs it
            dino.encode_patches(view)
        _sync(device)
        total_s = time.perf_counter() - start
        crops = count_crops(w, h, cfg)
        crops_s = crops / rate if rate else None
        rows.append(
            {
                "size": [w, h],
                "proxy": proxy,
                "precision": precision,
                "windows": dense.windows(w, h),
                "dense_map_s": round(map_s, 2),
                "dense_total_s": round(total_s, 2),
                "crops": crops,
                "crops_s": None if crops_s is None else round(crops_s, 1),
                "speedup": None if crops_s is None else round(crops_s / total_s, 1),
                "scene_30_photos_min": round(30 * total_s / 60, 2),
            }
        )
    return rows


def bench_synthetic(args: Args, device: torch.device, tmp: Path) -> dict:
    scene = load_scene(args.scene)
    cfg = TeacherConfig(kind="synthetic", cache_dir=tmp / "synthetic")
    start = time.perf_counter()
    feats = ensure_features(scene, cfg, device, force=True, log=lambda s: None)
    seconds = time.perf_counter() - start
    scores = teacher_scores(feats, scene) or {}
    info = describe(feats)
    return {
        "scene": str(args.scene),
        "views": info["views"],
        "seconds": round(seconds, 2),
        "mib_per_view": info["mib_per_view"],
        **{k: scores.get(k) for k in ("miou", "accuracy", "per_class_iou", "n_views")},
        "settings": {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith("syn_")},
    }


def main(args: Args) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "cpu_bf16": half_dtype(torch.device("cpu"), True) is not None,
        },
        "image_size": list(args.image_size),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["clip"] = bench_clip(args, device, tmp)
        print(f"\nCLIP ViT-B/16 crops ({args.image_size[0]}x{args.image_size[1]} image, random weights)")
        print(f"{'backend':<14}{'precision':<11}{'crops/s':>9}{'crops/img':>11}{'s/img':>9}")
        for r in result["clip"]:
            if "skipped" in r:
                print(f"{r['backend']:<14}skipped: {r['skipped'][:90]}")
            else:
                print(
                    f"{r['backend']:<14}{r['precision']:<11}{r['crops_per_s']:>9.2f}{r['crops_per_image']:>11}{r['s_per_image']:>9.1f}"
                )
        result["dino"] = bench_dino(args, device, tmp)
        print(
            f"\nDINO ViT-B/8 ({result['dino']['precision']}): grid {result['dino']['grid']}, {result['dino']['s_per_image']} s/image"
        )
        result["per_image"] = cache_bytes(args, TeacherConfig(), result["dino"]["grid"])
        print(f"cache per image: {result['per_image']}")
        if args.full_image:
            result["per_image"]["measured"] = full_image(args, device, tmp)
            print(f"full image, measured: {result['per_image']['measured']}")
        if args.dense:
            result["dense"] = bench_dense(args, device, tmp, result["clip"])
            print("\ndense CLIP (ProxyCLIP, ViT-B/16 + DINO ViT-B/8 proxy, 336 px windows) per photo, beside the crops")
            print(
                f"{'photo':<11}{'precision':<10}{'windows':>8}{'dense s':>9}{'crops':>7}{'crops s':>9}{'speed-up':>10}{'30 photos':>11}"
            )
            for r in result["dense"]:
                crops_s = "-" if r["crops_s"] is None else f"{r['crops_s']:.1f}"
                speedup = "-" if r["speedup"] is None else f"{r['speedup']:.0f}x"
                print(
                    f"{r['size'][0]}x{r['size'][1]:<6}{r['proxy']:<8}{r['precision']:<10}{r['windows']:>8}{r['dense_total_s']:>9.2f}"
                    f"{r['crops']:>7}{crops_s:>9}{speedup:>10}{r['scene_30_photos_min']:>9.1f} min"
                )
        if not args.skip_synthetic:
            result["synthetic"] = bench_synthetic(args, device, tmp)
            s = result["synthetic"]
            print(
                f"\nsimulated teacher on {s['scene']}: {s['views']} views in {s['seconds']} s, {s['mib_per_view']} MiB/view, "
                f"2D teacher mIoU {s['miou']} / accuracy {s['accuracy']} on {s['n_views']} annotated views"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
