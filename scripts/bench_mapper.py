#!/usr/bin/env python
"""COLMAP's incremental against its global mapper on a stored ``prepare`` database (features and matches kept):
seconds, photos registered, points, reprojection error and the camera centres' ATE against a reference model
(share of the cameras' extent, after a similarity alignment):

    python scripts/bench_mapper.py --scene /work/exp/bonsai_o0 --reference /work/data/bonsai/scene/sparse/0

Each mapper runs through ``prepare``'s own ``_map`` (random seed 0) on a copy of ``SCENE/database.db``, in a child
process each. Prints a table and writes JSON (default ``bench/mapper.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from ovseg3d.metrics import trajectory_error

CHILD = """
import json, shutil, sys, time
from dataclasses import replace
from pathlib import Path
import pycolmap
from ovseg3d.prepare import PrepareConfig, _map
scene, work, mapper, threads = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
pycolmap.logging.minloglevel = 2
db = work / "database.db"
shutil.copy(scene / "database.db", db)
names = sorted(p.name for p in (scene / "images").iterdir())
cfg = replace(PrepareConfig(), mapper=mapper, mapping_threads=threads)
t0 = time.perf_counter()
rec = _map(pycolmap, db, scene / "images", work, len(names), cfg)
seconds = time.perf_counter() - t0
print(json.dumps({
    "seconds": round(seconds, 1), "registered": rec.num_reg_images(), "points": rec.num_points3D(),
    "reprojection_error_px": round(rec.compute_mean_reprojection_error(), 3),
    "centres": {im.name: im.projection_center().tolist() for im in rec.images.values() if im.has_pose},
}))
"""


@dataclass
class Args:
    scene: Path
    """A scene ``prepare`` wrote (its database.db and images/)."""
    reference: Path | None = None
    """A COLMAP model folder to measure the cameras against (default: the scene's own sparse/0)."""
    mappers: list[Literal["incremental", "global"]] = field(default_factory=lambda: ["incremental", "global"])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    """Threads for each mapper, in the order of --mappers."""
    out: Path = Path("bench/mapper.json")


def main(args: Args) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_prepare import centres_by_name

    reference = centres_by_name(args.reference or args.scene / "sparse" / "0")
    rows = []
    for mapper, threads in zip(args.mappers, args.threads):
        with tempfile.TemporaryDirectory() as work:
            said = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.scene), work, mapper, str(threads)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        row = json.loads(said.strip().splitlines()[-1])
        found = {Path(name).stem: np.array(c) for name, c in row.pop("centres").items()}
        common = sorted(set(found) & set(reference))
        err = trajectory_error(np.stack([found[n] for n in common]), np.stack([reference[n] for n in common]))
        rows.append({"mapper": mapper, "threads": threads, **row, "ate_share": round(err["rmse_share"], 5)})
        r = rows[-1]
        print(
            f"{mapper:<12} {threads} threads: {r['seconds']:.1f} s, {r['registered']} registered, {r['points']} "
            f"points, {r['reprojection_error_px']:.3f} px, ATE {100 * r['ate_share']:.3f} % of the extent"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scene": str(args.scene), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
