"""The stages of ovseg3d over one scene, in order, each reading the files of the stages before it and writing its
own: ``teachers`` (the 2D feature cache) -> ``geometry`` (the radiance field) -> ``distill`` (the semantic
field) -> ``export`` (the labelled point cloud) -> ``detect`` (oriented boxes) -> ``eval`` (scores).

:func:`run_scene` runs any range of them and skips a stage whose outputs are current: each finished stage is
recorded in ``RUN/stages.json`` with what it was made from (the checkpoint, the export, the detections), so a
re-run after a crash continues the unfinished stage from its checkpoint and recomputes nothing that finished.
:func:`train` is ``ovseg3d train`` (teachers, geometry, distillation in one process); :func:`evaluate` is
``ovseg3d eval``. Only the CLI and the batch runner (:mod:`ovseg3d.batch`) sit above this module.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ovseg3d.atomic import write_json
from ovseg3d.config import TrainConfig
from ovseg3d.detect.head import DetectOptions
from ovseg3d.detect.results import DETECTIONS, detection_metrics
from ovseg3d.detect.source import run_detect
from ovseg3d.errors import UsageError
from ovseg3d.evaluate import evaluate_run
from ovseg3d.export import ExportOptions, extract_cloud, write_export
from ovseg3d.lift import semantic_training
from ovseg3d.run import check_run, latest_checkpoint, list_checkpoints, load_run_config
from ovseg3d.train import preview, resolve_device, scene_of, start_training, train_geometry

STAGES = ("teachers", "geometry", "distill", "export", "detect", "eval")
STAGE_FILE = "stages.json"
Log = Callable[[str], None]


def train(cfg: TrainConfig) -> Path:
    """``ovseg3d train``: the teacher features, the geometry and (with a teacher) the distillation, resumable
    from the run's checkpoints. Returns the run folder."""
    t = start_training(cfg)
    train_geometry(t)
    if t.has_teacher:
        semantic_training(t)
    tqdm.write(f"done: {t.trainer.step} steps in {t.trainer.elapsed:.0f} s{preview(t.trainer, t.run)}")
    return t.run


def evaluate(
    run: Path,
    device_name: str = "auto",
    save_renders: bool = True,
    max_samples_per_ray: int = 0,
    train_views: int = 3,
    every: int = 1,
) -> dict:
    """``ovseg3d eval``: PSNR / SSIM of the held-out views, the segmentation scores of a run with a semantic
    field, and the mAP / pose accuracy of ``RUN/detections.json`` against the scene's objects when both exist;
    written to ``RUN/eval.json``."""

    def detections(scene: Any) -> dict:  # noqa: ANN401
        return detection_metrics(run / DETECTIONS, [o.as_json() for o in scene.objects])

    return evaluate_run(
        run, device_name, save_renders, max_samples_per_ray, more=detections, train_views=train_views, every=every
    )


# ------------------------------------------------------------------------------------------------ stages


def file_stamp(path: Path) -> str | None:
    """What a stage's input file was when the stage ran (size and modification time); None if it is absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_stages(run: Path) -> dict[str, dict]:
    """``RUN/stages.json``: stage -> its record; ``{}`` when absent or unreadable (every stage is then redone)."""
    try:
        data = json.loads((run / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(run: Path, stage: str, seconds: float, **inputs: object) -> None:
    stages = read_stages(run)
    stages[stage] = {"seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **inputs}
    write_json(run / STAGE_FILE, stages)


EXPORT_NPZ = "export/points.npz"
# what each stage is made from (compared with its record) and the file it writes
_MADE_FROM = {
    "distill": ("checkpoint",),
    "export": ("checkpoint",),
    "detect": ("export",),
    "eval": ("checkpoint", "detections"),
}
_OUTPUTS = {"export": EXPORT_NPZ, "detect": DETECTIONS, "eval": "eval.json"}


def _sources(run: Path) -> dict[str, str | None]:
    """What the stages are made from, now: the newest checkpoint's name, the export's and detections' stamps."""
    ckpt = latest_checkpoint(run)
    return {
        "checkpoint": ckpt.name if ckpt is not None else None,
        "export": file_stamp(run / EXPORT_NPZ),
        "detections": file_stamp(run / DETECTIONS),
    }


def _inputs(run: Path, stage: str) -> dict[str, object]:
    """What ``stage`` is made from, now: recorded with it, to tell later whether its outputs are current."""
    now = _sources(run)
    return {k: now[k] for k in _MADE_FROM.get(stage, ())}


def current_stages(run: Path, stages: dict[str, dict] | None = None) -> set[str]:
    """The stages whose outputs in ``run`` are current: each finished, its outputs are there and what it was
    made from has not changed since; a stale stage (one that ran) makes every stage after it stale too."""
    stages = read_stages(run) if stages is None else stages
    if not stages or not list_checkpoints(run):
        return set()
    now = _sources(run)
    current: set[str] = set()
    for stage in STAGES:
        record = stages.get(stage)
        if record is None:  # never ran here: nothing of it to be stale
            continue
        if stage in _OUTPUTS and not (run / _OUTPUTS[stage]).exists():
            break
        if any(record.get(k) != now[k] for k in _MADE_FROM.get(stage, ())):
            break
        current.add(stage)
    return current


