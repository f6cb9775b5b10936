"""``ovseg3d prepare`` on photo sets (issues 49, 68): photos registered, reprojection error, points, seconds by step,
matched pairs, the load while it ran, the CPU seconds of structure from motion, and, where the set has poses made from
the same photos, the cameras' ATE after a similarity alignment (% of their extent). A reference can be wrong too
(NeRF-Database's model turns runs of its photos 180 degrees), so each path in name order is checked on its own (its
largest step, its turns over 150 degrees), and where the reference turns, each of its two placements gets an ATE.
Folds scripts/bench_prepare.py, bench_sift.py, bench_mapper.py, bench_reprojection.py and bench_sfm.py.

A scene is a photo set: a folder named as the set, its photos in ``images/`` (else in the folder itself), optionally
``reference``, a link to poses made from the same photos (a scene, a COLMAP model; a scene folder with poses of its
own is its own reference), and ``prepare.toml``, the set's own prepare options (``max_long_side = 1440``).
``python -m ovseg3d.bench.prepare ROOT NAME=PHOTOS[:REFERENCE] ...`` makes such folders (bench_prepare's --sets).

A variant is a name of :data:`OPTIONS` (prepare's options) or of :data:`STUDIES`, several joined by '+': ``sift``,
SIFT alone on the first 40 photos, each matched with its next five; ``refilter``, what the model's mean error is
made of, and how far the cameras move when the observations above 2 px are dropped and bundle-adjusted again;
``sfm``, a field trained on the prepared scene (``--set steps=...``; ``+no_depth``: without the depth prior) against
the capture's own SfM points. ``global+threads2`` against ``default`` is bench_mapper's comparison. Give
``--variants``: without it the harness runs every one, the studies too.

    python -m ovseg3d.bench.prepare bench/sets bonsai_auto_v2=BONSAI_PHOTOS:BONSAI/sparse/0 fox_auto_v2=FOX/images:FOX
    echo "max_long_side = 1440" > bench/sets/fox_auto_v2/prepare.toml
    ovseg3d bench run prepare --scenes bench/sets/bonsai_auto_v2 bench/sets/fox_auto_v2 --variants default
    ovseg3d bench run prepare --scenes bench/sets/bonsai --variants sift+doubled sift+octave0 --out bench/sift.json
    ovseg3d bench run prepare --scenes bench/sets/bonsai --variants sfm sfm+no_depth --set steps=1300 max_minutes=0
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ovseg3d.bench.harness import BenchError, Benchmark, Case
from ovseg3d.config import ConfigError, apply_overrides, read_toml
from ovseg3d.metrics import similarity_alignment, trajectory_error

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "exhaustive": {"matcher": "exhaustive"},
    "retrieval": {"matcher": "retrieval"},
    "sequential": {"matcher": "sequential"},
    "no_far_check": {"far_pair_check": False},
    "global": {"mapper": "global"},
    "threads2": {"mapping_threads": 2},
    "octave0": {"sift_first_octave": 0},
    "doubled": {"sift_first_octave": -1},
    "features4096": {"max_features": 4096},
    "features2048": {"max_features": 2048},
    "long1440": {"max_long_side": 1440},
}
"""Named options of :class:`~ovseg3d.prepare.PrepareConfig` (prepare's flags, with underscores)."""
STUDIES: dict[str, dict[str, Any]] = {"sift": {}, "refilter": {}, "sfm": {}, "no_depth": {"depth_weight": 0.0}}
"""The studies beside a plain prepare, with the training overrides they bring (``no_depth``: ``sfm``'s field without
the depth prior)."""
SIFT_PHOTOS, REFILTER_PX, SFM_RAYS = 40, 2.0, 4096
POSES = ("sparse", "transforms.json", "poses_bounds.npy", "images.bin", "images.txt")  # a scene's, a model's


@dataclasses.dataclass(frozen=True)
class PhotoSet:
    """A scene of this benchmark: its photos, its reference poses (or None) and its own prepare options."""

    photos: Path
    reference: Path | None
    options: dict[str, Any]


def photo_set(folder: Path) -> PhotoSet:
    """The set in ``folder`` (module docstring); a folder without photos, a missing reference or an unknown option
    in its ``prepare.toml`` is one line."""
    from ovseg3d.prepare import IMAGE_SUFFIXES, PrepareConfig

    photos = folder / "images" if (folder / "images").is_dir() else folder
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in photos.iterdir()):
        raise BenchError(f"bench prepare: {folder} holds no photos ({', '.join(IMAGE_SUFFIXES)}), nor does images/")
    given = folder / "reference"
    if given.is_symlink() and not given.exists():
        raise BenchError(f"bench prepare: {given} points to {given.resolve()}, which is not there")
    own = photos != folder and any((folder / p).exists() for p in POSES)  # a scene with poses of its own
    reference = given if given.exists() else folder if own else None
    options = read_toml(folder / "prepare.toml") if (folder / "prepare.toml").is_file() else {}
    try:
        apply_overrides(PrepareConfig(), options, folder / "prepare.toml")
    except ConfigError as exc:
        raise BenchError(f"bench prepare: {exc}") from None
    return PhotoSet(photos, reference, options)


