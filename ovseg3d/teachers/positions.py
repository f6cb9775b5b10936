"""Position embeddings interpolated to another patch grid as DINO's own code does (and ProxyCLIP's open_clip).

A ViT trained on 224-pixel inputs (a 14 x 14 grid for CLIP ViT-B/16, 28 x 28 for DINO ViT-B/8) needs its
position embeddings on a larger grid for a 336-pixel window or a 448-pixel photo. transformers resizes them
bicubically with ``size=(h, w)``; DINO (``vision_transformer.py``, ``interpolate_pos_encoding``) and the open_clip
that ProxyCLIP ships use ``scale_factor=((h + 0.1) / g, (w + 0.1) / g)``, which samples the source grid at
``(i + 0.5) * g / (h + 0.1) - 0.5`` instead of ``(i + 0.5) * g / h - 0.5``. On a real-size random DINO ViT-B/8 the
two differ by 2.8e-2 on its tokens at 336 pixels, on the dense CLIP features by 3.4e-3 (docs/crosscheck.md, (1)).
ovseg3d computes what those methods compute: :func:`interpolate_as_dino` binds DINO's way to a transformers
embeddings module. Inputs on the trained grid are not interpolated at all, as before.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dino_style_positions(pos: Tensor, grid: int, new_h: int, new_w: int) -> Tensor:
    """``[grid * grid, C]`` patch position embeddings -> ``[new_h * new_w, C]``, bicubic with DINO's
    ``scale_factor = (new + 0.1) / grid``."""
    dim = pos.shape[-1]
    out = F.interpolate(
        pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2),
        scale_factor=((new_h + 0.1) / grid, (new_w + 0.1) / grid),
        mode="bicubic",
        align_corners=False,
    )
    if out.shape[-2:] != (new_h, new_w):  # cannot happen for grids under 1000 patches; DINO asserts it too
        raise ValueError(f"position embeddings resized to {tuple(out.shape[-2:])}, expected {(new_h, new_w)}")
    return out.permute(0, 2, 3, 1).reshape(-1, dim)


def _table(embeddings: nn.Module) -> Tensor:
    """``[1 + g * g, C]``: the class token's and the patches' position embeddings of a CLIP or ViT embeddings."""
    if isinstance(getattr(embeddings, "position_embedding", None), nn.Embedding):  # CLIPVisionEmbeddings
        return embeddings.position_embedding.weight
    return embeddings.position_embeddings[0]  # ViTEmbeddings: a [1, 1 + g * g, C] parameter


def _interpolate(self: nn.Module, embeddings: Tensor, height: int, width: int) -> Tensor:
    """The bound replacement of transformers' ``interpolate_pos_encoding(embeddings, height, width)``."""
    pos = _table(self)
    grid = math.isqrt(pos.shape[0] - 1)
    patch = int(self.patch_size if isinstance(self.patch_size, int) else self.patch_size[0])
    new_h, new_w = height // patch, width // patch
    if new_h == new_w == grid:
        return pos[None]
    return torch.cat([pos[:1], dino_style_positions(pos[1:], grid, new_h, new_w)])[None]


def interpolate_as_dino(embeddings: nn.Module) -> None:
    """Make a transformers ``CLIPVisionEmbeddings`` or ``ViTEmbeddings`` interpolate its position embeddings as
    DINO's code does (this instance only)."""
    if not hasattr(embeddings, "interpolate_pos_encoding"):
        raise TypeError(f"{type(embeddings).__name__} has no interpolate_pos_encoding to replace")
    embeddings.interpolate_pos_encoding = types.MethodType(_interpolate, embeddings)  # type: ignore[method-assign]
