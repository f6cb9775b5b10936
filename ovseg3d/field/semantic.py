"""The semantic field distilled from the 2D teachers: its own hash grid on (detached) positions -> a small
latent per sample; the latent is volume-rendered per ray with the radiance field's weights and decoded per
ray into a CLIP feature, 3D-OVS's scale selection logits and a DINO feature (REFERENCE.md §1, §2).

Decoding after rendering (a ray's 512-d CLIP feature from its 32-d rendered latent) costs one decoder call
per ray instead of one per sample: the expensive width is paid once per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ovseg3d.field.hashgrid import HashGridConfig, make_hash_grid
from ovseg3d.field.radiance import _mlp
from ovseg3d.field.space import check_contraction, to_unit


@dataclass(frozen=True)
class SemanticConfig:
    grid: HashGridConfig
    latent_dim: int = 32
    hidden_dim: int = 64
    clip_dim: int = 512
    n_scales: int = 3
    dino_dim: int = 384


@dataclass
class SemanticOutput:
    """Per-ray decoded semantics: clip ``[R, D]`` (not normalised), selection ``[R, S]`` (softmax),
    dino ``[R, Dd]``."""

    clip: Tensor
    selection: Tensor
    dino: Tensor


class SemanticField(nn.Module):
    def __init__(
        self,
        aabb: Tensor,
        cfg: SemanticConfig,
        device: torch.device | str = "cpu",
        grid_impl: str = "auto",
        contraction: str = "none",
    ):
        super().__init__()
        self.cfg = cfg
        self.contraction = check_contraction(contraction)
        self.register_buffer("aabb", aabb.float().clone())
        self.grid = make_hash_grid(cfg.grid, device, grid_impl, False)
        self.latent_mlp = _mlp([cfg.grid.output_dim, cfg.hidden_dim, cfg.latent_dim])
        self.clip_head = _mlp([cfg.latent_dim, 128, 256, cfg.clip_dim])
        self.selection_head = _mlp([cfg.latent_dim, 32, cfg.n_scales])
        self.dino_head = _mlp([cfg.latent_dim, 128, cfg.dino_dim])
        self.to(device)

    def latent(self, x: Tensor) -> Tensor:
        """``[P, 3]`` world points -> ``[P, L]`` latent."""
        xn, _ = to_unit(x, self.aabb, self.contraction)
        return self.latent_mlp(self.grid(xn).float())

    def decode(self, z: Tensor) -> SemanticOutput:
        """``[R, L]`` rendered latents -> per-ray semantics."""
        return SemanticOutput(self.clip_head(z), torch.softmax(self.selection_head(z), -1), self.dino_head(z))