def make_set(spec: str, root: Path) -> Path:
    """bench_prepare's ``NAME=PHOTOS[:REFERENCE]`` as a set folder ``root/NAME`` of links (made again if there)."""
    name, _, paths = spec.partition("=")
    photos, _, reference = paths.partition(":")
    if not name or "/" in name or not photos:
        raise BenchError(f"bench prepare: '{spec}' is not NAME=PHOTOS[:REFERENCE]")
    for path in (photos, reference):
        if path and not Path(path).exists():
            raise BenchError(f"bench prepare: '{spec}': {path} is not there")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for link, target in (("images", photos), ("reference", reference)):
        (folder / link).unlink(missing_ok=True)
        if target:
            (folder / link).symlink_to(Path(target).resolve(), target_is_directory=True)
    return folder


def options(case: Case, own: dict[str, Any]) -> Any:
    """The PrepareConfig of a case: the set's own options, then each of the variant's in order."""
    from ovseg3d.prepare import PrepareConfig

    merged = dict(own)
    for part in case.variant.split("+"):
        merged.update(OPTIONS.get(part, {}))
    return apply_overrides(PrepareConfig(), merged, case.label)


def poses_by_name(scene: Path) -> tuple[list[str], np.ndarray]:
    """Image stems in name order and their camera-to-world matrices ``[N, 3, 4]``, of a scene or a COLMAP model."""
    from ovseg3d.data.colmap import c2w_opengl, read_model
    from ovseg3d.data.loader import load_scene

    if (scene / "images.bin").is_file() or (scene / "images.txt").is_file():
        ordered = sorted(read_model(scene).images.values(), key=lambda im: im.name)
        return [Path(im.name).stem for im in ordered], np.stack([c2w_opengl(im) for im in ordered])
    s = load_scene(scene)
    order = np.argsort([Path(p).name for p in s.image_paths])
    return [Path(s.image_paths[i]).stem for i in order], s.cameras.c2w.double().numpy()[order]


