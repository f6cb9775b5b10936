"""FDA's DINO features from the dense proxy's image-wide DINO pass (issue 68): exact when FDA's input size is the
pass's (4:3), resampled to FDA's grid when it is not (16:9 frames), so that DINO runs once a view."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import save_tiny_clip, save_tiny_dino

from ovseg3d.cli import main
from ovseg3d.data.loader import load_scene
from ovseg3d.teachers.base import TeacherView
from ovseg3d.teachers.clip import TransformersClip
from ovseg3d.teachers.config import TeacherConfig
from ovseg3d.teachers.dense import ProxyClip, dense_input_size, resample_tokens
from ovseg3d.teachers.dino import TransformersDino, dino_input_size
from ovseg3d.teachers.extract import ensure_features

CPU = torch.device("cpu")
SHORT, WINDOW, STRIDE = 48, 32, 16  # CLIP patch 8, DINO patch 4: the dense pass at short side 48
FDA_LONG = 64  # FDA's DINO at long side 64: a 16:9 view's 88 x 48 dense pass against FDA's 64 x 36


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fda_models")
    layers = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)
    clip = save_tiny_clip(root / "clip", image_size=32, vision=dict(patch_size=8, **layers))
    dino = save_tiny_dino(root / "dino", "vit", sizes=dict(patch_size=4, num_attention_heads=2))
    return clip, dino


@pytest.fixture(scope="module")
def dense(models):
    clip = TransformersClip(str(models[0]), CPU, half=False)
    dino = TransformersDino(str(models[1]), CPU, FDA_LONG, half=False)
    return ProxyClip(clip, dino, SHORT, WINDOW, STRIDE, proxy="image")


def _blocks(w: int, h: int, index: int = 0) -> TeacherView:
    """Coloured blocks (3 x 4) with a little noise: a token field with places that differ."""
    g = torch.Generator().manual_seed(5)
    colours = torch.randint(0, 256, (3, 4, 3), generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = colours[(ys * 3 // h).clamp(max=2), (xs * 4 // w).clamp(max=3)].float()
    image = image + torch.randn(h, w, 3, generator=g) * 10
    return TeacherView(index, image.clamp(0, 255).to(torch.uint8))


def test_a_16_9_view_gets_fdas_grid_from_the_proxy_pass(dense):
    view = _blocks(96, 54)
    assert dense_input_size(96, 54, SHORT, dense.multiple) == (88, 48)  # the proxy's 22 x 12 tokens
    assert dino_input_size(96, 54, FDA_LONG, 4) == (64, 36)  # FDA's 16 x 9: another size
    dense.encode_view(view, (16, 9))
    got = dense.fda_patches(view)
    direct = dense.dino.encode_patches(view)
    assert got is not None and got.shape == direct.shape == (9, 16, 24) and got.device.type == "cpu"
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(9, 16))
    # FDA's own tokens at the same place, not elsewhere: closer than to the mirrored or transposed-by-blocks field
    same = (got * direct).sum(-1).mean()
    assert same > (got * direct.flip(1)).sum(-1).mean() + 0.02
    assert same > (got * direct.flip(0)).sum(-1).mean() + 0.02
    assert dense.fda_patches(TeacherView(1, view.image)) is None  # another view: no reuse


def test_the_exact_tokens_when_the_sizes_agree_and_none_from_a_coarser_pass(dense):
    view = _blocks(64, 48)  # 4:3: the proxy pass is FDA's input, 64 x 48
    dense.encode_view(view, (16, 12))
    assert torch.equal(dense.fda_patches(view), dense.dino.encode_patches(view))
    square = _blocks(60, 60)  # proxy 48 x 48 (12 x 12 tokens), FDA 64 x 64 (16 x 16): not from a coarser grid
    dense.encode_view(square, (12, 12))
    assert dense.fda_patches(square) is None


def test_resampling_to_the_same_grid_keeps_the_unit_tokens():
    tokens = torch.randn(5, 7, 6) * torch.rand(5, 7, 1) * 10
    torch.testing.assert_close(resample_tokens(tokens, (5, 7)), F.normalize(tokens, dim=-1))
    constant = torch.randn(6).expand(12, 22, 6)
    torch.testing.assert_close(resample_tokens(constant, (9, 16)), F.normalize(constant[:9, :16], dim=-1))


def test_extraction_runs_dino_once_a_16_9_view(models, tmp_path, monkeypatch):
    scene_dir = tmp_path / "scene"
    args = ["--width", "96", "--height", "54", "--n-views", "3", "--n-annotated", "1", "--supersample", "1"]
    assert main(["synth", str(scene_dir), *args]) == 0
    cfg = TeacherConfig(
        kind="clip", clip_model=str(models[0]), dino_model=str(models[1]), half=False, cache_dir=tmp_path / "cache",
        clip_features="dense", dense_short_side=SHORT, dense_window=WINDOW, dense_stride=STRIDE, dense_proxy="image",
        dino_long_side=FDA_LONG,
    )  # fmt: skip
    passes: list[tuple[int, int]] = []
    tokens = TransformersDino.tokens

    def counted(self, image, with_fda=True):  # noqa: ANN001, ANN202
        passes.append(tuple(image.shape[1:]))
        return tokens(self, image, with_fda)

    monkeypatch.setattr(TransformersDino, "tokens", counted)
    feats = ensure_features(load_scene(scene_dir), cfg, CPU, log=lambda _: None, notice=None)
    assert passes == [(48, 88)] * 3  # the proxy's pass alone, no FDA pass at 36 x 64
    assert feats.dino.shape == (3, 9, 16, 24)  # FDA's grid, as its own pass gives
