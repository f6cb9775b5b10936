"""The headline tables, made from the result files: README.md's and the top of docs/benchmarks.md.

Each :class:`Row` names the result file its figure comes from, how to say the figure, and the command that makes
the file. A row whose file is missing says so and names the command; a file measured before the row's ``since``
(a change that moved the figure) is called stale. Nothing is carried over by hand: a figure in these tables is in a
file under ``results/``.

``ovseg3d bench table --write`` rewrites the blocks between the marker comments; ``--check`` (and a test) fails
when a block differs from what the files give.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ovseg3d.bench import result as results
from ovseg3d.bench.harness import ROOT

RESULTS = ROOT / "results"
"""The committed result files (small JSON only)."""


def median(data: dict, key: str) -> float:
    return data["figures"][key]["median"]


def runs_range(data: dict, key: str, digits: int = 1, unit: str = "", scale: float = 1.0) -> str:
    """What follows a median: `` (min-max UNIT, N runs)``, `` (N runs alike)``, or nothing for one run; the values
    times ``scale`` (100: shares said in percent)."""
    f = data["figures"][key]
    if len(f["runs"]) == 1:
        return ""
    if f["min"] == f["max"]:
        return f" ({len(f['runs'])} runs alike)"
    return f" ({scale * f['min']:.{digits}f}-{scale * f['max']:.{digits}f}{unit}, {len(f['runs'])} runs)"


def percent(data: dict, key: str) -> str:
    """A share's median and range in percent: ``91.4 % (90.2-92.0 %, 3 runs)``."""
    return f"{100 * median(data, key):.1f} %" + runs_range(data, key, 1, " %", 100.0)


def spread(data: dict, key: str, digits: int = 1) -> str:
    """``median (min-max)``, or the one value when there was one run."""
    return f"{median(data, key):.{digits}f}" + runs_range(data, key, digits)


def distill_figure(data: dict) -> str:
    """3D against 2D over every scene: how many medians reach the teacher, the gains, the demo's median and range."""
    scenes = sorted({k.split("/")[0] for k in data["figures"] if k.endswith("/default/miou")})
    gains = [median(data, f"{s}/default/miou") - median(data, f"{s}/default/teacher_miou") for s in scenes]
    above = sum(g >= 0 for g in gains)
    seeds = len(data["figures"][f"{scenes[0]}/default/miou"]["runs"])
    widest = max(
        data["figures"][f"{s}/default/miou"]["max"] - data["figures"][f"{s}/default/miou"]["min"] for s in scenes
    )
    text = (
        f"3D at or above its 2D teacher on **{above} of {len(scenes)}** scenes in the median of {seeds} "
        f"distillation seeds ({min(gains):+.1f} to {max(gains):+.1f} points); seeds on one field spread by up to "
        f"{widest:.0f} points"
    )
    if "demo" in scenes:
        text += (
            f"; demo mIoU **{spread(data, 'demo/default/miou')}**, "
            f"2D teacher {median(data, 'demo/default/teacher_miou'):.1f}"
        )
    return text


def teacher_views_figure(data: dict) -> str:
    """Lifted 3D mIoU with the teachers on K views against all of them, per scene."""
    parts = []
    for scene in sorted({k.split("/")[0] for k in data["figures"] if k.endswith("/all/miou")}):
        ks = sorted(
            {int(k.split("/")[1][1:]) for k in data["figures"] if k.startswith(f"{scene}/k") and k.endswith("/miou")}
        )
        each = ", ".join(f"{k} views {spread(data, f'{scene}/k{k}/miou')}" for k in ks)
        parts.append(
            f"{scene}: all {median(data, f'{scene}/all/views'):.0f} views **{spread(data, f'{scene}/all/miou')}**, "
            f"{each} (2D teacher {median(data, f'{scene}/all/teacher_miou'):.1f})"
        )
    runs = sorted({len(f["runs"]) for k, f in data["figures"].items() if k.endswith("/miou")})
    said = "1 run each" if runs == [1] else f"{'-'.join(map(str, runs))} runs each, medians"
    return f"lifted 3D mIoU, {said}: " + "; ".join(parts)


def whole_figure(data: dict) -> str:
    """The whole method on one scene: held-out PSNR, 3D mIoU beside the 2D teacher's, the boxes, every stage's
    seconds (medians, with the range over the runs)."""
    k = next(key for key in data["figures"] if key.endswith("/psnr")).rsplit("/", 1)[0]
    text = (
        f"held out **{spread(data, f'{k}/psnr', 2)} dB**, mIoU **{spread(data, f'{k}/miou')}** (2D teacher "
        f"{median(data, f'{k}/teacher_miou'):.1f})"
    )
    if f"{k}/map25" in data["figures"]:
        text += f", boxes mAP@0.25 / @0.5 {spread(data, f'{k}/map25', 0)} / {spread(data, f'{k}/map50', 0)}"
    return text + f"; every stage and eval {spread(data, f'{k}/seconds', 0)} s"


