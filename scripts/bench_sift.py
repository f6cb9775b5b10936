#!/usr/bin/env python
"""SIFT's first octave on a photo set: seconds a photo for features, keypoints a photo and seconds a pair for
matching (each photo with its next five), for each (first octave, features asked). What ``prepare
--sift-first-octave`` trades (docs/benchmarks.md, *SIFT on the photos as they are*):

    python scripts/bench_sift.py --images /work/data/bonsai/scene/images --photos 40

Prints a table and writes JSON (default ``bench/sift.json``). Needs pycolmap; runs on the CPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

from ovseg3d.prepare import PrepareConfig, _extract_octave, _match


@dataclass
class Args:
    images: Path
    """A folder of photos."""
    photos: int = 40
    """The first this many photos in name order."""
    settings: list[str] = field(default_factory=lambda: ["-1:8192", "-1:4096", "0:8192", "0:2048"])
    """FIRST_OCTAVE:MAX_FEATURES for each row."""
    out: Path = Path("bench/sift.json")


def measure(images: Path, names: list[str], octave: int, max_features: int, work: Path) -> dict:
    """Features and matches through ``prepare``'s own extraction (this first octave) and matching (each photo with
    its next five: sequential pairs without loop pairs)."""
    import pycolmap

    db = work / f"sift_{octave}_{max_features}.db"
    cfg = replace(PrepareConfig(), max_features=max_features, overlap=5, loop_pairs=0)
    t0 = time.perf_counter()
    _extract_octave(pycolmap, db, images, names, cfg, octave)
    features = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs, verified = _match(pycolmap, db, work, names, "sequential", cfg)
    match = time.perf_counter() - t0
    with pycolmap.Database.open(db) as database:
        keypoints = [database.num_keypoints_for_image(im.image_id) for im in database.read_all_images()]
    return {
        "first_octave": octave,
        "max_features": max_features,
        "seconds_a_photo": round(features / len(names), 3),
        "keypoints_median": int(np.median(keypoints)),
        "seconds_a_pair": round(match / pairs, 4),
        "pairs": pairs,
        "verified_pairs": verified,
    }


def main(args: Args) -> None:
    import pycolmap

    pycolmap.logging.minloglevel = 2
    names = sorted(p.name for p in args.images.iterdir() if p.is_file())[: args.photos]
    work = Path(tempfile.mkdtemp(prefix="bench_sift_"))
    rows = []
    try:
        for setting in args.settings:
            octave, max_features = (int(x) for x in setting.split(":"))
            rows.append(measure(args.images, names, octave, max_features, work))
            r = rows[-1]
            print(
                f"octave {octave:>2}, {max_features:>5} asked: {r['seconds_a_photo']:.3f} s a photo, "
                f"{r['keypoints_median']} keypoints, {r['seconds_a_pair']:.4f} s a pair ({r['verified_pairs']} of "
                f"{r['pairs']} verified)"
            )
    finally:
        shutil.rmtree(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"images": str(args.images), "photos": len(names), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
