"""ovseg3d's field and nerfacc's own Instant-NGP examples on one external clock (issue 67, item 6; docs/clock.md).
Folds ``scripts/bench_clock.py``; nerfacc v0.5.3's examples run through ``scripts/nerfacc_reference.py`` (a tool kept in
scripts/; ``bash scripts/gpu_session.sh nerfacc-src`` exports them into ``.nerfacc/``).

A variant names a method, with '+' a budget of :data:`MARKS` and parts of :data:`PROTOCOL`: ``ovseg3d``
(:class:`ovseg3d.train.Trainer`, no teacher, the case's preset, ``--preset gpu`` on CUDA, its ``[unbounded]`` table
where the scene has a contraction), ``prop`` or ``occ`` (nerfacc's examples; occ on CUDA only). Each method and seed
(``--repeats`` from ``--set seed=N``): untimed warm-up steps of a throwaway model (seed 1000 + seed), then the seed
set (random, numpy, torch) and a fresh model stepped from outside on one clock (:func:`run_clocked`) for the budget
(``max_minutes``; with ``max_minutes=0``, ``steps`` steps: a CPU), its learning-rate schedule at the clock's fraction
of it for both methods (ovseg3d's own per-step timer overwritten; nerfacc's through ``nerfacc_reference.Progress``).
Then every view is scored with one PSNR (``ovseg3d.metrics.psnr``) on the same images: one scene load serves every
method and seed, split by :func:`split_views`. nerfacc renders over white (its test split's), ovseg3d over its learned
colour at infinity (unbounded) or black; the photos have no alpha.

Figures per run: ``test_psnr``, ``test_ssim``, ``val_psnr`` (validation views scored), ``train_view_psnr`` (3 training
views), ``steps``, ``train_seconds``, ``steps_per_s``, ``warmup_seconds``, ``eval_seconds``, ``peak_gib`` (CUDA; else
peak resident memory), ``last_n_rays``, ``test_psnr_view{N}``; the scene's ``width``, ``height``, ``{train,val,test}_views``.

    ovseg3d bench run clock --scenes SCENE --device cpu --variants ovseg3d+warmup2+val3 prop+warmup2+val3 \\
        --set steps=30 max_minutes=0 downscale=0 max_long_side=64 --out bench/clock_cpu.json
    python3 -P -m ovseg3d.cli bench run clock --scenes SCENE --device cuda --preset gpu \\
        --variants ovseg3d+30s prop+30s --set grid_impl=torch --out bench/clock.json
    bash scripts/gpu_session.sh clock SCENE                       # on a lent GPU: 30 s, seeds 0 1 2
    python3 -P -m ovseg3d.bench.clock A.json B.json --out clock.json   # several calls' results in one, a table
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import random
import resource
import sys
import time
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from ovseg3d.bench import result as results
from ovseg3d.bench.harness import ROOT, BenchError, Benchmark, Case

CHECK_EVERY = 20  # steps between clock reads (one synchronisation each), both methods: nerfacc_reference's
WARMUP_STEPS = 20  # untimed steps of a throwaway model before each timed run: nerfacc_reference's
TEST_EVERY, VAL_EVERY, VAL_OFFSET = 8, 8, 4  # test: every 8th photo; validation: every 8th of the rest from the 5th
METHODS = ("ovseg3d", "prop", "occ")
MARKS = (10, 30, 60, 90, 120, 300)
"""The budgets a variant may name (``30s``: ``max_minutes = 0.5``)."""
PROTOCOL: dict[str, dict[str, int]] = {
    "val0": {"val_every": 0},  # no validation view scored
    "val1": {"val_every": 1},  # every validation view (the default)
    "val3": {"val_every": 3},
    "test8": {"test_every": 8},  # every 8th test view only (a settings sweep)
    "warmup2": {"warmup": 2},  # 2 warm-up steps (a CPU)
    "eval64": {"eval_max_samples": 64},  # ovseg3d's renders: at most 64 samples a ray (nerfacc's: its own)
}
"""How a run is warmed up and scored, not trained (over :data:`DEFAULTS`)."""
DEFAULTS = {"val_every": 1, "test_every": 1, "warmup": WARMUP_STEPS, "train_views": 3, "eval_max_samples": 0}
Split = namedtuple("Split", "train val test")


def split_views(n_views: int, test_every: int = TEST_EVERY, val_every: int = VAL_EVERY, val_offset: int = VAL_OFFSET):
    """Views ``0..n_views-1`` (sorted-name order) -> :class:`Split`: test = ``i % test_every == 0`` (mip-NeRF 360's
    and nerfacc's held-out views), validation = every ``val_every``-th of the others from the ``val_offset``-th (for
    choosing settings; never trained on), train = the rest."""
    rest = [i for i in range(n_views) if i % test_every]
    val = rest[val_offset::val_every]
    return Split([i for i in rest if i not in set(val)], val, [i for i in range(n_views) if i % test_every == 0])


def scene_split(scene: Any) -> Split:
    """The split of a loaded scene; its own held-out views must be the test views (names sorted, every 8th)."""
    split = split_views(len(scene.images))
    names = [p.name for p in scene.image_paths]
    if names != sorted(names) or list(scene.eval_ids) != split.test:
        raise ValueError(f"{scene.root}: its views are not in sorted-name order with every 8th held out")
    return split


def run_clocked(step, sync, on_progress, seconds=0.0, steps=0, check_every=CHECK_EVERY, clock=time.perf_counter):
    """``step(i)`` for ``i = 0, 1, ...`` on one external clock: ``sync()`` and a read before the first step; every
    ``check_every`` steps ``sync()``, a read, ``on_progress(elapsed / seconds)``, the end once past ``seconds``; or
    ``steps`` steps with ``on_progress(i / steps)`` after each. ``sync()`` and a last read after the last step.
    Returns the steps taken and the seconds between the first and last read."""
    if (seconds > 0) == (steps > 0):
        raise ValueError(f"give seconds or steps, one of them positive: {seconds}, {steps}")
    on_progress(0.0)
    sync()
    start, n = clock(), 0
    while not steps or n < steps:
        step(n)
        n += 1
        if steps:
            on_progress(n / steps)
        elif n % check_every == 0:
            sync()
            elapsed = clock() - start
            on_progress(min(elapsed / seconds, 1.0))
            if elapsed >= seconds:
                break
    sync()
    return n, clock() - start


def clocked_run(build, device, seconds=0.0, steps=0, warmup=WARMUP_STEPS, clock=time.perf_counter):
    """``warmup`` untimed steps of a throwaway model (``build(True)``), then a fresh one (``build(False)``) trained
    on :func:`run_clocked`'s clock. Returns the trained run, its steps, its seconds and the warm-up's seconds."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    t0 = clock()
    if warmup:
        throwaway = build(True)
        for i in range(warmup):
            throwaway.step(i)
        sync()
        del throwaway
    warm_s = clock() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = build(False)
    return run, *run_clocked(run.step, sync, run.set_progress, seconds, steps, clock=clock), warm_s


