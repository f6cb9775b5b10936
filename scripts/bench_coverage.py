#!/usr/bin/env python
"""How much of what the field renders solidly the exported cloud keeps (issue 48: "a real room's cloud covers the
room, not only its centre": at least 80 % of the field's own confident depth pixels, at precision >= 0.95).

For each of ``--views`` training views, evenly spaced, the run's field renders its median depth and opacity at
``1 / --stride`` of the photos' size. A pixel is **confident** where the opacity is at least ``--opacity``. The
exported cloud (``RUN/export/points.npz``) is projected into the view:

- a point **agrees** where its distance from the camera is within ``--tol`` (relative) of the field's depth at its
  pixel, and lies **in front** where it is nearer than that (a floater over the surface the field renders);
  a point behind the field's surface is hidden in that view and not counted;
- a confident pixel is **covered** where an agreeing point falls within ``--radius`` pixels of it.

Coverage is the covered share of the confident pixels, precision the agreeing share of the agreeing and in-front
points, both over all the views. A confident pixel is also **consistent** where at least one other training view's
depth map (all of them are rendered at the same size) puts a surface within ``--tol`` of its point: a backdrop
that the field paints differently for each view (the contracted far side of an unbounded capture) is opaque
without being a surface, and coverage is given over the consistent pixels too. Pixels are also split by their depth into the nearest, middle and farthest third
of each view's confident pixels, so that "only its centre" shows as coverage that falls with distance.

Prints a table and writes JSON (default ``RUN/coverage.json``); ``--pictures DIR`` writes, per view, the field's
confident pixels in dark grey, the consistent ones light grey and the covered ones green::

    python scripts/bench_coverage.py --run runs/office --views 12 --pictures bench/coverage
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro

from ovseg3d.data.cameras import image_rays, project_points
from ovseg3d.export import agreeing_views, depth_map, load_export
from ovseg3d.run import allow_changed_scene
from ovseg3d.train import load_trainer


@dataclass
class Args:
    run: Path
    """Run folder with a checkpoint and ``export/points.npz``."""
    views: int = 12
    """Training views to measure, evenly spaced (0: all)."""
    stride: int = 4
    """Render the views at 1 / stride of the photos' size."""
    opacity: float = 0.95
    """Least rendered opacity of a confident pixel."""
    tol: float = 0.02
    """Relative depth difference under which a point agrees with the field's depth."""
    radius: int = 1
    """A confident pixel is covered by an agreeing point within this many pixels (at the rendered size)."""
    cloud: Path | None = None
    """Another cloud to measure (a .npz export; default: RUN/export/points.npz)."""
    pictures: Path | None = None
    """Write a picture per view here: confident pixels dark grey, consistent ones light grey, covered ones green."""
    device: str = "auto"
    force: bool = False
    """Use the run even if its scene changed since training (``ovseg3d export --force``)."""
    out: Path | None = None
    """JSON to write (default: RUN/coverage.json)."""