def is_current(run: Path, stage: str, stages: dict[str, dict] | None = None) -> bool:
    """Whether ``stage``'s outputs in ``run`` are current (:func:`current_stages`)."""
    return stage in current_stages(run, stages)


@dataclass
class SceneResult:
    """One scene through :func:`run_scene`: what ran, what was current already, its scores."""

    scene: str
    run: str
    status: str = "done"
    """``done`` or ``failed``."""
    error: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    """Per stage run this time (a current stage: 0)."""
    skipped: list[str] = field(default_factory=list)
    """Stages whose outputs were current (or that do not apply: distill without a teacher)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """From ``RUN/eval.json``: psnr, ssim, miou, teacher_miou, map25, map50 where the run has them."""
    failed_stage: str = ""
    """The stage that failed (status ``failed``)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SUMMARY_KEYS = ("psnr", "ssim", "miou", "teacher_miou", "map25", "map50", "step")

# the stages each later stage reads the outputs of: when one fails, these are not run (eval reads only the run's
# checkpoint, and its detection scores are left out without detections)
NEEDS = {"detect": ("export",)}


def partial_result(exc: BaseException) -> SceneResult | None:
    """The result a failed :func:`run_scene` left on its exception: what ran before and after the failed stage
    (``failed_stage`` set), or ``None`` when the failure came before any stage finished."""
    return getattr(exc, "scene_result", None)


def __init__(self, stage: str, result: SceneResult) -> None:
    super().__init__(stage)
    self.stage = stage
    self.result = result


def stage_range(first: str = STAGES[0], last: str = STAGES[-1]) -> list[str]:
    """The stages from ``first`` to ``last``, in order."""
    for name in (first, last):
        if name not in STAGES:
            raise UsageError(f"unknown stage {name!r}: one of {', '.join(STAGES)}")
    i, j = STAGES.index(first), STAGES.index(last)
    if j < i:
        raise UsageError(f"stages {first}..{last}: {last} comes before {first} ({' -> '.join(STAGES)})")
    return list(STAGES[i : j + 1])


def run_scene(
    scene: Path,
    run: Path,
    stages: Sequence[str] = STAGES,
    config: TrainConfig | None = None,
    export: ExportOptions | None = None,
    detect: DetectOptions | None = None,
    log: Log = print,
    on_stage: Callable[[str], None] | None = None,
) -> SceneResult:
    """Run ``stages`` (in pipeline order) of ``scene`` into the run folder ``run``, skipping those whose outputs
    are current; a stage whose inputs are missing (export before any training) is a one-line error. ``config``:
    the training config (default: the cpu preset); its scene and output are set from ``scene`` and ``run``,
    and an existing run is resumed (with its saved settings: other model settings are refused in one line).
    ``on_stage(name)`` is called as each stage starts (a progress bar).

    A failing export or detect raises its own exception after the later stages that do not need its outputs have
    run (a failed export still leaves the held-out scores of ``eval``), with the result so far attached
    (:func:`partial_result`)."""
    from ovseg3d.config import resolve_base

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r}: one of {', '.join(STAGES)}")
    todo = [s for s in STAGES if s in stages]
    result = SceneResult(str(scene), str(run))
    cfg = config if config is not None else resolve_base("cpu", None)
    cfg = dataclasses.replace(cfg, scene=Path(scene), output=Path(run))
    done = read_stages(run)

    def begin(stage: str) -> float:
        if on_stage is not None:
            on_stage(stage)
        return time.perf_counter()

    def finish(stage: str, start: float) -> None:
        result.seconds[stage] = round(time.perf_counter() - start, 3)
        _record(run, stage, result.seconds[stage], **_inputs(run, stage), **_budget(stage, cfg))

    def skip(stage: str) -> None:
        result.skipped.append(stage)
        result.seconds[stage] = 0.0

    fitting = [s for s in todo if s in ("teachers", "geometry", "distill")]
    # a larger step or time budget than the one a fitting stage finished with continues it from its checkpoint
    current = current_stages(run, done)
    pending = [s for s in fitting if s not in current or _budget_grew(done.get(s, {}), s, cfg)]
    for stage in fitting:
        if stage not in pending:
            skip(stage)
    if pending == ["teachers"] and not list_checkpoints(run):  # the feature cache alone: no run folder yet
        start = begin("teachers")
        teachers_only(cfg, log)
        result.seconds["teachers"] = round(time.perf_counter() - start, 3)
    elif pending:
        # the scene and its teacher features are loaded (extracted when not cached) for any of these stages; when
        # the teachers stage is current (skipped, 0 s) reading its cache counts to the first pending stage
        start = begin("teachers")
        training = start_training(_resumable(cfg, run))
        loaded: float | None = start if "teachers" in result.skipped else None
        if loaded is None:
            finish("teachers", start)

        def clock(stage: str) -> float:
            nonlocal loaded
            now = begin(stage)
            if loaded is not None:  # the first pending stage: since the loading began
                now, loaded = loaded, None
            return now

        if "geometry" in fitting:
            if "geometry" in pending:
                start = clock("geometry")
                train_geometry(training)
                finish("geometry", start)
        elif not training.trainer.done():
            raise UsageError(f"{run}: the geometry has steps left: run the geometry stage first")
        if "distill" in pending:
            if not training.has_teacher:  # --teacher none: nothing to distil
                skip("distill")
            else:
                start = clock("distill")
                semantic_training(training)
                finish("distill", start)
        del training  # the training's field, optimiser and grids: the later stages load the run's checkpoint
    failure: tuple[str, Exception] | None = None
    for stage in (s for s in todo if s in ("export", "detect", "eval")):
        if failure is not None and failure[0] in NEEDS.get(stage, ()):
            continue
        if is_current(run, stage, read_stages(run)):
            skip(stage)
            continue
        start = begin(stage)
        try:
            _later_stage(stage, run, cfg, export, detect, log)
        except Exception as exc:  # noqa: BLE001 - re-raised below, once the stages that do not need it have run
            result.seconds[stage] = round(time.perf_counter() - start, 3)
            failure = failure or (stage, exc)
            continue
        finish(stage, start)
    result.metrics = scene_metrics(run)
    if failure is not None:
        result.status, result.failed_stage = "failed", failure[0]
        failure[1].scene_result = result  # type: ignore[attr-defined]
        raise failure[1]
    return result


