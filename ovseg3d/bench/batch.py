"""Many scenes through every stage with ``ovseg3d batch`` on a local Ray: a broken scene among them, a batch killed
half-way and run again, and what Ray costs a scene. Folds ``scripts/bench_batch.py``; run it alone (two scenes
train at a time).

The scene ``batch`` (registered here: 80x60, 16 views, 2 annotated, seed 0; or a scene folder given) goes with
three more made under the work folder: ``shelf``, ``table`` and ``broken`` (seeds 1-3, the last with one image file
deleted). Each variant is one part; its config overrides (the step budget: 400 geometry
and 60 distillation steps, no time limits; ``--set``) reach every command as a ``--config`` file, and the export
runs with ``--max-spread 0`` (its default leaves too few points of a 400-step field). Figures:

* ``full``: the four scenes in one ``ovseg3d batch`` (one core a scene): ``wall_s``, ``exit_code``, and per scene
  ``SCENE_done`` (1: every stage finished; the broken scene's 0 and its error are in ``full/summary.json``),
  ``SCENE_STAGE_s``, ``SCENE_psnr``;
* ``kill``: the same batch into a fresh folder, its process group (the driver, Ray and its workers) killed with
  SIGKILL as soon as one scene has finished, then the same command again: ``killed_after_s``,
  ``leftover_processes``, ``rerun_wall_s``, ``rerun_exit_code``, per scene ``SCENE_finished_before_kill`` and
  ``SCENE_recomputed`` (stages), and ``recomputed_finished``: the finished stages the re-run computed (must be 0);
* ``overhead``: the first scene through ``train``, ``export``, ``detect``, ``eval`` (``direct_s``) against
  ``ovseg3d batch`` of it alone with Ray (``--cpus-per-scene`` all cores; ``ray_s``) and ``--no-ray``
  (``no_ray_s``), each extracting the teachers' features itself: the differences ``ray_minus_direct_s``,
  ``ray_minus_no_ray_s``, and each batch's wall minus its stages' seconds (``ray_wall_minus_stages_s`` ...).

    ovseg3d bench run batch --out results/batch.json
    ovseg3d bench run batch --variants full kill --set steps=200 distill_steps=30
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ovseg3d.bench.harness import SCENES, Benchmark, Case, Scene

SIZE = {"width": 80, "height": 60, "n_views": 16, "n_annotated": 2}
NAMES = ("shelf", "table", "broken")
SCENES.setdefault("batch", Scene("batch", synth={**SIZE, "seed": 0}, note="4 small generated scenes, one broken"))
BUDGET = {"steps": 400, "max_minutes": 0.0, "distill_steps": 60, "distill_minutes": 0.0}


def scenes(case: Case) -> list[Path]:
    """The case's scene and the three others (seeds 1-3, made once under the work folder; the last one broken)."""
    from ovseg3d.synth import SynthConfig, synthesize

    folder = case.work / "batch" / "scenes"
    out = [case.folder]
    for seed, name in enumerate(NAMES, start=1):
        if not (folder / name / "scene.json").exists():
            synthesize(SynthConfig(**SIZE, seed=seed), folder / name)
        out.append(folder / name)
    images = sorted((out[-1] / "images").iterdir())
    if len(images) == SIZE["n_views"]:
        images[len(images) // 2].unlink()  # the broken scene: one image file missing
    return out


def toml(values: dict[str, Any]) -> str:
    """A config table as TOML (JSON's values are TOML's; nested tables as ``[name]``)."""
    flat = [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None and not isinstance(v, dict)]
    tables = [f"[{k}]\n{toml(v)}" for k, v in values.items() if isinstance(v, dict)]
    return "\n".join(flat + tables) + "\n"


def call(cmd: list[str], log: Path) -> tuple[int, float]:
    """``python -m ovseg3d.cli CMD`` with its output appended to ``log``: its exit code and wall seconds."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ ovseg3d {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call([sys.executable, "-m", "ovseg3d.cli", *cmd], stdout=f, stderr=subprocess.STDOUT)
    return code, round(time.perf_counter() - start, 2)


def summary(runs: Path) -> dict[str, dict]:
    """``RUNS/summary.json``'s rows by scene name."""
    return {Path(r["scene"]).name: r for r in json.loads((runs / "summary.json").read_text())}


def finished(run: Path) -> list[str]:
    from ovseg3d.pipeline import STAGES, read_stages

    done = read_stages(run)
    return [s for s in STAGES if s in done]


def full(batch: list[str], scenes: list[Path], root: Path) -> dict[str, float]:
    from ovseg3d.pipeline import STAGES

    code, wall = call([*batch, "--output", str(root / "full")], root / "full.log")
    rows, out = summary(root / "full"), {"wall_s": wall, "exit_code": code}
    for name, r in rows.items():
        out |= {f"{name}_done": float(r["status"] == "done"), f"{name}_psnr": r["psnr"] or float("nan")}
        out |= {f"{name}_{s}_s": r[f"seconds_{s}"] or 0.0 for s in STAGES}
    out["broken_failed"] = float(rows["broken"]["status"] != "done")
    return out


def kill(batch: list[str], scenes: list[Path], root: Path) -> dict[str, float]:
    from ovseg3d.pipeline import STAGES

    runs, log = root / "killed", root / "killed.log"
    cmd = [sys.executable, "-m", "ovseg3d.cli", *batch, "--output", str(runs)]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None and not any("eval" in finished(runs / s.name) for s in scenes):
            time.sleep(0.5)
        out: dict[str, float] = {"killed_after_s": round(time.perf_counter() - start, 2)}
        before = {s.name: finished(runs / s.name) for s in scenes}
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(2)
    leftovers = []  # Ray processes that outlived the kill (none expected: they share the process group)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == proc.pid:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    leftovers.append(int(entry.name))
                    os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError):
            pass
    out["leftover_processes"] = len(leftovers)
    out["rerun_exit_code"], out["rerun_wall_s"] = call(batch + ["--output", str(runs)], log)
    out["recomputed_finished"] = 0
    for name, r in summary(runs).items():
        computed = [s for s in STAGES if r.get(f"seconds_{s}") is not None and s not in r["skipped"]]
        out |= {f"{name}_finished_before_kill": len(before[name]), f"{name}_recomputed": len(computed)}
        out["recomputed_finished"] += len(set(computed) & set(before[name]))
    return out


