"""Many scenes through the pipeline: ``ovseg3d batch SCENES... --output RUNS``.

Each scene runs :func:`ovseg3d.pipeline.run_scene` into its own run folder ``RUNS/<name>`` (the scene folder's
name, made unique). With Ray (``pip install -e ".[batch]"``) the scenes are Ray tasks, as many at a time as the
machine (or the cluster of ``--address``) has cores and GPUs for; without it they run one after another in this
process. A scene that fails (bad input, a bug, a worker that died) is a ``failed`` line in the summary and the
others go on. Re-running the same batch skips the stages that finished (``RUN/stages.json``) and continues an
interrupted one from its checkpoint. ``RUNS/summary.json`` and ``RUNS/summary.csv`` list every scene's status,
error, scores and seconds per stage.

With ``--address HOST:PORT`` the workers must see the scenes and ``RUNS`` at the same paths (a shared file
system) and have ovseg3d installed.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ovseg3d.atomic import write_json, write_text
from ovseg3d.config import TrainConfig
from ovseg3d.detect.head import DetectOptions
from ovseg3d.errors import UsageError
from ovseg3d.export import ExportOptions
from ovseg3d.pipeline import STAGES, SceneResult, partial_result, run_scene, scene_metrics

Log = Callable[[str], None]

RAY_HINT = 'pip install -e ".[batch]"'
PROGRESS_DIR = ".batch"
"""``RUNS/.batch/<name>``: the stage a Ray task is running (read by the progress bar; removed at the end)."""
SUMMARY_COLUMNS = (
    "scene",
    "run",
    "status",
    "failed_stage",
    "error",
    "psnr",
    "miou",
    "teacher_miou",
    "map25",
    *(f"seconds_{s}" for s in STAGES),
    "seconds_total",
    "skipped",
)


# ------------------------------------------------------------------------------------------------ scenes


def _expand(spec: str, base: Path | None = None) -> list[Path]:
    """A folder or a glob (relative to ``base`` when given) -> the folders it names; [] when none."""
    path = Path(spec).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if glob.has_magic(str(path)):
        return [Path(p) for p in sorted(glob.glob(str(path))) if Path(p).is_dir()]
    return [path] if path.is_dir() else []


def _read_list(path: Path) -> list[Path]:
    """The folders named in a list file, one per line (``#`` starts a comment; a relative path is taken from
    the list file's folder, else from the current folder)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the scene list ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (a scene list names one folder per line)") from None
    found: list[Path] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()  # "# ..." lines and " # ..." endings
        if not line:
            continue
        folders = _expand(line, path.parent) or _expand(line)
        if not folders:
            raise UsageError(f"{path}:{number}: {line}: no such scene folder (relative paths: from {path.parent})")
        found += folders
    return found


def find_scenes(specs: Sequence[str | Path]) -> list[Path]:
    """The scene folders of ``specs``, in order, each once: a folder, a glob (``scenes/*``; folders only), or a
    text file listing folders or globs one per line (``#`` comments). A spec that names no folder is a one-line
    :class:`UsageError`."""
    if not specs:
        raise UsageError("give the scenes: folders, globs (scenes/*) or a text file listing them")
    out: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        spec = str(spec)
        path = Path(spec).expanduser()
        if path.is_file():
            folders = _read_list(path)
            if not folders:
                raise UsageError(f"{spec}: the scene list names no folder")
        else:
            folders = _expand(spec)
            if not folders:
                what = "matches no folder" if glob.has_magic(spec) else "no such scene folder or list file"
                raise UsageError(f"{spec}: {what}")
        for folder in folders:
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                out.append(folder)
    return out


def run_names(scenes: Sequence[Path]) -> list[str]:
    """A run folder name per scene: the scene folder's name (characters other than letters, digits, ``.``,
    ``_`` and ``-`` replaced by ``_``); scenes of the same name get their parent folder's name in front, and a
    number after if that is not enough. The same list of scenes gives the same names."""

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "scene"

    paths = [Path(os.path.abspath(s)) for s in scenes]
    base = [clean(p.name) for p in paths]
    reserved = ("summary.json", "summary.csv")
    names = [
        clean(f"{p.parent.name}-{p.name}") if base.count(b) > 1 or b in reserved else b for p, b in zip(paths, base)
    ]
    used: set[str] = set()
    for i, name in enumerate(names):
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        names[i] = unique
    return names


# ------------------------------------------------------------------------------------------------ one scene


@dataclass
class _Job:
    """One scene of a batch, as a task gets it (plain data, so that Ray can send it)."""

    scene: Path
    run: Path
    stages: list[str]
    config: TrainConfig | None
    export: ExportOptions | None
    detect: DetectOptions | None
    progress: Path | None = None
    """A file to write the running stage into (Ray tasks; the driver's progress bar reads it)."""


def error_line(exc: BaseException) -> str:
    """One line for a failed scene: a :class:`UsageError`'s message, else ``Class: message`` (first lines)."""
    lines = [s.strip() for s in str(exc).strip().splitlines() if s.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, UsageError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_job(job: _Job, log: Log, on_stage: Callable[[str], None] | None = None) -> tuple[SceneResult, str]:
    """``run_scene`` of one job; an exception becomes a ``failed`` result (with the seconds of the stages that
    started). Returns it and, for a failure that is not a :class:`UsageError` (a bug), its traceback."""
    starts: dict[str, float] = {}

    def stage(name: str) -> None:
        starts[name] = time.perf_counter()
        if job.progress is not None:
            try:
                write_text(job.progress, name)
            except OSError:
                pass
        if on_stage is not None:
            on_stage(name)

    try:
        result = run_scene(job.scene, job.run, job.stages, job.config, job.export, job.detect, log=log, on_stage=stage)
        return result, ""
    except Exception as exc:  # noqa: BLE001 - one scene's failure, whatever it is, must not stop the others
        partial = partial_result(exc)  # a later stage failed: the stages that did not need it ran, scores kept
        if partial is not None:
            trace = "" if isinstance(exc, UsageError) else traceback.format_exc()
            return dataclasses.replace(partial, error=error_line(exc)), trace
        now, marks = time.perf_counter(), sorted(starts.items(), key=lambda kv: kv[1])
        seconds = {
            name: round((marks[i + 1][1] if i + 1 < len(marks) else now) - t, 3) for i, (name, t) in enumerate(marks)
        }
        failed_stage = marks[-1][0] if marks else ""
        result = SceneResult(
            str(job.scene), str(job.run), "failed", error_line(exc), seconds, failed_stage=failed_stage
        )
        result.metrics = scene_metrics(job.run)
        return result, "" if isinstance(exc, UsageError) else traceback.format_exc()


def _ray_task(job: _Job, cpus: float) -> tuple[SceneResult, str]:
    """The body of a scene's Ray task: torch and OpenMP limited to the task's cores."""
    threads = max(1, int(round(cpus)))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if job.config is not None and job.config.threads == 0:
        job = replace(job, config=replace(job.config, threads=threads))
    return _run_job(job, log=print)


# ------------------------------------------------------------------------------------------------ a batch


def run_batch(
    scenes: Sequence[Path],
    runs_dir: Path,
    stages: Sequence[str] = STAGES,
    config: TrainConfig | None = None,
    export: ExportOptions | None = None,
    detect: DetectOptions | None = None,
    address: str | None = None,
    cpus_per_scene: float = 1.0,
    gpus_per_scene: float = 0.0,
    use_ray: bool = True,
    log: Log = print,
    progress: bool = True,
) -> list[SceneResult]:
    """Run ``stages`` of every scene into ``runs_dir/<name>`` (:func:`run_names`); one :class:`SceneResult` per
    scene, in the order given. With ``use_ray`` and Ray installed, each scene is a Ray task of
    ``cpus_per_scene`` cores and ``gpus_per_scene`` GPUs on a local Ray started over this machine's cores (or
    the cluster at ``address``: ``auto`` or ``HOST:PORT``); else one after another in this process. A scene
    that fails is a ``failed`` result with a one-line error; the others go on. ``config``: the training config
    (default: the cpu preset; its scene and output are set per scene). ``progress``: a bar over the scenes."""
    if cpus_per_scene <= 0:
        raise UsageError(f"--cpus-per-scene {cpus_per_scene}: must be above 0")
    if gpus_per_scene < 0:
        raise UsageError(f"--gpus-per-scene {gpus_per_scene}: must be at least 0")
    scenes = [Path(s) for s in scenes]
    if not scenes:
        return []
    runs_dir = Path(runs_dir)
    names = run_names(scenes)
    jobs = [
        _Job(Path(os.path.abspath(s)), Path(os.path.abspath(runs_dir / n)), list(stages), config, export, detect)
        for s, n in zip(scenes, names)
    ]
    runs_dir.mkdir(parents=True, exist_ok=True)
    ray = None
    if use_ray:
        try:
            import ray
        except ImportError:
            log(f"Ray is not installed: the scenes run one after another ({RAY_HINT} runs them in parallel)")
    elif address is not None:
        raise UsageError("--address needs Ray: drop --no-ray")
    if ray is None:
        outcomes = _run_local(jobs, names, log, progress)
    else:
        outcomes = _run_ray(
            ray, jobs, names, Path(os.path.abspath(runs_dir)), address, cpus_per_scene, gpus_per_scene, log, progress
        )
    results = []
    for scene, name, (result, trace) in zip(scenes, names, outcomes):
        result.scene, result.run = str(scene), str(runs_dir / name)  # as given, not the absolute paths
        if trace:
            log(f"{name}: {result.error}\n{trace.rstrip()}")
        results.append(result)
    return results


def _bar(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="scene", desc="batch", disable=not enabled, dynamic_ncols=True)


def _postfix(bar: tqdm, results: Sequence[tuple[SceneResult, str] | None], running: dict[str, str]) -> None:
    done = sum(r is not None and r[0].status == "done" for r in results)
    failed = sum(r is not None and r[0].status == "failed" for r in results)
    fields = {"done": done, "failed": failed}
    if running:
        fields["running"] = ", ".join(f"{n}: {s}" for n, s in running.items())
    bar.set_postfix(fields, refresh=True)


def _run_local(jobs: list[_Job], names: list[str], log: Log, progress: bool) -> list[tuple[SceneResult, str]]:
    results: list[tuple[SceneResult, str] | None] = [None] * len(jobs)
    with _bar(len(jobs), progress) as bar:
        for i, (job, name) in enumerate(zip(jobs, names)):

            def on_stage(stage: str, name: str = name) -> None:
                _postfix(bar, results, {name: stage})

            results[i] = _run_job(job, log, on_stage)
            bar.update(1)
            _postfix(bar, results, {})
    return [r for r in results if r is not None]


def _init_ray(ray: Any, address: str | None) -> bool:  # noqa: ANN401
    """Connect to Ray (a local instance over this machine's cores and GPUs, or ``address``); returns whether
    this call started it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    quiet = {
        "log_to_driver": False,
        "include_dashboard": False,
        "configure_logging": True,
        "logging_level": logging.ERROR,
    }
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # a FutureWarning printed on every start
    try:
        if address is None:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            ray.init(num_cpus=os.cpu_count() or 1, num_gpus=gpus, **quiet)
        else:
            ray.init(address=address, **quiet)
    except ConnectionError as exc:
        raise UsageError(f"--address {address}: cannot connect to a Ray cluster ({error_line(exc)})") from None
    return True


def _run_ray(
    ray: Any,  # noqa: ANN401
    jobs: list[_Job],
    names: list[str],
    runs_dir: Path,
    address: str | None,
    cpus: float,
    gpus: float,
    log: Log,
    progress: bool,
) -> list[tuple[SceneResult, str]]:
    started = _init_ray(ray, address)
    progress_dir = runs_dir / PROGRESS_DIR
    refs: dict[Any, int] = {}
    try:
        have = ray.cluster_resources()
        for kind, need in (("CPU", cpus), ("GPU", gpus)):
            if need > have.get(kind, 0):
                where = f"the Ray cluster at {address}" if address else "this machine"
                per = "--cpus-per-scene" if kind == "CPU" else "--gpus-per-scene"
                message = f"{per} {need:g}: {where} has {have.get(kind, 0):g} {kind}s"
                if address is None:
                    raise UsageError(message + f": give at most {have.get(kind, 0):g}")
                log(f"note: {message}: the scenes wait until the cluster has more")
        where = f"Ray cluster at {address}" if address else "local Ray"
        log(
            f"{len(jobs)} scenes on the {where} ({have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs): "
            f"{cpus:g} CPUs and {gpus:g} GPUs each"
        )
        progress_dir.mkdir(parents=True, exist_ok=True)
        task = ray.remote(_ray_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        for i, (job, name) in enumerate(zip(jobs, names)):
            job.progress = progress_dir / name
            job.progress.unlink(missing_ok=True)
            refs[task.remote(job, cpus)] = i
        results: list[tuple[SceneResult, str] | None] = [None] * len(jobs)
        pending = list(refs)
        with _bar(len(jobs), progress) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    i = refs[ref]
                    try:
                        results[i] = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a worker that died, a result that did not arrive
                        cause = getattr(exc, "cause", None)
                        line = error_line(cause if isinstance(cause, BaseException) else exc)
                        results[i] = (SceneResult(str(jobs[i].scene), str(jobs[i].run), "failed", line), "")
                    bar.update(1)
                running = {}
                for ref in pending:
                    job = jobs[refs[ref]]
                    try:
                        running[names[refs[ref]]] = job.progress.read_text().strip()  # type: ignore[union-attr]
                    except OSError:
                        pass  # waiting for cores, or on another node
                _postfix(bar, results, running)
        return [r for r in results if r is not None]
    except BaseException:
        for ref in refs:  # Ctrl-C: a cluster at --address would go on with them
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - finished already
                pass
        raise
    finally:
        for job in jobs:
            if job.progress is not None:
                job.progress.unlink(missing_ok=True)
        try:
            progress_dir.rmdir()
        except OSError:
            pass
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------ summary


def summary_rows(results: Sequence[SceneResult]) -> list[dict[str, Any]]:
    """One flat dict per scene with :data:`SUMMARY_COLUMNS` (a missing score: None)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "scene": r.scene,
            "run": r.run,
            "status": r.status,
            "failed_stage": r.failed_stage,
            "error": r.error,
        }
        for key in ("psnr", "miou", "teacher_miou", "map25"):
            row[key] = r.metrics.get(key)
        for stage in STAGES:
            row[f"seconds_{stage}"] = r.seconds.get(stage)
        row["seconds_total"] = round(sum(r.seconds.values()), 3)
        row["skipped"] = list(r.skipped)
        rows.append(row)
    return rows


def write_summary(results: Sequence[SceneResult], runs_dir: Path) -> list[Path]:
    """``RUNS/summary.json`` (a list of :func:`summary_rows`) and ``RUNS/summary.csv`` (the same columns; the
    skipped stages space-separated, a missing value empty), each written whole or not at all."""
    rows = summary_rows(results)
    json_path, csv_path = Path(runs_dir) / "summary.json", Path(runs_dir) / "summary.csv"
    write_json(json_path, rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: " ".join(v) if k == "skipped" else ("" if v is None else v) for k, v in row.items()})
    write_text(csv_path, buf.getvalue())
    return [json_path, csv_path]


def format_summary(results: Sequence[SceneResult]) -> str:
    """A table of the batch: per scene its run folder name, status, seconds, scores and error; then the counts
    and the failed scenes."""

    def num(value: Any, digits: int = 1) -> str:  # noqa: ANN401
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    head = ("scene", "status", "seconds", "psnr", "miou", "map25", "ran / skipped")
    rows = []
    for r in results:
        ran = [s for s in STAGES if s in r.seconds and s not in r.skipped]
        stages = f"{len(ran)} / {len(r.skipped)}"
        rows.append(
            (
                Path(r.run).name,
                r.status,
                num(sum(r.seconds.values())),
                num(r.metrics.get("psnr"), 2),
                num(r.metrics.get("miou")),
                num(r.metrics.get("map25")),
                stages,
            )
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *rows)]
    failed = [r for r in results if r.status != "done"]
    lines.append(f"{len(results) - len(failed)} done, {len(failed)} failed")
    lines += [
        f"  failed: {Path(r.run).name} ({r.scene}){f' at {r.failed_stage}' if r.failed_stage else ''}: {r.error}"
        for r in failed
    ]
    return "\n".join(lines)
