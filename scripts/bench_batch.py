#!/usr/bin/env python
"""ovseg3d batch benchmark: many scenes through every stage on a local Ray, a batch killed half-way and run
again, and what Ray costs per scene.

* **full**: four generated scenes (``--width`` x ``--height``, ``--n-views`` views, ``--n-annotated`` annotated),
  the last one broken on purpose (one image file deleted), through all six stages in one ``ovseg3d batch``
  command on a local Ray: per scene its status, error and seconds per stage;
* **kill**: the same batch into a fresh RUNS folder as a subprocess, its process group (the driver, Ray and its
  workers) killed with SIGKILL as soon as the first scene has finished, then the same command again: per scene
  the stages finished before the kill and the stages the re-run computed (none of the finished ones may be);
* **overhead**: one good scene through ``ovseg3d train`` + ``export`` + ``detect`` + ``eval`` (four commands)
  against ``ovseg3d batch`` of that scene alone with Ray (``--cpus-per-scene`` = all cores, as train uses them),
  and without Ray (``--no-ray``): wall seconds each and the difference.

The step budgets (default: cpu preset, 400 geometry + 60 distillation steps, no time limits, export
``--max-spread 0``) make every stage succeed on these scenes. The teachers' feature caches are made in the
**full** part and reused by the kill part; in the overhead part each way extracts them itself. Prints a table
and writes JSON (default ``bench/batch.json``; the parts not run keep what the file had); the scenes and runs
go to ``--root`` (default ``bench/batch``, replaced). Run it alone: two scenes train at a time.

    python scripts/bench_batch.py
    python scripts/bench_batch.py --steps 200 --distill-steps 30 --parts full kill
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from ovseg3d.pipeline import STAGES
from ovseg3d.run import checkpoint_step, list_checkpoints

Part = Literal["full", "kill", "overhead"]


@dataclass
class Args:
    root: Path = Path("bench/batch")
    """Folder for the scenes and runs (removed first)."""
    out: Path = Path("bench/batch.json")
    width: int = 80
    height: int = 60
    n_views: int = 16
    n_annotated: int = 2
    preset: str = "cpu"
    steps: int = 400
    distill_steps: int = 60
    max_spread: float = 0.0
    """Export's spread filter (0: off; the default 0.08 leaves too few points of a 400-step field)."""
    cpus_per_scene: float = 1.0
    """For the full and kill parts."""
    parts: list[Part] = field(default_factory=lambda: ["full", "kill", "overhead"])


NAMES = ("desk", "shelf", "table", "broken")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovseg3d.cli", *args]


def _budget(a: Args) -> list[str]:
    return [
        "--preset",
        a.preset,
        "--steps",
        str(a.steps),
        "--max-minutes",
        "0",
        "--distill-steps",
        str(a.distill_steps),
        "--distill-minutes",
        "0",
        "--device",
        "cpu",
    ]


