"""``ovseg3d render RUN``: images of a trained run for people to look at.

Per view: ``rgb_NNN.png``, ``depth_NNN.png``, ``seg_NNN.png`` (segmentation over the scene's classes with a
legend) and ``rel_NNN_<query>.png`` (LERF relevancy of each ``--query`` text over the rgb), in ``RUN/renders``.
``ovseg3d eval`` writes its own names there (``view_NNN.png``, ``seg_eval_NNN.png``): neither overwrites the
other's pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ovseg3d.errors import UsageError
from ovseg3d.images import colorize, colorize_depth, colorize_labels, label_palette, save_png
from ovseg3d.teachers.extract import text_encoder
from ovseg3d.teachers.relevancy import CANONICAL_NEGATIVES, query_relevancy, query_slug


def legend(classes: list[str], height: int) -> np.ndarray:
    """A ``[height, w, 3]`` float strip with a colour swatch and the name of every class."""
    font = ImageFont.load_default()
    row = max(10, min(16, height // max(1, len(classes))))
    width = 16 + 7 * max(len(c) for c in classes) + 8
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (name, colour) in enumerate(zip(classes, label_palette(len(classes)))):
        y = 2 + i * row
        draw.rectangle([2, y, 12, y + row - 4], fill=tuple(int(c * 255) for c in colour))
        draw.text((16, y - 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(img, dtype=np.float64) / 255.0


def overlay(rgb: np.ndarray, relevancy: np.ndarray) -> np.ndarray:
    """Relevancy in turbo over a dimmed rgb where it is above 0.5 (LERF's display)."""
    heat = colorize(relevancy, 0.5, 1.0)
    alpha = np.clip((relevancy - 0.5) * 2.0, 0, 1)[..., None]
    return rgb * 0.5 * (1 - alpha) + heat * alpha


def render_run(run: Path, views: list[int] | None, queries: list[str], device_name: str = "auto") -> list[Path]:
    """Write the images of ``views`` (default: the held-out ones) to ``RUN/renders``."""
    from ovseg3d.lift import load_semantics
    from ovseg3d.run import latest_checkpoint, load_checkpoint
    from ovseg3d.train import load_trainer

    trainer = load_trainer(run, device_name)
    scene = trainer.scene
    views = views if views else scene.eval_ids
    bad = [v for v in views if not 0 <= v < len(scene)]
    if bad:
        raise UsageError(f"view {bad[0]} is not in the scene (0..{len(scene) - 1})")
    distiller = load_semantics(trainer, load_checkpoint(latest_checkpoint(run), "cpu"))
    if queries and distiller is None:
        raise UsageError(f"{run} has no semantic field (trained without --teacher): --query needs one")
    query_emb = negatives = None
    if queries and distiller is not None:
        enc = text_encoder(trainer.cfg.teachers, trainer.device)
        query_emb, negatives = enc.encode_text(queries), enc.encode_text(list(CANONICAL_NEGATIVES))
    out_dir, paths = run / "renders", []
    for v in views:
        out = trainer.render_view(scene.cameras, v, scene.near_far)
        rgb = out.rgb.clamp(0, 1).cpu().numpy()
        paths += [out_dir / f"rgb_{v:03d}.png", out_dir / f"depth_{v:03d}.png"]
        save_png(paths[-2], rgb)
        save_png(paths[-1], colorize_depth(out.depth, out.opacity))
        if distiller is None:
            continue
        feats = distiller.render_semantics(scene.cameras, v, scene.near_far)
        if scene.classes:
            labels = (feats @ F.normalize(distiller.space.text, dim=-1).T).argmax(-1).cpu()
            seg = np.concatenate([colorize_labels(labels, len(scene.classes)), legend(scene.classes, scene.height)], 1)
            paths.append(out_dir / f"seg_{v:03d}.png")
            save_png(paths[-1], seg)
        for q, emb in zip(queries, query_emb if query_emb is not None else []):
            rel = query_relevancy(feats, emb.to(feats.device), negatives.to(feats.device)).cpu().numpy()
            slug = query_slug(q)
            paths.append(out_dir / f"rel_{v:03d}_{slug}.png")
            save_png(paths[-1], overlay(rgb, rel))
    return paths
