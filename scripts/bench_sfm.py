#!/usr/bin/env python
"""How a trained field's geometry agrees with the capture's own structure-from-motion points: no ground truth needed.

Each keypoint of a training view that observes a COLMAP point (the observations of the depth prior,
:func:`ovseg3d.depth_prior.depth_prior`: tracks of at least 3 views, at most 2 px of error) says that the ray
through it ends at the point, at depth ``d`` with uncertainty ``sigma`` (at least 1 % of ``d``). For ``--rays``
such observations drawn at random, the run's field renders the ray with every marched sample and reports:

- **at the point**: the share of the ray's weight within ``sigma`` of ``d`` (the depth prior's own measure), and
  within ``3 sigma``;
- **median depth error**: ``|t50 - d| / d``, ``t50`` where the ray's accumulated weight reaches a half (rays that
  never reach it count as missing);
- **no sample**: rays the occupancy grid leaves without any sample at all.

On mip-NeRF 360's bonsai after 1,300 steps of the ``cpu`` preset, 19 % of the weight lies at the point without the
depth prior and 75 % with it (docs/benchmarks.md). Prints a table and writes JSON (default ``RUN/sfm.json``)::

    python scripts/bench_sfm.py --run runs/bonsai --rays 4096
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from ovseg3d.depth_prior import depth_prior, prior_rays
from ovseg3d.render.renderer import depth_reaching
from ovseg3d.render.volume import exclusive_cumsum, render_weights
from ovseg3d.train import load_trainer


@dataclass
class Args:
    run: Path
    """Run folder with a checkpoint, trained on a scene with a COLMAP model (or with --model)."""
    rays: int = 4096
    """Observations to render, drawn at random (with a fixed seed)."""
    model: Path | None = None
    """The COLMAP model whose points to use (default: the run's --depth-model, else the scene's own)."""
    chunk: int = 2048
    """Rays rendered at once."""
    seed: int = 0
    device: str = "auto"
    out: Path | None = None
    """JSON to write (default: RUN/sfm.json)."""


def per_ray(weights: torch.Tensor, samples, depth: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """``[R]`` weight within 1 and 3 sigma of each ray's depth, its median depth (nan where the weight never reaches
    a half, as :func:`~ovseg3d.render.renderer.render_median_depth` takes it) and whether it has any sample."""
    n = depth.shape[0]
    r = samples.ray_indices
    gap = torch.clamp(torch.maximum(samples.t_starts - depth[r], depth[r] - samples.t_ends), min=0.0)
    z = gap / sigma[r]
    at1 = torch.zeros(n).index_add(0, r, weights * (z <= 1.0))
    at3 = torch.zeros(n).index_add(0, r, weights * (z <= 3.0))
    t50 = depth_reaching(exclusive_cumsum(weights, r, n) + weights, samples, n, 0.5)
    has = torch.zeros(n, dtype=torch.bool)
    has[r] = True
    return {"at_1sigma": at1, "at_3sigma": at3, "t50": t50, "has_sample": has}


@torch.no_grad()
def main(args: Args) -> dict:
    trainer = load_trainer(args.run, args.device)
    model = args.model or trainer.cfg.depth_model or trainer.cfg.colmap_model
    prior = depth_prior(trainer.scene, model)
    if prior is None:
        raise SystemExit(f"{args.run}: its scene has no COLMAP points observed by its training views (give --model)")
    gen = torch.Generator().manual_seed(args.seed)
    index = torch.randint(0, len(prior), (min(args.rays, len(prior)),), generator=gen)
    cams = trainer.cameras.to("cpu")
    parts: list[dict[str, torch.Tensor]] = []
    for lo in range(0, len(index), args.chunk):
        i = index[lo : lo + args.chunk]
        o, d = prior_rays(prior, cams, i)
        o, d = o.to(trainer.device), d.to(trainer.device)
        near, far = trainer.ray_limits(trainer.cameras, trainer.near_far, prior.cam[i].to(trainer.device), d)
        samples = trainer.grid.march(o, d, trainer.opts.step_size, near, far, stratified=False)
        sigma = trainer.field.density(samples.positions(o, d))
        weights = render_weights(sigma, samples.deltas, samples.ray_indices, len(o))  # every marched sample's
        cpu = dataclasses.replace(
            samples, ray_indices=samples.ray_indices.cpu(), t_starts=samples.t_starts.cpu(), t_ends=samples.t_ends.cpu()
        )
        parts.append(per_ray(weights.cpu(), cpu, prior.depth[i], prior.sigma[i]))
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    w = prior.weight[index]
    err = (cat["t50"] - prior.depth[index]).abs() / prior.depth[index]
    found = ~torch.isnan(err)
    result = {
        "run": str(args.run),
        "observations": len(prior),
        "rays": len(index),
        "weight_at_point": float((cat["at_1sigma"] * w).sum() / w.sum()),
        "weight_within_3sigma": float((cat["at_3sigma"] * w).sum() / w.sum()),
        "median_depth_error": float(err[found].median()) if bool(found.any()) else float("nan"),
        "within_1pct": float((err[found] <= 0.01).float().sum() / len(err)),
        "within_5pct": float((err[found] <= 0.05).float().sum() / len(err)),
        "no_median": float((~found).float().mean()),
        "no_sample": float((~cat["has_sample"]).float().mean()),
    }
    rows = [
        ("weight within sigma of the point", f"{100 * result['weight_at_point']:.1f} %"),
        ("weight within 3 sigma", f"{100 * result['weight_within_3sigma']:.1f} %"),
        ("median depth error (median over rays)", f"{100 * result['median_depth_error']:.2f} %"),
        ("rays whose median depth is within 1 % / 5 %", f"{100 * result['within_1pct']:.1f} / {100 * result['within_5pct']:.1f} %"),
        ("rays that never reach half their weight", f"{100 * result['no_median']:.1f} %"),
        ("rays without any sample", f"{100 * result['no_sample']:.1f} %"),
    ]  # fmt: skip
    print(f"{args.run}: {len(index):,} of {len(prior):,} SfM observations")
    for name, value in rows:
        print(f"  {name:<46} {value}")
    out = args.out or args.run / "sfm.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main(tyro.cli(Args))