def video_figure(data: dict) -> str:
    """Each variant's seconds, prepare included, and its held-out PSNR."""
    variants = sorted({k.split("/")[1] for k in data["figures"] if k.endswith("/wall_seconds")})
    scene = next(iter(data["figures"])).split("/")[0]
    return "; ".join(
        f"`{v}`: **{spread(data, f'{scene}/{v}/wall_seconds', 0)} s** (stages {median(data, f'{scene}/{v}/seconds'):.0f} s), "
        f"{spread(data, f'{scene}/{v}/psnr', 2)} dB held out"
        for v in variants
    )


def field_figure(data: dict) -> str:
    """Each scene's and variant's held-out PSNR / SSIM beside the training views' PSNR, at the steps it ran."""
    cases = sorted({k.rsplit("/", 1)[0] for k in data["figures"] if k.endswith("/psnr")})
    parts = []
    for k in cases:
        scene, variant = k.rsplit("/", 1)  # a scene given as a folder keeps its path in the key: its name is said
        text = f"{Path(scene).name} `{variant}` **{spread(data, f'{k}/psnr', 2)} dB** / {median(data, f'{k}/ssim'):.3f} held out"
        if f"{k}/train_view_psnr" in data["figures"]:
            text += f" (training views {median(data, f'{k}/train_view_psnr'):.2f})"
        parts.append(text)
    steps = median(data, f"{cases[0]}/steps")
    return f"{steps:.0f} steps: " + "; ".join(parts)


def export_figure(data: dict) -> str:
    """The demo's cloud against its true surfaces: points near them, their labels, the surface completed."""
    k = next(key for key in data["figures"] if key.endswith("/within_1pct")).rsplit("/", 1)[0]
    return (
        f"**{spread(data, f'{k}/within_1pct', 3)}** of the points within 1 % of the diagonal of a true surface "
        f"(median {median(data, f'{k}/median_distance_mm'):.1f} mm), labels right on "
        f"{spread(data, f'{k}/label_accuracy', 3)}, F-score at 1 % {spread(data, f'{k}/fscore_1pct', 3)}, "
        f"{median(data, f'{k}/points') / 1e3:.0f} k points"
    )


def coverage_figure(data: dict) -> str:
    """A real capture's cloud against its own field: the covered share of the solid pixels (and by depth third), the
    agreeing share of the points, at the steps the field ran."""
    k = next(key for key in data["figures"] if key.endswith("/coverage")).rsplit("/", 1)[0]
    thirds = " / ".join(f"{100 * median(data, f'{k}/coverage_{t}'):.0f}" for t in ("near", "middle", "far"))
    return (
        f"covers **{percent(data, f'{k}/coverage')}** of the "
        f"pixels its field renders solidly (near / middle / far third {thirds} %), "
        f"{100 * median(data, f'{k}/consistent_coverage'):.1f} % of those another view agrees with; precision "
        f"against the field {100 * median(data, f'{k}/coverage_precision'):.1f} %, "
        f"{median(data, f'{k}/points') / 1e3:.0f} k points"
    )


def walls_figure(data: dict) -> str:
    """The generated orbit room's walls with and without the occupancy grid's visibility record: median depth error,
    the share within 2 %, the wall's cells the grid marches, and the held-out PSNR."""
    cases = sorted({k.rsplit("/", 1)[0] for k in data["figures"] if k.endswith("/depth_wall_median_rel_error")})
    parts = []
    for k in cases:
        record = "record off" if "no_visibility" in k else "record on"
        parts.append(
            f"{record}: wall depth error **{percent(data, f'{k}/depth_wall_median_rel_error')}**, "
            f"{100 * median(data, f'{k}/depth_wall_within_2pct'):.0f} % within 2 %, wall cells marched "
            f"{100 * median(data, f'{k}/depth_wall_grid_marched'):.0f} %, held out {spread(data, f'{k}/psnr', 2)} dB"
        )
    return "; ".join(parts)


