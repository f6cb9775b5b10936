"""The published benchmarks (``scripts/bench_3dovs.py`` and ``scripts/bench_lerf_ovs.py`` folded): each scene
folder of the 3D-OVS dataset or of LERF-OVS through the whole method, scored by the dataset's protocol, beside the
papers' figures (:data:`PUBLISHED`), for users with the data and the CLIP / DINO weights. docs/published.md has it all.

A scene is a folder given with ``--scenes`` (a partial download too). Its layout says its dataset: LERF-OVS where it
has ``sparse/`` or LangSplat's labels beside it (``../label/<scene>/frame_XXXXX.json``, :mod:`ovseg3d.data.lerf_ovs`;
images and a COLMAP model), else 3D-OVS (Kunhao-Liu/3D-OVS's LLFF folders: ``images/``, ``poses_bounds.npy``,
``segmentations/classes.txt``, ``segmentations/<view>/<class>.png``). Each (scene, seed) runs the stages teachers,
geometry, distill and eval of :func:`ovseg3d.pipeline.run_scene` into ``WORK/published/<scene>-s<seed>``; a run
that is there is continued, its finished stages kept (a variant changes the scoring only: every variant scores the
same run). Before a scene's work, what it lacks (images, poses, labels, a readable label file; the simulated
teacher's label maps, or CLIP / DINO weights not available offline) is one line.

The teacher is CLIP + DINO (the preset's models, or ``--set teachers.clip_model=DIR teachers.dino_model=DIR``);
``--set teachers.kind=synthetic`` takes the simulated teacher of a generated scene's label maps (the result says
which). The variant ``random_weights`` marks figures of folders holding random weights (timing runs).

3D-OVS protocol (``ovseg3d eval``): on the annotated views, held out of training, each pixel takes the class whose
text its rendered feature is nearest; ``miou`` is the mean of every per-view, per-class IoU, ``accuracy`` the share of
labelled pixels right; beside them the 2D teacher's (``teacher_miou``, ``teacher_accuracy``), ``miou_gt_classes``,
``iou_{CLASS}``, ``n_annotated_views``, ``annotated_views_trained`` (1: some were trained on) and ``psnr``.

LERF-OVS protocol (LangSplat's ``eval/evaluate_iou_loc.py``, 2D): a label frame is the scene's image of the same file
stem (frames not in the scene are listed and left out: ``frames_not_in_scene``). For each frame and category the run
renders the LERF relevancy of the category's text (against object / things / stuff / texture, as ``ovseg3d render
--query``) at the label's size; ``localisation``: the share of hits (the peak of the 30 x 30 box mean in one of the
category's boxes); ``miou``: the mean IoU of the thresholded mask (0.4 after LangSplat's stretch, 7 x 7 majority
vote) with the polygons, over the (frame, category) pairs (``n_queries``); the variants ``smoothN`` and
``thresholdT`` change the box side and the threshold. Each frame's scores: ``RUN/lerf_ovs-VARIANT.json``.

Both add each stage's ``{STAGE}_seconds`` and ``seconds``.

    ovseg3d bench run published --scenes DATA/3dovs/*/ --out results/3dovs.json
    ovseg3d bench run published --scenes DATA/lerf_ovs/{figurines,ramen,teatime,waldo_kitchen} --preset gpu \\
        --device cuda --set teachers.clip_model=models/clip teachers.dino_model=models/dino --out results/lerf_ovs.json
    python -m ovseg3d.bench.published results/3dovs.json results/lerf_ovs.json   # ours beside the papers'
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from ovseg3d.bench.harness import BenchError, Benchmark, Case
from ovseg3d.data.lerf_ovs import LABEL_DIR, MASK_THRESHOLD, SMOOTH_PX, label_files, read_labels

# Published per-scene figures (%). 3D-OVS: LangSplat (Qin et al., CVPR 2024, arXiv:2312.16084v2), its 3D-OVS table
# (five scenes, the 3D-OVS row as LangSplat reports it), read through two notes that quote it (a LangSplat summary,
# SAGA's Table 3). The 3D-OVS paper's figures for blue_sofa, covered_desk, office_desk, snacks and table, and any
# per-scene accuracy, were not found. LERF-OVS: LangSplat's localisation-accuracy and IoU tables (LERF's rows as
# LangSplat reports them), read through a summary note quoting both; LangSplat's IoU row is also in CCL-LGS's
# (arXiv:2505.20469) LERF table. Per-scene figures of GOI, GVR and LangSplatV2 were not found.
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "3D-OVS": {
        "3D-OVS mIoU": {"bed": 89.5, "bench": 89.3, "room": 92.8, "sofa": 74.0, "lawn": 88.2},
        "LangSplat mIoU": {"bed": 92.5, "bench": 94.2, "room": 94.1, "sofa": 90.0, "lawn": 96.1},
    },
    "LERF-OVS": {
        "LERF loc": {"ramen": 62.0, "figurines": 75.0, "teatime": 84.8, "waldo_kitchen": 72.7},
        "LangSplat loc": {"ramen": 73.2, "figurines": 80.4, "teatime": 88.1, "waldo_kitchen": 95.5},
        "LERF mIoU": {"ramen": 28.2, "figurines": 38.6, "teatime": 45.0, "waldo_kitchen": 37.9},
        "LangSplat mIoU": {"ramen": 51.2, "figurines": 44.7, "teatime": 65.1, "waldo_kitchen": 44.5},
    },
}
# Published dataset means: 3D-OVS over its five scenes (the project's REFERENCE.md); LERF-OVS over the four scenes
# (LangSplat's tables, "overall"; LangSplatV2 from REFERENCE.md).
PUBLISHED_MEAN: dict[str, dict[str, float]] = {
    "3D-OVS mIoU": {"3D-OVS": 86.8, "GOI": 90.6, "LangSplat": 93.4, "GVR": 95.4},
    "LERF-OVS localisation": {"LERF": 73.6, "LangSplat": 84.3},
    "LERF-OVS mIoU": {"LERF": 37.4, "LangSplat": 51.4, "LangSplatV2": 59.9},
}
COLUMNS = {
    "3D-OVS": (("miou", "mIoU"), ("accuracy", "accuracy"), ("teacher_miou", "2D teacher mIoU")),
    "LERF-OVS": (("localisation", "loc"), ("miou", "mIoU")),
}
"""Our figures in each dataset's table, before the papers' columns (then LERF-OVS's queries and frames left out,
and the seconds)."""
SMOOTH, THRESHOLDS = (8, 15), (0.3, 0.5)
VARIANTS: dict[str, dict] = {
    "default": {},
    "random_weights": {},
    **{f"smooth{n}": {} for n in SMOOTH},
    **{f"threshold{t:g}": {} for t in THRESHOLDS},
}
"""Scoring only (every variant scores the scene's one run): ``smoothN`` the box side in pixels, ``thresholdT`` the
mask's threshold (LERF-OVS); ``random_weights`` marks its figures as made with random weights."""


def image_count(folder: Path) -> int:
    from ovseg3d.data.llff import is_image_file

    return sum(1 for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else 0


def is_lerf(scene: Path) -> bool:
    return (scene / "sparse").is_dir() or (scene.parent / LABEL_DIR / scene.name).is_dir()


def missing(scene: Path, cfg: Any) -> list[str]:  # noqa: ANN401 - a TrainConfig
    """What a scene lacks for its dataset and for the teacher of ``cfg`` (the one-line errors of
    :func:`ovseg3d.teachers.hub.require_model` for CLIP / DINO weights not available offline)."""
    from ovseg3d.data.colmap import find_model
    from ovseg3d.data.scene import SceneError
    from ovseg3d.teachers.clip import clip_backend
    from ovseg3d.teachers.config import TeacherError
    from ovseg3d.teachers.hub import require_model

    images, out = scene / "images", []
    if not image_count(images):
        out.append(f"{scene.name}: no images in images/")
    if is_lerf(scene):
        if find_model(scene) is None:
            out.append(f"{scene.name}: no COLMAP model (sparse/0/ with cameras and images .bin or .txt)")
        folder = scene.parent / LABEL_DIR / scene.name
        try:
            labels = read_labels(folder) if label_files(folder) else []
        except SceneError as exc:
            out.append(str(exc))
            labels = None
        stems = {p.stem for p in images.iterdir()} if images.is_dir() else set()
        if labels == []:
            out.append(f"{scene.name}: no labels ({folder}/frame_XXXXX.json)")
        elif labels and image_count(images) and not any(label.stem in stems for label in labels):
            out.append(f"{scene.name}: none of the {len(labels)} label frames is an image in images/")
    else:
        if not (scene / "poses_bounds.npy").is_file():
            out.append(f"{scene.name}: no poses_bounds.npy")
        seg = scene / "segmentations"
        if not (seg / "classes.txt").is_file() or not any(p.is_dir() and image_count(p) for p in seg.glob("*")):
            out.append(f"{scene.name}: no labels (segmentations/classes.txt and segmentations/<view>/<class>.png)")
    t = cfg.teachers
    if t.kind == "synthetic":
        n = image_count(images)
        if not n or any(image_count(scene / d) < n for d in ("labels", "instances")):
            out.append(f"{scene.name}: the simulated teacher needs labels/ and instances/ of every image")
    else:
        models = [(t.dino_model, "DINO model", "--set teachers.dino_model=")]
        if clip_backend(t) == "transformers":
            models.insert(0, (t.clip_model, "CLIP model", "--set teachers.clip_model="))
        for name, what, option in models:
            try:
                require_model(name, what, option)
            except TeacherError as exc:
                out.append(str(exc).replace("= /path", "=/path"))
    return out


def relevancy_maps(run: Path, labels: list, device: str) -> tuple[dict, dict, list[str]]:
    """Each label frame's relevancy of each of its categories, rendered from the run at the frame's view and resized
    to the label's size: ``({frame: {category: [H, W]}}, {frame: {"view", "trained"}}, frames not in the scene)``."""
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
        raise BenchError(f"{run}: no semantic field to query (trained without a teacher)")
    views = {p.stem: i for i, p in enumerate(scene.image_paths)}
    encoder = text_encoder(trainer.cfg.teachers, trainer.device)
    negatives = encoder.encode_text(list(CANONICAL_NEGATIVES))
    maps: dict[str, dict] = {}
    info: dict[str, dict] = {}
    for label in (label for label in labels if label.stem in views):
        view, queries = views[label.stem], list(label.masks)
        maps[label.name] = {}
        with torch.no_grad():
            feats = distiller.render_semantics(scene.cameras, view, scene.near_far)
            for query, emb in zip(queries, encoder.encode_text(queries)):
                rel = query_relevancy(feats, emb.to(feats.device), negatives.to(feats.device)).float()
                rel = F.interpolate(rel[None, None], (label.height, label.width), mode="bilinear", align_corners=False)
                maps[label.name][query] = rel[0, 0].cpu().numpy()
        info[label.name] = {"view": view, "trained": view in scene.train_ids}
    return maps, info, [label.name for label in labels if label.stem not in views]


def lerf_scores(case: Case, scene: Path, run: Path) -> dict[str, float]:
    """LangSplat's figures of the run on the scene's label frames, with the variant's box side and threshold; each
    frame's scores written to ``RUN/lerf_ovs-VARIANT.json``."""
    from ovseg3d.data.lerf_ovs import frame_scores, summarise

    parts = case.variant.split("+")
    smooth = next((int(p[6:]) for p in parts if p.startswith("smooth")), SMOOTH_PX)
    threshold = next((float(p[9:]) for p in parts if p.startswith("threshold")), MASK_THRESHOLD)
    labels = read_labels(scene.parent / LABEL_DIR / scene.name)
    maps, info, absent = relevancy_maps(run, labels, case.device)
    if absent:
        print(f"{scene.name}: label frames not in the scene (left out): {', '.join(absent)}", flush=True)
    if not maps:
        raise BenchError(f"{case.label}: none of the label frames is a view of the scene")
    by_name = {label.name: label for label in labels}
    frames = {name: frame_scores(rel, by_name[name], threshold, smooth) for name, rel in maps.items()}
    detail = {name: {**info[name], "queries": scores} for name, scores in frames.items()}
    scores = {"mask_threshold": threshold, "smooth_px": smooth, "frames": detail, "frames_not_in_scene": absent}
    (run / f"lerf_ovs-{case.variant}.json").write_text(json.dumps(scores, indent=2) + "\n")
    trained = sum(f["trained"] for f in info.values())
    return {**summarise(frames), "frames": len(frames), "frames_trained": trained, "frames_not_in_scene": len(absent)}


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.pipeline import run_scene

    cfg = case.config()
    if cfg.teachers.kind == "auto":  # the published benchmarks' teacher is CLIP + DINO unless set otherwise
        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="clip"))
    cfg = dataclasses.replace(cfg, device=case.device, chosen=tuple(case.overrides))
    scene = case.folder.resolve()
    problems = missing(scene, cfg)
    if problems:
        raise BenchError("; ".join(problems))
    run = case.work / "published" / f"{scene.name}-s{case.seed}"  # every variant scores this one run
    start = time.perf_counter()
    result = run_scene(scene, run, ("teachers", "geometry", "distill", "eval"), cfg)
    if result.status != "done":
        raise BenchError(f"{case.label}: {result.failed_stage} failed: {result.error}")
    figures = {f"{stage}_seconds": s for stage, s in result.seconds.items()}
    figures["seconds"] = round(time.perf_counter() - start, 1)
    metrics = json.loads((run / "eval.json").read_text())
    dataset = "LERF-OVS" if is_lerf(scene) else "3D-OVS"
    if dataset == "LERF-OVS":
        figures |= lerf_scores(case, scene, run)
        keys: tuple[str, ...] = ("psnr",)
    else:
        keys = ("miou", "accuracy", "teacher_miou", "teacher_accuracy", "miou_gt_classes", "psnr")
        keys += ("n_annotated_views", "annotated_views_trained")
        per_class = metrics.get("per_class_iou", {}).items()
        figures |= {f"iou_{c.replace(' ', '_')}": v for c, v in per_class if v is not None}
    figures |= {k: float(metrics[k]) for k in keys if metrics.get(k) is not None}
    beside = ", ".join(f"{m} {v[scene.name]}" for m, v in PUBLISHED[dataset].items() if scene.name in v)
    print(f"{scene.name} ({dataset}): mIoU {figures.get('miou')}; published: {beside or 'none found'}", flush=True)
    return figures


