#!/usr/bin/env python
"""ovseg3d's teachers and losses beside the published methods' own code, on the same random weights (issue 67).

Both sides get bit-identical weights: a random CLIP ViT-B/16 and a random DINO ViT-B/8 are made in the transformers
format that ovseg3d loads (tests/tiny_models.py), and their state dicts are converted to open_clip's ``CLIP`` (pip
open_clip, and ProxyCLIP's own copy of open_clip) and to DINO's ``vision_transformer``. Then each part runs on the
same images and tensors in float32, and the table gives the largest absolute difference and the lowest cosine:

* ``converter/*``: the converted models' image and text embeddings (and DINO's tokens) against transformers';
* ``dense/*``: ovseg3d's :class:`~ovseg3d.teachers.dense.ProxyClip` against ProxyCLIP's ``proxyclip_segmentor.py``
  (``forward_feature`` on one window, ``forward_slide`` over a photo);
* ``lerf/relevancy``: :func:`~ovseg3d.teachers.relevancy.query_relevancy` against LERF's ``get_relevancy``;
* ``3dovs/relevancy``: :func:`~ovseg3d.teachers.relevancy.class_relevancy` against 3D-OVS's
  ``read_clip_features_and_relevancy_maps``;
* ``3dovs/rda``, ``3dovs/fda``: :func:`~ovseg3d.losses.rda_loss` / :func:`~ovseg3d.losses.fda_loss` against
  3D-OVS's RDA (the lines of ``train_seg.py``) and ``CorrelationLoss``;
* ``crops/*``: :func:`~ovseg3d.teachers.clip.multiscale_features` against 3D-OVS's ``extract_clip_feature.py``
  (random crop growth off on both).

The fetched code is imported from the folders given, never copied: what it imports and this machine lacks
(mmseg, mmengine, torchvision, nerfstudio, kornia, ...) is replaced by stand-in modules that only supply the names it
imports (and torchvision's ``Normalize`` / PIL ``Resize``, ``CenterCrop``, ``ToTensor``, as torchvision documents
them). See docs/crosscheck.md.

    python scripts/cross_check.py --proxyclip /work/ext/ProxyCLIP --lerf /work/ext/lerf --ovs /work/ext/3D-OVS \\
        --dino-src /work/ext/dino
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import sys
import tempfile
import textwrap
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the table."""

    part: str
    max_abs: float | None = None
    worst_cos: float | None = None
    status: str = "ok"  # ok / over (above the tolerance) / info / skipped / error
    note: str = ""


def compare(part: str, ours: Tensor, theirs: Tensor, note: str = "", vectors: bool = True, info: bool = False) -> Row:
    """Largest absolute difference, and the lowest cosine along the last axis (``vectors``) or of the whole
    tensors flattened (scalars, maps)."""
    a, b = ours.detach().double().cpu(), theirs.detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"{part}: shapes differ, ours {tuple(a.shape)} vs theirs {tuple(b.shape)}")
    diff = float((a - b).abs().max())
    if a.numel() < 2:
        cos = None
    elif vectors:
        cos = float(F.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1).min())
    else:
        cos = float(F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1), dim=-1)[0])
    status = "info" if info else ("ok" if diff <= TOLERANCE else "over")
    return Row(part, diff, cos, status, note)


def print_table(rows: list[Row]) -> None:
    width = max(len(r.part) for r in rows)
    print(f"{'part':<{width}}  {'max abs diff':>12}  {'worst cos':>10}  status")
    for r in rows:
        diff = "-" if r.max_abs is None else f"{r.max_abs:.2e}"
        cos = "-" if r.worst_cos is None else f"{r.worst_cos:.7f}"
        tail = f"{r.status}{': ' + r.note if r.note else ''}"
        print(f"{r.part:<{width}}  {diff:>12}  {cos:>10}  {tail}")


# ------------------------------------------------------------------------------------ stand-in modules


class _AnyAttribute(type):
    """A placeholder class whose every class attribute is its own name (``InterpolationMode.BICUBIC``)."""

    def __getattr__(cls, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return name


class _StubModule(types.ModuleType):
    """A module that supplies any name imported from it as a placeholder class."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _AnyAttribute(name, (), {"__init__": lambda self, *args, **kwargs: None})
        setattr(self, name, value)
        return value


def _available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def stub(name: str, **attrs: Any) -> types.ModuleType:
    """Put a stand-in module ``name`` (and its parents) in ``sys.modules``, unless a real one is importable.

    Returns the module in ``sys.modules`` (the stand-in, or the real one)."""
    top = name.split(".")[0]
    if top in sys.modules and not isinstance(sys.modules[top], _StubModule):
        return importlib.import_module(name)
    if top not in sys.modules and _available(top):
        return importlib.import_module(name)
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        key = ".".join(parts[:i])
        if key not in sys.modules:
            module = _StubModule(key)
            module.__path__ = []  # a package: submodules may be imported from it
            sys.modules[key] = module
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], module)
    module = sys.modules[name]
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


class Normalize:
    """torchvision.transforms.Normalize on a tensor: ``(t - mean) / std`` per channel (a copy)."""

    def __init__(self, mean: Any, std: Any, inplace: bool = False):
        self.mean, self.std = mean, std

    def __call__(self, tensor: Tensor) -> Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub(mean).div(std)


class PilResize:
    """torchvision.transforms.Resize(int) on a PIL image: the short side to ``size``, the long one
    ``int(size * long / short)``, PIL's bicubic (torchvision's _compute_resized_output_size)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return image.resize((new_w, new_h), Image.BICUBIC)


class PilCenterCrop:
    """torchvision.transforms.CenterCrop(int) on a PIL image (its rounding of the offsets)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Any) -> Any:
        w, h = image.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))


def pil_to_tensor(image: Any) -> Tensor:
    """torchvision.transforms.ToTensor on an RGB PIL image: ``[3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def stub_torchvision() -> None:
    """torchvision does not load on this CPU torch: a stand-in with the names open_clip, ProxyCLIP, LERF and
    3D-OVS import, and a working ``transforms.Normalize``.

    transformers asks whether torchvision is there (``find_spec``, which a stand-in would fail): it is imported,
    and its cached answer (no torchvision) taken, first."""
    if "torchvision" not in sys.modules:
        import transformers  # noqa: F401
        from transformers.models.clip import modeling_clip  # noqa: F401
        from transformers.models.vit import modeling_vit  # noqa: F401
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()
    stub("torchvision.transforms.functional")
    stub("torchvision.transforms", Normalize=Normalize)
    stub("torchvision.ops.misc")
    stub("torchvision")


def load_file_module(name: str, path: Path, package_dirs: list[Path] | None = None) -> types.ModuleType:
    """Import ``path`` as module ``name`` (a package when ``package_dirs`` is given)."""
    dirs = None if package_dirs is None else [str(d) for d in package_dirs]
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=dirs)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def swapped_modules(entries: dict[str, types.ModuleType | None], paths: Sequence[Path] = ()) -> Iterator[None]:
    """``sys.modules`` entries (None: removed) and ``sys.path`` folders, for the duration of an import."""
    saved = {k: sys.modules.get(k) for k in entries}
    for key, value in entries.items():
        if value is None:
            sys.modules.pop(key, None)
        else:
            sys.modules[key] = value
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield
    finally:
        del sys.path[: len(paths)]
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


