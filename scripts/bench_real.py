#!/usr/bin/env python
"""The command line of ``ovseg3d bench run field`` as ``scripts/gpu_session.sh`` calls it: a preset of its own
(``--preset gpu``), the evaluation's options, and rows under ``--name`` in a JSON file it reads back (the best
variant). The measuring is :func:`ovseg3d.bench.field.train_field`'s; each variant's first held-out panel (ground
truth | render | depth) is copied to ``OUT_FOLDER/<name>_<variant>.png``.

    python scripts/bench_real.py --scene .real/bonsai --preset gpu --name real_0.5 --variants default cull \\
        --set max_minutes=0.5 steps=1000000 --eval-every 4 --out /tmp/res/real.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ovseg3d.bench.field import VARIANTS, train_field, variant_overrides
from ovseg3d.bench.harness import Case
from ovseg3d.config import parse_overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", type=Path, required=True)
    p.add_argument("--name", default="", help="rows' name (default: the scene folder's)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--variants", nargs="+", default=["default"], help=f"of: {', '.join(VARIANTS)} (joined by '+')")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", type=Path, default=Path("bench/runs"))
    p.add_argument("--out", type=Path, default=Path("bench/real.json"))
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-max-samples", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1)
    a = p.parse_args()
    name = a.name or a.scene.name
    unknown = [v for v in a.variants if any(part not in VARIANTS for part in v.split("+"))]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    rows = []
    for variant in a.variants:  # the JSON after each variant: a run stopped at its limit keeps what was done
        slug = f"{name}_{variant.replace('+', '-')}"
        overrides = {**parse_overrides(a.set), **variant_overrides(variant)}
        case = Case("field", name, a.scene, variant, overrides, 0, a.work, a.device, a.preset)
        row = train_field(case, a.work / slug, True, max_samples_per_ray=a.eval_max_samples, every=a.eval_every)
        panels = sorted((a.work / slug / "renders").glob("view_*.png"))
        picture = a.out.parent / f"{slug}.png"
        if panels:
            picture.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(panels[0], picture)
        rows.append({"variant": variant, "overrides": overrides, **row, "picture": str(picture)})
        results[name] = {"preset": a.preset, "scene": str(a.scene), "rows": rows}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name} {variant}: {row['psnr']:.2f} dB held out, {row['steps']} steps", flush=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
