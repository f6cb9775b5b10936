#!/usr/bin/env python
"""Is a run's colour right? Per view (held-out, then a few training views): the mean colour of one colour's
pixels in the photo and in the render, their saturation, the PSNR, and the PSNR after the best per-channel
affine map from render to photo (what an exposure / white-balance error would give back). Prints a table and
writes JSON (default ``bench/colour.json``).

    python scripts/colour_check.py runs/fox                    # the fox's orange fur: red > green + 0.1 > blue
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from ovseg3d.metrics import psnr
from ovseg3d.train import load_trainer


@dataclass
class Args:
    run: tyro.conf.Positional[Path]
    """The run folder."""
    held_out: int = 5
    """Held-out views to check (the first N)."""
    training: int = 5
    """Training views to check (spread over the training set)."""
    margin: float = 0.1
    """A pixel is of the colour when red exceeds green by this, green exceeds blue, and saturation is over
    ``min_saturation`` (orange / brown; the fox's fur)."""
    min_saturation: float = 0.35
    device: str = "cpu"
    out: Path = Path("bench/colour.json")


def saturation(x: torch.Tensor) -> torch.Tensor:
    hi, lo = x.max(-1).values, x.min(-1).values
    return (hi - lo) / hi.clamp_min(1e-6)


def check_view(trainer, view: int, args: Args) -> dict:  # noqa: ANN001
    scene = trainer.scene
    with torch.no_grad():
        out = trainer.render_view(scene.cameras, view, scene.near_far)
    render = out.rgb.cpu().reshape(-1, 3).double()
    photo = scene.image_float(view).reshape(-1, 3).double()
    sat_photo, sat_render = saturation(photo), saturation(render)
    of = (photo[:, 0] > photo[:, 1] + args.margin) & (photo[:, 1] > photo[:, 2]) & (sat_photo > args.min_saturation)
    design = torch.cat([render, torch.ones(len(render), 1, dtype=render.dtype)], 1)
    mapped = (design @ torch.linalg.lstsq(design, photo).solution).clamp(0, 1)
    return {
        "view": view,
        "pixels": int(of.sum()),
        "photo_rgb": [round(float(c), 3) for c in photo[of].mean(0)] if of.any() else None,
        "render_rgb": [round(float(c), 3) for c in render[of].mean(0)] if of.any() else None,
        "photo_saturation": round(float(sat_photo[of].mean()), 3) if of.any() else None,
        "render_saturation": round(float(sat_render[of].mean()), 3) if of.any() else None,
        "psnr": round(float(psnr(out.rgb.cpu(), scene.image_float(view))), 2),
        "psnr_affine": round(float(-10 * torch.log10(((mapped - photo) ** 2).mean())), 2),
    }


def main() -> None:
    args = tyro.cli(Args)
    trainer = load_trainer(args.run, args.device, force=True)
    scene = trainer.scene
    held = [v for v in range(len(scene.image_paths)) if v not in set(scene.train_ids)][: args.held_out]
    step = max(1, len(scene.train_ids) // max(1, args.training))
    train = list(scene.train_ids)[step // 2 :: step][: args.training]
    rows = [{"set": "held-out", **check_view(trainer, v, args)} for v in held]
    rows += [{"set": "training", **check_view(trainer, v, args)} for v in train]
    print(
        f"{'set':<9} {'view':>4} {'pixels':>7} {'photo rgb':>20} {'render rgb':>20} {'sat':>11} {'PSNR':>6} {'affine':>6}"
    )
    for r in rows:
        rgb = lambda c: " ".join(f"{x:.3f}" for x in c) if c else "-"  # noqa: E731
        sat = f"{r['photo_saturation']}/{r['render_saturation']}"
        print(
            f"{r['set']:<9} {r['view']:>4} {r['pixels']:>7} {rgb(r['photo_rgb']):>20} {rgb(r['render_rgb']):>20} "
            f"{sat:>11} {r['psnr']:>6.2f} {r['psnr_affine']:>6.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