def markdown_tables(data: dict) -> str:
    """Ours beside the papers' per-scene figures from a result of this benchmark, one table a dataset: a row per
    scene and variant (the median over repeats), a mean row (the papers' over the scenes run that they report), and
    the papers' dataset means; '—': no figure."""

    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    def mean(xs: list) -> float | None:
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    figures = {k: v["median"] for k, v in data["figures"].items()}
    rows = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in figures if k.endswith("/miou")))
    teacher = ", ".join(str(data["teacher"][k]) for k in ("kind", "errors", "weights") if data["teacher"].get(k))
    out = []
    for dataset, ours in COLUMNS.items():
        mine = [r for r in rows if (f"{r}/localisation" in figures) == (dataset == "LERF-OVS")]
        if not mine:
            continue
        papers, lerf = PUBLISHED[dataset], dataset == "LERF-OVS"
        head = ["scene", *(h for _, h in ours), *papers, *(["queries", "frames left out"] if lerf else []), "seconds"]
        lines = [f"{dataset}, teacher {teacher}; {data['machine']['description']}, commit {data['commit']}", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in mine:
            scene, variant = r.split("/")
            cells = [scene if variant == "default" else f"{scene} ({variant})"]
            cells += [fmt(figures.get(f"{r}/{k}")) for k, _ in ours] + [fmt(p.get(scene)) for p in papers.values()]
            cells += [f"{figures.get(f'{r}/{k}', 0):.0f}" for k in ("n_queries", "frames_not_in_scene") if lerf]
            lines.append("| " + " | ".join([*cells, f"{figures[f'{r}/seconds']:.0f}"]) + " |")
        cells = ["mean", *(fmt(mean([figures.get(f"{r}/{k}") for r in mine])) for k, _ in ours)]
        cells += [fmt(mean([p.get(r.split("/")[0]) for r in mine])) for p in papers.values()]
        lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
        means = [f"{k}: " + ", ".join(f"{m} {v}" for m, v in d.items()) for k, d in PUBLISHED_MEAN.items()]
        lines += ["", f"(%; published means: {'; '.join(m for m in means if m.startswith(dataset))})"]
        out.append("\n".join(lines))
    return "\n\n".join(out)


BENCHMARK = Benchmark(
    name="published",
    doc="the 3D-OVS dataset and LERF-OVS (scene folders: --scenes), their papers' protocols, beside the papers' "
    "figures; for the data and real CLIP / DINO weights",
    measure=measure,
    figures=("miou", "seconds"),
    scenes=(),  # the datasets' scene folders: --scenes
    variants=VARIANTS,
    default_variants=("default",),
    repeats=1,
    teacher={"kind": "clip", "weights": "real"},
)

if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(markdown_tables(json.loads(Path(path).read_text())))
