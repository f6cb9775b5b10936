"""FDA's DINO features from the dense proxy's image-wide DINO pass on a 16:9 frame (issue 68): the teachers'
seconds a frame with DINO run twice (FDA's own pass) and once (the proxy's pass resampled), and how far the
resampled tokens are from FDA's own. Real-size models with random weights (tests/tiny_models.py): their cost is
real, their features only bound the resampling's effect on a ViT's token field, not its semantics.

    python scripts/bench_fda_reuse.py IMAGE [--reps 3] [--small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import TEXT_B, VIT_B8, VIT_B16, save_tiny_clip, save_tiny_dino  # noqa: E402

from ovseg3d.teachers.base import TeacherView  # noqa: E402
from ovseg3d.teachers.clip import TransformersClip  # noqa: E402
from ovseg3d.teachers.config import TeacherConfig  # noqa: E402
from ovseg3d.teachers.dino import TransformersDino  # noqa: E402
from ovseg3d.teachers.extract import dense_encoder  # noqa: E402

VIT_S8 = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6, patch_size=8)


def compare(resampled: torch.Tensor, direct: torch.Tensor) -> dict:
    """Cosines of the resampled unit tokens with FDA's own, beside what a cosine means in this field."""
    r, d = resampled.flatten(0, 1), direct.flatten(0, 1)
    cos = (r * d).sum(-1)
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, len(d), (2, 20000), generator=g)
    mean = d.mean(0)
    centred = (F.normalize(r - mean, dim=-1) * F.normalize(d - mean, dim=-1)).sum(-1)
    return {
        "cos_mean": cos.mean().item(),
        "cos_p5": cos.quantile(0.05).item(),
        "cos_min": cos.min().item(),
        "centred_cos_mean": centred.mean().item(),
        "random_pairs_cos": (d[pairs[0]] * d[pairs[1]]).sum(-1).mean().item(),  # the field's baseline
        "neighbours_cos": (direct[:, 1:] * direct[:, :-1]).sum(-1).mean().item(),
        "similarity_mae": (r @ r.T - d @ d.T).abs().mean().item(),  # FDA's pairwise cosines
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="also DINO ViT-S/8 (features only)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    image = Image.open(args.image).convert("RGB").resize((960, 544), Image.BICUBIC)
    view = TeacherView(0, torch.from_numpy(np.array(image)))
    cfg = TeacherConfig(clip_features="dense", dense_proxy="image")
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = save_tiny_clip(Path(tmp, "clip"), image_size=224, projection_dim=512, vision=VIT_B16, text=TEXT_B)
        clip = TransformersClip(str(clip_dir), cpu, cfg.half)
        dinos = {"ViT-B/8": VIT_B8} | ({"ViT-S/8": VIT_S8} if args.small else {})
        for name, sizes in dinos.items():
            folder = save_tiny_dino(Path(tmp, name.replace("/", "")), "vit", sizes=sizes | {"image_size": 224})
            dino = TransformersDino(str(folder), cpu, cfg.dino_long_side, cfg.half)
            dense = dense_encoder(cfg, (clip, dino))
            dense.encode_view(view, (8, 8))  # warm-up
            dino.encode_patches(view)
            times: dict[str, list[float]] = {"twice": [], "once": [], "fda_pass": [], "fda_reused": []}
            loads = []
            for _ in range(args.reps if name == "ViT-B/8" else 0):
                for mode in ("twice", "once"):  # a frame's teachers: dense CLIP, then FDA's DINO features
                    loads.append(os.getloadavg()[0])
                    start = time.perf_counter()
                    dense.encode_view(view, (160, 90))
                    lap = time.perf_counter()
                    reused = dense.fda_patches(view)
                    patches = dino.encode_patches(view) if mode == "twice" else reused
                    end = time.perf_counter()
                    times[mode].append(end - start)
                    times["fda_pass" if mode == "twice" else "fda_reused"].append(end - lap)
                    assert patches is not None
            dense.encode_view(view, (160, 90))
            resampled, direct = dense.fda_patches(view), dino.encode_patches(view)
            row = {"dino": name, "dtype": str(dino.dtype), "grid": list(direct.shape)}
            for mode, t in times.items():
                if t:
                    row[f"s_{mode}"] = f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})"
            if loads:
                row["load1"] = f"{min(loads):.2f}-{max(loads):.2f}"
            print(row | {k: round(v, 4) for k, v in compare(resampled, direct).items()}, flush=True)


if __name__ == "__main__":
    main()