@contextlib.contextmanager
def no_half() -> Iterator[None]:
    """``Tensor.half()`` and ``Module.half()`` as no-ops: the published code casts to float16 in places; the
    comparison is in float32."""
    tensor_half, module_half = torch.Tensor.half, nn.Module.half
    torch.Tensor.half = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.half = lambda self: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.half = tensor_half  # type: ignore[method-assign]
        nn.Module.half = module_half  # type: ignore[method-assign]


def import_open_clip() -> types.ModuleType:
    """pip's open_clip, with the torchvision stand-in when torchvision is missing."""
    if not _available("torchvision"):
        stub_torchvision()
    import open_clip

    return open_clip


# ------------------------------------------------------------------------------------------- converters


def _linear(sd: dict[str, Tensor], prefix: str) -> tuple[Tensor, Tensor]:
    return sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]


def _clip_blocks(sd: dict[str, Tensor], src: str, dst: str, layers: int) -> dict[str, Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}", f"{dst}.resblocks.{i}"
        q, k, v = (_linear(sd, f"{s}.self_attn.{n}_proj") for n in "qkv")
        out[f"{d}.attn.in_proj_weight"] = torch.cat([q[0], k[0], v[0]])
        out[f"{d}.attn.in_proj_bias"] = torch.cat([q[1], k[1], v[1]])
        pairs = {
            "attn.out_proj": "self_attn.out_proj",
            "ln_1": "layer_norm1",
            "ln_2": "layer_norm2",
            "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2",
        }
        for ours, theirs in pairs.items():
            out[f"{d}.{ours}.weight"], out[f"{d}.{ours}.bias"] = _linear(sd, f"{s}.{theirs}")
    return out


def open_clip_config(config: Any) -> dict[str, Any]:
    """open_clip ``CLIP(**kwargs)`` of a transformers ``CLIPConfig``."""
    vision, text = config.vision_config, config.text_config
    if vision.hidden_act != text.hidden_act or vision.hidden_act not in ("quick_gelu", "gelu"):
        raise ValueError(f"no open_clip activation for {vision.hidden_act} / {text.hidden_act}")
    return dict(
        embed_dim=config.projection_dim,
        vision_cfg=dict(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            width=vision.hidden_size,
            layers=vision.num_hidden_layers,
            head_width=vision.hidden_size // vision.num_attention_heads,
            mlp_ratio=vision.intermediate_size / vision.hidden_size,
        ),
        text_cfg=dict(
            context_length=text.max_position_embeddings,
            vocab_size=text.vocab_size,
            width=text.hidden_size,
            heads=text.num_attention_heads,
            layers=text.num_hidden_layers,
            mlp_ratio=text.intermediate_size / text.hidden_size,
        ),
        quick_gelu=vision.hidden_act == "quick_gelu",
    )


def clip_to_open_clip(model: Any) -> dict[str, Tensor]:
    """The state dict of transformers' ``CLIPModel`` as open_clip's ``CLIP`` names it (same tensors)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = model.config
    vision, text = "vision_model", "text_model"
    out = {
        "visual.class_embedding": sd[f"{vision}.embeddings.class_embedding"],
        "visual.positional_embedding": sd[f"{vision}.embeddings.position_embedding.weight"],
        "visual.conv1.weight": sd[f"{vision}.embeddings.patch_embedding.weight"],
        "visual.ln_pre.weight": sd[f"{vision}.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd[f"{vision}.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd[f"{vision}.post_layernorm.weight"],
        "visual.ln_post.bias": sd[f"{vision}.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": sd[f"{text}.embeddings.token_embedding.weight"],
        "positional_embedding": sd[f"{text}.embeddings.position_embedding.weight"],
        "ln_final.weight": sd[f"{text}.final_layer_norm.weight"],
        "ln_final.bias": sd[f"{text}.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T.contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    out |= _clip_blocks(sd, vision, "visual.transformer", cfg.vision_config.num_hidden_layers)
    out |= _clip_blocks(sd, text, "transformer", cfg.text_config.num_hidden_layers)
    return out


def build_open_clip(clip_module: types.ModuleType, model: Any) -> nn.Module:
    """An open_clip ``CLIP`` (of ``clip_module``: pip's open_clip or ProxyCLIP's copy) holding ``model``'s
    weights (a transformers ``CLIPModel``)."""
    oc = clip_module.model.CLIP(**open_clip_config(model.config)).eval()
    missing, unexpected = oc.load_state_dict(clip_to_open_clip(model), strict=False)
    missing = [k for k in missing if k != "attn_mask"]  # a buffer open_clip builds itself
    if missing or unexpected:
        raise ValueError(f"open_clip state dict: missing {missing}, unexpected {unexpected}")
    return oc


def vit_to_dino(model: Any) -> dict[str, Tensor]:
    """The state dict of transformers' ``ViTModel`` (DINO) as DINO's ``vision_transformer`` names it."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = model.config.num_hidden_layers
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    new_names = "layers.0.attention.q_proj.weight" in sd  # transformers 5 (4.x: encoder.layer.0.attention...)
    for i in range(layers):
        if new_names:
            s = f"layers.{i}"
            qkv = [f"{s}.attention.{n}_proj" for n in "qkv"]
            names = {"attn.proj": f"{s}.attention.o_proj", "mlp.fc1": f"{s}.mlp.fc1", "mlp.fc2": f"{s}.mlp.fc2"}
        else:
            s = f"encoder.layer.{i}"
            qkv = [f"{s}.attention.attention.{n}" for n in ("query", "key", "value")]
            names = {
                "attn.proj": f"{s}.attention.output.dense",
                "mlp.fc1": f"{s}.intermediate.dense",
                "mlp.fc2": f"{s}.output.dense",
            }
        names |= {"norm1": f"{s}.layernorm_before", "norm2": f"{s}.layernorm_after"}
        d = f"blocks.{i}"
        out[f"{d}.attn.qkv.weight"] = torch.cat([sd[f"{n}.weight"] for n in qkv])
        out[f"{d}.attn.qkv.bias"] = torch.cat([sd[f"{n}.bias"] for n in qkv])
        for ours, theirs in names.items():
            out[f"{d}.{ours}.weight"], out[f"{d}.{ours}.bias"] = _linear(sd, theirs)
    return out


