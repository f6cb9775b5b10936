#!/usr/bin/env python
"""ovseg3d's field and nerfacc's own Instant-NGP examples side by side, on one clock (issue 67, item 6).

Each method (``ovseg3d``: its ``gpu`` preset on CUDA, ``cpu`` preset on a CPU, through :class:`ovseg3d.train.Trainer`;
``prop`` / ``occ``: nerfacc v0.5.3's examples through ``scripts/nerfacc_reference.py``) and seed runs the same way:

1. ``--warmup`` (default 20) untimed steps of a throwaway model of the method (first launches, allocators, lazy
   set-up), then the seed is set and a fresh model built;
2. the harness synchronises (``torch.cuda.synchronize``), reads ``time.perf_counter``, and steps the trainer from
   outside; every ``CHECK_EVERY`` (20) steps it synchronises and reads the clock again, and stops at the first read
   past ``--seconds``; or it runs ``--steps`` steps (equal steps: a CPU); it synchronises after the last step.
   Training time is that external clock only: no loading, warm-up or evaluation in it;
3. the learning-rate schedule follows the same fraction of the budget for both: the fraction of the clock's budget
   at the last read (or of the steps). ovseg3d's trainer is handed the harness's fraction (its own per-step timer is
   overwritten), nerfacc's examples read it through ``nerfacc_reference.Progress``;
4. all views are scored with the same PSNR (``ovseg3d.metrics.psnr``: ``-10 log10`` of the mean squared error over
   every pixel and channel, renders clamped to [0, 1], photos ``uint8 / 255``), mean over views, on the same images
   (one :class:`Scene` load serves both methods).

The split (:func:`split_views`): the test views are every 8th photo by sorted name (mip-NeRF 360's and nerfacc's
held-out views, all of them); of the remaining photos every 8th (from the 5th) is a validation view, for choosing
settings; the rest are trained on, by both methods. Reported per run: test PSNR / SSIM, validation PSNR, and the PSNR
of 3 training views.

Backgrounds: nerfacc's examples render the test views over white (``nerf_360_v2``'s test split; the ``prop`` example's
``opaque_bkgd`` makes each ray's last interval opaque, so the colour barely shows); ovseg3d composites over its
learned colour at infinity (unbounded scenes) or black (its trainer's default). Both are scored against the same
photos, which have no alpha.

    python scripts/bench_clock.py SCENE --device cpu --steps 300 --max-long-side 200 --out bench/clock_cpu.json
    bash scripts/gpu_session.sh clock SCENE                         # on a lent GPU: 30 s, seeds 0 1 2
    python3 -P scripts/bench_clock.py SCENE --seconds 30 --methods ovseg3d prop occ --set grid_impl=torch
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nerfacc_reference as ref  # noqa: E402

from ovseg3d.atomic import write_json  # noqa: E402
from ovseg3d.config import TrainConfig, apply_overrides, for_unbounded, parse_overrides, resolve_base  # noqa: E402
from ovseg3d.data.scene import Scene  # noqa: E402
from ovseg3d.evaluate import training_views  # noqa: E402
from ovseg3d.metrics import psnr, ssim  # noqa: E402

CHECK_EVERY = ref.CHECK_EVERY  # steps between clock reads (one synchronisation each), for both methods
WARMUP_STEPS = ref.WARMUP_STEPS  # untimed steps of a throwaway model before each timed run, for both methods
TEST_EVERY = 8  # mip-NeRF 360's held-out views: every 8th photo by sorted name
VAL_EVERY, VAL_OFFSET = 8, 4  # validation: every 8th of the remaining photos, from the 5th

Method = Literal["ovseg3d", "prop", "occ"]


class Run(Protocol):
    """A method's model as the harness drives it."""

    def step(self, i: int) -> None: ...
    def set_progress(self, fraction: float) -> None: ...