def lift_figure(data: dict) -> str:
    """Lifting beside the distillation on one geometry, under each simulated teacher: 3D mIoU (the distillation's
    median over its seeds), the 2D teacher's, and the semantic stage's seconds."""
    scene = next(k for k in data["figures"] if k.endswith("/default/miou")).rsplit("/", 2)[0]
    parts = []
    for errors, prefix in (("persistent", ""), ("per-view", "per_view_teacher+")):
        distill = f"{scene}/{'per_view_teacher' if prefix else 'default'}"
        if f"{distill}/miou" not in data["figures"]:
            continue
        lifts = [
            f"{name} {spread(data, f'{scene}/{prefix}{variant}/miou')}"
            for variant, name in (("lift", "lifting"), ("lift_view_filter", "with the view filter"))
            if f"{scene}/{prefix}{variant}/miou" in data["figures"]
        ]
        parts.append(
            f"{errors} errors: distillation {spread(data, f'{distill}/miou')}, {', '.join(lifts)} (2D teacher "
            f"{median(data, f'{distill}/teacher_miou'):.1f})"
        )
    seconds = [
        f"{name} {median(data, f'{scene}/{variant}/semantic_seconds'):.0f} s"
        for variant, name in (("default", "distillation"), ("lift", "lifting"), ("lift_view_filter", "with the filter"))
        if f"{scene}/{variant}/semantic_seconds" in data["figures"]
    ]
    return f"{Path(scene).name}, 3D mIoU: " + "; ".join(parts) + "; semantic stage " + ", ".join(seconds)


def clock_figure(data: dict) -> str:
    """ovseg3d's field beside nerfacc's examples on one clock (``ovseg3d bench run clock``, merged): at each budget,
    each method's held-out PSNR (median and range over the seeds) and its steps."""
    names = {"ovseg3d": "ovseg3d", "prop": "nerfacc's prop example", "occ": "nerfacc's occ example"}
    found = []  # (budget in seconds, method's place, case)
    for case in (k.rsplit("/", 1)[0] for k in data["figures"] if k.endswith("/test_psnr")):
        parts = case.rsplit("/", 1)[1].split("+")
        method = next(p for p in parts if p in names)
        mark = next((int(p[:-1]) for p in parts if p.endswith("s") and p[:-1].isdigit()), 0)
        found.append((mark, list(names).index(method), method, case))
    by_mark: dict[int, list[str]] = {}
    for mark, _, method, k in sorted(found):
        by_mark.setdefault(mark, []).append(
            f"{names[method]} **{spread(data, f'{k}/test_psnr', 2)} dB** ({median(data, f'{k}/steps'):.0f} steps)"
        )
    k = found[0][3]
    size = f"{median(data, f'{k}/width'):.0f}×{median(data, f'{k}/height'):.0f}"
    head = f"{size}, {median(data, f'{k}/test_views'):.0f} held-out views"
    return head + ": " + "; ".join(f"{mark} s: " + ", ".join(texts) for mark, texts in by_mark.items())


def prepare_figure(*names: str, reference: str = "") -> Callable[[dict], str]:
    """Photo sets through ``prepare``: registered of all, reprojection error, seconds (median and range; the load
    they ran under where it was above the two cores), the cameras' distance to a reference when it has one."""

    def one(data: dict, name: str) -> str:
        k = f"{name}/default"
        text = (
            f"{median(data, f'{k}/registered'):.0f} of {median(data, f'{k}/images'):.0f} photos registered at "
            f"{median(data, f'{k}/reprojection_px'):.2f} px in **{median(data, f'{k}/seconds'):.0f} s**"
            + runs_range(data, f"{k}/seconds", 0, " s")
        )
        if f"{k}/load" in data["figures"] and median(data, f"{k}/load") > 2.5:
            text += f" (load {median(data, f'{k}/load'):.1f}: an upper bound)"
        if reference and f"{k}/ate_share_pct" in data["figures"]:
            text += f", cameras within {median(data, f'{k}/ate_share_pct'):.3f} % of {reference}'s"
        return text

    def figure(data: dict) -> str:
        return "; ".join(f"{name}: {one(data, name)}" if len(names) > 1 else one(data, name) for name in names)

    return figure


@dataclass(frozen=True)
class Row:
    """One capability's headline: its figure comes from ``result`` (a file under ``results/``)."""

    capability: str
    result: str
    """The result file's name under ``results/`` (``distill.json``)."""
    figure: Callable[[dict], str] | None
    """The figure, said from the result; None while no benchmark writes the file yet."""
    command: str
    """What makes the result file."""
    section: str
    """docs/benchmarks.md's anchor of the capability's section (its analysis)."""
    since: str = ""
    """ISO date: a result measured before it is stale (a change since then moved the figure)."""
    history: str = ""
    """docs/history.md's anchor where the figure measured before result files is written (a missing row links it)."""


PREPARE_COMMAND = (
    "python -m ovseg3d.bench.prepare bench/sets fox1440=FOX/images:FOX fox1920=FOX/images:FOX "
    "bonsai126=BONSAI_EVERY_OTHER_PHOTO && echo 'max_long_side = 1440' > bench/sets/fox1440/prepare.toml && echo "
    "'max_long_side = 1920' > bench/sets/fox1920/prepare.toml && ovseg3d bench run prepare --scenes bench/sets/fox1440 "
    "bench/sets/bonsai126 bench/sets/fox1920 --variants default --repeats 3 --out results/prepare.json"
)
"""The fox's and 126 of the bonsai's photos: the sets made into folders, the fox's at 1440 and 1920 px, 3 runs."""