def overhead(batch: list[str], scenes: list[Path], root: Path, case: Case) -> dict[str, float]:
    scene, log, direct = scenes[0], root / "overhead.log", root / "direct" / scenes[0].name
    out: dict[str, float] = {"direct_s": 0.0}
    shutil.rmtree(scene / "features", ignore_errors=True)  # each way extracts the teachers' features itself
    dev, config = ["--device", case.device], ["--preset", case.preset, "--config", str(root / "config.toml")]
    for name, cmd in (
        ("train", ["train", str(scene), "--output", str(direct), *config, *dev]),
        ("export", ["export", str(direct), *dev, "--max-spread", "0"]),
        ("detect", ["detect", str(direct), *dev]),
        ("eval", ["eval", str(direct), *dev]),
    ):
        out[f"direct_{name}_exit_code"], out[f"direct_{name}_s"] = call(cmd, log)
        out["direct_s"] += out[f"direct_{name}_s"]
    one = [batch[0], str(scene), *batch[len(scenes) + 1 :]]  # the batch command with the first scene alone
    for label, extra in (("ray", ["--cpus-per-scene", str(os.cpu_count() or 1)]), ("no_ray", ["--no-ray"])):
        shutil.rmtree(scene / "features", ignore_errors=True)
        code, wall = call([*one, *extra, "--output", str(root / f"overhead_{label}")], log)
        (row,) = summary(root / f"overhead_{label}").values()
        out |= {f"{label}_s": wall, f"{label}_exit_code": code, f"{label}_psnr": row["psnr"] or float("nan")}
        out[f"{label}_wall_minus_stages_s"] = round(wall - row["seconds_total"], 2)
    out["ray_minus_direct_s"] = round(out["ray_s"] - out["direct_s"], 2)
    out["ray_minus_no_ray_s"] = round(out["ray_s"] - out["no_ray_s"], 2)
    return out


def measure(case: Case) -> dict[str, float]:
    """One part (the variant) on the four scenes, into a fresh folder under the work folder."""
    found = scenes(case)
    root = case.work / "batch" / f"{case.variant}-s{case.seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "config.toml"
    config.write_text(toml({**case.overrides, "seed": case.config().seed}))
    batch = ["batch", *map(str, found), "--preset", case.preset, "--config", str(config), "--device", case.device]
    batch += ["--max-spread", "0"]
    if case.variant == "overhead":
        return overhead(batch, found, root, case)
    return (full if case.variant == "full" else kill)([*batch, "--cpus-per-scene", "1"], found, root)


BENCHMARK = Benchmark(
    name="batch",
    doc="ovseg3d batch on a local Ray: 4 scenes (one broken), a kill and re-run, Ray's overhead a scene",
    measure=measure,
    figures=(),
    scenes=("batch",),
    variants={"full": BUDGET, "kill": BUDGET, "overhead": BUDGET},
)