@torch.no_grad()
def view_coverage(
    depth: torch.Tensor, points: torch.Tensor, cams, view: int, tol: float, radius: int
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """For one view: ``[H, W]`` confident pixels (finite ``depth``) and covered ones, and the cloud's agreeing and
    in-front points there."""
    h, w = cams.height, cams.width
    depth = depth.view(h, w)
    confident = torch.isfinite(depth)
    u, v, front = project_points(cams, view, points)
    col, row = torch.floor(u).long(), torch.floor(v).long()
    inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row = col[inside], row[inside]
    dist = (points[inside] - cams.c2w[view, :, 3].to(points.device)).norm(dim=-1)
    seen = depth[row, col]
    solid = torch.isfinite(seen)
    agree = solid & ((dist - seen).abs() <= tol * seen)
    ahead = solid & (dist < seen * (1 - tol))
    hit = torch.zeros(h, w, dtype=torch.float32, device=depth.device)
    hit[row[agree], col[agree]] = 1.0
    if radius > 0:
        hit = F.max_pool2d(hit[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0]
    covered = confident & (hit > 0)
    return confident, covered, int(agree.sum()), int(ahead.sum())


def main(args: Args) -> None:
    with allow_changed_scene(args.force):
        trainer = load_trainer(args.run, args.device)
    cloud = load_export(args.cloud or args.run / "export" / "points.npz")
    points = torch.from_numpy(cloud.xyz.astype(np.float32)).to(trainer.device)
    ids = trainer.scene.train_ids
    if args.views and args.views < len(ids):
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, args.views).round().astype(int)]
    cams = trainer.scene.cameras.to(trainer.device).scaled(1 / args.stride)
    if args.pictures is not None:
        args.pictures.mkdir(parents=True, exist_ok=True)
    every = {v: depth_map(trainer, cams, v, args.opacity)[0] for v in trainer.scene.train_ids}
    totals = {"confident": 0, "covered": 0, "consistent": 0, "consistent_covered": 0, "agree": 0, "ahead": 0}
    thirds = np.zeros((3, 2))  # [near / middle / far] x [confident, covered]
    rows = []
    for view in ids:
        depth = every[view]
        confident, covered, agree, ahead = view_coverage(depth, points, cams, view, args.tol, args.radius)
        origins, dirs = image_rays(cams, view)
        solid = confident.view(-1)
        seen = agreeing_views(origins[solid] + depth[solid, None] * dirs[solid], every, cams, view, args.tol) >= 1
        consistent = torch.zeros_like(solid)
        consistent[torch.nonzero(solid)[:, 0][seen]] = True
        consistent = consistent.view(confident.shape)
        totals["consistent"] += int(consistent.sum())
        totals["consistent_covered"] += int((consistent & covered).sum())
        n_conf, n_cov = int(confident.sum()), int(covered.sum())
        if n_conf:
            d = depth.view(confident.shape)[confident]
            cuts = torch.quantile(d, torch.tensor([1 / 3, 2 / 3], device=d.device))
            third = torch.bucketize(d, cuts)
            cov = covered[confident]
            for t in range(3):
                thirds[t] += (int((third == t).sum()), int((cov & (third == t)).sum()))
        totals["confident"] += n_conf
        totals["covered"] += n_cov
        totals["agree"] += agree
        totals["ahead"] += ahead
        rows.append(
            {"view": view, "confident": n_conf, "coverage": n_cov / max(n_conf, 1), "agree": agree, "ahead": ahead}
        )
        print(
            f"view {view}: {n_conf} confident pixels, {100 * n_cov / max(n_conf, 1):.1f} % covered; {agree} points agree, {ahead} in front",
            flush=True,
        )
        if args.pictures is not None:
            import imageio.v3 as iio

            pic = torch.zeros(*confident.shape, 3, dtype=torch.uint8)
            pic[confident.cpu()] = torch.tensor([110, 110, 110], dtype=torch.uint8)
            pic[consistent.cpu()] = torch.tensor([170, 170, 170], dtype=torch.uint8)
            pic[covered.cpu()] = torch.tensor([40, 200, 60], dtype=torch.uint8)
            iio.imwrite(args.pictures / f"coverage_{view:04d}.png", pic.numpy())
    coverage = totals["covered"] / max(totals["confident"], 1)
    consistent_coverage = totals["consistent_covered"] / max(totals["consistent"], 1)
    precision = totals["agree"] / max(totals["agree"] + totals["ahead"], 1)
    by_depth = [float(c / max(n, 1)) for n, c in thirds]
    result = {
        "run": str(args.run),
        "points": len(cloud),
        "views": len(ids),
        "size": f"{cams.width}x{cams.height}",
        "settings": {"opacity": args.opacity, "tol": args.tol, "radius": args.radius},
        "coverage": coverage,
        "consistent_coverage": consistent_coverage,
        "precision": precision,
        "coverage_by_depth_third": by_depth,
        **totals,
        "per_view": rows,
    }
    print(
        f"\n| run | points | views at {cams.width}x{cams.height} | confident pixels | coverage | near / middle / far "
        "third | consistent pixels | their coverage | precision |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    print(
        f"| {args.run.name} | {len(cloud):,} | {len(ids)} | {totals['confident']:,} | {100 * coverage:.1f} % | "
        f"{' / '.join(f'{100 * c:.0f}' for c in by_depth)} % | {totals['consistent']:,} | "
        f"{100 * consistent_coverage:.1f} % | {100 * precision:.1f} % |"
    )
    out = args.out or args.run / "coverage.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
