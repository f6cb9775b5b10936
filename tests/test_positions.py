"""Position embeddings interpolated as DINO's code does, and FDA's DINO tokens taken before the final norm
(docs/crosscheck.md, (1) and (7))."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import save_tiny_clip, save_tiny_dino

from ovseg3d.teachers.base import TeacherView
from ovseg3d.teachers.clip import TransformersClip
from ovseg3d.teachers.dino import TransformersDino
from ovseg3d.teachers.positions import dino_style_positions

CPU = torch.device("cpu")


def _cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """The cubic convolution kernel torch's bicubic mode uses (Keys, a = -0.75)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _resample(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """1-D bicubic samples of ``x`` at source coordinates ``src`` (border replicated), written out."""
    base = src.floor()
    out = torch.zeros_like(src)
    for k in range(-1, 3):
        idx = base + k
        out += _cubic(src - idx) * x[idx.long().clamp(0, len(x) - 1)]
    return out


def test_dino_positions_sample_where_dino_does() -> None:
    """Resized embeddings are the source sampled at DINO's coordinates ``(i + 0.5) g / (n + 0.1) - 0.5``, not at
    transformers' ``(i + 0.5) g / n - 0.5``."""
    grid, new = 8, 13
    row = torch.randn(grid, generator=torch.Generator().manual_seed(1))
    table = row.repeat(grid, 1)  # each row the same: a 1-D resampling along x
    out = dino_style_positions(table.reshape(-1, 1), grid, new, new).reshape(new, new)
    cols = torch.arange(new, dtype=torch.float32)
    dino = _resample(row, (cols + 0.5) * grid / (new + 0.1) - 0.5)
    size = _resample(row, (cols + 0.5) * grid / new - 0.5)
    assert torch.allclose(out[5], dino, atol=1e-5)
    assert (out[5] - size).abs().max() > 1e-2  # transformers' size= sampling is elsewhere


@pytest.fixture(scope="module")
def dino(tmp_path_factory: pytest.TempPathFactory) -> TransformersDino:
    folder = save_tiny_dino(tmp_path_factory.mktemp("dino"), "vit", seed=3)
    return TransformersDino(str(folder), CPU, long_side=48, half=False)


def test_dino_uses_dino_interpolation_off_its_grid(dino: TransformersDino) -> None:
    emb = dino.model.embeddings
    pos = emb.position_embeddings[0]
    same = emb.interpolate_pos_encoding(torch.zeros(1, 17, 24), 32, 32)  # its own 4 x 4 grid: untouched
    assert torch.equal(same[0], pos)
    big = emb.interpolate_pos_encoding(torch.zeros(1, 37, 24), 48, 48)[0]  # 6 x 6
    assert torch.equal(big[0], pos[0])  # the class token's embedding
    assert torch.allclose(big[1:], dino_style_positions(pos[1:], 4, 6, 6))
    plain = F.interpolate(pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic")
    assert (big[1:] - plain.permute(0, 2, 3, 1).reshape(36, -1)).abs().max() > 1e-3


def test_fda_tokens_are_the_last_block_before_the_norm(dino: TransformersDino) -> None:
    gen = torch.Generator().manual_seed(0)
    view = TeacherView(0, torch.randint(0, 256, (40, 48, 3), generator=gen, dtype=torch.uint8))
    image = dino.resized(view)
    pixels = (image[None] - torch.tensor(dino.mean).view(1, 3, 1, 1)) / torch.tensor(dino.std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = dino.model(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
    grid = (image.shape[1] // dino.patch, image.shape[2] // dino.patch, -1)
    pre = F.normalize(out.hidden_states[-1][0, 1:].reshape(grid), dim=-1)
    post = out.last_hidden_state[0, 1:].reshape(grid)
    assert torch.allclose(dino.encode_patches(view), pre, atol=1e-6)
    assert torch.allclose(dino.encode_pixels(image), post, atol=1e-6)  # ProxyCLIP's proxy: after the norm
    assert (F.normalize(post, dim=-1) - pre).abs().max() > 1e-3


def test_clip_vision_interpolates_as_dino(tmp_path: Path) -> None:
    clip = TransformersClip(str(save_tiny_clip(tmp_path / "clip")), CPU, half=False)
    emb = clip.model.vision_model.embeddings
    pos = emb.position_embedding.weight
    big = emb.interpolate_pos_encoding(torch.zeros(1, 26, 32), 40, 40)[0]  # 4 x 4 -> 5 x 5
    assert torch.allclose(big[1:], dino_style_positions(pos[1:], 4, 5, 5))
    same = emb.interpolate_pos_encoding(torch.zeros(1, 17, 32), 32, 32)[0]
    assert torch.equal(same, pos)