@dataclass
class Args:
    scene: tyro.conf.Positional[Path]
    """Scene folder (COLMAP images/ + sparse/0/, transforms.json), pinhole cameras, no 3D-OVS annotations."""
    methods: list[Method] = field(default_factory=lambda: ["ovseg3d", "prop", "occ"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    seconds: list[float] = field(default_factory=list)
    """Wall-clock budgets (one fresh run per method, seed and budget); default 30 on CUDA."""
    steps: int = 0
    """Train for this many steps instead (equal steps; the schedule over them)."""
    device: Literal["cuda", "cpu"] = "cuda"
    preset: str = ""
    """ovseg3d's preset (default: gpu on CUDA, cpu on a CPU)."""
    set: list[str] = field(default_factory=list)
    """ovseg3d settings key=value over the preset (as ovseg3d train's flags), e.g. grid_impl=torch."""
    max_long_side: int = 0
    """Downscale the photos so their long side is at most this (0: as the scene has them), for both methods."""
    warmup: int = WARMUP_STEPS
    test_every: int = 1
    """Score every N-th test view only (1: all of them)."""
    val_every: int = 1
    """Score every N-th validation view only (1: all; 0: none)."""
    train_views: int = 3
    eval_max_samples: int = 0
    """ovseg3d's renders: at most this many samples a ray (``ovseg3d eval --max-samples-per-ray``; 0: every marching
    step). nerfacc's renders keep the example's test settings."""
    out: Path = Path("bench/clock.json")
    merge: list[Path] = field(default_factory=list)
    """Train nothing: the runs of these JSON files (earlier calls of this script) together, their table and --out."""


# ---------------------------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]
    test: list[int]


def split_views(n_views: int, test_every: int = TEST_EVERY, val_every: int = VAL_EVERY, val_offset: int = VAL_OFFSET):
    """Views ``0..n_views-1`` (in sorted-name order) -> :class:`Split`: test = ``i % test_every == 0`` (all
    held-out views), validation = every ``val_every``-th of the others from the ``val_offset``-th, train = the rest."""
    test = [i for i in range(n_views) if i % test_every == 0]
    rest = [i for i in range(n_views) if i % test_every]
    val = rest[val_offset::val_every]
    held = set(val)
    return Split([i for i in rest if i not in held], val, test)


def scene_split(scene: Scene) -> Split:
    """The split of a loaded scene; its own held-out views must be the test views (names sorted, every 8th)."""
    split = split_views(len(scene.images))
    names = [p.name for p in scene.image_paths]
    if names != sorted(names) or list(scene.eval_ids) != split.test:
        raise ValueError(f"{scene.root}: its views are not in sorted-name order with every 8th held out")
    return split


# ---------------------------------------------------------------------------------------------- clock


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_clocked(
    step: Callable[[int], object],
    sync: Callable[[], None],
    on_progress: Callable[[float], None],
    seconds: float = 0.0,
    steps: int = 0,
    check_every: int = CHECK_EVERY,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, float]:
    """Call ``step(i)`` for ``i = 0, 1, ...`` on one external clock: ``sync()`` and a clock read before the first
    step; every ``check_every`` steps ``sync()``, a read, ``on_progress(elapsed / seconds)``, and the end once past
    ``seconds``; or ``steps`` steps with ``on_progress(i / steps)`` after each. ``sync()`` and a last read after the
    last step. Returns the steps taken and the seconds between the first and last read."""
    if (seconds > 0) == (steps > 0):
        raise ValueError(f"give seconds or steps, one of them positive: {seconds}, {steps}")
    on_progress(0.0)
    sync()
    start = clock()
    n = 0
    while True:
        step(n)
        n += 1
        if steps:
            on_progress(n / steps)
            if n >= steps:
                break
        elif n % check_every == 0:
            sync()
            elapsed = clock() - start
            on_progress(min(elapsed / seconds, 1.0))
            if elapsed >= seconds:
                break
    sync()
    return n, clock() - start


def clocked_run(
    build: Callable[[bool], Run],
    device: torch.device,
    seconds: float = 0.0,
    steps: int = 0,
    warmup: int = WARMUP_STEPS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Run, int, float, float]:
    """``warmup`` untimed steps of a throwaway model (``build(True)``), then a fresh one (``build(False)``) trained on
    :func:`run_clocked`'s clock. Returns the trained run, its steps, its seconds and the warm-up's seconds."""
    t0 = clock()
    if warmup:
        throwaway = build(True)
        for i in range(warmup):
            throwaway.step(i)
        synchronize(device)
        del throwaway
    warm_s = clock() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = build(False)
    n, elapsed = run_clocked(run.step, lambda: synchronize(device), run.set_progress, seconds, steps, clock=clock)
    return run, n, elapsed, warm_s


# ---------------------------------------------------------------------------------------------- methods


class Ovseg3dRun:
    """ovseg3d's :class:`~ovseg3d.train.Trainer`, stepped from outside. With a clock budget its config has
    ``max_minutes`` = the budget and an unreachable ``steps``, and its ``elapsed`` is set to the harness's fraction
    after every step (its own per-step timer, which does not synchronise, never drives the schedule)."""

    def __init__(
        self, cfg: TrainConfig, scene: Scene, device: torch.device, seconds: float, steps: int, max_per_ray: int = 0
    ) -> None:
        from ovseg3d.train import Trainer

        self.max_per_ray = max_per_ray
        cfg = dataclasses.replace(cfg, max_minutes=seconds / 60.0, steps=steps if steps else 10**9)
        self.seconds = seconds
        self.fraction = 0.0
        self.trainer = Trainer(cfg, scene, device)

    def step(self, i: int) -> None:
        self.trainer.train_step()
        if self.seconds:
            self.trainer.elapsed = self.fraction * self.seconds

    def set_progress(self, fraction: float) -> None:
        self.fraction = fraction
        if self.seconds:
            self.trainer.elapsed = fraction * self.seconds

    def render(self, scene: Scene, view: int) -> torch.Tensor:
        return self.trainer.render_view(scene.cameras, view, scene.near_far, self.max_per_ray).rgb.cpu()

    def info(self) -> dict:
        t = self.trainer
        return {"sampler": "proposal" if t.proposal else "grid", "last_n_rays": t.n_rays}


class NerfaccRun:
    """nerfacc's example ``method`` (``prop``, ``occ``) as ``nerfacc_reference`` builds and steps it."""

    def __init__(self, ex: object, method: str, views: ref.Views) -> None:
        self.ex, self.views = ex, views
        self.progress = ref.Progress()
        self.model = ref.METHODS[method](ex, self.progress, views.images.device)
        for module in self.model.modules():
            module.train()

    def step(self, i: int) -> None:
        rays, pixels, bkgd = ref.train_batch(self.views, self.model.num_rays, self.ex.Rays)
        self.model.train_step(i, rays, pixels, bkgd)

    def set_progress(self, fraction: float) -> None:
        self.progress.fraction = fraction

    def render(self, scene: Scene, view: int) -> torch.Tensor:
        for module in self.model.modules():
            module.eval()
        rays, _ = ref.image_batch(self.views, view, self.ex.Rays)
        white = torch.tensor(ref.WHITE, device=self.views.images.device)
        return self.model.render_image(rays, white).cpu()

    def info(self) -> dict:
        return {"last_n_rays": self.model.num_rays}


def views_of(scene: Scene, split: Split, device: torch.device) -> ref.Views:
    """The scene in nerfacc's frame (``nerfacc_reference.Views``), the same images ovseg3d trains on, the split's
    training views only to train on."""
    c2w, _, _ = ref.nerfacc_poses(scene.cameras.c2w)
    cams = scene.cameras
    return ref.Views(
        images=scene.images.to(device),
        c2w=torch.as_tensor(c2w, dtype=torch.float32, device=device),
        fx=cams.fx.to(device),
        fy=cams.fy.to(device),
        cx=cams.cx.to(device),
        cy=cams.cy.to(device),
        train_ids=torch.as_tensor(split.train, device=device),
        eval_ids=list(split.test),
        train_views=training_views(split.train, 3),
    )


def ovseg3d_config(preset: str, scene_root: Path, device: str, max_long_side: int = 0, sets: list[str] = ()):
    """The preset with ``sets`` (``key=value``) over it, for ``scene_root``; no teacher (the field alone)."""
    cfg = resolve_base(preset, None)
    values: dict = {"scene": str(scene_root), "device": device}
    if max_long_side:
        values.update(downscale=0, max_long_side=max_long_side)
    chosen = parse_overrides(list(sets))
    values.update(chosen)
    cfg = apply_overrides(cfg, values, "bench_clock")
    return dataclasses.replace(
        cfg, chosen=(*cfg.chosen, *chosen), teachers=dataclasses.replace(cfg.teachers, kind="none")
    )


def ovseg3d_for_scene(cfg: TrainConfig, scene: Scene) -> TrainConfig:
    """As ``ovseg3d train`` resolves it once the scene is loaded: the preset's [unbounded] table where the scene has a
    contraction, the contraction and the sampler named."""
    from ovseg3d.train import resolve_contraction, resolve_sampler

    if resolve_contraction(cfg.contraction, scene) != "none":
        cfg, _ = for_unbounded(cfg)
    cfg = dataclasses.replace(cfg, contraction=resolve_contraction(cfg.contraction, scene))
    return dataclasses.replace(cfg, sampler=resolve_sampler(cfg.sampler, cfg.contraction))


# ---------------------------------------------------------------------------------------------- scoring


def score(run: Ovseg3dRun | NerfaccRun, scene: Scene, views: list[int], with_ssim: bool = False) -> dict:
    """Mean PSNR (and SSIM) over ``views`` with ovseg3d's formula, and per view."""
    rows = []
    for v in views:
        rgb, gt = run.render(scene, v), scene.image_float(v)
        rows.append((psnr(rgb, gt), ssim(rgb.clamp(0, 1), gt) if with_ssim else None))
    out = {"psnr": sum(p for p, _ in rows) / len(rows), "per_view": {v: round(p, 3) for v, (p, _) in zip(views, rows)}}
    if with_ssim:
        out["ssim"] = sum(s for _, s in rows) / len(rows)
    return out


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    """Per method and budget: median and range over the seeds of test, validation and training-view PSNR, steps."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(f"{r['method']} {r['budget']}", []).append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {
            name: summary([r[name] for r in rows])
            for name in ("test_psnr", "test_ssim", "val_psnr", "train_view_psnr", "steps", "train_seconds")
            if all(r.get(name) is not None for r in rows)
        }
    return out


def print_table(summaries: dict) -> None:
    print(
        f"{'method budget':<20} {'n':>2} {'test PSNR median [range]':>26} {'val PSNR':>22} {'train views':>22} "
        f"{'steps':>8} {'seconds':>8}"
    )

    def cell(s: dict, name: str) -> str:
        if name not in s:
            return "-"
        return f"{s[name]['median']:.2f} [{s[name]['min']:.2f}, {s[name]['max']:.2f}]"

    for key, s in summaries.items():
        print(
            f"{key:<20} {s['test_psnr']['n']:>2} {cell(s, 'test_psnr'):>26} {cell(s, 'val_psnr'):>22} "
            f"{cell(s, 'train_view_psnr'):>22} {s['steps']['median']:>8g} {s['train_seconds']['median']:>8.1f}"
        )


def merge(paths: list[Path], out: Path) -> None:
    """The runs of several reports (e.g. one per method, from separate calls) in one report with one summary."""
    import json

    reports = [json.loads(p.read_text()) for p in paths if p.is_file()]
    if not reports:
        ref.fail(f"none of {[str(p) for p in paths]} exists")
    merged = {**reports[0], "merged_from": [str(p) for p in paths if p.is_file()]}
    merged["runs"] = [r for rep in reports for r in rep["runs"]]
    merged["summary"] = summarise(merged["runs"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, merged)
    print_table(merged["summary"])
    print(f"wrote {out}")


# ---------------------------------------------------------------------------------------------- driver


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if args.merge:
        merge(args.merge, args.out)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ref.fail("CUDA is not available (--device cpu: equal steps on the CPU)")
    if device.type == "cpu" and "occ" in args.methods:
        ref.fail("--device cpu runs nerfacc's prop example only (the occ example's grid needs nerfacc's CUDA ops)")
    args.preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    budgets = [0.0] if args.steps else (args.seconds or [30.0])
    if any(s < 0 for s in budgets) or args.steps < 0 or not args.methods:
        ref.fail(f"--seconds and --steps must be positive, --methods not empty: {budgets}, {args.steps}")
    from ovseg3d.train import scene_of

    cfg = ovseg3d_config(args.preset, args.scene, args.device, args.max_long_side, args.set)
    scene = scene_of(cfg)  # one load, both methods: the same images at the same size
    if scene.cameras.lens is not None:
        ref.fail("the scene's cameras have a lens model; nerfacc's examples take pinhole cameras only")
    split = scene_split(scene)
    scene = dataclasses.replace(scene, train_ids=split.train)  # the validation views are never trained on
    cfg = ovseg3d_for_scene(cfg, scene)
    ex = ref.load_examples(args.device) if any(m != "ovseg3d" for m in args.methods) else None
    views = views_of(scene, split, device) if ex is not None else None
    test = split.test[:: args.test_every]
    val = split.val[:: args.val_every] if args.val_every else []
    seen = training_views(split.train, args.train_views)
    report = {
        "machine": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "scene": str(args.scene.resolve()),
        "size": [scene.width, scene.height],
        "split": {"train": len(split.train), "val": split.val, "test": split.test},
        "scored": {"test": test, "val": val, "train": seen},
        "preset": args.preset,
        "set": args.set,
        "ovseg3d": {
            k: getattr(cfg, k) for k in ("sampler", "contraction", "grid_impl", "rays_per_step", "lr_schedule")
        },
        "eval_max_samples": args.eval_max_samples,
        "clock": {"check_every": CHECK_EVERY, "warmup_steps": args.warmup, "sync": device.type == "cuda"},
        "runs": [],
    }
    print(
        f"{args.scene}: {len(split.train)} training, {len(split.val)} validation, {len(split.test)} test views, "
        f"{scene.width}x{scene.height}; ovseg3d: {report['ovseg3d']}"
    )

    def build(method: str, seconds: float, steps: int, seed: int, throwaway: bool) -> Ovseg3dRun | NerfaccRun:
        if throwaway:  # its own seed, a budget it never reaches
            seconds, steps, seed = (1.0, 0, 1000 + seed) if seconds else (0.0, max(args.warmup, 1), 1000 + seed)
        torch.manual_seed(seed)
        if ex is not None:
            ex.utils.set_random_seed(seed)  # random, numpy and torch
        if method == "ovseg3d":
            return Ovseg3dRun(dataclasses.replace(cfg, seed=seed), scene, device, seconds, steps, args.eval_max_samples)
        return NerfaccRun(ex, method, views)

    for seconds in budgets:
        for seed in args.seeds:
            for method in args.methods:
                budget = f"{args.steps} steps" if args.steps else f"{seconds:g} s"
                run, steps, elapsed, warm_s = clocked_run(
                    functools.partial(build, method, seconds, args.steps, seed),
                    device,
                    seconds,
                    args.steps,
                    args.warmup,
                )
                t1 = time.perf_counter()
                tested = score(run, scene, test, with_ssim=True)
                validated = score(run, scene, val) if val else None
                trained = score(run, scene, seen) if seen else None
                row = {
                    "method": method,
                    "budget": budget,
                    "seed": seed,
                    "steps": steps,
                    "train_seconds": elapsed,
                    "steps_per_s": steps / elapsed,
                    "warmup_seconds": warm_s,
                    "test_psnr": tested["psnr"],
                    "test_ssim": tested["ssim"],
                    "val_psnr": None if validated is None else validated["psnr"],
                    "train_view_psnr": None if trained is None else trained["psnr"],
                    "eval_seconds": time.perf_counter() - t1,
                    "peak_gib": ref.peak_gib(device),
                    "test_per_view": tested["per_view"],
                    **run.info(),
                }
                print(
                    f"{method} {budget} seed {seed}: {steps} steps in {elapsed:.1f} s, test {row['test_psnr']:.2f} "
                    f"val {row['val_psnr'] if row['val_psnr'] is None else round(row['val_psnr'], 2)} train views "
                    f"{row['train_view_psnr'] if trained is None else round(row['train_view_psnr'], 2)}, "
                    f"eval {row['eval_seconds']:.0f} s",
                    flush=True,
                )
                report["runs"].append(row)
                report["summary"] = summarise(report["runs"])
                args.out.parent.mkdir(parents=True, exist_ok=True)
                write_json(args.out, report)  # after each run: a call stopped at its limit keeps what was done
                del run
    print_table(report["summary"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
