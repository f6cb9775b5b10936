"""LERF-OVS in one command: every scene through the whole method, then LangSplat's two 2D figures of each labelled
frame's text queries, beside LERF's and LangSplat's published figures.

The dataset is LangSplat's ``lerf_ovs`` download: the scenes figurines, ramen, teatime and waldo_kitchen, each a
COLMAP scene (``<scene>/images/``, ``<scene>/sparse/0/``), and ``label/<scene>/frame_XXXXX.json`` (a polygon and a
box per object, the category its text query; :mod:`ovseg3d.data.lerf_ovs`). Every scene folder found in
DATASET_DIR runs (a partial download too; ``--scenes`` picks some): the stages teachers, geometry, distill and eval
of :func:`ovseg3d.pipeline.run_scene` into ``--output/<scene>`` (a run that is there is continued; ``--fresh``
starts over).

Protocol: LERF-OVS's 2D protocol as LangSplat's ``eval/evaluate_iou_loc.py`` computes it (not OpenGaussian's 3D
selection of points). A label frame is the scene's image with the same file name stem; frames whose image is not in
the scene (no such file, or not registered in the COLMAP model) are reported and left out. For each frame and each
category in it, the run renders the relevancy of the category's text at that view (LERF's relevancy against the
canonical phrases object / things / stuff / texture, as ``ovseg3d render --query`` draws it), brought to the label's
size, and scores it: localisation, a hit when the peak of its 30 x 30 pixel box mean lies in one of the category's
boxes; IoU of its thresholded mask (0.4 after LangSplat's stretch, 7 x 7 majority clean-up) with the category's
polygons. Per scene: the share of hits and the mean IoU over its (frame, category) pairs (LangSplat's "overall" is
the mean of the scenes' figures). LangSplat scores its training views: the label frames are among the photos, and
here too they are trained on unless the run's held-out split takes them (the JSON says which).

Every figure names its teacher: simulated (``--teacher synthetic``, from a generated scene's label maps), or CLIP +
DINO with the model names (``--random-weights`` says the folders hold random weights). Before any work a missing
scene part (images, COLMAP model, labels), or a CLIP / DINO model that is not available offline, is one line and
exit status 2.

    python scripts/bench_lerf_ovs.py data/lerf_ovs                            # every scene, cpu preset
    python scripts/bench_lerf_ovs.py data/lerf_ovs --scenes ramen --preset gpu --device cuda
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_3dovs import (  # noqa: E402 - the scripts folder is put on the path above
    Args as CommonArgs,
)
from bench_3dovs import (  # noqa: E402
    checked_scenes,
    fmt,
    image_count,
    mean,
    read_eval,
    result_header,
    run_one,
    teacher_info,
    used_teacher,
    write_json,
)

from ovseg3d.data.lerf_ovs import (  # noqa: E402
    LABEL_DIR,
    MASK_THRESHOLD,
    SMOOTH_PX,
    FrameLabel,
    frame_scores,
    label_files,
    read_labels,
    summarise,
)
from ovseg3d.errors import UsageError  # noqa: E402

SCENES = ("figurines", "ramen", "teatime", "waldo_kitchen")

# Published per-scene figures (%) on LERF-OVS, 2D protocol. Source: LangSplat (Qin et al., CVPR 2024,
# arXiv:2312.16084v2), its LERF-OVS localisation-accuracy and IoU tables (LERF's rows as LangSplat reports them), read
# through a summary note that quotes both tables; LangSplat's IoU row is also quoted in CCL-LGS's (arXiv:2505.20469)
# LERF table. LangSplatV2's per-scene figures were not found: its mean mIoU (59.9, the project's REFERENCE.md) only.
PUBLISHED: dict[str, dict[str, dict[str, float | None]]] = {
    "localisation": {
        "LERF": {"ramen": 62.0, "figurines": 75.0, "teatime": 84.8, "waldo_kitchen": 72.7},
        "LangSplat": {"ramen": 73.2, "figurines": 80.4, "teatime": 88.1, "waldo_kitchen": 95.5},
    },
    "miou": {
        "LERF": {"ramen": 28.2, "figurines": 38.6, "teatime": 45.0, "waldo_kitchen": 37.9},
        "LangSplat": {"ramen": 51.2, "figurines": 44.7, "teatime": 65.1, "waldo_kitchen": 44.5},
    },
}
# Published means over the four scenes: LangSplat's tables ("overall"), LangSplatV2 from REFERENCE.md.
PUBLISHED_MEAN: dict[str, dict[str, float]] = {
    "localisation": {"LERF": 73.6, "LangSplat": 84.3},
    "miou": {"LERF": 37.4, "LangSplat": 51.4, "LangSplatV2": 59.9},
}


@dataclass
class Args(CommonArgs):
    output: Path = Path("bench/runs/lerf_ovs")
    """Run folders, one a scene."""
    json_path: Annotated[Path, tyro.conf.arg(name="json")] = Path("bench/lerf_ovs.json")
    """The JSON of every figure."""
    mask_threshold: float = MASK_THRESHOLD
    """The IoU's threshold on the stretched relevancy (LangSplat's --mask_thresh 0.4)."""
    smooth_px: int = SMOOTH_PX
    """Side of the box mean, in pixels of the label's frame (LangSplat: 30)."""


