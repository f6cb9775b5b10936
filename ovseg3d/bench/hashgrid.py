"""The hash grid's throughput (``scripts/benchmark.py``'s grid half folded): forward and backward of one batch of
points through the grid the case's config makes, its torch or tiny-cuda-nn implementation, eager or compiled.

Figures: ``mpoints_per_s`` (millions of points a second, forward and backward), ``ms`` (one batch),
``first_call_s`` (the first call: a compiled grid's compilation) and ``tcnn`` (1 where the grid was tiny-cuda-nn's).
The batch is 65,536 points on a CPU and 1,048,576 on a GPU. ``default`` is the config's choice (``grid_impl = "auto"``:
tiny-cuda-nn where it is installed and runs, else torch). Variants join with '+': ``ngp+torch`` is Instant-NGP's grid
(16 levels of 2 features, 2^19 entries) in torch.

    ovseg3d bench run hashgrid --device cpu --variants torch compiled ngp+torch ngp+compiled
    ovseg3d bench run hashgrid --device cuda --set preset=gpu     # default and ngp: tiny-cuda-nn where it runs
"""

from __future__ import annotations

import dataclasses
import time

from ovseg3d.bench.harness import Benchmark, Case

POINTS = {"cpu": 1 << 16, "cuda": 1 << 20}
"""Points a batch, by device type."""


def measure(case: Case) -> dict[str, float]:
    import torch

    from ovseg3d import accel
    from ovseg3d.field.hashgrid import make_hash_grid
    from ovseg3d.train import resolve_device

    case = dataclasses.replace(case, preset=case.overrides.get("preset", case.preset))  # --set preset=gpu
    cfg = case.config()
    device = resolve_device(case.device)
    grid = make_hash_grid(cfg.field_config().grid, device, cfg.grid_impl, cfg.compile_grid)
    torch.manual_seed(case.seed)
    x = torch.rand(POINTS.get(device.type, 1 << 16), 3, device=device)

    def step() -> None:
        grid(x).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # a compiled grid compiles here
    first = time.perf_counter() - start
    repeat = 5 if device.type == "cpu" else 50
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    seconds = (time.perf_counter() - start) / repeat
    tcnn = float(cfg.grid_impl != "torch" and accel.tcnn(device) is not None)
    return {"mpoints_per_s": len(x) / seconds / 1e6, "ms": seconds * 1e3, "first_call_s": round(first, 2), "tcnn": tcnn}


BENCHMARK = Benchmark(
    name="hashgrid",
    doc="the hash grid's forward and backward: million points a second, torch eager or compiled, or tiny-cuda-nn",
    measure=measure,
    figures=("mpoints_per_s", "ms", "first_call_s", "tcnn"),
    scenes=("demo",),
    variants={
        "default": {},
        "torch": {"grid_impl": "torch"},
        "compiled": {"grid_impl": "torch", "compile_grid": True},
        "ngp": {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19, "max_resolution": 4096},
    },
)