ROWS: tuple[Row, ...] = (
    Row(
        "the distillation under a simulated teacher that errs like CLIP (the demo, 3 scenes from another "
        "generator, 3 generated tilts; 1,850 field steps, 600 distillation steps)",
        "distill.json",
        distill_figure,
        "ovseg3d bench run distill --scenes demo ../shared/external-scenes/forward ../shared/external-scenes/orbit "
        "../shared/external-scenes/outdoor-colmap-lens tilt10 tilt40 orbit_high --variants default --set steps=1850 "
        "max_minutes=0 --out results/distill.json",
        "distillation-and-the-whole-method",
        since="2026-11-28",
    ),
    Row(
        "the teachers on K views chosen by coverage (`--teacher-views K`), lifted without the view filter, persistent "
        "teacher errors",
        "teacher_views.json",
        teacher_views_figure,
        "ovseg3d bench run teacher_views --scenes demo orbit --variants all k4 k6 k8 k12 k16 --repeats 3 --set "
        "steps=1500 max_minutes=0 distill_minutes=0 --out results/teacher_views.json",
        "training-free-lifting-issue-68-2026-11-28",
        since="2026-11-28",
    ),
    Row(
        "lifting against distillation on one geometry of the demo (1,500 field steps; 600 distillation steps, 3 "
        "seeds), under both simulated teachers, with and without the view filter (`--lift-view-filter 5`)",
        "lift_distill.json",
        lift_figure,
        "ovseg3d bench run distill --scenes demo --variants default lift lift_view_filter per_view_teacher "
        "per_view_teacher+lift per_view_teacher+lift_view_filter --repeats 3 --set steps=1500 max_minutes=0 "
        "--out results/lift_distill.json",
        "training-free-lifting-issue-68-2026-11-28",
        since="2026-11-29",
    ),
    Row(
        "the whole method on the bundled demo, every stage as the quickstart runs them, at the steps quiet cores reach "
        "in its budgets (1,850 field steps, 600 distillation steps)",
        "quickstart.json",
        whole_figure,
        "ovseg3d bench run whole --scenes demo --repeats 3 --set steps=1850 max_minutes=0 distill_minutes=0 "
        "--out results/quickstart.json",
        "distillation-and-the-whole-method",
        history="the-quickstart-from-a-fresh-clone-2026-11-28-stop-66",
    ),
    Row(
        "the whole method, a generated 360° room (1,850 field steps, 600 distillation steps)",
        "whole_orbit.json",
        whole_figure,
        "ovseg3d bench run whole --scenes orbit --repeats 3 --set steps=1850 max_minutes=0 distill_minutes=0 "
        "--out results/whole_orbit.json",
        "distillation-and-the-whole-method",
        history="distillation-segmentation-against-the-teacher",
    ),
    Row(
        "radiance field on a GPU, mip-NeRF 360's bonsai (prepared as docs/clock.md says), against nerfacc's own "
        "Instant-NGP example on one clock (3 seeds, every held-out view)",
        "clock_bonsai.json",
        clock_figure,
        "bash scripts/gpu_session.sh clock BONSAI 500 && cp $OUT/clock.json results/clock_bonsai.json",
        "real-captures",
        history="the-bonsai-on-an-h200-ahead-of-nerfaccs-example-at-30-and-90-s-issue-48-2026-11-27-on-a-gpu",
    ),
    Row(
        "radiance field, instant-ngp's fox on `prepare`'s poses (50 photos, 360×640), with and without the depth "
        "prior from its points",
        "field_fox.json",
        field_figure,
        "ovseg3d prepare FOX/images PREPARED_FOX --max-long-side 1920 && ovseg3d bench run field --scenes PREPARED_FOX "
        "--variants depth_light+eval64 no_depth+eval64 --repeats 3 --set steps=1300 max_minutes=0 max_long_side=640 "
        "--out results/field_fox.json",
        "real-captures",
        history="the-captures-own-points-as-a-depth-prior-measured-on-four-real-captures-issue-48-2026-11-27-later",
    ),
    Row(
        "radiance field, NeRF-Database's can on `prepare`'s poses (71 photos, 360×640)",
        "field_can.json",
        field_figure,
        "ovseg3d prepare CAN/images PREPARED_CAN && ovseg3d bench run field --scenes PREPARED_CAN --variants "
        "default+eval64 --repeats 3 --set steps=1300 max_minutes=0 max_long_side=640 --out results/field_can.json",
        "real-captures",
        history="far-pairs-checked-against-the-near-pairs-model-2026-11-26-later",
    ),
    Row(
        "radiance field, the shared outdoor scene (unbounded), with and without the distortion loss",
        "unbounded.json",
        field_figure,
        "ovseg3d bench run field --scenes outdoor-colmap-lens --variants default no_distortion --repeats 3 "
        "--set steps=1100 max_minutes=0 --out results/unbounded.json",
        "real-captures",
        history="the-distortion-loss-on-by-default-for-unbounded-scenes-on-the-cpu-issue-48-2026-11-27-stop-61",
    ),
    Row(
        "a generated 360° room's far walls, random background (1,500 field steps), with the occupancy grid's "
        "visibility record off (`--occ-visibility-eps 0`, advised for such rooms) and on (the default): median depth "
        "error",
        "family_walls.json",
        walls_figure,
        "ovseg3d bench run family --scenes orbit_s1 --variants random_background+no_visibility+depth_errors "
        "random_background+visibility+depth_errors --repeats 3 --set distill_steps=100 --out results/family_walls.json",
        "radiance-field-generated-scenes",
        history="the-orbit-rooms-walls-the-visibility-record-empties-them-and-more-steps-bring-them-within-3--issue-48-2026-11-28-stop-63",
    ),
    Row(
        "radiance field, the bundled demo at 2,500 steps: the presets' learning-rate schedule (`default`: "
        "`lr_schedule = steps`) against the exponential decay they had before (`lr_exp`)",
        "field_schedule.json",
        field_figure,
        "ovseg3d bench run field --scenes demo --variants default+eval64 lr_exp+eval64 --repeats 3 --set steps=2500 "
        "max_minutes=0 --out results/field_schedule.json",
        "radiance-field-generated-scenes",
        history="the-bonsai-beside-nerfaccs-own-example-same-h100-and-photos-issue-48-2026-11-26",
    ),
    Row(
        "radiance field, two LLFF phone captures (cup 480×640, figurine 363×640)",
        "field_llff.json",
        field_figure,
        "ovseg3d bench run field --scenes CUP FIGURINE --variants default+eval64 --repeats 3 "
        "--set steps=1300 max_minutes=0 max_long_side=640 --out results/field_llff.json",
        "real-captures",
        history="two-more-real-captures-and-the-schedule-on-all-five-scenes-issue-48-2026-11-26",
    ),
    Row(
        "a phone video to a labelled cloud and boxes, `ovseg3d run VIDEO` (184 frames, 544×960)",
        "video.json",
        video_figure,
        "ovseg3d bench run video --scenes FOLDER_WITH_FIGURINE_MP4 --variants lift_k12 --repeats 3 --set "
        "teachers.clip_model=CLIP teachers.dino_model=DINO --out results/video.json",
        "distillation-and-the-whole-method",
        since="2026-11-29",  # the lifting filters each view by default
        history="the-phone-video-on-2-cpu-cores-again-each-stage-saying-where-its-seconds-went-issue-49-2026-11-28-stop-65",
    ),
    Row(
        "the whole method on a GPU, 32 views at 1000×750",
        "gpu.json",
        None,
        "ovseg3d bench run gpu --device cuda --scenes gpu_forward --variants real_teachers --out results/gpu.json",
        "gpu",
        history="on-a-gpu-a-third-time-tiny-cuda-nn-on-an-h100-the-prepared-bonsai-2026-11-26-later",
    ),
    Row(
        "exported cloud against the true surfaces, demo (trained at 1,850 field steps, 600 distillation steps)",
        "export.json",
        export_figure,
        "ovseg3d bench run export --scenes demo --repeats 3 --set steps=1850 max_minutes=0 distill_minutes=0 "
        "--out results/export.json",
        "point-clouds-export",
        history="point-clouds-exported-points-against-the-true-surfaces",
    ),
    Row(
        "exported cloud, mip-NeRF 360's bonsai (every other photo, 126 at 800×533 through `prepare`; its field at "
        "400×266, 1,300 steps, no semantics): the pixels the field renders solidly that the cloud covers",
        "coverage_bonsai.json",
        coverage_figure,
        "ovseg3d prepare BONSAI_EVERY_OTHER_PHOTO PREPARED_BONSAI && ovseg3d bench run export --scenes PREPARED_BONSAI "
        "--variants field_only+stride4 --repeats 3 --set steps=1300 max_minutes=0 --out results/coverage_bonsai.json",
        "point-clouds-export",
        history="a-rooms-far-side-again-the-agreement-tolerance-beyond-the-roi-issue-48-2026-11-27-stop-62",
    ),
    Row(
        "the whole method and its boxes, a forward room from another generator (1,850 field steps, 600 "
        "distillation steps)",
        "whole_forward.json",
        whole_figure,
        "ovseg3d bench run whole --scenes forward --repeats 3 --set steps=1850 max_minutes=0 distill_minutes=0 "
        "--out results/whole_forward.json",
        "detection-and-pose",
        history="round-objects-seen-from-one-side-the-centre-fitted-at-the-widths-radius-issue-48-2026-11-27-later",
    ),
    Row(
        "`prepare`, instant-ngp's fox (50 photos at 810×1440, and at their full 1080×1920: an 82-photo phone set's "
        "2.07 megapixels a photo), `auto` matcher",
        "prepare.json",
        prepare_figure("fox1440", "fox1920", reference="instant-ngp"),
        PREPARE_COMMAND,
        "prepare-from-photos",
        since="2026-11-29",
    ),
    Row(
        "`prepare`, mip-NeRF 360's bonsai (every other photo: 126 at 800×533), `auto` matcher",
        "prepare.json",
        prepare_figure("bonsai126"),
        PREPARE_COMMAND,
        "prepare-from-photos",
        since="2026-11-29",
    ),
    Row(
        "`prepare`, mip-NeRF 360's bonsai (all 252 photos, 800×533), `auto` matcher",
        "prepare_bonsai.json",
        prepare_figure("bonsai252"),
        "python -m ovseg3d.bench.prepare bench/sets bonsai252=BONSAI_PHOTOS && ovseg3d bench run prepare --scenes "
        "bench/sets/bonsai252 --variants default --repeats 3 --out results/prepare_bonsai.json",
        "prepare-from-photos",
        since="2026-11-29",
    ),
)
"""The headline rows, in the README's order. Issue 68's rows are added here, beside a result file."""


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    )


