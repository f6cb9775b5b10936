#!/usr/bin/env python
"""``ovseg3d prepare`` on real photo sets: registered photos, reprojection error, seconds per step and, where the
set ships camera poses made from the same photos (a COLMAP model, LLFF ``poses_bounds.npy`` or a
``transforms.json``), the absolute trajectory error of the camera centres after a similarity alignment, as a
share of the cameras' extent (the diagonal of their box). A reference can be wrong too (NeRF-Database's own model
turns runs of its photos 180 degrees about a can on a tiled floor), so each model's path is also checked on its own:
in name order (capture order for most sets), the largest step between consecutive cameras as a share of the extent,
and the number of consecutive turns over 150 degrees (a run of photos placed on the opposite side).

Each set is a folder of photos (fetched, never committed) and, optionally, a scene folder with the shipped poses:

    python scripts/bench_prepare.py --sets nerfdb=/work/data/nerfdb/images:/work/data/nerfdb \\
        fox=/work/data/fox/data/nerf/fox/images:/work/data/fox/data/nerf/fox bonsai=/work/data/bonsai/photos

Prints a table and writes JSON (default ``bench/prepare.json``; rows of sets not run are kept). The prepared
scenes go to ``--root`` (default ``bench/prepared``), reused unless ``--fresh``. The pairs matched are prepare's
(``--matcher retrieval`` or ``exhaustive`` to compare, under another set name). Every run records the machine's
1-minute load average while it ran (mean, most, at the start) and the CPU seconds of structure from motion (the
child process's user + system time, which other jobs on the cores change far less than the wall seconds); a mean
load above 2.5 marks its seconds as taken on shared cores (``*`` in the table).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from ovseg3d.data.colmap import c2w_opengl, read_model
from ovseg3d.data.loader import load_scene
from ovseg3d.metrics import trajectory_error
from ovseg3d.prepare import PrepareConfig, prepare

ROW_KEYS = ("images", "registered", "size", "points", "mean_reprojection_error_px", "matcher", "matched_pairs")
ROW_KEYS += ("seconds", "sfm_cpu_s", "load_average")


@dataclass
class Args:
    sets: list[str] = field(default_factory=list)
    """NAME=PHOTOS[:SCENE_WITH_POSES] for each set."""
    root: Path = Path("bench/prepared")
    out: Path = Path("bench/prepare.json")
    fresh: bool = False
    """Prepare again even where a prepared scene is there."""
    max_long_side: int = PrepareConfig.max_long_side
    sift_first_octave: int | None = PrepareConfig.sift_first_octave
    """SIFT's first octave (prepare's --sift-first-octave)."""
    mapper: Literal["incremental", "global"] = PrepareConfig.mapper
    """COLMAP's mapper (prepare's --mapper)."""
    matcher: Literal["auto", "retrieval", "exhaustive", "sequential"] = PrepareConfig.matcher
    """Which pairs to match (prepare's --matcher)."""
    retrieval_neighbours: int = PrepareConfig.retrieval_neighbours
    """prepare's --retrieval-neighbours."""
    far_pair_check: bool = PrepareConfig.far_pair_check
    """prepare's --far-pair-check."""


def poses_by_name(scene: Path) -> tuple[list[str], np.ndarray]:
    """Image stems in name order and their camera-to-world matrices ``[N, 3, 4]``, of a scene or COLMAP model
    folder."""
    if (scene / "images.bin").is_file() or (scene / "images.txt").is_file():
        ordered = sorted(read_model(scene).images.values(), key=lambda im: im.name)
        return [Path(im.name).stem for im in ordered], np.stack([c2w_opengl(im) for im in ordered])
    s = load_scene(scene)
    order = np.argsort([Path(p).name for p in s.image_paths])
    return [Path(s.image_paths[i]).stem for i in order], s.cameras.c2w.double().numpy()[order]


def _turns(c2w: np.ndarray) -> np.ndarray:
    """Degrees turned between consecutive cameras."""
    rot = c2w[:, :, :3]
    cos = (np.einsum("nij,nij->n", rot[:-1], rot[1:]) - 1) / 2  # trace(R_i^T R_j) = sum of the elementwise product
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def centres_by_name(scene: Path) -> dict[str, np.ndarray]:
    """Camera centres by image stem, of a scene folder or of a COLMAP model folder (cameras.bin, images.bin)."""
    names, c2w = poses_by_name(scene)
    return dict(zip(names, c2w[:, :, 3]))


def path_jumps(c2w: np.ndarray) -> dict[str, float]:
    """Consecutive cameras ``[N, 3, 4]`` (in name order): the largest step (share of the extent) and the turns over
    150 degrees."""
    centres = c2w[:, :, 3]
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0))) or 1.0
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1) / extent
    return {"max_step_share": round(float(steps.max()), 4), "turns_over_150": int((_turns(c2w) > 150).sum())}


def ate_within_reference_runs(names: list[str], c2w: np.ndarray, found: dict[str, np.ndarray]) -> list[dict] | None:
    """Where the reference (``names``, ``c2w`` in name order) turns over 150 degrees between consecutive photos,
    its runs alternate between two placements; the ATE of each placement's photos (every other run), aligned on
    its own. ``None`` when the reference has no such turn."""
    cuts = np.flatnonzero(_turns(c2w) > 150) + 1
    if not len(cuts):
        return None
    run = np.zeros(len(names), dtype=int)
    for cut in cuts:
        run[cut:] += 1
    out = []
    for side in (0, 1):
        keep = [i for i in range(len(names)) if run[i] % 2 == side and names[i] in found]
        est = np.stack([found[names[i]] for i in keep])
        err = trajectory_error(est, c2w[keep, :, 3])
        out.append({"photos": len(keep), "rmse_share": round(err["rmse_share"], 5)})
    return out


