"""A phone video through ``ovseg3d run``, every stage as a user runs it (issue 49, issue 68): each stage's seconds,
prepare included, and the held-out PSNR (``ovseg3d eval``, not counted).

The scene is a folder holding one video (``*.mp4``, ``*.mov``, ``*.avi`` or ``*.mkv``; the video itself is not a
folder the harness names). The teachers are the config's: on a machine without weights, real-size random-weight
models (``tests/tiny_models.py``; their labels mean nothing, their seconds are real), given by ``--set
teachers.clip_model=DIR teachers.dino_model=DIR``. The classes: ``--set classes=...`` (default "figurine, table").

    ovseg3d bench run video --scenes /data/figurine_video --variants lift_k12 \\
        --set teachers.clip_model=models/clip-b16 teachers.dino_model=models/dino-b8 --out results/video.json
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ovseg3d.bench.harness import BenchError, Benchmark, Case

VIDEOS = ("*.mp4", "*.mov", "*.avi", "*.mkv")
STAGES = ("prepare", "teachers", "geometry", "distill", "export", "detect")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def the_video(folder: Path) -> Path:
    found = sorted(p for pattern in VIDEOS for p in folder.glob(pattern))
    if len(found) != 1:
        raise BenchError(f"bench video: {folder} must hold exactly one video ({', '.join(VIDEOS)}), found {len(found)}")
    return found[0]


def measure(case: Case) -> dict[str, float]:
    from ovseg3d.config import write_toml

    video = the_video(case.folder)
    run = case.work / "video" / f"{video.stem}-{case.variant}-s{case.seed}"
    if run.exists():
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg = case.config()
    if cfg.teachers.kind == "auto":
        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="clip"))
    classes = ", ".join(cfg.classes) if cfg.classes else "figurine, table"
    settings = run.parent / f"{run.name}.toml"
    write_toml(dataclasses.replace(cfg, classes=()), settings)
    # the commands as a user runs them, in processes of their own (the harness sits below the command line)
    command = [sys.executable, "-m", "ovseg3d.cli", "run", str(video), "--output", str(run), "--preset", case.preset]
    command += ["--config", str(settings), "--classes", classes, "--device", case.device]
    start, cpu = time.perf_counter(), _cpu_seconds()
    if subprocess.run(command).returncode != 0:
        raise RuntimeError(f"{case.label}: ovseg3d run failed")
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    evaluate = [sys.executable, "-m", "ovseg3d.cli", "eval", str(run), "--device", case.device]
    if subprocess.run(evaluate).returncode != 0:
        raise RuntimeError(f"{case.label}: ovseg3d eval failed")
    stages = json.loads((run / "stages.json").read_text())
    figures = {f"{s}_seconds": float(stages[s]["seconds"]) for s in STAGES if s in stages}
    figures["prepare_seconds"] = float(json.loads((run / "scene" / "prepare.json").read_text())["seconds"]["total"])
    figures["seconds"] = round(sum(figures.values()), 1)
    figures["wall_seconds"] = round(wall, 1)  # the command's own, from its start to its last line
    figures["cpu_seconds"] = round(cpu, 1)  # the command's process and its children's: less swayed by other jobs
    scores = json.loads((run / "eval.json").read_text())
    figures["psnr"] = float(scores["psnr"])
    return figures


BENCHMARK = Benchmark(
    name="video",
    doc="a phone video through ovseg3d run: each stage's seconds, prepare included, and the held-out PSNR",
    measure=measure,
    figures=("seconds", "psnr"),
    scenes=(),
    variants={
        "distill": {},
        "lift": {"semantic": "lift"},
        "lift_k12": {"semantic": "lift", "teacher_views": 12},
    },
    repeats=1,
    teacher={"kind": "clip", "weights": "random"},
)