class Ovseg3dRun:
    """ovseg3d's :class:`~ovseg3d.train.Trainer` stepped from outside. With a clock budget its config has
    ``max_minutes`` = the budget and an unreachable ``steps``, and its ``elapsed`` is set to the harness's fraction
    after every step (its own per-step timer, which does not synchronise, never drives the schedule)."""

    def __init__(self, cfg: Any, scene: Any, device: Any, seconds: float, steps: int, max_per_ray: int = 0) -> None:
        from ovseg3d.train import Trainer

        cfg = dataclasses.replace(cfg, max_minutes=seconds / 60.0, steps=steps if steps else 10**9)
        self.seconds, self.fraction, self.max_per_ray = seconds, 0.0, max_per_ray
        self.trainer = Trainer(cfg, scene, device)

    def step(self, i: int) -> None:
        self.trainer.train_step()
        self.set_progress(self.fraction)

    def set_progress(self, fraction: float) -> None:
        self.fraction = fraction
        if self.seconds:
            self.trainer.elapsed = fraction * self.seconds

    def render(self, scene: Any, view: int) -> Any:
        return self.trainer.render_view(scene.cameras, view, scene.near_far, self.max_per_ray).rgb.cpu()


class NerfaccRun:
    """nerfacc's example ``method`` (``prop``, ``occ``) as ``nerfacc_reference`` builds and steps it."""

    def __init__(self, ref: ModuleType, ex: Any, method: str, views: Any) -> None:
        self.ref, self.ex, self.views, self.progress = ref, ex, views, ref.Progress()
        self.model = ref.METHODS[method](ex, self.progress, views.images.device)
        for module in self.model.modules():
            module.train()

    def step(self, i: int) -> None:
        self.model.train_step(i, *self.ref.train_batch(self.views, self.model.num_rays, self.ex.Rays))

    def set_progress(self, fraction: float) -> None:
        self.progress.fraction = fraction

    def render(self, scene: Any, view: int) -> Any:
        import torch

        for module in self.model.modules():
            module.eval()
        rays, _ = self.ref.image_batch(self.views, view, self.ex.Rays)
        return self.model.render_image(rays, torch.tensor(self.ref.WHITE, device=self.views.images.device)).cpu()