class LoadAverage:
    """The machine's 1-minute load average, read every ``every`` seconds while a ``with`` block runs: its mean and
    most, beside the CPU count (other jobs on the cores make a run's seconds an upper bound)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.seen, self._stop = every, [os.getloadavg()[0]], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.seen.append(os.getloadavg()[0])

    def __enter__(self) -> LoadAverage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.append(os.getloadavg()[0])

    def summary(self, own_threads: int) -> dict:
        """Mean, most and the load when it began, and ``shared``: the mean load was more than ``own_threads`` (the
        run's own busy threads) plus a half."""
        mean = float(np.mean(self.seen))
        return {
            "start": round(self.seen[0], 2),
            "mean": round(mean, 2),
            "max": round(max(self.seen), 2),
            "cpus": os.cpu_count(),
            "shared": mean > own_threads + 0.5,
        }


def print_table(rows: dict[str, dict]) -> None:
    """One line a set: what was registered, how well, against the reference, and the seconds of each step beside
    the load average they were taken under (``*``: cores shared with other jobs)."""
    print(
        f"{'set':<16} {'photos':>6} {'size':>10} {'matcher':>10} {'pairs':>6} {'registered':>10} {'reproj px':>9} "
        f"{'ATE % extent':>12} {'max step':>8} {'flips':>5} {'far dropped':>11} {'features s':>10} {'matches s':>9} "
        f"{'far s':>5} {'mapping s':>9} {'total s':>8} {'SfM CPU s':>9} {'load':>6}"
    )
    for name, r in rows.items():
        ate = f"{100 * r['ate']['rmse_share']:.3f}" if "ate" in r else "-"
        if r.get("ate_within_reference_runs"):  # the reference's own flips: ATE of each of its two placements
            ate += " (" + "/".join(f"{100 * g['rmse_share']:.2f}" for g in r["ate_within_reference_runs"]) + ")"
        sec = r["seconds"]
        size = "x".join(map(str, r["size"]))
        path = r.get("path") or {}
        far = r.get("far_pair_check") or {}
        dropped = f"{far['far_pairs_dropped']}/{far['far_pairs']}" if far else "-"
        load = r.get("load_average")
        load_said = f"{load['mean']:.1f}{'*' if load['shared'] else ''}" if load else "-"
        cpu = f"{r['sfm_cpu_s']:.0f}" if r.get("sfm_cpu_s") else "-"
        print(
            f"{name:<16} {r['images']:>6} {size:>10} {r.get('matcher') or '-':>10} {r.get('matched_pairs') or '-':>6} "
            f"{r['registered']:>10} {r['mean_reprojection_error_px']:>9.2f} "
            f"{ate:>12} {path.get('max_step_share', float('nan')):>8.3f} {path.get('turns_over_150', -1):>5} "
            f"{dropped:>11} {sec.get('features', 0):>10.0f} {sec.get('matches', 0):>9.0f} "
            f"{sec.get('far_pairs', 0):>5.0f} {sec.get('mapping', 0):>9.0f} {sec['total']:>8.0f} {cpu:>9} "
            f"{load_said:>6}"
        )


def main(args: Args) -> None:
    rows = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for spec in args.sets:
        name, _, paths = spec.partition("=")
        photos, _, reference = paths.partition(":")
        out = args.root / name
        if args.fresh and out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        if not out.exists():
            cfg = PrepareConfig(
                max_long_side=args.max_long_side,
                sift_first_octave=args.sift_first_octave,
                mapper=args.mapper,
                matcher=args.matcher,
                retrieval_neighbours=args.retrieval_neighbours,
                far_pair_check=args.far_pair_check,
            )
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with LoadAverage() as load:
                stats = prepare(Path(photos), out, cfg)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats["load_average"] = load.summary(min(os.cpu_count() or 1, 2))
            stats["sfm_cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
            (out / "prepare.json").write_text(json.dumps(stats, indent=1))
        else:
            stats = json.loads((out / "prepare.json").read_text())
        row = {k: stats.get(k) for k in ROW_KEYS}
        row["registered_share"] = round(stats["registered"] / stats["images"], 4)
        row["wall_s"] = round(time.perf_counter() - start, 1)
        row["far_pair_check"] = stats.get("far_pair_check")
        names, c2w = poses_by_name(out)
        row["path"] = path_jumps(c2w)
        if reference:
            ref_names, ref_c2w = poses_by_name(Path(reference))
            truth, found = dict(zip(ref_names, ref_c2w[:, :, 3])), dict(zip(names, c2w[:, :, 3]))
            common = sorted(set(truth) & set(found))
            est = np.stack([found[n] for n in common])
            ref = np.stack([truth[n] for n in common])
            row["ate"] = {k: round(v, 5) for k, v in trajectory_error(est, ref).items()}
            row["ate_images"] = len(common)
            row["reference_path"] = path_jumps(ref_c2w)
            row["ate_within_reference_runs"] = ate_within_reference_runs(ref_names, ref_c2w, found)
        rows[name] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    print_table(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
