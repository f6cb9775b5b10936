"""Dense CLIP features (ProxyCLIP, ``--clip-features dense``): the implementation against a plain reference written
from the paper's equations (one head, one window at a time, windows stitched by hand), and its place in the
teacher cache and distillation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_models import save_tiny_clip, save_tiny_dino

from ovseg3d.cli import main
from ovseg3d.data.loader import load_scene
from ovseg3d.run import latest_checkpoint, load_checkpoint
from ovseg3d.teachers import cache
from ovseg3d.teachers.base import TeacherView
from ovseg3d.teachers.clip import TransformersClip
from ovseg3d.teachers.config import TeacherConfig, TeacherError
from ovseg3d.teachers.dense import ProxyClip, dense_input_size, proxy_attention, window_starts
from ovseg3d.teachers.dino import TransformersDino
from ovseg3d.teachers.extract import ensure_features

CPU = torch.device("cpu")
# a photo of 70 x 50 resized to 64 x 48 (short side 48, long side whole 8-pixel patches): 3 x 2 windows of 32
SHORT, WINDOW, STRIDE = 48, 32, 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_models")
    layers = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=32, intermediate_size=64)
    clip = save_tiny_clip(root / "clip", image_size=32, vision=dict(patch_size=8, **layers))
    dino = save_tiny_dino(root / "dino", "vit", sizes=dict(patch_size=4, num_attention_heads=2))
    return clip, dino


@pytest.fixture(scope="module")
def encoders(models):
    clip = TransformersClip(str(models[0]), CPU, half=False)
    dino = TransformersDino(str(models[1]), CPU, 48, half=False)
    return clip, dino


def _photo(w: int = 70, h: int = 50) -> TeacherView:
    """Coloured blocks with a little noise: regions DINO's similarities can tell apart."""
    g = torch.Generator().manual_seed(3)
    colours = torch.randint(0, 256, (4, 3, 3), generator=g)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = colours[(ys * 4 // h).clamp(max=3), (xs * 3 // w).clamp(max=2)].float()
    image = image + torch.randn(h, w, 3, generator=g) * 12
    return TeacherView(0, image.clamp(0, 255).to(torch.uint8))


def reference(
    clip: TransformersClip,
    dino: TransformersDino,
    view: TeacherView,
    out_size,
    mutation: str = "",
    proxy: str = "window",
) -> torch.Tensor:
    """ProxyCLIP from the paper's equations, one window and one head at a time. ``mutation`` changes one step
    (to show the comparison notices it); ``proxy="image"``: DINO's tokens from one pass over the whole resized
    photo, cut to each window."""
    vision, model = clip.model.vision_model, clip.model
    beta, gamma = 1.2, 3.0
    # resize: short side 48, long side to whole 8-pixel patches
    w, h = 64, 48
    image = view.image.permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    # windows by hand: every STRIDE pixels, and one flush with the far border
    xs = list(range(0, w - WINDOW, STRIDE)) + [w - WINDOW]
    ys = list(range(0, h - WINDOW, STRIDE)) + [h - WINDOW]
    assert (xs, ys) == ([0, 16, 32], [0, 16])
    d_mean = torch.tensor(dino.mean).view(3, 1, 1)
    d_std = torch.tensor(dino.std).view(3, 1, 1)
    whole = dino.model(pixel_values=((image - d_mean) / d_std)[None], interpolate_pos_encoding=True)
    whole_grid = whole.last_hidden_state[0, 1:].reshape(h // 4, w // 4, -1)
    total = torch.zeros(h // 4, w // 4, model.config.projection_dim)  # the photo's DINO grid (4-pixel patches)
    count = torch.zeros(h // 4, w // 4, 1)
    last = vision.encoder.layers[-1]
    n_heads = last.self_attn.num_heads
    hd = last.self_attn.head_dim
    for y in ys:
        for x in xs:
            win = image[:, y : y + WINDOW, x : x + WINDOW]
            c_mean = torch.tensor(clip.mean).view(3, 1, 1)
            c_std = torch.tensor(clip.std).view(3, 1, 1)
            out = vision(
                pixel_values=((win - c_mean) / c_std)[None], output_hidden_states=True, interpolate_pos_encoding=True
            )
            before_last = out.hidden_states[-2]  # the input of the last block
            if mutation == "residual":
                x_ln = before_last[0, 1:]
            else:
                x_ln = last.layer_norm1(before_last)[0, 1:]  # CLS dropped
            side = WINDOW // 4
            if proxy == "image":
                feats_in = whole_grid[y // 4 : y // 4 + side, x // 4 : x // 4 + side].reshape(side * side, -1)
            else:
                tokens = dino.model(pixel_values=((win - d_mean) / d_std)[None], interpolate_pos_encoding=True)
                feats_in = tokens.last_hidden_state[0, 1:]  # [N, C], CLS dropped
            n = feats_in.shape[0]
            f = feats_in / feats_in.norm(dim=1, keepdim=True)
            s = f @ f.T
            mean = s.mean(dim=1, keepdim=True) if mutation == "row_mean" else s.mean()
            a = (s - beta * mean) * gamma
            if mutation != "no_threshold":
                a = torch.where(a < 0, torch.full_like(a, -float("inf")), a)
            attn = torch.softmax(a, dim=1)
            heads = []
            for k in range(n_heads):
                wv = last.self_attn.v_proj.weight[k * hd : (k + 1) * hd]
                bv = last.self_attn.v_proj.bias[k * hd : (k + 1) * hd]
                v = x_ln @ wv.T + bv  # [gh * gw, hd]
                grid = v.T.reshape(1, hd, WINDOW // 8, WINDOW // 8)
                mode = "nearest" if mutation == "nearest" else "bilinear"
                kw = {} if mode == "nearest" else {"align_corners": False}
                v_big = F.interpolate(grid, size=(side, side), mode=mode, **kw)[0].reshape(hd, n).T
                heads.append(attn @ v_big)
            joined = torch.cat(heads, dim=1)
            feats = model.visual_projection(vision.post_layernorm(last.self_attn.out_proj(joined)))
            feats = feats / feats.norm(dim=1, keepdim=True)
            for i in range(side):  # stitched by hand, patch by patch
                for j in range(side):
                    total[y // 4 + i, x // 4 + j] += feats[i * side + j]
                    count[y // 4 + i, x // 4 + j] += 1
    stitched = (total / count).permute(2, 0, 1)[None]
    small = F.interpolate(stitched, size=(out_size[1], out_size[0]), mode="bilinear", align_corners=False)
    small = small[0].permute(1, 2, 0)
    return small / small.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("proxy", ["window", "image"])
def test_dense_features_match_the_plain_reference(encoders, proxy):
    clip, dino = encoders
    view = _photo()
    dense = ProxyClip(clip, dino, SHORT, WINDOW, STRIDE, proxy=proxy)
    with torch.no_grad():
        got = dense.encode_view(view, (20, 14))
        want = reference(clip, dino, view, (20, 14), proxy=proxy)
    assert got.shape == (1, 14, 20, clip.embedding_dim)
    assert (got[0] - want).abs().max() < 1e-4
    # the proxy attention keeps some pairs and drops others in these windows (the threshold is exercised)
    proxy = dino.encode_pixels(torch.rand(3, WINDOW, WINDOW))
    attn = proxy_attention(proxy.reshape(-1, proxy.shape[-1]), 1.2, 3.0)
    assert 0 < (attn == 0).float().mean() < 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("proxy", ["window", "image"])
def test_dense_features_on_cuda_in_half_precision_match_the_cpu(models, encoders, proxy):
    cuda = torch.device("cuda")
    clip = TransformersClip(str(models[0]), cuda, half=True)
    dino = TransformersDino(str(models[1]), cuda, 48, half=True)
    view = _photo()
    with torch.no_grad():
        got = ProxyClip(clip, dino, SHORT, WINDOW, STRIDE, proxy=proxy).encode_view(view, (20, 14))
        want = ProxyClip(*encoders, SHORT, WINDOW, STRIDE, proxy=proxy).encode_view(view, (20, 14))
    assert got.is_cuda and got.shape == want.shape
    cos = (got.float().cpu() * want).sum(-1) / got.float().cpu().norm(dim=-1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("mutation", ["no_threshold", "row_mean", "residual", "nearest"])
def test_the_reference_comparison_notices_a_changed_step(encoders, mutation):
    """Each step of the method matters here: with one changed, the reference no longer matches."""
    clip, dino = encoders
    view = _photo()
    with torch.no_grad():
        got = ProxyClip(clip, dino, SHORT, WINDOW, STRIDE).encode_view(view, (20, 14))
        changed = reference(clip, dino, view, (20, 14), mutation)
    assert (got[0] - changed).abs().max() > 1e-3


def test_the_image_wide_proxy_pass_is_fdas_dino_pass_when_the_sizes_agree(models):
    clip = TransformersClip(str(models[0]), CPU, half=False)
    dino = TransformersDino(str(models[1]), CPU, 64, half=False)  # FDA's DINO sees a 64 x 48 photo at 64 x 48
    view = _photo(64, 48)
    dense = ProxyClip(clip, dino, SHORT, WINDOW, STRIDE, proxy="image")
    dense.encode_view(view, (16, 12))
    reused = dense.fda_patches(view)
    assert reused is not None and torch.equal(reused, dino.encode_patches(view))
    assert dense.fda_patches(TeacherView(1, view.image)) is None  # another view: no reuse
    other = ProxyClip(clip, TransformersDino(str(models[1]), CPU, 48, half=False), SHORT, WINDOW, STRIDE, proxy="image")
    other.encode_view(view, (16, 12))
    resampled = other.fda_patches(view)  # FDA's DINO sees another size: the pass's tokens resampled to its grid
    assert resampled is not None and resampled.shape == other.dino.encode_patches(view).shape
    assert not torch.equal(resampled, reused[:12, :16])


def test_windows_cover_the_image_flush_with_its_border():
    assert window_starts(64, 32, 16) == [0, 16, 32]
    assert window_starts(448, 336, 112) == [0, 112]
    assert window_starts(336, 336, 112) == [0]
    assert window_starts(500, 336, 112) == [0, 112, 164]
    assert dense_input_size(1000, 750, 336, 16) == (448, 336)
    assert dense_input_size(3024, 4032, 336, 16) == (336, 448)
    assert dense_input_size(70, 50, 48, 8) == (64, 48)


def test_a_row_below_the_offset_attends_to_itself():
    same = torch.ones(5, 4) + torch.linspace(0, 1e-3, 5)[:, None]  # every similarity about 1 > 1 / beta x mean
    attn = proxy_attention(same, 1.2, 3.0)
    torch.testing.assert_close(attn, torch.eye(5))
    assert torch.isfinite(attn).all()


def _cache_case(models, tmp_path):
    """A 3-view scene and real teacher settings caching into ``tmp_path/cache``: crops, and dense at the test's
    window sizes."""
    scene_dir = tmp_path / "scene"
    args = ["--width", "64", "--height", "48", "--n-views", "3", "--n-annotated", "1", "--supersample", "1"]
    assert main(["synth", str(scene_dir), *args]) == 0
    base = TeacherConfig(
        kind="clip", clip_model=str(models[0]), dino_model=str(models[1]), half=False, cache_dir=tmp_path / "cache"
    )
    dense = dataclasses.replace(base, clip_features="dense", dense_short_side=SHORT, dense_window=WINDOW,
                                dense_stride=STRIDE)  # fmt: skip
    return load_scene(scene_dir), base, dense


def test_dense_teacher_cache_holds_one_scale_and_is_told_apart_from_crops(models, tmp_path):
    scene, base, dense = _cache_case(models, tmp_path)
    lines: list[str] = []
    feats = ensure_features(scene, dense, CPU, log=lines.append, notice=None)
    assert feats.clip.shape[3] == 1 and feats.relevancy.shape[3] == 1
    assert feats.meta["settings"]["clip_features"] == "dense" and "clip_scales" not in feats.meta["settings"]
    assert feats.meta["models"]["clip"].startswith("proxyclip(")
    # one line of where the seconds went, its parts adding up to its total
    (said,) = [line for line in lines if line.startswith("teachers' seconds: ")]
    body, total = said.removeprefix("teachers' seconds: ").split("; total ")
    total, precision = total.split(" ", 1)  # and what the images ran in: "(bfloat16)", "(float32: this CPU ...)"
    assert precision in ("(bfloat16)", "(float32)") or precision.startswith("(float32: this CPU"), said
    parts = {name: float(value) for name, value in (part.rsplit(" ", 1) for part in body.split(", "))}
    assert {"loading the models", "reading the images", "dense CLIP (DINO's pass within it)",
            "writing the cache"} <= set(parts), said  # fmt: skip
    assert abs(sum(parts.values()) - float(total)) <= 0.05 * len(parts), said
    # the same cache asked for as crops is stale, and says why
    ensure_features(scene, base, CPU, log=lines.append, notice=None)
    assert any("stale" in line and "clip_features" in line for line in lines)
    assert cache.read_meta(tmp_path / "cache")["settings"]["clip_features"] == "crops"


def test_a_crops_cache_from_before_the_setting_is_still_current(models, tmp_path):
    stored = {"format": cache.CACHE_FORMAT, "teacher": "clip", "settings": {"clip_model": "m"}, "classes": [],
              "source_size": [4, 3], "inputs": []}  # fmt: skip
    expected = {**stored, "settings": {"clip_model": "m", "clip_features": "crops"}}
    assert cache.stale_reason(stored, expected) is None
    dense = {**stored, "settings": {"clip_model": "m", "clip_features": "dense"}}
    assert "clip_features" in cache.stale_reason(stored, dense)


def test_dense_on_open_clip_is_refused_in_one_line_before_loading(tmp_path):
    scene_dir = tmp_path / "scene"
    assert (
        main(["synth", str(scene_dir), "--width", "32", "--height", "24", "--n-views", "3", "--supersample", "1"]) == 0
    )
    cfg = TeacherConfig(kind="clip", clip_model="ViT-B-16", clip_backend="open_clip", clip_features="dense")
    with pytest.raises(TeacherError, match="--clip-features crops"):
        ensure_features(load_scene(scene_dir), dataclasses.replace(cfg, cache_dir=tmp_path / "c"), CPU)
    assert not (tmp_path / "c").exists()


def test_train_distils_from_a_dense_teacher(models, tmp_path):
    scene_dir = tmp_path / "scene"
    args = ["--width", "48", "--height", "36", "--n-views", "6", "--n-annotated", "1", "--supersample", "1"]
    assert main(["synth", str(scene_dir), *args]) == 0
    run = tmp_path / "run"
    train = ["train", str(scene_dir), "--output", str(run), "--preset", "tiny", "--device", "cpu", "--teacher", "clip"]
    dense = ["--clip-features", "dense", "--dense-short-side", "48", "--dense-window", "32", "--dense-stride", "16"]
    models_args = ["--clip-model", str(models[0]), "--dino-model", str(models[1]), "--no-half"]
    assert main([*train, *dense, *models_args]) == 0
    state = load_checkpoint(latest_checkpoint(run))
    assert state["semantic"]["teacher_space"]["n_scales"] == 1  # the field was distilled from the one dense map


def test_the_simulated_teacher_is_the_same_with_either_setting(tmp_path):
    """--clip-features does not reach the simulated teacher: its cache (and the distillation's figures) stay."""
    from ovseg3d.teachers.extract import expected_meta

    scene_dir = tmp_path / "scene"
    assert (
        main(["synth", str(scene_dir), "--width", "32", "--height", "24", "--n-views", "3", "--supersample", "1"]) == 0
    )
    scene = load_scene(scene_dir)
    crops = TeacherConfig(kind="synthetic", cache_dir=tmp_path / "c")
    dense = dataclasses.replace(crops, clip_features="dense", dense_proxy="image")
    assert expected_meta(scene, crops) == expected_meta(scene, dense)
    a = ensure_features(scene, crops, CPU, log=lambda s: None)
    lines: list[str] = []
    b = ensure_features(scene, dense, CPU, log=lines.append, notice=None)
    assert lines == [f"teacher features: reusing {tmp_path / 'c'}"]
    assert b.clip.shape == a.clip.shape and b.clip.shape[3] == 3


def test_bad_window_settings_fail_in_one_line_and_keep_the_cache(models, tmp_path):
    scene, _, good = _cache_case(models, tmp_path)
    ensure_features(scene, good, CPU, log=lambda s: None)
    before = (tmp_path / "cache" / "clip.npy").read_bytes()
    bad = dataclasses.replace(good, dense_window=36)  # not a whole number of 8-pixel patches
    with pytest.raises(TeacherError, match="--dense-window 36"):
        ensure_features(scene, bad, CPU, log=lambda s: None)
    assert (tmp_path / "cache" / "clip.npy").read_bytes() == before
    assert cache.read_meta(tmp_path / "cache")["settings"]["dense_window"] == 32
