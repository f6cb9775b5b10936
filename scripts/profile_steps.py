#!/usr/bin/env python
"""Where a training step waits for the device: the host-device synchronisations of the geometry and the
distillation loops, counted with torch.profiler and attributed to the ovseg3d line that makes them.

A CUDA step runs ahead of the GPU until Python needs a value back: ``float()`` / ``.item()`` of a tensor
(``aten::_local_scalar_dense``), or an op whose output size depends on the data (boolean masks and
``nonzero``, ``bincount``, ``repeat_interleave`` without its size). Each one stalls the GPU until the queue
drains. The ops are the same on a CPU, so the counts are measured anywhere; only what they cost needs a GPU.
They are caught by :class:`ovseg3d.syncs.SyncCounter`, a ``TorchDispatchMode`` (torch.profiler's event names
failed to decode here), so ops of the autograd engine's backward threads are not counted.

The real loops run (``ovseg3d.train._loop`` and ``ovseg3d.distill.distill_loop``, with their progress bars,
logs and final checkpoint) for ``--steps`` steps each after ``--warmup`` steps outside the profiler.
Prints a table per loop and writes JSON (default ``bench/profile_steps.json``)::

    python scripts/profile_steps.py                      # demo scene, cpu preset
    python scripts/profile_steps.py --preset gpu --device cuda

It also counts the kernel-launching ops of one geometry step (``ovseg3d.syncs.count_ops``: aten ops that are not
views), by ovseg3d function: a GPU step with small kernels costs about as many microseconds as it launches.
``--gpu-path`` forces the torch hash grids' GPU path on a CPU, so that a CPU counts what a GPU would launch::

    python scripts/profile_steps.py --scene <a prepared capture> --preset gpu --device cpu --geometry-only \
        --gpu-path --max-long-side 400 --warmup 3 --steps 2
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tyro

from ovseg3d import accel
from ovseg3d.config import resolve_base
from ovseg3d.distill import Distiller, distill_loop
from ovseg3d.field.hashgrid import TorchHashGrid
from ovseg3d.syncs import SYNC_OPS, count_ops, count_syncs
from ovseg3d.train import _loop, start_training


@dataclass
class Args:
    scene: Path = Path("scenes/demo")
    preset: str = "cpu"
    device: str = "auto"
    warmup: int = 30
    """Steps of each loop before the profiled ones (the occupancy grid warms up, batch sizes settle)."""
    steps: int = 20
    """Profiled steps of each loop."""
    geometry_only: bool = False
    """The geometry loop alone, without teachers (``--teacher none``): no distillation loop."""
    gpu_path: bool = False
    """Run the torch hash grids' GPU path (broadcast indices, one backward scatter) whatever the device."""
    max_long_side: int = 0
    """Downscale the photos so their long side is at most this (0: the preset's)."""
    out: Path = Path("bench/profile_steps.json")


PATH_NOTES = {
    "(ray_counts)": "CPU path only: on a GPU a scatter",
    "(_march_torch)": "torch marcher: nerfacc's on a GPU with it",
    "(_occupied_steps)": "torch marcher: nerfacc's on a GPU with it",
    "(thin_samples)": "only with --max-samples-per-ray / --sem-max-samples",
}


def path_note(at: str) -> str:
    return next((note for key, note in PATH_NOTES.items() if key in at), "")


def table(title: str, counts: Counter, steps: int) -> list[dict]:
    rows = [
        {
            "op": op,
            "kind": SYNC_OPS[op],
            "where": at,
            "count": n,
            "per_step": round(n / steps, 2),
            "note": path_note(at),
        }
        for (op, at), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    total = sum(counts.values())
    print(f"\n{title}: {total} synchronisations in {steps} steps ({total / steps:.1f} a step)")
    print("| per step | op | where | note |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['per_step']} | {r['op']} | {r['where']} | {r['note']} |")
    return rows


def ops_table(counts: Counter) -> dict:
    """Print and return one geometry step's kernel-launching ops by ovseg3d function."""
    total = sum(counts.values())
    print(f"\none geometry step: {total} kernel-launching ops (aten ops that are not views)")
    print("| ops | where |\n| --- | --- |")
    for at, n in counts.most_common(15):
        print(f"| {n} | {at} |")
    return {"total": total, "by_function": dict(counts.most_common())}


def main(args: Args) -> None:
    cfg = resolve_base(args.preset, None)
    with tempfile.TemporaryDirectory() as tmp:
        total = args.warmup + args.steps
        if args.geometry_only:
            cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind="none"))
        if args.max_long_side:
            cfg = dataclasses.replace(cfg, max_long_side=args.max_long_side)
        cfg = dataclasses.replace(
            cfg,
            scene=args.scene,
            output=Path(tmp) / "run",
            device=args.device,
            steps=total,
            max_minutes=0.0,
            distill_steps=total,
            distill_minutes=0.0,
            checkpoint_every=10**6,  # one checkpoint, at the end of each loop
        )
        t = start_training(cfg)
        trainer = t.trainer
        print(accel.describe(trainer.device, cfg.grid_impl))
        if args.gpu_path:
            for module in [*trainer.field.modules(), *trainer.grid.modules()]:
                if isinstance(module, TorchHashGrid):
                    module.batched = True
        for _ in range(args.warmup):
            trainer.train_step()
        ops = count_ops(trainer.train_step)
        geometry = count_syncs(lambda: _loop(trainer, t.run))
        distill = None
        if not args.geometry_only:
            distiller = Distiller(trainer, t.features)
            for _ in range(args.warmup):
                distiller.train_step()
            distill = count_syncs(lambda: distill_loop(distiller, t.run))
    result = {
        "machine": accel.machine_info(trainer.device),
        "scene": str(args.scene),
        "preset": args.preset,
        "steps": args.steps,
        "note": "each loop's last step also writes its log line and checkpoint",
        "gpu_path": args.gpu_path,
        "geometry_ops": ops_table(ops),
        "geometry": table("geometry loop", geometry, args.steps),
        "distill": table("distillation loop", distill, args.steps) if distill is not None else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