def nerfacc_reference() -> ModuleType:
    """``scripts/nerfacc_reference.py`` as the module ``nerfacc_reference``: beside this checkout, or under the
    current folder (an installed ovseg3d run from the checkout, as ``scripts/gpu_session.sh`` does)."""
    if "nerfacc_reference" not in sys.modules:
        found = [p for p in (ROOT, Path.cwd()) if (p / "scripts" / "nerfacc_reference.py").is_file()]
        if not found:
            raise BenchError("bench clock: scripts/nerfacc_reference.py not found (run nerfacc's from the checkout)")
        spec = importlib.util.spec_from_file_location("nerfacc_reference", found[0] / "scripts/nerfacc_reference.py")
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(module)
    return sys.modules["nerfacc_reference"]


_SETUP: dict[str, SimpleNamespace] = {}


def setup(case: Case, nerfacc: bool = False) -> SimpleNamespace:
    """The case's scene loaded once for every method and seed (kept while only seeds and budgets change), its split
    (the validation views never trained on), ovseg3d's config as ``ovseg3d train`` resolves it for the scene (no
    teacher); with ``nerfacc``, nerfacc's examples and the same images in their frame."""
    import torch

    from ovseg3d.config import for_unbounded
    from ovseg3d.evaluate import training_views
    from ovseg3d.train import resolve_contraction, resolve_device, resolve_sampler, scene_of

    cfg, device = case.config(), resolve_device(case.device)
    chosen = tuple(k for k in (*cfg.chosen, *case.overrides) if k not in ("seed", "steps", "max_minutes"))
    cfg = dataclasses.replace(cfg, scene=case.folder, device=device.type, chosen=chosen, seed=0, steps=0)
    cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="none"), max_minutes=0.0)
    key = repr(cfg)  # the seed and the budget are each run's (measure's)
    if key not in _SETUP:
        _SETUP.clear()
        scene = scene_of(cfg)
        if scene.cameras.lens is not None:
            raise BenchError(f"{case.folder}: the cameras have a lens model; nerfacc's examples take pinhole only")
        split = scene_split(scene)
        scene = dataclasses.replace(scene, train_ids=split.train)
        if resolve_contraction(cfg.contraction, scene) != "none":
            cfg, _ = for_unbounded(cfg)
        cfg = dataclasses.replace(cfg, contraction=resolve_contraction(cfg.contraction, scene))
        cfg = dataclasses.replace(cfg, sampler=resolve_sampler(cfg.sampler, cfg.contraction))
        names = ("sampler", "contraction", "grid_impl", "rays_per_step", "lr_schedule")
        print(f"{case.folder}: {scene.width}x{scene.height}, {split}; ovseg3d: { {k: getattr(cfg, k) for k in names} }")
        _SETUP[key] = SimpleNamespace(cfg=cfg, scene=scene, split=split, device=device, ref=None, ex=None, views=None)
    s = _SETUP[key]
    if nerfacc and s.ex is None:
        s.ref = nerfacc_reference()
        s.ex = s.ref.load_examples(device.type)
        dev, cams = device, s.scene.cameras
        s.views = s.ref.Views(
            images=s.scene.images.to(dev),
            c2w=torch.as_tensor(s.ref.nerfacc_poses(cams.c2w)[0], dtype=torch.float32, device=dev),
            **{k: getattr(cams, k).to(dev) for k in ("fx", "fy", "cx", "cy")},
            train_ids=torch.as_tensor(s.split.train, device=dev),
            eval_ids=list(s.split.test),
            train_views=training_views(s.split.train, 3),
        )
    return s