def _later_stage(
    stage: str, run: Path, cfg: TrainConfig, export: ExportOptions | None, detect: DetectOptions | None, log: Log
) -> None:
    """Run the ``export``, ``detect`` or ``eval`` stage of a trained run."""
    if stage == "export":
        _need_run(run, "export")
        eopts = export or ExportOptions()
        write_export(extract_cloud(run, eopts, cfg.device, log=log), run / "export", run, eopts)
    elif stage == "detect":
        if not (run / EXPORT_NPZ).exists():
            raise UsageError(f"{run}: no export/points.npz to detect in: run the export stage first")
        run_detect(run, detect or DetectOptions(), device=resolve_device(cfg.device), log=log)
    else:
        _need_run(run, "eval")
        evaluate(run, cfg.device)


def _budget(stage: str, cfg: TrainConfig) -> dict[str, float]:
    """The step and time budget a fitting stage ran to (recorded with it)."""
    if stage == "geometry":
        return {"steps": cfg.steps, "max_minutes": cfg.max_minutes}
    if stage == "distill":
        return {"distill_steps": cfg.distill_steps, "distill_minutes": cfg.distill_minutes}
    return {}


def _budget_grew(record: dict, stage: str, cfg: TrainConfig) -> bool:
    """Whether ``cfg`` gives ``stage`` more steps or minutes than it finished with (0 minutes: no time limit)."""
    for key, now in _budget(stage, cfg).items():
        before = record.get(key, now)
        if key.endswith("minutes"):
            before, now = before or float("inf"), now or float("inf")
        if now > before:
            return True
    return False


def _resumable(cfg: TrainConfig, run: Path) -> TrainConfig:
    """``cfg`` for a new run; for a run with checkpoints, its saved config (with ``cfg``'s schedule, device
    and threads) to resume: a re-run continues the run as it was started."""
    if not list_checkpoints(run):
        return cfg
    from ovseg3d.train import RESUME_MAY_CHANGE

    saved = load_run_config(run)
    schedule = {k: getattr(cfg, k) for k in RESUME_MAY_CHANGE if "." not in k}
    return dataclasses.replace(saved, **schedule, resume=True, output=run)


def _need_run(run: Path, stage: str) -> None:
    check_run(run)
    if not list_checkpoints(run):
        raise UsageError(f"{run}: no checkpoint to {stage}: run the geometry stage first")


def scene_metrics(run: Path) -> dict[str, Any]:
    """The summary scores of a run (:data:`SUMMARY_KEYS` found in ``RUN/eval.json``)."""
    try:
        metrics = json.loads((run / "eval.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(metrics, dict):
        return {}
    return {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}


def teachers_only(cfg: TrainConfig, log: Log = print) -> None:
    """The teachers stage alone (no run folder): the scene's feature cache, reused when current."""
    from ovseg3d.teachers.extract import ensure_features, resolve_kind

    scene = scene_of(cfg)
    teachers = cfg.teachers
    if teachers.kind == "auto":
        teachers = dataclasses.replace(teachers, kind=resolve_kind(scene, log))
    if teachers.kind != "none":
        ensure_features(scene, teachers, resolve_device(cfg.device), log=log)