def load_dino_source(dino_src: Path) -> types.ModuleType:
    """DINO's ``vision_transformer`` module from the fetched repository (its ``utils`` for trunc_normal_)."""
    utils = load_file_module("dino_utils", dino_src / "utils.py")
    with swapped_modules({"utils": utils}):
        return load_file_module("dino_vision_transformer", dino_src / "vision_transformer.py")


def build_dino(vit_module: types.ModuleType, model: Any) -> nn.Module:
    """DINO's ``VisionTransformer`` (patch, width, depth, heads of ``model``; DINO's LayerNorm eps 1e-6) holding
    the weights of ``model`` (a transformers ``ViTModel``)."""
    from functools import partial

    cfg = model.config
    dino = vit_module.VisionTransformer(
        img_size=[cfg.image_size],
        patch_size=cfg.patch_size,
        embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
    ).eval()
    dino.load_state_dict(vit_to_dino(model), strict=True)
    return dino


# ------------------------------------------------------------------------------------- shared models


def save_bpe_tokenizer(open_clip: types.ModuleType, folder: Path) -> None:
    """A transformers CLIP tokenizer with open_clip's own BPE vocabulary and merges (the OpenAI CLIP one):
    ``vocab.json`` and ``merges.txt`` written from open_clip's SimpleTokenizer, so both sides tokenise real
    words the same way."""
    from transformers import CLIPTokenizer

    simple = open_clip.tokenizer.SimpleTokenizer()
    (folder / "vocab.json").write_text(json.dumps(simple.encoder))
    merges = sorted(simple.bpe_ranks.items(), key=lambda item: item[1])
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n")
    sot, eot = simple.decoder[simple.sot_token_id], simple.decoder[simple.eot_token_id]  # their names vary
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        bos_token=sot,
        eos_token=eot,
        unk_token=eot,
        pad_token=eot,
    )
    if tokenizer(["a"])["input_ids"][0][0] != simple.sot_token_id or len(tokenizer) != len(simple.encoder):
        raise ValueError("the transformers tokenizer does not share open_clip's vocabulary")
    tokenizer.save_pretrained(folder)


def make_clip_folder(folder: Path, seed: int, image_size: int, open_clip: types.ModuleType) -> Path:
    """A random CLIP ViT-B/16 (vision) with CLIP's base text tower (12 layers of 512), projection 512, saved
    as transformers saves it, with the OpenAI BPE tokenizer and OpenAI's pixel mean and std."""
    from tiny_models import TEXT_B, VIT_B16, save_tiny_clip

    text = TEXT_B | dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    save_tiny_clip(folder, image_size=image_size, projection_dim=512, seed=seed, vision=VIT_B16, text=text)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    save_bpe_tokenizer(open_clip, folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD)})
    )
    return folder


def make_dino_folder(folder: Path, seed: int) -> Path:
    """A random DINO ViT-B/8 (224 px, DINO's LayerNorm eps 1e-6), saved as transformers saves it."""
    from tiny_models import VIT_B8, save_tiny_dino

    return save_tiny_dino(folder, seed=seed, sizes=VIT_B8 | dict(image_size=224, layer_norm_eps=1e-6))


@dataclass
class Shared:
    """The shared models, both sides."""

    clip: Any  # ovseg3d TransformersClip
    dino: Any  # ovseg3d TransformersDino
    open_clip: types.ModuleType
    oc_clip: nn.Module  # pip open_clip CLIP, same weights
    dino_vit: nn.Module | None  # DINO's VisionTransformer, same weights (None without --dino-src)
    dino_vit_module: types.ModuleType | None
    folder: Path