def teacher_views_table(data: dict) -> str:
    """Per K (then every view, then the 2D teacher): each scene's coverage and lifted 3D mIoU, medians over the runs
    with their range."""
    figures = data["figures"]
    scenes = sorted({k.split("/")[0] for k in figures if k.endswith("/all/miou")})
    ks = sorted({int(k.split("/")[1][1:]) for k in figures if k.split("/")[1][1:].isdigit()})
    head = ["K"] + [f"{s}: {what}" for s in scenes for what in ("coverage", "3D mIoU")]
    rows = []
    for variant, name in [(f"k{k}", str(k)) for k in ks] + [("all", "all")]:
        cells = [name if variant != "all" else f"all {median(data, f'{scenes[0]}/all/views'):.0f}"]
        for s in scenes:
            cells += [f"{100 * median(data, f'{s}/{variant}/coverage'):.1f} %", spread(data, f"{s}/{variant}/miou")]
        rows.append(cells)
    rows.append(["2D teacher"] + [c for s in scenes for c in ("", f"{median(data, f'{s}/all/teacher_miou'):.1f}")])
    return _table(head, rows)


def _scenes(data: dict, suffix: str) -> list[str]:
    """The scenes of the keys ending in ``suffix``, in the file's order."""
    return list(dict.fromkeys(k.rsplit("/", 2)[0] for k in data["figures"] if k.endswith(suffix)))