def turns(c2w: np.ndarray) -> np.ndarray:
    """Degrees turned between consecutive cameras ``[N, 3, 4]``."""
    rot = c2w[:, :, :3]
    cos = (np.einsum("nij,nij->n", rot[:-1], rot[1:]) - 1) / 2  # trace(R_i^T R_j) = sum of the elementwise product
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def path_jumps(c2w: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Consecutive cameras (name order): the largest step (share of the extent) and the turns over 150 degrees."""
    centres = c2w[:, :, 3]
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0))) or 1.0
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1) / extent
    return {f"{prefix}max_step_share": float(steps.max()), f"{prefix}turns_over_150": int((turns(c2w) > 150).sum())}


def against(reference: Path, names: list[str], c2w: np.ndarray) -> dict[str, float]:
    """The ATE of the cameras (``names``, ``c2w``) against the reference's, in % of its extent, on the photos both
    place; the reference's own path; and, where it turns over 150 degrees, the ATE of each of its two placements
    (alternate runs between those turns) aligned on its own (``ate_run0_share_pct``, ``ate_run1_share_pct``)."""
    ref_names, ref = poses_by_name(reference)
    found, truth = dict(zip(names, c2w[:, :, 3])), dict(zip(ref_names, ref[:, :, 3]))
    common = sorted(set(truth) & set(found))
    if len(common) < 3:
        raise BenchError(
            f"bench prepare: {reference} places {len(common)} of the {len(found)} photos (3 or more to align)"
        )
    err = trajectory_error(np.stack([found[n] for n in common]), np.stack([truth[n] for n in common]))
    out = {"ate_share_pct": 100 * err["rmse_share"], "ate_images": len(common), **path_jumps(ref, "reference_")}
    run = np.cumsum(np.concatenate([[0], turns(ref) > 150]))
    for side in (0, 1) if run[-1] else ():
        keep = [i for i, n in enumerate(ref_names) if run[i] % 2 == side and n in found]
        if len(keep) < 3:  # too few photos of this placement were registered to align them
            continue
        share = trajectory_error(np.stack([found[ref_names[i]] for i in keep]), ref[keep, :, 3])["rmse_share"]
        out[f"ate_run{side}_share_pct"] = 100 * share
    return out


def watched(work: Callable[[], Any], every: float = 5.0) -> tuple[Any, dict[str, float]]:
    """``work()``, and the 1-minute load average read every ``every`` seconds while it ran (other jobs on the cores
    make its seconds an upper bound): the mean (``load``), the most and the value at the start."""
    seen, stop = [os.getloadavg()[0]], threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            seen.append(os.getloadavg()[0])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        result = work()
    finally:
        stop.set()
        thread.join()
    seen.append(os.getloadavg()[0])
    return result, {"load": float(np.mean(seen)), "load_max": max(seen), "load_start": seen[0]}


def prepared(photos: Path, out: Path, cfg: Any) -> dict[str, float]:
    """Prepare ``photos`` into ``out`` (made afresh): the figures of ``prepare.json``, the load, the SfM CPU
    seconds (the child process's user + system time, which other jobs change far less than wall seconds)."""
    from ovseg3d.prepare import prepare

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats, load = watched(lambda: prepare(photos, out, cfg))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    far = stats.get("far_pair_check") or {}
    return {
        **{k: stats[k] for k in ("images", "registered", "points", "matched_pairs") if stats.get(k) is not None},
        "registered_share": stats["registered"] / stats["images"],
        **dict(zip(("width", "height"), stats["size"])),
        "reprojection_px": stats["mean_reprojection_error_px"],
        "seconds": stats["seconds"]["total"],
        **{f"{step}_seconds": s for step, s in stats["seconds"].items() if step != "total"},
        **{k: far[k] for k in ("far_pairs", "far_pairs_dropped") if isinstance(far.get(k), int)},
        "sfm_cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        **load,
    }


def sift(photos: Path, cfg: Any, work: Path) -> dict[str, float]:
    """SIFT alone through prepare's own extraction (the variant's first octave, 0 when unset, and features asked)
    and matching (each of the first :data:`SIFT_PHOTOS` photos with its next five, no loop pairs)."""
    import pycolmap

    from ovseg3d.prepare import IMAGE_SUFFIXES, _extract_octave, _match

    pycolmap.logging.minloglevel = 2
    names = sorted(p.name for p in photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:SIFT_PHOTOS]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = dataclasses.replace(cfg, overlap=5, loop_pairs=0)
    t0 = time.perf_counter()
    _extract_octave(pycolmap, work / "sift.db", photos, names, cfg, cfg.sift_first_octave or 0)
    t1 = time.perf_counter()
    pairs, verified = _match(pycolmap, work / "sift.db", work, names, "sequential", cfg)
    t2 = time.perf_counter()
    with pycolmap.Database.open(work / "sift.db") as db:
        keypoints = [db.num_keypoints_for_image(im.image_id) for im in db.read_all_images()]
    return {
        "images": len(names),
        "seconds": t2 - t0,
        "seconds_a_photo": (t1 - t0) / len(names),
        "seconds_a_pair": (t2 - t1) / max(pairs, 1),
        "keypoints_median": float(np.median(keypoints)),
        "pairs": pairs,
        "verified_pairs": verified,
    }


def observation_errors(rec: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[N]`` every observation's reprojection error in pixels (from its image's camera and its 3D point) of a
    ``pycolmap.Reconstruction``, and ``[N]`` the id of its 3D point."""
    errors, ids = [np.zeros(0)], [np.zeros(0, dtype=np.int64)]
    for image in rec.images.values():
        seen = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
        if seen:
            pid = np.array([b for _, b in seen])
            in_cam = image.cam_from_world() * np.array([rec.points3D[i].xyz for i in pid])
            xy = rec.cameras[image.camera_id].img_from_cam(in_cam)
            errors.append(np.linalg.norm(xy - np.array([a for a, _ in seen]), axis=1))
            ids.append(pid)
    return np.concatenate(errors), np.concatenate(ids)


def reprojection(rec: Any, prefix: str = "") -> dict[str, float]:
    """COLMAP's mean (of each point's mean error over its track: prepare's figure) and the observations' own."""
    errors = observation_errors(rec)[0]
    stats = {"colmap_mean_px": rec.compute_mean_reprojection_error(), "observations": len(errors)}
    errors = errors if len(errors) else np.zeros(1)  # no observation: zeros, not numpy's warnings
    stats |= {
        "mean_px": errors.mean(),
        **dict(zip(("median_px", "p90_px", "p99_px"), np.percentile(errors, [50, 90, 99]))),
    }
    stats |= {f"above_{n}px": np.mean(errors > n) for n in (1, 2)}
    return {prefix + k: float(v) for k, v in stats.items()}


def aligned_motion(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``[N]`` how far each of ``after``'s points lies from ``before``'s mapped onto it by the best similarity, as
    a share of ``after``'s extent."""
    scale, rot, shift = similarity_alignment(before, after)
    extent = float(np.linalg.norm(after.max(0) - after.min(0))) or 1.0
    return np.linalg.norm(scale * before @ rot.T + shift - after, axis=1) / extent


def refilter(model: Path, px: float = REFILTER_PX) -> dict[str, float]:
    """The model's errors; then its observations above ``px`` dropped (COLMAP's filter, 1.5 degrees least
    triangulation angle), a global bundle adjustment, the filter again: the errors (``refiltered_``) and how far the
    cameras moved after a similarity alignment (share of their extent), a mean that falls while the cameras stay
    put being a statistic of the tail, not of the poses."""
    import pycolmap

    pycolmap.logging.minloglevel = 2
    rec = pycolmap.Reconstruction(model)
    names = sorted(im.name for im in rec.images.values())

    def centres() -> np.ndarray:
        at = {im.name: im.projection_center() for im in rec.images.values()}
        return np.array([at[n] for n in names])

    out, before, t0 = reprojection(rec), centres(), time.perf_counter()
    pycolmap.ObservationManager(rec).filter_all_points3D(px, 1.5)
    ba = pycolmap.BundleAdjustmentOptions()
    ba.print_summary = False
    pycolmap.bundle_adjustment(rec, ba)
    pycolmap.ObservationManager(rec).filter_all_points3D(px, 1.5)
    moved = aligned_motion(before, centres())
    out |= reprojection(rec, "refiltered_") | {"refilter_seconds": time.perf_counter() - t0}
    return out | {"cameras_moved_median": float(np.median(moved)), "cameras_moved_max": float(moved.max())}


def per_ray(weights: Any, samples: Any, depth: Any, sigma: Any) -> dict[str, Any]:
    """``[R]`` weight within 1 and 3 sigma of each ray's depth, its median depth (nan where the weight never reaches
    a half) and whether it has any sample, of packed samples (``ray_indices``, ``t_starts``, ``t_ends``)."""
    import torch

    from ovseg3d.render.renderer import depth_reaching
    from ovseg3d.render.volume import exclusive_cumsum

    n, r = depth.shape[0], samples.ray_indices
    z = torch.clamp(torch.maximum(samples.t_starts - depth[r], depth[r] - samples.t_ends), min=0.0) / sigma[r]
    has = torch.zeros(n, dtype=torch.bool)
    has[r] = True
    return {
        **{f"at_{k}sigma": torch.zeros(n).index_add(0, r, weights * (z <= k)) for k in (1, 3)},
        "t50": depth_reaching(exclusive_cumsum(weights, r, n) + weights, samples, n, 0.5),
        "has_sample": has,
    }


def sfm_agreement(run: Path, device: str, rays: int = SFM_RAYS, chunk: int = 2048) -> dict[str, float]:
    """A trained run's field against the SfM points its views observe (the depth prior's observations): ``rays``
    of them drawn at random (seed 0), rendered with every marched sample; weighted by the observations' weights."""
    import torch

    from ovseg3d.depth_prior import depth_prior, prior_rays
    from ovseg3d.render.volume import render_weights
    from ovseg3d.train import load_trainer

    with torch.no_grad():
        trainer = load_trainer(run, device)
        prior = depth_prior(trainer.scene, trainer.cfg.depth_model or trainer.cfg.colmap_model)
        if prior is None:
            raise BenchError(f"bench prepare: {run}'s scene has no COLMAP points observed by its training views")
        index = torch.randint(0, len(prior), (min(rays, len(prior)),), generator=torch.Generator().manual_seed(0))
        parts, cams = [], trainer.cameras.to("cpu")
        for lo in range(0, len(index), chunk):
            i = index[lo : lo + chunk]
            o, d = (x.to(trainer.device) for x in prior_rays(prior, cams, i))
            near, far = trainer.ray_limits(trainer.cameras, trainer.near_far, prior.cam[i].to(trainer.device), d)
            s = trainer.grid.march(o, d, trainer.opts.step_size, near, far, stratified=False)
            weights = render_weights(trainer.field.density(s.positions(o, d)), s.deltas, s.ray_indices, len(o))
            cpu = dataclasses.replace(s, **{k: getattr(s, k).cpu() for k in ("ray_indices", "t_starts", "t_ends")})
            parts.append(per_ray(weights.cpu(), cpu, prior.depth[i], prior.sigma[i]))
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    w, depth = prior.weight[index], prior.depth[index]
    err = (cat["t50"] - depth).abs() / depth
    found = ~torch.isnan(err)
    return {
        "sfm_observations": len(prior),
        "weight_at_point": float((cat["at_1sigma"] * w).sum() / w.sum()),
        "weight_within_3sigma": float((cat["at_3sigma"] * w).sum() / w.sum()),
        "median_depth_error": float(err[found].median()) if bool(found.any()) else float("nan"),
        **{f"within_{p}pct": float((err[found] <= p / 100).sum() / len(err)) for p in (1, 5)},
        "no_median": float((~found).float().mean()),
        "no_sample": float((~cat["has_sample"]).float().mean()),
    }


def measure(case: Case) -> dict[str, float]:
    """One set, one variant: SIFT alone, or prepare (made afresh under the work folder), its cameras against the
    reference, and the studies the variant names."""
    found, parts = photo_set(case.folder), case.variant.split("+")
    cfg = options(case, found.options)
    out = case.work / "prepare" / f"{Path(case.scene).name}-{case.variant.replace('+', '-')}-s{case.seed}"
    if "sift" in parts:
        return sift(found.photos, cfg, out)
    start = time.perf_counter()
    figures = prepared(found.photos, out, cfg)
    names, c2w = poses_by_name(out)
    figures |= path_jumps(c2w) | (against(found.reference, names, c2w) if found.reference else {})
    figures["wall_s"] = time.perf_counter() - start
    if "refilter" in parts:
        figures |= refilter(out / "sparse" / "0")
    if "sfm" in parts:
        from ovseg3d.pipeline import train

        run, train_cfg = out.with_name(out.name + "-run"), case.config()
        shutil.rmtree(run, ignore_errors=True)
        teachers = dataclasses.replace(train_cfg.teachers, kind="none")
        chosen = tuple(case.overrides)  # a variant's values stand against the preset's [unbounded] table
        train_cfg = dataclasses.replace(
            train_cfg, scene=out, output=run, device=case.device, teachers=teachers, chosen=chosen
        )
        train(train_cfg)
        figures |= sfm_agreement(run, case.device)
    return figures


BENCHMARK = Benchmark(
    name="prepare",
    doc="ovseg3d prepare on photo sets: registered, reprojection px, seconds by step, pairs, ATE against given poses",
    measure=measure,
    figures=("images", "seconds"),
    scenes=(),  # photo sets are folders of their own: --scenes
    variants={**{name: {} for name in OPTIONS}, **STUDIES},
    default_variants=("default",),
    repeats=1,
)


if __name__ == "__main__":  # python -m ovseg3d.bench.prepare ROOT NAME=PHOTOS[:REFERENCE] ...
    print("--scenes " + " ".join(str(make_set(spec, Path(sys.argv[1]))) for spec in sys.argv[2:]))