def synthetic_photo(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic ``[H, W, 3]`` uint8 photo-like image: smooth shading, a few discs and bars, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 23.0)], -1) * 0.6 + 0.2
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.08, 0.3) * min(width, height)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    for _ in range(3):
        x0 = int(rng.uniform(0, width * 0.8))
        img[:, x0 : x0 + max(1, width // 20)] = rng.uniform(0, 1, 3)
    img = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------- converter


def part_converter(shared: Shared, seed: int) -> list[Row]:
    """Image and text embeddings of the transformers CLIP and its open_clip conversion; DINO's tokens."""
    rows = []
    clip, oc = shared.clip, shared.oc_clip
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, clip.image_size, clip.image_size, generator=gen)
    with torch.no_grad():
        ours = F.normalize(clip.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        theirs = F.normalize(oc.encode_image(pixels), dim=-1)
    rows.append(compare("converter/clip image", ours, theirs, "transformers vs open_clip, 224 px"))
    texts = ["a red mug", "a photo of a book on a table", *_lerf_negatives()]
    ours_t = clip.encode_text(texts)
    tokenizer = shared.open_clip.get_tokenizer("ViT-B-16")
    ids_ours = clip.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    ids_theirs = tokenizer(texts)
    same_ids = bool(
        (
            ids_ours.masked_fill(ids_ours == 49407, 0)[:, 1:] == ids_theirs.masked_fill(ids_theirs == 49407, 0)[:, 1:]
        ).all()
    )
    with torch.no_grad():
        theirs_t = F.normalize(oc.encode_text(ids_theirs), dim=-1)
    rows.append(compare("converter/clip text", ours_t, theirs_t, f"each side's tokenizer; token ids equal: {same_ids}"))
    if shared.dino_vit is not None:
        for size in (224, 336):
            px = torch.rand(3, size, size, generator=gen)
            ours_d = shared.dino.encode_pixels(px).reshape(-1, shared.dino.feature_dim)
            mean = torch.tensor(shared.dino.mean).view(1, 3, 1, 1)
            std = torch.tensor(shared.dino.std).view(1, 3, 1, 1)
            with torch.no_grad():
                theirs_d = shared.dino_vit.get_intermediate_layers((px[None] - mean) / std)[0][0, 1:]
            note = "position embeddings as trained" if size == 224 else "position embeddings interpolated 28 -> 42"
            rows.append(compare(f"converter/dino tokens {size}", ours_d, theirs_d, note))
    return rows


def _lerf_negatives() -> list[str]:
    from ovseg3d.teachers.relevancy import CANONICAL_NEGATIVES

    return list(CANONICAL_NEGATIVES)


# -------------------------------------------------------------------------------------------------- dense


class _BaseSegmentor(nn.Module):
    """mmseg's BaseSegmentor, as far as ProxyCLIP's __init__ uses it."""

    def __init__(self, data_preprocessor: Any = None, init_cfg: Any = None):
        super().__init__()


class _Registry:
    def register_module(self, *args: Any, **kwargs: Any) -> Callable[[type], type]:
        return lambda cls: cls


def load_proxyclip(proxyclip_dir: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """ProxyCLIP's ``proxyclip_segmentor`` module and its own copy of open_clip, from the fetched folder.

    mmseg, mmengine, mmcv (ProxyCLIP pins mmcv 2.0.1 / mmsegmentation 1.1.1, built against torch 1.13; not
    installed here), SAM, MAE, einops and openpyxl are stand-ins: the DINO path does not use them."""
    stub_torchvision()
    stub("mmseg.models.segmentors", BaseSegmentor=_BaseSegmentor)
    stub("mmseg.models.data_preprocessor", SegDataPreProcessor=lambda **kwargs: None)
    stub("mmseg.registry", MODELS=_Registry())
    stub("mmengine.structures")
    stub("einops")
    stub("openpyxl")
    vendored = load_file_module(
        "proxyclip_open_clip", proxyclip_dir / "open_clip" / "__init__.py", [proxyclip_dir / "open_clip"]
    )
    fakes: dict[str, types.ModuleType | None] = {"open_clip": vendored, "open_clip.tokenizer": vendored.tokenizer}
    for name in ("segment_anything", "mae", "mae.models_vit", "mae.pos_embed"):
        fakes[name] = _StubModule(name)
    fakes["mae"].models_vit = fakes["mae.models_vit"]  # type: ignore[union-attr]
    with swapped_modules(fakes, [proxyclip_dir]):
        segmentor = load_file_module("proxyclip_segmentor", proxyclip_dir / "proxyclip_segmentor.py")
    return segmentor, vendored


def proxyclip_model(
    module: types.ModuleType, vendored: types.ModuleType, shared: Shared, workdir: Path, window: int, stride: int
) -> Any:
    """ProxyCLIP's ``ProxyCLIPSegmentation`` built by its own __init__ (DINO as ``vfm``), with
    ``create_model`` and ``torch.hub.load`` returning the shared weights, in float32.

    Its class embeddings are then replaced by the identity: its logits (``features @ query_features.T``) are
    its unit features themselves, one channel a dimension."""
    names = workdir / "names.txt"
    names.write_text("mug\nbook\ntable")
    oc = build_open_clip(vendored, shared.clip.model)
    hub_load, create = torch.hub.load, module.create_model
    torch.hub.load = lambda *args, **kwargs: shared.dino_vit  # type: ignore[assignment]
    module.create_model = lambda *args, **kwargs: oc
    try:
        with no_half():
            seg = module.ProxyCLIPSegmentation(
                clip_type="openai",
                model_type="ViT-B/16",
                vfm_model="dino",
                name_path=str(names),
                device=torch.device("cpu"),
                slide_stride=stride,
                slide_crop=window,
            )
    finally:
        torch.hub.load, module.create_model = hub_load, create
    seg.query_features = torch.eye(shared.clip.embedding_dim)
    seg.num_queries = shared.clip.embedding_dim  # forward_slide's channels
    return seg


def part_dense(proxyclip_dir: Path, shared: Shared, seed: int, workdir: Path) -> list[Row]:
    from ovseg3d.teachers.base import TeacherView
    from ovseg3d.teachers.dense import ProxyClip

    module, vendored = load_proxyclip(proxyclip_dir)
    rows = []
    photo = synthetic_photo(448, 336, seed)
    view = TeacherView(0, torch.from_numpy(photo))
    image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255.0  # [3, H, W] in [0, 1]
    mean, std = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)
    clip_input = ((image - mean) / std)[None]  # ProxyCLIP's input: CLIP-normalised (its data preprocessor)
    for window in (224, 336):
        seg = proxyclip_model(module, vendored, shared, workdir, window, 112)
        ours_model = ProxyClip(shared.clip, shared.dino, short_side=336, window=window, stride=112)
        grid = window // int(shared.dino.patch)
        cut = image[:, :window, 56 : 56 + window]
        with torch.no_grad(), no_half():
            theirs = seg.forward_feature(clip_input[:, :, :window, 56 : 56 + window], logit_size=(grid, grid))
        theirs = theirs[0].permute(1, 2, 0)
        with torch.no_grad():
            ours = ours_model.window_features(cut)
        interp = "CLIP 14 -> 21, DINO 28 -> 42 position embeddings" if window == 336 else "no interpolation"
        rows.append(compare(f"dense/window {window}", ours, theirs, f"forward_feature, {interp}"))
        if window == 336:
            with torch.no_grad(), no_half():
                theirs_photo = seg.forward_slide(clip_input, [{"ori_shape": (336, 448)}], 112, 336)
            theirs_photo = F.normalize(theirs_photo[0].permute(1, 2, 0), dim=-1)
            with torch.no_grad():
                ours_photo = ours_model.encode_view(view, (448, 336))[0]
            rows.append(
                compare("dense/photo", ours_photo, theirs_photo, "forward_slide, 448x336, 2 windows", info=True)
            )

            def ours_windows(crop: Tensor, logit_size: Any = None, model: ProxyClip = ours_model) -> Tensor:
                """ProxyCLIP's forward_feature with ours' window features (upsampled to the window's pixels)."""
                feats = model.window_features((crop[0] * std + mean).clamp(0, 1)).permute(2, 0, 1)[None]
                return F.interpolate(feats, size=crop.shape[-2:], mode="bilinear")

            seg.forward_feature = ours_windows
            with torch.no_grad(), no_half():
                mixed = seg.forward_slide(clip_input, [{"ori_shape": (336, 448)}], 112, 336)
            mixed = F.normalize(mixed[0].permute(1, 2, 0), dim=-1)
            note = "ours' windows averaged by ProxyCLIP's forward_slide (diagnosis)"
            rows.append(compare("dense/photo, their averaging", mixed, theirs_photo, note, info=True))
    return rows


# ------------------------------------------------------------------------------------------------- LERF


def load_lerf(lerf_dir: Path) -> types.ModuleType:
    """LERF's ``openclip_encoder`` module from the fetched folder (nerfstudio is a stand-in)."""
    import_open_clip()
    stub("nerfstudio.viewer.viewer_elements")
    stub("nerfstudio.configs.base_config")
    package = types.ModuleType("lerf")
    package.__path__ = [str(lerf_dir / "lerf")]
    encoders = types.ModuleType("lerf.encoders")
    encoders.__path__ = [str(lerf_dir / "lerf" / "encoders")]
    with swapped_modules({"lerf": package, "lerf.encoders": encoders}):
        load_file_module("lerf.encoders.image_encoder", lerf_dir / "lerf" / "encoders" / "image_encoder.py")
        return load_file_module(
            "lerf.encoders.openclip_encoder", lerf_dir / "lerf" / "encoders" / "openclip_encoder.py"
        )


def random_features(n: int, directions: Tensor, seed: int) -> Tensor:
    """``n`` unit vectors: random ones pulled toward random mixes of ``directions`` (so relevancies spread)."""
    gen = torch.Generator().manual_seed(seed)
    noise = F.normalize(torch.randn(n, directions.shape[1], generator=gen), dim=-1)
    mix = torch.randn(n, directions.shape[0], generator=gen) * 2.0
    return F.normalize(noise * torch.rand(n, 1, generator=gen) + mix @ directions, dim=-1)


def part_lerf(lerf_dir: Path, shared: Shared, seed: int) -> list[Row]:
    from ovseg3d.teachers.relevancy import CANONICAL_NEGATIVES, query_relevancy

    module = load_lerf(lerf_dir)
    negatives = tuple(module.OpenCLIPNetworkConfig().negatives)
    net = module.OpenCLIPNetwork.__new__(module.OpenCLIPNetwork)
    nn.Module.__init__(net)
    positives = ["a red mug", "a book"]
    tokenizer = shared.open_clip.get_tokenizer("ViT-B-16")
    with torch.no_grad():  # what LERF's __init__ / set_positives do, on the CPU
        pos = shared.oc_clip.encode_text(torch.cat([tokenizer(p) for p in positives]))
        neg = shared.oc_clip.encode_text(torch.cat([tokenizer(p) for p in negatives]))
    net.positives, net.negatives = positives, negatives
    net.pos_embeds = pos / pos.norm(dim=-1, keepdim=True)
    net.neg_embeds = neg / neg.norm(dim=-1, keepdim=True)
    ours_q, ours_neg = shared.clip.encode_text(positives), shared.clip.encode_text(list(CANONICAL_NEGATIVES))
    embed = random_features(4096, torch.cat([ours_q, ours_neg]), seed)
    rows = []
    for i, phrase in enumerate(positives):
        theirs = net.get_relevancy(embed, i)[:, 0]
        ours = query_relevancy(embed, ours_q[i], ours_neg)
        note = f"'{phrase}', negatives {'as LERF' if negatives == CANONICAL_NEGATIVES else f'DIFFER: {negatives}'}"
        rows.append(compare(f"lerf/relevancy {i}", ours, theirs, note, vectors=False))
    return rows


# ----------------------------------------------------------------------------------------------- 3D-OVS


def load_ovs_llff(ovs_dir: Path) -> types.ModuleType:
    """3D-OVS's ``dataLoader/llff.py`` (kornia, torchvision: stand-ins)."""
    stub_torchvision()
    stub("kornia")
    package = types.ModuleType("ovs_dataLoader")
    package.__path__ = [str(ovs_dir / "dataLoader")]
    sys.modules["ovs_dataLoader"] = package
    return load_file_module("ovs_dataLoader.llff", ovs_dir / "dataLoader" / "llff.py")


@contextlib.contextmanager
def cpu_torch_load() -> Iterator[None]:
    """``torch.load(..., map_location='cuda')`` onto the CPU (3D-OVS reads its features onto the GPU)."""
    load = torch.load

    def on_cpu(*args: Any, **kwargs: Any) -> Any:
        kwargs["map_location"] = "cpu"
        return load(*args, **kwargs)

    torch.load = on_cpu  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = load  # type: ignore[assignment]


def part_ovs_relevancy(ovs_dir: Path, shared: Shared | None, seed: int, workdir: Path, features: Tensor | None) -> Row:
    """``features``: ``[S, D, H, W]`` (3D-OVS's saved layout); random smooth features when None."""
    from ovseg3d.teachers.relevancy import class_relevancy

    module = load_ovs_llff(ovs_dir)
    gen = torch.Generator().manual_seed(seed)
    if features is None:
        features = F.interpolate(torch.randn(3, 512, 8, 10, generator=gen), size=(41, 48), mode="bilinear")
    if shared is not None:
        texts = shared.clip.encode_text(["a mug", "a book", "a table", "a plant"])
    else:
        texts = F.normalize(torch.randn(4, features.shape[1], generator=gen), dim=-1)
    folder = workdir / "ovs_features"
    folder.mkdir(exist_ok=True)
    torch.save(features, folder / "000.pth")
    dataset = module.LLFFDataset.__new__(module.LLFFDataset)
    dataset.img_list = [0]
    dataset.img_wh = (features.shape[-1], features.shape[-2])
    with cpu_torch_load():
        dataset.read_clip_features_and_relevancy_maps(str(folder), texts)
    s, _, h, w = features.shape
    theirs = dataset.all_relevancies.reshape(h, w, s, -1).permute(2, 0, 1, 3)  # [S, H, W, C]
    ours = class_relevancy(features.permute(0, 2, 3, 1), texts)
    src = "the crop pyramid's features" if shared is not None else "random features"
    return compare("3dovs/relevancy", ours, theirs, f"read_clip_features_and_relevancy_maps, {src}", vectors=False)


def rda_source(ovs_dir: Path) -> str:
    """3D-OVS's RDA: the lines of ``train_seg.py`` from ``selected_relevancies = torch.sum(...)`` to
    ``relevancy_loss = ...`` (inline in its training loop), dedented."""
    lines = (ovs_dir / "train_seg.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "selected_relevancies = torch.sum(" in line)
    end = next(i for i, line in enumerate(lines) if "relevancy_loss = 0.5*(kl_pm + kl_qm).mean()" in line)
    return textwrap.dedent("\n".join(lines[start : end + 1]))


def part_ovs_losses(ovs_dir: Path, seed: int) -> list[Row]:
    from ovseg3d.config import TrainConfig
    from ovseg3d.losses import fda_loss, rda_loss

    gen = torch.Generator().manual_seed(seed)
    rows = []
    # RDA on random rays: [R, D] field features, [R, S, C] relevancies, [R, S] scale selection
    n_rays, n_scales, n_classes, dim = 4096, 3, 6, 512
    texts = F.normalize(torch.randn(n_classes, dim, generator=gen), dim=-1)
    relevancy = torch.rand(n_rays, n_scales, n_classes, generator=gen)
    selection = torch.softmax(torch.randn(n_rays, n_scales, generator=gen) * 2, dim=-1)
    raw = torch.randn(n_rays, dim, generator=gen) + 3 * torch.randn(n_rays, n_classes, generator=gen) @ texts
    code = compile(rda_source(ovs_dir), str(ovs_dir / "train_seg.py"), "exec")
    train = TrainConfig()
    for label, feats, tau_r, tau_f, divergence, match in (
        ("unit F, tau 1", F.normalize(raw, dim=-1), 1.0, 1.0, "js", True),
        ("defaults", raw * 0.3, train.rda_temperature, train.rda_field_temperature, train.rda_divergence, False),
    ):
        ours_in = feats.clone().requires_grad_(True)
        theirs_in = feats.clone().requires_grad_(True)
        ours = rda_loss(ours_in, texts, relevancy, selection, tau_r, tau_f, divergence)
        scope = dict(
            torch=torch,
            F=F,
            relevancies_train=relevancy,
            select_map=selection,
            feature_map=theirs_in,
            text_features=texts,
        )
        exec(code, scope)
        theirs = scope["relevancy_loss"]
        (g_ours,) = torch.autograd.grad(ours, ours_in)
        (g_theirs,) = torch.autograd.grad(theirs, theirs_in)
        note = (
            "train_seg.py's RDA lines"
            if match
            else f"ovseg3d's defaults: {divergence.upper()}, cos/{tau_f} and R/{tau_r}; theirs JS of F.t and R"
        )
        rows.append(compare(f"3dovs/rda {label}", ours, theirs, note, info=not match))
        if match:  # ours differentiates cos(F, t), theirs F.t: at |F| = 1 the same but for the radial part
            radial = (g_theirs * feats).sum(-1, keepdim=True) * feats
            rows.append(compare(f"3dovs/rda {label}, grad", g_ours, g_theirs, "d loss / d F", info=True))
            rows.append(
                compare(
                    f"3dovs/rda {label}, grad tangent",
                    g_ours,
                    g_theirs - radial,
                    "theirs less its radial part (ours: cos is flat along F)",
                )
            )
    # FDA on random patches: [B, h, w, C] log class probabilities, [B, h, w, Dd] DINO features
    losses = load_file_module("ovs_losses", ovs_dir / "models" / "losses.py")
    b, h, w, dd = 4, 32, 32, 768
    base = torch.randn(b, 4, 4, dd, generator=gen)
    dino = F.interpolate(base.permute(0, 3, 1, 2), size=(h, w), mode="nearest").permute(0, 2, 3, 1)
    dino = dino + 0.5 * torch.randn(b, h, w, dd, generator=gen)  # blocks of similar DINO features, and noise
    logits = torch.rand(b, h, w, n_classes, generator=gen) * 2 - 1  # cosines with the class texts
    w_pos, w_neg, shift, temperature = 200.0, 0.22, 0.7, 0.2  # 3D-OVS's configs (e.g. configs/bed.txt)
    loss_fn = losses.CorrelationLoss(argparse.Namespace(dino_shift=shift))
    ours_in, theirs_in = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    pos, neg = loss_fn(dino, F.log_softmax(theirs_in / temperature, dim=-1))
    theirs = w_pos * pos + w_neg * neg
    probs = torch.softmax(ours_in / temperature, dim=-1).reshape(b, h * w, n_classes)
    ours = fda_loss(probs, dino.reshape(b, h * w, dd), w_pos, w_neg, shift)
    (g_ours,) = torch.autograd.grad(ours, ours_in)
    (g_theirs,) = torch.autograd.grad(theirs, theirs_in)
    rows.append(compare("3dovs/fda", ours, theirs, "CorrelationLoss, weights 200 / 0.22, shift 0.7"))
    rows.append(compare("3dovs/fda, grad", g_ours, g_theirs, "d loss / d logits"))
    # 3D-OVS's js_correlation takes its mixture m of a and b before pairing them (a is b there): it computes
    # KL(p_i || p_j). Ours with that divergence in place of JS (in this process only):
    import ovseg3d.losses as ours_losses

    js = ours_losses.js_divergence
    ours_losses.js_divergence = ours_losses.kl_divergence  # type: ignore[assignment]
    try:
        ours_in = logits.clone().requires_grad_(True)
        probs = torch.softmax(ours_in / temperature, dim=-1).reshape(b, h * w, n_classes)
        ours = fda_loss(probs, dino.reshape(b, h * w, dd), w_pos, w_neg, shift)
    finally:
        ours_losses.js_divergence = js  # type: ignore[assignment]
    (g_ours,) = torch.autograd.grad(ours, ours_in)
    rel = float((ours - theirs).abs().detach() / theirs.abs().detach())
    note = f"ours with KL(p_i || p_j) for JS (diagnosis); loss {float(theirs.detach()):.4f}, relative {rel:.1e}"
    rows.append(compare("3dovs/fda, ours with KL", ours, theirs, note, info=True))
    rows.append(compare("3dovs/fda, ours with KL, grad", g_ours, g_theirs, "d loss / d logits", info=True))
    return rows


def part_ovs_dino(ovs_dir: Path, shared: Shared, seed: int) -> list[Row]:
    """FDA's DINO features: ovseg3d's :meth:`~ovseg3d.teachers.dino.TransformersDino.encode_pixels` against 3D-OVS's
    ``VitExtractor.get_vit_feature`` (``models/DINO_extractor.py``, ``torch.hub.load`` giving the shared DINO) on
    one 256-pixel training patch (3D-OVS's ``patch_size``), as the unit features and as FDA's ``cos(d_i, d_j)``."""
    module = load_file_module("ovs_dino_extractor", ovs_dir / "models" / "DINO_extractor.py")
    hub_load = torch.hub.load
    torch.hub.load = lambda *args, **kwargs: shared.dino_vit  # type: ignore[assignment]
    try:
        extractor = module.VitExtractor("dino_vitb8", torch.device("cpu"))
    finally:
        torch.hub.load = hub_load  # type: ignore[assignment]
    patch = torch.from_numpy(synthetic_photo(256, 256, seed + 2)).permute(2, 0, 1).float() / 255.0
    dino = shared.dino

    with torch.no_grad():
        theirs = F.normalize(extractor.get_vit_feature(patch[None])[0, 1:], dim=-1)
        proxy, fda = dino.tokens(patch)  # DINO's interpolation 28 -> 32 patches on this 256-pixel input
        ours = F.normalize(fda, dim=-1).reshape(theirs.shape)
        after = F.normalize(proxy, dim=-1).reshape(theirs.shape)
    note = "the last block's tokens (FDA's), before DINO's final LayerNorm: theirs by a hook, ours hidden_states[-1]"
    return [
        compare("3dovs/dino features", ours, theirs, note),
        compare("3dovs/dino similarities", ours @ ours.T, theirs @ theirs.T, "FDA's cos(d_i, d_j)", vectors=False),
        compare("3dovs/dino, after the norm", after, theirs, "diagnosis: the proxy's tokens (ProxyCLIP's)", info=True),
    ]


# ------------------------------------------------------------------------------------------ crop pyramid


@dataclass
class CropRun:
    """What 3D-OVS's extract_clip_feature.py did: its boxes per scale, each crop's embedding, its features."""

    boxes: list[Tensor]  # per scale, [K, 4] (x0, y0, x1, y1)
    embeddings: list[Tensor]  # per scale, [K, D]
    features: Tensor  # [S, D, H, W] as saved (sum / count, not normalised)
    image: np.ndarray  # [H, W, 3] uint8: the image it cropped (after its down-sampling)


def run_ovs_extraction(ovs_dir: Path, oc_clip: nn.Module, n_px: int, seed: int, workdir: Path) -> CropRun:
    """Run 3D-OVS's ``extract_clip_feature.py`` as a script on one image, with:

    * ``clip.load`` returning ``oc_clip`` (the shared weights) and OpenAI CLIP's preprocessing (Resize(n_px)
      bicubic, CenterCrop(n_px), RGB, ToTensor, Normalize) of torchvision's PIL semantics;
    * ``random.randint`` returning 0 (the crops' random growth off);
    * PIL's ``Image.crop`` and the model's ``encode_image`` recorded, to have each crop's box and embedding."""
    import random

    from PIL import Image

    events: list[tuple[str, Any]] = []
    script = ovs_dir / "extract_clip_feature.py"
    normalize = Normalize(OPENAI_MEAN, OPENAI_STD)

    def preprocess(image: Any) -> Tensor:
        return normalize(pil_to_tensor(PilCenterCrop(n_px)(PilResize(n_px)(image))))

    class Model:
        def encode_image(self, batch: Tensor) -> Tensor:
            out = oc_clip.encode_image(batch)
            events.append(("embed", out.detach()))
            return out

    fake_clip = types.ModuleType("clip")
    fake_clip.load = lambda name, device=None: (Model(), preprocess)  # type: ignore[attr-defined]
    original_crop = Image.Image.crop

    def recording_crop(self: Any, box: Any = None) -> Any:
        if sys._getframe(1).f_code.co_filename == str(script):
            events.append(("box", tuple(int(v) for v in box)))
        return original_crop(self, box)

    inputs, outputs = workdir / "ovs_images", workdir / "ovs_clip"
    inputs.mkdir(exist_ok=True)
    big = Image.fromarray(synthetic_photo(48 * 8, 41 * 8, seed))
    big.save(inputs / "view.png")
    argv, randint = sys.argv, random.randint
    sys.argv = [str(script), "--images_path", str(inputs), "--save_path", str(outputs)]
    random.randint = lambda a, b: 0  # type: ignore[assignment]
    Image.Image.crop = recording_crop  # type: ignore[method-assign]
    stub("configargparse", ArgumentParser=argparse.ArgumentParser)  # its script's two options
    try:
        with swapped_modules({"clip": fake_clip}), torch.no_grad():
            exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__", "__file__": str(script)})
    finally:
        sys.argv, random.randint = argv, randint  # type: ignore[assignment]
        Image.Image.crop = original_crop  # type: ignore[method-assign]
    boxes: list[list[tuple[int, ...]]] = []
    embeddings: list[list[Tensor]] = []
    last = "embed"
    for kind, value in events:
        if kind == "box":
            if last == "embed":
                boxes.append([])
                embeddings.append([])
            boxes[-1].append(value)
        else:
            embeddings[-1].append(value)
        last = kind
    image = np.array(Image.open(inputs / "view.png").resize((48, 41)))  # its own down-sampling (by 8)
    return CropRun(
        [torch.tensor(b, dtype=torch.long) for b in boxes],
        [torch.cat(e)[: len(b)] for b, e in zip(boxes, embeddings)],
        torch.load(outputs / "view.pth", map_location="cpu"),
        image,
    )


def crop_pixel_rows(image: np.ndarray, boxes: Tensor, size: int) -> list[Row]:
    """Crops resized to ``size`` pixels, ovseg3d's way (:func:`~ovseg3d.teachers.clip.crops_to_pixels`, float)
    against 3D-OVS's (PIL bicubic on the 8-bit image; and PIL on float channels, mode "F")."""
    from PIL import Image

    from ovseg3d.teachers.clip import crops_to_pixels

    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255.0
    ours = crops_to_pixels(pixels, boxes, size, (0, 0, 0), (1, 1, 1))
    pil = Image.fromarray(image)
    eight = torch.stack(
        [pil_to_tensor(PilCenterCrop(size)(PilResize(size)(pil.crop(tuple(b))))) for b in boxes.tolist()]
    )
    channels = [Image.fromarray(image[..., c].astype(np.float32) / 255.0) for c in range(3)]
    floats = torch.stack(
        [
            torch.stack(
                [torch.from_numpy(np.array(ch.crop(tuple(b)).resize((size, size), Image.BICUBIC))) for ch in channels]
            )
            for b in boxes.tolist()
        ]
    )
    return [
        compare(
            "crops/pixels, PIL 8-bit",
            ours,
            eight,
            "resized crops in [0, 1]: PIL rounds and clips to 8 bits between its passes",
            vectors=False,
            info=True,
        ),
        compare(
            "crops/pixels, PIL float",
            ours,
            floats.clamp(0, 1),
            "the same crops through PIL's float mode: the same kernel (diagnosis)",
            vectors=False,
        ),
    ]


def part_crops(ovs_dir: Path, shared: Shared, seed: int, workdir: Path, crop_size: int) -> tuple[list[Row], Tensor]:
    """3D-OVS's crop pyramid against ovseg3d's, on a CLIP of ViT-B/16's size that takes ``crop_size`` pixels
    (three passes over 3,716 crops of 224 pixels would take over an hour on 2 cores); returns the rows and
    3D-OVS's features."""
    from ovseg3d.teachers.base import TeacherView
    from ovseg3d.teachers.clip import TransformersClip, crop_boxes, multiscale_features, splat_crops
    from ovseg3d.teachers.config import TeacherConfig

    folder = make_clip_folder(workdir / f"clip{crop_size}", seed, crop_size, shared.open_clip)
    clip = TransformersClip(str(folder), torch.device("cpu"), half=False)
    oc = build_open_clip(shared.open_clip, clip.model)
    run = run_ovs_extraction(ovs_dir, oc, crop_size, seed, workdir)
    view = TeacherView(0, torch.from_numpy(run.image.copy()))
    width, height = view.width, view.height
    rows = []
    ours_maps = []
    for boxes, theirs_emb in zip(run.boxes, run.embeddings):
        ours_emb = torch.cat([clip.encode_crops(view, boxes[i : i + 256]) for i in range(0, len(boxes), 256)])
        sq = (boxes[:, 2] - boxes[:, 0]) == (boxes[:, 3] - boxes[:, 1])
        theirs_unit = F.normalize(theirs_emb, dim=-1)
        rows.append(
            compare(
                f"crops/embeddings, square, k={len(boxes)}",
                ours_emb[sq],
                theirs_unit[sq],
                info=True,
                note=f"{int(sq.sum())} square crops of {len(boxes)}",
            )
        )
        if (~sq).any():
            rows.append(
                compare(
                    f"crops/embeddings, cut, k={len(boxes)}",
                    ours_emb[~sq],
                    theirs_unit[~sq],
                    info=True,
                    note=f"{int((~sq).sum())} crops cut by the border: theirs centre-cropped",
                )
            )
        if len(ours_maps) == 0:  # the resize alone, on the first scale's square crops (no model)
            rows += crop_pixel_rows(run.image, boxes[sq], clip.image_size)
        ours_maps.append(splat_crops(boxes, ours_emb, width, height, width, height))
    theirs_maps = F.normalize(run.features, dim=1).permute(0, 2, 3, 1)
    rows.append(
        compare(
            "crops/maps, same boxes",
            torch.stack(ours_maps),
            theirs_maps,
            info=True,
            note="3D-OVS's boxes fed to ours' encode_crops + splat_crops",
        )
    )
    cfg = dataclasses.replace(TeacherConfig(), clip_scales=(5, 7, 10), clip_stride=0.25, clip_grow=0.0)
    own = multiscale_features(clip, view, cfg, (width, height))
    ours_boxes = [crop_boxes(width, height, k, cfg.clip_stride) for k in cfg.clip_scales]
    same = sum(int((a.shape == b.shape) and bool((a == b).all())) for a, b in zip(ours_boxes, run.boxes))
    layouts = f"{[len(b) for b in ours_boxes]} vs {[len(b) for b in run.boxes]} crops, {same} of 3 scales alike"
    rows.append(
        compare(
            "crops/maps, own layouts",
            own,
            theirs_maps,
            info=True,
            note=f"multiscale_features (growth 0) vs extract_clip_feature.py (randint -> 0): {layouts}",
        )
    )
    return rows, run.features


# ---------------------------------------------------------------------------------------------------- main


def build_shared(workdir: Path, seed: int, dino_src: Path | None) -> Shared:
    from ovseg3d.teachers.clip import TransformersClip
    from ovseg3d.teachers.dino import TransformersDino

    open_clip = import_open_clip()
    clip_folder = make_clip_folder(workdir / "clip", seed, 224, open_clip)
    dino_folder = make_dino_folder(workdir / "dino", seed + 1)
    cpu = torch.device("cpu")
    clip = TransformersClip(str(clip_folder), cpu, half=False)
    dino = TransformersDino(str(dino_folder), cpu, long_side=448, half=False)
    oc = build_open_clip(open_clip, clip.model)
    vit_module = load_dino_source(dino_src) if dino_src is not None else None
    vit = build_dino(vit_module, dino.model) if vit_module is not None else None
    return Shared(clip, dino, open_clip, oc, vit, vit_module, workdir)


def found(path: Path | None, marker: str) -> tuple[Path | None, str]:
    """``(path, "")`` when ``path/marker`` exists, else ``(None, reason)``."""
    if path is None:
        return None, "not given"
    if not (path / marker).is_file():
        return None, f"{marker} not found under {path}"
    return path, ""


def run_part(rows: list[Row], names: list[str], fn: Callable[[], list[Row] | Row]) -> None:
    """Run one part; an exception becomes an ``error`` row (the other parts still run)."""
    try:
        out = fn()
        rows.extend(out if isinstance(out, list) else [out])
    except Exception as exc:  # a fetched source that changed, a stand-in missing a name ...
        traceback.print_exc(file=sys.stderr)
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        rows.extend(Row(name, status="error", note=why) for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxyclip", type=Path, help="the fetched mc-lan/ProxyCLIP")
    parser.add_argument("--lerf", type=Path, help="the fetched kerrj/lerf")
    parser.add_argument("--ovs", type=Path, help="the fetched Kunhao-Liu/3D-OVS")
    parser.add_argument("--dino-src", type=Path, help="the fetched facebookresearch/dino (vision_transformer.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop-size", type=int, default=32, help="the crop pyramid's CLIP input size (ViT-B/16: 224)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-crops", action="store_true", help="leave out the crop pyramid (3D-OVS's extraction: most of the time)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "cross_check.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    proxyclip, why_proxy = found(args.proxyclip, "proxyclip_segmentor.py")
    lerf, why_lerf = found(args.lerf, "lerf/encoders/openclip_encoder.py")
    ovs, why_ovs = found(args.ovs, "extract_clip_feature.py")
    dino_src, why_dino = found(args.dino_src, "vision_transformer.py")
    if proxyclip is not None and dino_src is None:
        proxyclip, why_proxy = None, f"needs DINO's vision_transformer.py (--dino-src: {why_dino})"
    models_needed = any(p is not None for p in (proxyclip, lerf, ovs))
    rows: list[Row] = []
    shared: Shared | None = None
    why_models = ""
    with tempfile.TemporaryDirectory(prefix="cross_check_") as tmp:
        workdir = Path(tmp)
        if models_needed:
            try:
                shared = build_shared(workdir, args.seed, dino_src)
            except Exception as exc:  # open_clip / transformers missing ...
                traceback.print_exc(file=sys.stderr)
                why_models = f"shared models not built ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        if shared is not None:
            converter_names = ["converter/clip image", "converter/clip text"]
            run_part(rows, converter_names, lambda: part_converter(shared, args.seed))
        else:
            rows.append(
                Row("converter", status="skipped", note=why_models or "no source given: nothing to convert for")
            )
        if proxyclip is None or shared is None:
            rows.append(Row("dense", status="skipped", note=why_proxy or why_models))
        else:
            run_part(rows, ["dense"], lambda: part_dense(proxyclip, shared, args.seed, workdir))
        if lerf is None or shared is None:
            rows.append(Row("lerf/relevancy", status="skipped", note=why_lerf or why_models))
        else:
            run_part(rows, ["lerf/relevancy"], lambda: part_lerf(lerf, shared, args.seed))
        if ovs is None:
            for name in ("crops", "3dovs/relevancy", "3dovs/rda", "3dovs/fda", "3dovs/dino"):
                rows.append(Row(name, status="skipped", note=why_ovs))
        else:
            features: list[Tensor | None] = [None]
            if shared is None or args.skip_crops:
                rows.append(Row("crops", status="skipped", note=why_models or "--skip-crops"))
            else:

                def crops() -> list[Row]:
                    out, features[0] = part_crops(ovs, shared, args.seed, workdir, args.crop_size)
                    return out

                run_part(rows, ["crops"], crops)
            run_part(
                rows,
                ["3dovs/relevancy"],
                lambda: part_ovs_relevancy(ovs, shared, args.seed, workdir, features[0]),
            )
            run_part(rows, ["3dovs/rda", "3dovs/fda"], lambda: part_ovs_losses(ovs, args.seed))
            if shared is None or shared.dino_vit is None:
                rows.append(Row("3dovs/dino", status="skipped", note=why_models or f"--dino-src: {why_dino}"))
            else:
                run_part(rows, ["3dovs/dino"], lambda: part_ovs_dino(ovs, shared, args.seed))

    print_table(rows)
    seconds = time.perf_counter() - start
    print(f"({seconds:.0f} s, {torch.get_num_threads()} threads, float32, random weights seed {args.seed})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "tolerance": TOLERANCE,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "sources": {k: str(v) if v else None for k, v in (("proxyclip", proxyclip), ("lerf", lerf), ("ovs", ovs))},
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 1 if any(r.status == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