def lift_table(data: dict) -> str:
    """Per scene and simulated teacher: the distillation (median and range over its seeds), lifting, lifting with the
    view filter, the filter's median against the distillation's, and the semantic stage's seconds."""
    rows = []
    for scene in _scenes(data, "/default/miou"):
        for errors, base in (("persistent", "default"), ("per-view", "per_view_teacher")):
            distill, plus = f"{scene}/{base}", "" if base == "default" else f"{base}+"
            if f"{distill}/miou" not in data["figures"]:
                continue
            lift, filtered = f"{scene}/{plus}lift", f"{scene}/{plus}lift_view_filter"
            cases = [k for k in (distill, lift, filtered) if f"{k}/miou" in data["figures"]]
            rows.append(
                [f"{Path(scene).name}, {errors} ({median(data, f'{distill}/teacher_miou'):.1f})"]
                + [spread(data, f"{k}/miou") if k in cases else "—" for k in (distill, lift, filtered)]
                + [
                    f"{median(data, f'{filtered}/miou') - median(data, f'{distill}/miou'):+.1f}"
                    if filtered in cases
                    else "—"
                ]
                + [" / ".join(f"{median(data, f'{k}/semantic_seconds'):.1f}" for k in cases)]
            )
    head = ["scene, teacher errors (2D mIoU)", "distillation", "lifting", "lifting + view filter"]
    return _table(head + ["filter − distillation", "semantic stage, s (each column's median)"], rows)


