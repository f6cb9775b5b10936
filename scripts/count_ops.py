#!/usr/bin/env python
"""How many kernels ``ovseg3d export``, ``ovseg3d detect`` and the lift stage launch, and how often they wait for the device:
their cost on a GPU, counted on a CPU.

On a GPU each aten op that is not a view launches about one kernel, and a render chunk that walks a hash grid in
PyTorch launches a few hundred of them whatever its size; each read back (``.item()``, a boolean mask) makes the
host wait for the queue. Both are the same on a CPU, so they are counted here with
:class:`ovseg3d.syncs.OpCounter` and :class:`ovseg3d.syncs.SyncCounter` around the stage, on the run as it is
(its outputs go to a temporary folder). The CPU's own ways are switched off by default so that the count is the
GPU's: the torch hash grids take their GPU path (all levels at once), the field does not cut a batch into the
CPU's cache-sized pieces, and renders take a GPU's chunk of rays (``--cpu-path`` keeps the CPU's ways).

    python scripts/count_ops.py export RUN [export options, e.g. --pixel-stride 4]
    python scripts/count_ops.py detect RUN [detect options]
    python scripts/count_ops.py lift RUN          # a lifted run: its views chosen again (--teacher-views), lifted

Prints the ops by ovseg3d function and the reads by line, and writes ``--json`` (default
``bench/ops_STAGE.json``). Counting runs each op through Python: use a run whose stage takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STAGES = {"export": "cmd_export", "detect": "cmd_detect", "lift": "lift_work"}


@contextmanager
def gpu_path(on: bool = True) -> Iterator[None]:
    """Within it, the torch hash grids' GPU path, the field's whole batches and a GPU's render chunk, on any device
    (for fields built within it); everything as it was after it."""
    import ovseg3d.field.radiance as radiance
    from ovseg3d.config import TrainConfig
    from ovseg3d.field.hashgrid import TorchHashGrid

    if not on:
        yield
        return
    saved = radiance.CPU_CHUNK, TorchHashGrid.__init__, TrainConfig.render_chunk
    init, chunk = saved[1], saved[2]

    def batched_init(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        init(self, *args, **kwargs)
        self.batched = True

    radiance.CPU_CHUNK = 1 << 62
    TorchHashGrid.__init__ = batched_init  # type: ignore[method-assign]
    TrainConfig.render_chunk = lambda self, device_type: chunk(self, "cuda")  # type: ignore[method-assign]
    try:
        yield
    finally:
        radiance.CPU_CHUNK, TorchHashGrid.__init__, TrainConfig.render_chunk = saved  # type: ignore[method-assign]


def lift_work(run: Path) -> Callable[[], int]:
    """The lift stage of ``run`` again (its outputs discarded): with ``--teacher-views``, the views chosen again,
    then the teachers' maps lifted. The trainer and the teacher cache are loaded here, outside the count."""
    from ovseg3d.lift import lift
    from ovseg3d.teachers.extract import ensure_features
    from ovseg3d.train import load_trainer
    from ovseg3d.views import choose_teacher_views

    trainer = load_trainer(run, "cpu")
    cfg = trainer.cfg
    every = ensure_features(trainer.scene, cfg.teachers, trainer.device, log=lambda s: None)

    def work() -> int:
        features = every
        if cfg.teacher_views > 0:
            choice = choose_teacher_views(trainer, cfg.teacher_views, cfg.teacher_view_depth)
            features = dataclasses.replace(every, views=choice.views)
        lift(trainer, features, log=print)
        return 0

    return work


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in STAGES:
        print(__doc__.split("\n\n")[3])
        return 2
    stage, rest = argv[0], argv[1:]
    out = Path("bench") / f"ops_{stage}.json"
    if "--json" in rest:
        i = rest.index("--json")
        out, rest = Path(rest[i + 1]), rest[:i] + rest[i + 2 :]
    cpu_path = "--cpu-path" in rest
    rest = [a for a in rest if a != "--cpu-path"]
    from ovseg3d import cli
    from ovseg3d.syncs import OpCounter, SyncCounter

    if stage == "lift":
        with gpu_path(not cpu_path):
            work = lift_work(Path(rest[0]))  # the run loaded and its features read before the count
            start = time.perf_counter()
            with OpCounter() as ops, SyncCounter() as syncs:
                code = work()
            seconds = time.perf_counter() - start
    else:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / ("export" if stage == "export" else "detections.json")
            start = time.perf_counter()
            with gpu_path(not cpu_path), OpCounter() as ops, SyncCounter() as syncs:
                code = getattr(cli, STAGES[stage])([*rest, "--output", str(target)])
            seconds = time.perf_counter() - start
    n_ops, n_syncs = sum(ops.counts.values()), sum(syncs.counts.values())
    reads: Counter[str] = Counter()
    for (op, where), n in syncs.counts.items():
        reads[f"{where} {op}"] += n
    path = "CPU" if cpu_path else "GPU"
    print(f"\n{stage} ({path} path): {n_ops:,} kernel-launching ops, {n_syncs:,} reads back ({seconds:.1f} s counted)")
    print("| ops | where |\n| --- | --- |")
    for where, n in ops.counts.most_common(12):
        print(f"| {n:,} | {where} |")
    print("| reads | where |\n| --- | --- |")
    for where, n in reads.most_common(8):
        print(f"| {n:,} | {where} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "stage": stage,
        "args": rest,
        "path": path,
        "ops": n_ops,
        "reads": n_syncs,
        "seconds_counted": round(seconds, 2),
        "ops_by_function": dict(ops.counts.most_common()),
        "reads_by_line": dict(reads.most_common()),
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