def looks_like_lerf(folder: Path) -> bool:
    return folder.name in SCENES or any((folder / p).exists() for p in ("images", "sparse"))


def missing_lerf(scene: Path) -> list[str]:
    """What a LERF-OVS scene lacks: images, a COLMAP model, labels (one of whose frames is in images/); a label
    file that cannot be read."""
    from ovseg3d.data.colmap import find_model
    from ovseg3d.data.scene import SceneError

    out = []
    images = scene / "images"
    if not image_count(images):
        out.append(f"{scene.name}: no images in images/")
    if find_model(scene) is None:
        out.append(f"{scene.name}: no COLMAP model (sparse/0/ with cameras and images .bin or .txt)")
    folder = scene.parent / LABEL_DIR / scene.name
    if not label_files(folder):
        return [*out, f"{scene.name}: no labels ({folder}/frame_XXXXX.json)"]
    try:
        labels = read_labels(folder)
    except SceneError as exc:
        return [*out, str(exc)]
    stems = {p.stem for p in images.iterdir()} if images.is_dir() else set()
    if image_count(images) and not any(label.stem in stems for label in labels):
        out.append(f"{scene.name}: none of the {len(labels)} label frames is an image in images/")
    return out


def relevancy_maps(run: Path, labels: list[FrameLabel], device: str) -> tuple[dict, dict, list[str]]:
    """Each label frame's relevancy of each of its categories, rendered from the run at the frame's view and
    resized to the label's size: ``({frame: {category: [H, W]}}, {frame: {"view", "trained"}}, frames not in the
    scene)``."""
    import torch
    import torch.nn.functional as F

    from ovseg3d.distill import load_distiller
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.teachers.extract import text_encoder
    from ovseg3d.teachers.relevancy import CANONICAL_NEGATIVES, query_relevancy
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, device)
    scene = trainer.scene
    distiller = load_distiller(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    if distiller is None:
        raise UsageError(f"{run}: no semantic field to query (trained without a teacher)")
    views = {p.stem: i for i, p in enumerate(scene.image_paths)}
    encoder = text_encoder(trainer.cfg.teachers, trainer.device)
    negatives = encoder.encode_text(list(CANONICAL_NEGATIVES))
    maps: dict[str, dict] = {}
    info: dict[str, dict] = {}
    absent = []
    for label in labels:
        view = views.get(label.stem)
        if view is None:
            absent.append(label.name)
            continue
        queries = list(label.masks)
        maps[label.name] = {}
        with torch.no_grad():
            feats = distiller.render_semantics(scene.cameras, view, scene.near_far)
            for query, emb in zip(queries, encoder.encode_text(queries)):
                rel = query_relevancy(feats, emb.to(feats.device), negatives.to(feats.device)).float()
                size = (label.height, label.width)
                rel = F.interpolate(rel[None, None], size=size, mode="bilinear", align_corners=False)
                maps[label.name][query] = rel[0, 0].cpu().numpy()
        info[label.name] = {"view": view, "trained": view in scene.train_ids}
    return maps, info, absent


def score_scene(run: Path, labels: list[FrameLabel], args: Args) -> dict[str, Any]:
    """LangSplat's figures of a trained run on its label frames."""
    maps, info, absent = relevancy_maps(run, labels, args.device)
    by_name = {label.name: label for label in labels}
    frames = {name: frame_scores(rel, by_name[name], args.mask_threshold, args.smooth_px) for name, rel in maps.items()}
    return {
        **summarise(frames),
        "frames": {name: {**info[name], "queries": scores} for name, scores in frames.items()},
        "frames_not_in_scene": absent,
    }


def print_table(result: dict) -> None:
    rows = result["scenes"]
    labels = sorted({r["teacher"]["label"] for r in rows.values()})
    print(f"\nLERF-OVS (2D protocol), preset {result['preset']}, teacher: {' | '.join(labels)}; {result['device']}")
    cols = [(fig, m) for fig in ("localisation", "miou") for m in PUBLISHED[fig]]
    head = f"{'scene':<14} {'loc acc':>7} {'mIoU':>6}" + "".join(
        f" {m + (' loc' if f == 'localisation' else ' mIoU'):>14}" for f, m in cols
    )
    print(head + f" {'queries':>7} {'seconds':>8}  teacher")
    for name, r in rows.items():
        line = f"{name:<14} {fmt(r.get('localisation'), 7)} {fmt(r.get('miou'), 6)}"
        line += "".join(f" {fmt(PUBLISHED[f][m].get(name), 14)}" for f, m in cols)
        status = "" if r["status"] == "done" else f"  FAILED: {r.get('error', '')[:80]}"
        print(line + f" {r.get('n_queries', 0):>7} {r['seconds']:>8.0f}  {r['teacher']['label']}{status}")
        if r.get("frames_not_in_scene"):
            print(f"{'':<14} label frames not in the scene (left out): {', '.join(r['frames_not_in_scene'])}")
    ours = [r for r in rows.values() if r.get("miou") is not None]
    line = f"{'mean':<14} {fmt(mean([r['localisation'] for r in ours]), 7)} {fmt(mean([r['miou'] for r in ours]), 6)}"
    names = [n for n, r in rows.items() if r.get("miou") is not None]
    line += "".join(
        f" {fmt(mean([v for n in names if (v := PUBLISHED[f][m].get(n)) is not None]), 14)}" for f, m in cols
    )
    print(line)
    published = "; ".join(f"{fig}: " + ", ".join(f"{k} {v}" for k, v in d.items()) for fig, d in PUBLISHED_MEAN.items())
    print(
        "(%, per scene over its (frame, query) pairs; the papers' columns are their per-scene figures, their mean row "
        f"over the scenes run here; '—': no published figure found. Published means over the four scenes: {published})"
    )


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    checked = checked_scenes(args, looks_like_lerf, missing_lerf, "bench_lerf_ovs", skip=(LABEL_DIR,))
    if checked is None:
        return 2
    scenes, cfg, kinds = checked
    result: dict[str, Any] = {
        **result_header(
            args, "LERF-OVS 2D (LangSplat's evaluate_iou_loc.py): localisation accuracy and mIoU of the label frames"
        ),
        "mask_threshold": args.mask_threshold,
        "smooth_px": args.smooth_px,
        "published": PUBLISHED,
        "published_mean": PUBLISHED_MEAN,
        "published_source": "LangSplat (arXiv:2312.16084v2), its LERF-OVS tables; LangSplatV2's mean: REFERENCE.md",
        "scenes": {},
    }
    for scene in scenes:
        teacher = teacher_info(kinds[scene.name], cfg, args.random_weights)
        run = args.output / scene.name
        print(f"\n== {scene.name} ({args.preset} preset, teacher: {teacher['label']}) -> {run}", flush=True)
        row: dict[str, Any] = {**run_one(scene, run, cfg, kinds[scene.name], args.fresh), "teacher": teacher}
        if row["status"] == "done":
            row["teacher"] = used_teacher(run, teacher, args.random_weights)
            try:
                row.update(score_scene(run, read_labels(args.dataset / LABEL_DIR / scene.name), args))
            except UsageError as exc:
                row.update(status="failed", error=str(exc))
            row["psnr"] = read_eval(run).get("psnr")
        result["scenes"][scene.name] = row
        write_json(result, args.json_path)
    print_table(result)
    print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