def filter_sweep_table(data: dict) -> str:
    """The view filter's settings (steps N, strength) on each scene under each simulated teacher: 3D mIoU on training
    views / on the annotated held-out views, and the mean over the training views (what the settings are chosen on),
    best first."""
    figures = data["figures"]
    scenes = _scenes(data, "/lift_view_filter/train_miou")
    settings = list(dict.fromkeys(k.rsplit("/", 2)[1] for k in figures if k.endswith("/train_miou")))
    settings = [v for v in settings if not v.startswith("per_view_teacher+")]
    head, rows = ["N, strength"], []
    cases = [
        (errors, prefix, scene)
        for errors, prefix in (("persistent", ""), ("per-view", "per_view_teacher+"))
        for scene in scenes
    ]
    head += [f"{Path(scene).name} {errors}" for errors, _, scene in cases] + ["mean, training views"]
    for variant in settings:
        parts = dict(re.fullmatch(r"lift_view_(filter|strength)([\d.]*)", p).groups() for p in variant.split("+"))
        label = f"{parts.get('filter') or 5}, {parts.get('strength') or 5}"
        keys = [f"{scene}/{prefix}{variant}" for _, prefix, scene in cases]
        found = [k for k in keys if f"{k}/train_miou" in figures]
        cells = [
            f"{median(data, f'{k}/train_miou'):.1f} / {median(data, f'{k}/miou'):.1f}" if k in found else "—"
            for k in keys
        ]
        mean = sum(median(data, f"{k}/train_miou") for k in found) / max(len(found), 1)
        rows.append((mean, [label + (" (the default)" if label == "5, 5" else ""), *cells, f"{mean:.2f}"]))
    return _table(head, [cells for _, cells in sorted(rows, key=lambda r: -r[0])])


def video_table(data: dict) -> str:
    """Each stage's seconds in each run of the video (prepare first), their sum, the held-out PSNR; the medians."""
    from ovseg3d.bench.video import STAGES

    k = next(key for key in data["figures"] if key.endswith("/seconds")).rsplit("/", 1)[0]
    names = {"distill": "semantic (its teachers within)", "teachers": "teachers (the models loaded)"}
    lines = [(names.get(s, s), f"{k}/{s}_seconds", 1) for s in STAGES]
    lines += [("**stages**", f"{k}/seconds", 1), ("held out, dB", f"{k}/psnr", 2)]
    rows = [
        [label, *(f"{x:.{digits}f}" for x in f["runs"]), f"**{f['median']:.{digits}f}**"]
        for label, key, digits in lines
        if (f := data["figures"].get(key))
    ]
    n = len(data["figures"][f"{k}/seconds"]["runs"])
    return _table(["stage, s", *(f"run {i + 1}" for i in range(n)), "median"], rows)


def distill_table(data: dict) -> str:
    """The distill benchmark's per-scene table (:func:`ovseg3d.bench.distill.markdown_table`)."""
    from ovseg3d.bench.distill import markdown_table

    return markdown_table(data)


@dataclass(frozen=True)
class Detail:
    """A table inside a section of docs/benchmarks.md, made from result files (their figures together): the block
    ``name``."""

    name: str
    results: tuple[str, ...]
    table: Callable[[dict], str]


DETAILS: tuple[Detail, ...] = (
    Detail("distill-per-scene", ("distill.json",), distill_table),
    Detail("teacher-views-by-k", ("teacher_views.json",), teacher_views_table),
    Detail("lift-demo", ("lift_distill.json",), lift_table),
    Detail("lift-two-more-scenes", ("lift_distill_more.json",), lift_table),
    Detail("lift-filter-settings", ("lift_filter_sweep.json", "lift_filter_sweep_per_view.json"), filter_sweep_table),
    Detail("video-stages", ("video.json",), video_table),
)
"""The sections' tables made from result files, beside the headline rows."""


def _runs(data: dict) -> str:
    """How many runs the file's figures are of: ``3 runs each`` (a single run's figure is said as it is)."""
    counts = sorted({len(f["runs"]) for f in data["figures"].values()})
    return f"{'-'.join(map(str, counts))} run{'s' if counts != [1] else ''} each"


def detail(item: Detail, folder: Path = RESULTS) -> str:
    """The detail table from its result files, each file's machine and commit under it; or why there is none."""
    missing = [name for name in item.results if not (folder / name).is_file()]
    if missing:
        return "**missing**: " + ", ".join(f"no `results/{name}` yet" for name in missing)
    found = {name: results.load(folder / name) for name in item.results}
    merged = {"figures": {k: v for data in found.values() for k, v in data["figures"].items()}}
    sources = "; ".join(
        f"`results/{name}` ({_runs(d)}): {machine_text(d['machine'])} ({d.get('measured', '?')}, commit "
        f"{d['commit']}), teacher {teacher_text(d['teacher'])}"
        for name, d in found.items()
    )
    return f"{item.table(merged)}\n\n*From {sources}.*"