def score(run: Any, scene: Any, views: list[int], with_ssim: bool = False) -> tuple[float, float, dict[int, float]]:
    """Mean PSNR and SSIM (0 unless ``with_ssim``) over ``views`` with ovseg3d's formulas, and the PSNR per view."""
    from ovseg3d.metrics import psnr, ssim

    rows = {}
    for v in views:
        rgb, gt = run.render(scene, v), scene.image_float(v)
        rows[v] = (psnr(rgb, gt), ssim(rgb.clamp(0, 1), gt) if with_ssim else 0.0)
    mean = [sum(r[i] for r in rows.values()) / len(rows) for i in (0, 1)]
    return mean[0], mean[1], {v: r[0] for v, r in rows.items()}


def measure(case: Case) -> dict[str, float]:
    """One method and seed on the clock, then scored (the module's docstring)."""
    import numpy as np
    import torch

    from ovseg3d.evaluate import training_views

    parts = case.variant.split("+")
    methods = [p for p in parts if p in METHODS]
    if len(methods) != 1:
        raise BenchError(f"bench clock: variant '{case.variant}' names {len(methods)} methods, not one of {METHODS}")
    method, proto = methods[0], {**DEFAULTS, **{k: v for p in parts for k, v in PROTOCOL.get(p, {}).items()}}
    if method == "occ" and not str(case.device).startswith("cuda"):
        raise BenchError("bench clock: occ runs on CUDA only (--device cuda: its grid needs nerfacc's CUDA ops)")
    s, cfg = setup(case, nerfacc=method != "ovseg3d"), case.config()
    seconds = 60.0 * cfg.max_minutes
    steps = 0 if seconds > 0 else cfg.steps

    def build(throwaway: bool) -> Ovseg3dRun | NerfaccRun:
        budget, count, seed = seconds, steps, cfg.seed
        if throwaway:  # its own seed, a budget it never reaches
            budget, count, seed = (1.0, 0, 1000 + seed) if seconds else (0.0, max(proto["warmup"], 1), 1000 + seed)
        random.seed(seed)  # as nerfacc's set_random_seed: random, numpy, torch
        np.random.seed(seed)
        torch.manual_seed(seed)
        if method != "ovseg3d":
            return NerfaccRun(s.ref, s.ex, method, s.views)
        return Ovseg3dRun(
            dataclasses.replace(s.cfg, seed=seed), s.scene, s.device, budget, count, proto["eval_max_samples"]
        )

    run, n, elapsed, warm_s = clocked_run(build, s.device, seconds, steps, proto["warmup"])
    t1 = time.perf_counter()
    test_psnr, test_ssim, per_view = score(run, s.scene, s.split.test[:: proto["test_every"]], with_ssim=True)
    val = s.split.val[:: proto["val_every"]] if proto["val_every"] else []
    val_psnr = {"val_psnr": score(run, s.scene, val)[0]} if val else {}
    seen = score(run, s.scene, training_views(s.split.train, proto["train_views"]))[0]
    cuda = s.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"test_psnr": test_psnr, "test_ssim": test_ssim, **val_psnr, "train_view_psnr": seen, "steps": n}
    out |= {"train_seconds": elapsed, "steps_per_s": n / elapsed, "warmup_seconds": warm_s, "peak_gib": peak / 2**30}
    out |= {"eval_seconds": time.perf_counter() - t1, "width": s.scene.width}
    out["last_n_rays"] = run.trainer.n_rays if method == "ovseg3d" else run.model.num_rays
    out |= {"height": s.scene.height, **{f"{k}_views": len(getattr(s.split, k)) for k in ("train", "val", "test")}}
    print(f"{case.label}: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()), flush=True)
    return out | {f"test_psnr_view{v}": p for v, p in per_view.items()}


BENCHMARK = Benchmark(
    name="clock",
    doc="ovseg3d's field and nerfacc's examples on one external clock: test / validation PSNR, steps, seconds",
    measure=measure,
    figures=("test_psnr", "test_ssim", "train_view_psnr", "steps", "train_seconds"),
    scenes=(),
    variants={
        **{m: {} for m in METHODS},
        **{f"{s}s": {"max_minutes": s / 60} for s in MARKS},
        **dict.fromkeys(PROTOCOL, {}),
    },
    default_variants=("ovseg3d", "prop"),
    repeats=3,
)


def merge(paths: Sequence[Path], out: Path | None = None) -> dict:
    """Result files of several calls (one a method, a seed or a budget) as one: each figure's runs together, their
    median and range; the commands, commits, settings and seconds of them all. Prints the table; writes ``out`` if given."""
    found = [results.load(Path(p)) for p in paths if Path(p).is_file()]
    if not found:
        raise BenchError(f"bench clock: none of {', '.join(map(str, paths))} exists")
    runs: dict[str, list[float]] = {}
    for data in found:
        for name, figure in data["figures"].items():
            runs.setdefault(name, []).extend(figure["runs"])
    merged = {
        **found[0],
        "command": " ; ".join(dict.fromkeys(d["command"] for d in found)),
        "commit": ", ".join(dict.fromkeys(d["commit"] for d in found)),
        "merged_from": [str(p) for p in paths if Path(p).is_file()],
        "settings": {**found[0]["settings"], "calls": [d["settings"] for d in found]},  # each call's seeds, --set
        "figures": {name: results.summary(values) for name, values in runs.items()},
        "seconds": round(sum(d["seconds"] for d in found), 1),
    }
    table = ("test_psnr", "test_ssim", "val_psnr", "train_view_psnr", "steps", "train_seconds")
    print(f"{'scene/variant':<32} {'n':>2} " + " ".join(f"{name + ' [range]':>26}" for name in table))
    for case in dict.fromkeys(name.rsplit("/", 1)[0] for name in runs):
        f = {name: merged["figures"].get(f"{case}/{name}") for name in table}
        cells = [f"{x['median']:.4g} [{x['min']:.4g}, {x['max']:.4g}]" if x else "-" for x in f.values()]
        print(f"{case:<32} {len(f['test_psnr']['runs']):>2} " + " ".join(f"{c:>26}" for c in cells))
    if out is not None:
        results.write(merged, out)
        print(f"wrote {out}")
    return merged


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ovseg3d.bench.clock", description=merge.__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="result files of `ovseg3d bench run clock`")
    parser.add_argument("--out", type=Path, help="the merged result file (none: the table only)")
    args = parser.parse_args()
    merge(args.files, args.out)