def _run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` with its output appended to ``log``; its exit code and wall seconds."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    return code, round(time.perf_counter() - start, 2)


def make_scenes(a: Args) -> list[Path]:
    folder = a.root / "scenes"
    scenes = []
    for seed, name in enumerate(NAMES):
        size = ["--width", str(a.width), "--height", str(a.height), "--n-views", str(a.n_views)]
        cmd = _cli("synth", str(folder / name), *size, "--n-annotated", str(a.n_annotated), "--seed", str(seed))
        code, _ = _run(cmd, a.root / "synth.log")
        assert code == 0, f"synth failed: see {a.root / 'synth.log'}"
        scenes.append(folder / name)
    images = sorted((scenes[-1] / "images").iterdir())
    images[len(images) // 2].unlink()  # the broken scene: one image file missing
    return scenes


def _summary(runs: Path) -> list[dict]:
    return json.loads((runs / "summary.json").read_text())


def _batch(a: Args, scenes: list[Path], runs: Path, *extra: str) -> list[str]:
    export = ["--max-spread", str(a.max_spread)]
    return _cli("batch", *map(str, scenes), "--output", str(runs), *_budget(a), *export, *extra)


def part_full(a: Args, scenes: list[Path]) -> dict:
    runs = a.root / "full"
    code, wall = _run(_batch(a, scenes, runs, "--cpus-per-scene", str(a.cpus_per_scene)), a.root / "full.log")
    rows = _summary(runs)
    return {"exit_code": code, "wall_s": wall, "scenes": rows}


def _session_pids(sid: int) -> list[int]:
    """Processes of the session ``sid`` (the killed batch's, which this script started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if os.getsid(int(entry.name)) == sid and not zombie:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return pids


def _finished(run: Path) -> dict:
    try:
        return json.loads((run / "stages.json").read_text())
    except (OSError, ValueError):
        return {}


def part_kill(a: Args, scenes: list[Path]) -> dict:
    runs = a.root / "killed"
    log = a.root / "killed.log"
    cmd = _batch(a, scenes, runs, "--cpus-per-scene", str(a.cpus_per_scene))
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        first = None
        while proc.poll() is None and first is None:
            time.sleep(0.5)
            first = next((s.name for s in scenes if "eval" in _finished(runs / s.name)), None)
        killed_at = round(time.perf_counter() - start, 2)
        at_kill = {}
        for s in scenes:
            run = runs / s.name
            ckpts = list_checkpoints(run) if run.is_dir() else []
            at_kill[s.name] = {
                "finished": [st for st in STAGES if st in _finished(run)],
                "checkpoint_step": checkpoint_step(ckpts[-1]) if ckpts else None,
            }
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(2)
    leftovers = [p for p in _session_pids(proc.pid) if p != os.getpid()]
    for pid in leftovers:  # Ray processes that outlived the kill (none expected: they share the process group)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    code, wall = _run(cmd, log)
    rows = _summary(runs)
    per_scene = []
    for s, row in zip(scenes, rows):
        computed = [st for st in STAGES if row.get(f"seconds_{st}") is not None and st not in row["skipped"]]
        done_before = at_kill[s.name]["finished"]
        per_scene.append(
            {
                "scene": s.name,
                "status": row["status"],
                "finished_before_kill": done_before,
                "checkpoint_step_at_kill": at_kill[s.name]["checkpoint_step"],
                "recomputed": computed,
                "recomputed_finished": [st for st in computed if st in done_before],
                "rerun_seconds": row["seconds_total"],
            }
        )
    return {
        "first_finished": first,
        "killed_after_s": killed_at,
        "leftover_processes": len(leftovers),
        "rerun_exit_code": code,
        "rerun_wall_s": wall,
        "scenes": per_scene,
        "ok": all(not p["recomputed_finished"] for p in per_scene),
    }


def part_overhead(a: Args, scenes: list[Path]) -> dict:
    """A failure of one way (a command's exit code, a failed scene) is recorded, not raised."""
    scene, log = scenes[0], a.root / "overhead.log"
    cores = str(os.cpu_count() or 1)
    direct = a.root / "direct" / scene.name
    steps, codes = {}, {}
    shutil.rmtree(scene / "features", ignore_errors=True)  # each way extracts the teachers' features itself
    train = ["train", str(scene), "--output", str(direct), *_budget(a)]
    for name, cmd in (
        ("train", _cli(*train)),
        ("export", _cli("export", str(direct), "--device", "cpu", "--max-spread", str(a.max_spread))),
        ("detect", _cli("detect", str(direct), "--device", "cpu")),
        ("eval", _cli("eval", str(direct), "--device", "cpu")),
    ):
        codes[name], steps[name] = _run(cmd, log)
    out: dict = {"direct_s": round(sum(steps.values()), 2), "direct_steps_s": steps, "direct_exit_codes": codes}
    out["direct_psnr"] = json.loads((direct / "eval.json").read_text()).get("psnr") if codes["eval"] == 0 else None
    for label, extra in (("ray", ["--cpus-per-scene", cores]), ("no_ray", ["--no-ray"])):
        runs = a.root / f"overhead_{label}"
        shutil.rmtree(scene / "features", ignore_errors=True)
        code, wall = _run(_batch(a, [scene], runs, *extra), log)
        (row,) = _summary(runs)
        out[f"batch_{label}"] = {
            "wall_s": wall,
            "exit_code": code,
            "status": row["status"],
            "error": row["error"],
            "stage_s": {st: row[f"seconds_{st}"] for st in STAGES},
            "stages_total_s": row["seconds_total"],
            "psnr": row["psnr"],
        }
    out["ray_minus_direct_s"] = round(out["batch_ray"]["wall_s"] - out["direct_s"], 2)
    out["ray_minus_no_ray_s"] = round(out["batch_ray"]["wall_s"] - out["batch_no_ray"]["wall_s"], 2)
    out["ray_wall_minus_stages_s"] = round(out["batch_ray"]["wall_s"] - out["batch_ray"]["stages_total_s"], 2)
    out["no_ray_wall_minus_stages_s"] = round(out["batch_no_ray"]["wall_s"] - out["batch_no_ray"]["stages_total_s"], 2)
    return out


def _num(v: object, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


def report(res: dict) -> str:
    lines = []
    if "full" in res:
        full = res["full"]
        lines.append(
            f"full: {len(full['scenes'])} scenes, all stages, local Ray: {full['wall_s']} s wall, exit {full['exit_code']}"
        )
        head = ["scene", "status", *STAGES, "total", "psnr", "miou", "map25", "error"]
        lines.append("  " + " | ".join(head))
        for r in full["scenes"]:
            secs = [_num(r[f"seconds_{s}"]) for s in STAGES]
            name = Path(r["scene"]).name
            scores = [_num(r["psnr"], 2), _num(r["miou"]), _num(r["map25"], 2)]
            lines.append(
                "  " + " | ".join([name, r["status"], *secs, _num(r["seconds_total"]), *scores, r["error"][:90]])
            )
    if "kill" in res:
        k = res["kill"]
        lines.append(
            f"kill: SIGKILL to the batch's process group {k['killed_after_s']} s in (after {k['first_finished']} "
            f"finished), {k['leftover_processes']} processes left over; re-run {k['rerun_wall_s']} s, exit "
            f"{k['rerun_exit_code']}; finished stages recomputed: {'none' if k['ok'] else 'SOME'}"
        )
        for s in k["scenes"]:
            lines.append(
                f"  {s['scene']:<8} {s['status']:<7} finished before: {','.join(s['finished_before_kill']) or '-'}"
                f" (checkpoint step {s['checkpoint_step_at_kill']}); re-run computed: {','.join(s['recomputed']) or '-'}"
                f" ({_num(s['rerun_seconds'])} s)"
            )
    if "overhead" in res:
        o = res["overhead"]
        codes = ", ".join(
            f"{k} {v} s" + ("" if o["direct_exit_codes"][k] == 0 else " (FAILED)")
            for k, v in o["direct_steps_s"].items()
        )
        lines.append(f"overhead (one scene, {res.get('cpus')} cores each way, teachers extracted each time):")
        lines.append(
            f"  direct: train + export + detect + eval = {o['direct_s']} s ({codes}); psnr {_num(o['direct_psnr'], 2)}"
        )
        for label in ("ray", "no_ray"):
            b = o[f"batch_{label}"]
            secs = ", ".join(f"{k} {_num(v)}" for k, v in b["stage_s"].items())
            lines.append(
                f"  batch {'with Ray' if label == 'ray' else '--no-ray'}: {b['wall_s']} s wall, stages {b['stages_total_s']} s "
                f"({secs}); {b['status']} {b['error']}; psnr {_num(b['psnr'], 2)}"
            )
        lines.append(
            f"  Ray - direct {o['ray_minus_direct_s']:+} s; Ray - no Ray {o['ray_minus_no_ray_s']:+} s; wall - stages: "
            f"Ray {o['ray_wall_minus_stages_s']} s, no Ray {o['no_ray_wall_minus_stages_s']} s"
        )
    return "\n".join(lines)


def main(a: Args) -> dict:
    shutil.rmtree(a.root, ignore_errors=True)
    a.root.mkdir(parents=True)
    scenes = make_scenes(a)
    res: dict = {
        "args": {k: str(v) for k, v in vars(a).items()},
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    if a.out.is_file():  # the parts not run this time stay as they were measured
        res = {**json.loads(a.out.read_text()), **res}
    for part, fn in (("full", part_full), ("kill", part_kill), ("overhead", part_overhead)):
        if part in a.parts:
            t = time.perf_counter()
            res[part] = fn(a, scenes)
            res[part]["part_s"] = round(time.perf_counter() - t, 1)
            res[part]["load_after"] = os.getloadavg()
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=2) + "\n")  # what is measured so far
            print(report({part: res[part]}), flush=True)
    print("\n" + report(res))
    print(f"wrote {a.out}")
    return res


if __name__ == "__main__":
    main(tyro.cli(Args))