def teacher_text(teacher: dict) -> str:
    kind = teacher.get("kind")
    if kind == "synthetic":
        return f"simulated, {teacher.get('errors') or 'per-view'} errors"
    if kind == "clip":
        if teacher.get("weights") == "random":
            return "real-size CLIP / DINO, random weights (timing only)"
        return "CLIP / DINO, real weights"
    return "none"


def machine_text(machine: dict) -> str:
    """The machine's description, with its CPU's vector level and bfloat16 support where the file records them and
    no GPU ran it ("2 CPU cores, AVX2 without bfloat16"): the teachers' seconds differ 1.6x between those hosts."""
    text = str(machine["description"])
    if machine.get("gpu") or not machine.get("cpu_capability"):
        return text
    bf16 = "with" if machine.get("cpu_bf16") else "without"
    return f"{text}, {machine['cpu_capability']} {bf16} bfloat16"


def cells(row: Row, folder: Path = RESULTS, link: str = "docs/benchmarks.md") -> list[str]:
    """capability, figure, machine, teacher, command, details: from the row's result file, or why there is none."""
    path = folder / row.result
    details = f"[section]({link}#{row.section})"
    history = f"docs/history.md#{row.history}" if link.startswith("docs/") else f"history.md#{row.history}"
    if row.figure is None or not path.is_file():
        before = f" (before result files: [history]({history}))" if row.history else ""
        figure = f"**missing**: no `results/{row.result}` yet{before}"
        return [row.capability, figure, "—", "—", f"`{row.command}`", details]
    data = results.load(path)
    figure = row.figure(data)
    if row.since and data.get("measured", "") < row.since:
        figure = f"**stale** (measured {data.get('measured')}, before {row.since}): {figure}"
    machine = machine_text(data["machine"])
    when = f"{data.get('measured', '?')}, commit {data['commit']}"
    return [row.capability, figure, f"{machine} ({when})", teacher_text(data["teacher"]), f"`{row.command}`", details]


def markdown(rows: tuple[Row, ...] = ROWS, folder: Path = RESULTS, link: str = "docs/benchmarks.md") -> str:
    """The table of ``rows``: each from its result file."""
    head = ["capability", "figure (median (range, runs) where runs vary)", "machine", "teacher", "command", "details"]
    return _table(head, [[c.replace("|", "\\|") for c in cells(row, folder, link)] for row in rows])


BEGIN = "<!-- generated by `ovseg3d bench table --write` from results/*.json ({name}): edit ovseg3d/bench/tables.py -->"
END = "<!-- end of the generated table -->"


def _block(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(BEGIN.format(name=name)) + r"\n(.*?)" + re.escape(END), re.S)


def sections() -> list[str]:
    """docs/benchmarks.md's sections with rows, in the rows' order."""
    return list(dict.fromkeys(row.section for row in ROWS))


def blocks(folder: Path = RESULTS) -> dict[Path, dict[str, str]]:
    """Each page with generated blocks: each block's name and its table today (the README's headline; atop
    docs/benchmarks.md the same, then each section's rows at the head of the section, and the :data:`DETAILS`)."""
    docs = {"headline": markdown(ROWS, folder, "benchmarks.md")}
    for section in sections():
        docs[section] = markdown(tuple(r for r in ROWS if r.section == section), folder, "benchmarks.md")
    for item in DETAILS:
        docs[item.name] = detail(item, folder)
    return {
        ROOT / "README.md": {"headline": markdown(ROWS, folder, "docs/benchmarks.md")},
        ROOT / "docs" / "benchmarks.md": docs,
    }


def current(page: Path, name: str = "headline") -> str | None:
    """The block ``name``'s text in ``page`` as it is, or None without its markers."""
    match = _block(name).search(page.read_text())
    return None if match is None else match.group(1).removesuffix("\n")


def write(folder: Path = RESULTS) -> list[Path]:
    """Rewrite every page's blocks from the result files; the pages that changed."""
    changed = []
    for page, tables in blocks(folder).items():
        text = new = page.read_text()
        for name, table in tables.items():
            if _block(name).search(new) is None:
                raise results.ResultError(f"{page}: no generated block '{name}' (its marker comments are missing)")
            block = f"{BEGIN.format(name=name)}\n{table}\n{END}"
            new = _block(name).sub(lambda m, block=block: block, new, count=1)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def differences(folder: Path = RESULTS) -> list[str]:
    """One line per block that is missing or differs from what the result files give."""
    out = []
    for page, tables in blocks(folder).items():
        for name, table in tables.items():
            now = current(page, name)
            where = f"{page.relative_to(ROOT)} ({name})"
            if now is None:
                out.append(f"{where}: no generated block")
            elif now != table:
                out.append(f"{where}: the table differs from the result files (ovseg3d bench table --write)")
    return out
