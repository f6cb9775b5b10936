"""A benchmark's result file: what was measured, where, from which commit, with which teacher.

Every file under ``results/`` is one JSON object::

    {
      "benchmark": "distill",                   # the benchmark module's name
      "command": "ovseg3d bench run distill",  # what makes this file again
      "commit": "aff4454",                      # the code that measured it
      "measured": "2026-11-28",                 # the day (a row can call a result older than a change stale)
      "machine": {"description": "2 CPU cores", "cpu": "...", "cores": 2, "gpu": null, ...},
      "teacher": {"kind": "synthetic", "errors": "persistent", "weights": null},
      "settings": {...},                        # preset, overrides, scenes, variants, repeats
      "figures": {"demo/miou": {"runs": [81.3, 66.33, 68.54], "median": 68.54, "min": 66.33, "max": 81.3}},
      "seconds": 5400.0
    }

A figure is always its runs with their median and range, one run or many (:func:`summary`). A file without a
machine, a commit or a teacher is refused with one line (:func:`validate`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ovseg3d import atomic
from ovseg3d.errors import UsageError

REQUIRED = ("benchmark", "command", "commit", "machine", "teacher", "figures", "seconds")
"""The keys every result file has; machine, commit and teacher must also say something (not empty)."""

TEACHER_KINDS = ("none", "synthetic", "clip")
"""none: the figure rests on no teacher (the field, the cloud's geometry, prepare); synthetic: the simulated
teacher (``errors``: per-view or persistent); clip: CLIP / DINO (``weights``: real or random)."""


class ResultError(UsageError):
    """A result file that cannot be used: the message is one line naming the file and what it lacks."""


def summary(runs: Sequence[float], digits: int = 4) -> dict[str, object]:
    """A figure over repeats: ``{"runs", "median", "min", "max"}`` (one run: its own median and range)."""
    if not runs:
        raise ValueError("a figure needs at least one run")
    values = [round(float(x), digits) for x in runs]
    return {"runs": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def validate(data: object, source: Path | str) -> dict:
    """``data`` as a result, or :class:`ResultError` in one line naming ``source`` and every missing part."""
    if not isinstance(data, dict):
        raise ResultError(f"{source}: not a result (a JSON object is expected)")
    missing = [k for k in REQUIRED if k not in data or data[k] in (None, "", {}, [])]
    if missing:
        raise ResultError(f"{source}: refused, no {', '.join(missing)}")
    teacher = data["teacher"]
    if not isinstance(teacher, dict) or teacher.get("kind") not in TEACHER_KINDS:
        raise ResultError(f"{source}: refused, teacher.kind must be one of {', '.join(TEACHER_KINDS)}")
    if not isinstance(data["machine"], dict) or not data["machine"].get("description"):
        raise ResultError(f"{source}: refused, machine.description is empty")
    for name, figure in data["figures"].items():
        if not isinstance(figure, dict) or not {"runs", "median", "min", "max"} <= set(figure):
            raise ResultError(f"{source}: refused, figure '{name}' is not runs with their median and range")
    return data


def load(path: Path) -> dict:
    """A result file, validated."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    return validate(data, path)


def write(data: dict, path: Path) -> Path:
    """Validate ``data`` and write it whole (beside, then renamed)."""
    validate(data, path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(path), json.dumps(data, indent=2) + "\n")
    return Path(path)


def cpu_model() -> str | None:
    """The CPU's model name (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine(device: str = "cpu") -> dict[str, object]:
    """Where a benchmark runs: CPU model and cores, the GPU's model when ``device`` is a GPU, torch's threads, and
    the load average when the result is written (a shared machine's seconds are upper bounds).

    ``cpu_capability`` (torch's vector level: ``AVX2``, ``AVX512``, ...) and ``cpu_bf16`` (whether the teachers run
    in bfloat16 here): two hosts that both say "AMD EPYC, 2 cores" ran the same teacher frames 1.6x apart because one
    had native bfloat16 and the other ran them in float32 (issue 68)."""
    import torch

    from ovseg3d import accel
    from ovseg3d.teachers.base import half_dtype

    gpu = torch.cuda.get_device_name(0) if str(device).startswith("cuda") and torch.cuda.is_available() else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = accel.machine_info(torch.device(device))
    description = f"one {gpu}" if gpu else f"{cores} CPU cores"
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # other jobs: seconds are upper bounds
    bf16 = half_dtype(torch.device("cpu"), True) is not None
    cpu = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": bf16}
    return {
        "description": description,
        "cpu": cpu_model(),
        "cores": cores,
        **cpu,
        "gpu": gpu,
        "load_1min": load,
        **info,
    }


def commit(root: Path | None = None) -> str:
    """The checkout's commit (``git describe --always --dirty``: a ``-dirty`` suffix when files were changed), or
    ``$OVSEG3D_COMMIT`` where it is set (a copy of the tree without ``.git``, such as a lent GPU machine's)."""
    given = os.environ.get("OVSEG3D_COMMIT", "").strip()
    if given:
        return given
    root = root or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ResultError(
            f"{root}: no commit to record (git describe failed: {exc}); set OVSEG3D_COMMIT where there is no .git"
        ) from None
    return out.stdout.strip()


def today() -> str:
    return datetime.date.today().isoformat()
