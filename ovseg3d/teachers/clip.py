"""Multi-scale CLIP patch features as 3D-OVS computes them (REFERENCE.md §1), and the CLIP backends.

For each scale ``k`` in ``clip_scales`` the image is covered by square crops of side ``min(W, H) // k``
with a stride of a quarter crop; every crop grows a little at random; each crop is embedded by CLIP; the
feature of a pixel at that scale is the mean embedding of the crops covering it, L2-normalised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.syncs import to_device
from ovseg3d.teachers.base import CropEncoder, TeacherView, autocast, half_dtype
from ovseg3d.teachers.config import TeacherConfig, TeacherError
from ovseg3d.teachers.hub import hub_files, hub_unavailable, load_pretrained, read_preprocessor, require_model
from ovseg3d.teachers.positions import interpolate_as_dino

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------- crops


def _starts(length: int, patch: int, stride: int) -> Tensor:
    """Crop starts from 0 to ``length - patch`` (both ends included) at about ``stride`` apart."""
    if length <= patch:
        return torch.zeros(1, dtype=torch.long)
    n = math.ceil((length - patch) / stride) + 1
    return torch.linspace(0, length - patch, n).round().long()


def crop_boxes(
    width: int, height: int, divisor: int, stride: float = 0.25, grow: float = 0.0, generator=None
) -> Tensor:
    """The crops of one scale: ``[K, 4]`` long boxes ``(x0, y0, x1, y1)``, end exclusive, inside the image.

    The crop side is ``min(W, H) // divisor``; each side then grows by ``U(0, grow) x side``.
    """
    patch, step = crop_layout(width, height, divisor, stride)
    ys, xs = torch.meshgrid(_starts(height, patch, step), _starts(width, patch, step), indexing="ij")
    boxes = torch.stack([xs, ys, xs + patch, ys + patch], -1).reshape(-1, 4).double()
    if grow > 0:
        g = torch.rand(len(boxes), 4, generator=generator, dtype=torch.float64) * grow * patch
        boxes = boxes + g * torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    limit = torch.tensor([width, height, width, height], dtype=torch.float64)
    return torch.minimum(boxes.round().clamp(min=0), limit).long()


def crop_layout(width: int, height: int, divisor: int, stride: float = 0.25) -> tuple[int, int]:
    """``(patch, step)`` in pixels of one scale's crops: side ``min(W, H) // divisor``, about ``stride``
    sides apart."""
    patch = max(1, min(width, height) // divisor)
    return patch, max(1, round(patch * stride))


def axis_coverage(length: int, patch: int, step: int) -> Tensor:
    """``[length]`` in (0, 1]: how many crop starts of :func:`_starts` cover each pixel along one axis, over
    the ``patch // step`` that cover the interior (capped at 1)."""
    starts = _starts(length, patch, step)
    x = torch.arange(length)[:, None]
    count = ((x >= starts) & (x < starts + patch)).sum(1).float()
    return (count / max(1, patch // step)).clamp(max=1.0)


def crop_coverage(width: int, height: int, divisor: int, stride: float = 0.25) -> Tensor:
    """``[H, W]`` in (0, 1]: how many crops of one scale (:func:`crop_boxes`, before growth) cover each
    pixel, over the ``(patch // step)**2`` that cover the image's interior (each axis capped at 1). A teacher
    map averages the crops over a pixel, so near the image's border, where fewer crops reach, it is the
    noisier: the corner pixel is under one crop a scale. The crops form a grid, so this is the product of
    :func:`axis_coverage` along y and along x."""
    patch, step = crop_layout(width, height, divisor, stride)
    return axis_coverage(height, patch, step)[:, None] * axis_coverage(width, patch, step)[None, :]


def splat_crops(boxes: Tensor, embeddings: Tensor, width: int, height: int, out_w: int, out_h: int) -> Tensor:
    """Mean of the crop embeddings covering each pixel of an ``out_h x out_w`` map, L2-normalised.

    A map pixel is covered by a box when its centre, in image pixels, lies inside the box. Sums over
    boxes use a 2D difference array, so the cost is ``O(K D + out_h out_w D)``.

    Args:
        boxes: ``[K, 4]`` ``(x0, y0, x1, y1)`` in pixels of a ``width x height`` image.
        embeddings: ``[K, D]``, on any device.

    Returns:
        ``[out_h, out_w, D]`` float32 on the embeddings' device; pixels no crop covers are zero.
    """
    device = embeddings.device
    b = boxes.double()
    sx, sy = out_w / width, out_h / height
    x0 = torch.ceil(b[:, 0] * sx - 0.5).clamp(0, out_w).long()
    x1 = torch.ceil(b[:, 2] * sx - 0.5).clamp(0, out_w).long()
    y0 = torch.ceil(b[:, 1] * sy - 0.5).clamp(0, out_h).long()
    y1 = torch.ceil(b[:, 3] * sy - 0.5).clamp(0, out_h).long()
    x1 = torch.maximum(x1, (x0 + 1).clamp(max=out_w))  # a box smaller than a map pixel still counts
    y1 = torch.maximum(y1, (y0 + 1).clamp(max=out_h))
    x0, y0 = torch.minimum(x0, x1 - 1).clamp(min=0), torch.minimum(y0, y1 - 1).clamp(min=0)
    row = out_w + 1  # [4, K]: the cells of the four corners, computed on the CPU and moved at once
    corners = to_device(torch.stack([y0 * row + x0, y0 * row + x1, y1 * row + x0, y1 * row + x1]), device)
    dim = embeddings.shape[1]
    values = torch.cat([embeddings.float(), torch.ones(len(b), 1, device=device)], 1)  # last channel counts
    diff = torch.zeros((out_h + 1) * (out_w + 1), dim + 1, device=device)
    for cells, sign in zip(corners, (1.0, -1.0, -1.0, 1.0)):
        diff.index_add_(0, cells, values * sign)
    total = diff.view(out_h + 1, out_w + 1, dim + 1).cumsum(0).cumsum(1)[:out_h, :out_w]
    mean = total[..., :dim] / total[..., dim:].clamp(min=1e-6)
    return F.normalize(mean, dim=-1)


def feature_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(w, h)`` of a map whose long side is ``long_side`` (never larger than the image)."""
    s = min(1.0, long_side / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def multiscale_features(
    encoder: CropEncoder,
    view: TeacherView,
    cfg: TeacherConfig,
    out_size: tuple[int, int],
    generator: torch.Generator | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Tensor:
    """3D-OVS CLIP features of one view: ``[S, h, w, D]`` unit vectors, one map per scale, on the encoder's
    device (the crops' embeddings never leave it).

    Crops go to the encoder ``cfg.clip_batch`` at a time, or its own ``batch_size`` when it has one (the
    simulated CLIP, whose noise is drawn per batch). ``on_batch(n)`` is called after every batch of ``n`` crops
    (progress bars).
    """
    out_w, out_h = out_size
    step = getattr(encoder, "batch_size", None) or cfg.clip_batch
    maps = []
    for divisor in cfg.clip_scales:
        boxes = crop_boxes(view.width, view.height, divisor, cfg.clip_stride, cfg.clip_grow, generator)
        parts = []
        for start in range(0, len(boxes), step):
            batch = boxes[start : start + step]
            parts.append(encoder.encode_crops(view, batch))
            if on_batch is not None:
                on_batch(len(batch))
        maps.append(splat_crops(boxes, torch.cat(parts), view.width, view.height, out_w, out_h))
    return torch.stack(maps)


def count_crops(width: int, height: int, cfg: TeacherConfig) -> int:
    """Crops per view over all scales (for progress bars and benchmarks)."""
    return sum(len(crop_boxes(width, height, k, cfg.clip_stride)) for k in cfg.clip_scales)


def crops_to_pixels(image: Tensor, boxes: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Cut ``boxes`` out of ``image`` (``[3, H, W]`` float in [0, 1], on the model's device), resize each to
    ``size x size`` (bicubic, antialiased) and normalise: ``[K, 3, size, size]``.

    One ``F.interpolate`` (one kernel) per crop: about 70 kernels a 64-crop batch with the normalisation.
    Resizing the batch at once as two matrix products per crop was tried: about 60 kernels, and 1.6x the time
    on a CPU, so the loop stays.
    """
    crops = []
    for x0, y0, x1, y1 in boxes.tolist():
        crop = image[None, :, y0:y1, x0:x1]
        crops.append(F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False))
    return _normalised(torch.cat(crops).clamp(0, 1), mean, std)


def images_to_pixels(images: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``[V, H, W, 3]`` uint8 images (on the model's device) -> ``[V, 3, size, size]`` normalised, each resized
    whole as :func:`crops_to_pixels` resizes a crop (bicubic, antialiased), in one call."""
    pixels = images.permute(0, 3, 1, 2).float() / 255.0
    pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return _normalised(pixels.clamp(0, 1), mean, std)


def _normalised(pixels: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``[K, 3, S, S]`` pixels in [0, 1] less the model's channel mean, over its std."""
    m = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - m) / s


class _ImageCache:
    """The current view's image as a float32 ``[3, H, W]`` tensor on the model device (converted once)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._key: tuple[int, int] | None = None
        self._image: Tensor | None = None

    def get(self, view: TeacherView) -> Tensor:
        key = (view.index, view.image.data_ptr())
        if key != self._key or self._image is None:
            self._image = view.image.to(self.device).permute(2, 0, 1).float() / 255.0
            self._key = key
        return self._image


def _features(out) -> Tensor:
    """transformers returns a tensor (4.x) or an output object (5.x) from get_*_features."""
    return out if isinstance(out, Tensor) else out.pooler_output


class TransformersClip:
    """CLIP through transformers (the default: needs no torchvision)."""

    def __init__(self, name: str, device: torch.device, half: bool = True):
        require_model(name, "CLIP model", "--clip-model")  # a missing model fails before transformers loads
        from transformers import AutoTokenizer, CLIPModel

        self.name = name
        self.device = device
        self.dtype = half_dtype(device, half)  # images only; texts stay float32
        model = load_pretrained(CLIPModel.from_pretrained, name, "CLIP model", "--clip-model")
        interpolate_as_dino(model.vision_model.embeddings)  # larger inputs (dense windows) as ProxyCLIP's
        self.model = model.to(device).eval()
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name, "CLIP tokenizer", "--clip-model")
        self.embedding_dim = int(model.config.projection_dim)
        self.image_size = int(model.config.vision_config.image_size)
        pre = read_preprocessor(name)
        self.mean = tuple(pre.get("image_mean", OPENAI_MEAN))
        self.std = tuple(pre.get("image_std", OPENAI_STD))
        self._image = _ImageCache(device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = _features(self.model.get_text_features(**tokens.to(self.device)))
        return F.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_crops(self, view: TeacherView, boxes: Tensor) -> Tensor:
        return self._embed(crops_to_pixels(self._image.get(view), boxes, self.image_size, self.mean, self.std))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``[V, H, W, 3]`` uint8 whole images -> ``[V, D]`` unit embeddings (float32, on the model's device), in
        one batch: what :meth:`encode_crops` gives each with a box over all of it."""
        return self._embed(images_to_pixels(images.to(self.device), self.image_size, self.mean, self.std))

    def _embed(self, pixels: Tensor) -> Tensor:
        with autocast(self.device, self.dtype):
            out = _features(self.model.get_image_features(pixel_values=pixels))
        return F.normalize(out.float(), dim=-1)


class OpenClip:
    """CLIP through open_clip (the ``openclip`` extra; needs torchvision)."""

    def __init__(self, name: str, pretrained: str, device: torch.device, half: bool = True):
        open_clip = import_open_clip()
        self.name = f"{name}/{pretrained}"
        self.device = device
        self.dtype = half_dtype(device, half)  # images only; texts stay float32
        local = Path(pretrained).expanduser().exists()
        weights = str(Path(pretrained).expanduser()) if local else pretrained
        # open_clip downloads through huggingface_hub: when the hub cannot be asked, only cached files are used
        why = hub_unavailable() if name.startswith("hf-hub:") or (weights and not local) else None
        try:
            with hub_files(offline=why is not None):
                model = open_clip.create_model(name, pretrained=weights or None)
        except Exception as exc:  # open_clip raises RuntimeError, OSError, HF errors ... for missing weights
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            raise TeacherError(
                f"cannot load open_clip model {name} with pretrained '{pretrained}' "
                f"({f'not in the Hugging Face cache, and {why}; ' if why else ''}{cause}): "
                "pass --clip-pretrained /path/to/weights.safetensors"
            ) from None
        self.model = model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
        self.std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
        with torch.no_grad():
            self.embedding_dim = int(self.encode_text(["a"]).shape[-1])
        self._image = _ImageCache(device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        out = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return F.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_crops(self, view: TeacherView, boxes: Tensor) -> Tensor:
        return self._embed(crops_to_pixels(self._image.get(view), boxes, self.image_size, self.mean, self.std))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """As :meth:`TransformersClip.encode_images`."""
        return self._embed(images_to_pixels(images.to(self.device), self.image_size, self.mean, self.std))

    def _embed(self, pixels: Tensor) -> Tensor:
        with autocast(self.device, self.dtype):
            out = self.model.encode_image(pixels)
        return F.normalize(out.float(), dim=-1)


def import_open_clip():
    """open_clip, or a TeacherError that says how to get it."""
    try:
        import open_clip
    except Exception as exc:  # ImportError, or torchvision failing to load on a CPU-only torch
        raise TeacherError(
            f"open_clip is not usable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); install the "
            "extra with pip install 'ovseg3d[openclip]' (needs a torchvision matching torch) or use a "
            "transformers CLIP (--clip-backend transformers --clip-model openai/clip-vit-base-patch16)"
        ) from None
    return open_clip


def _is_open_clip_name(name: str) -> bool:
    """An open_clip architecture (``ViT-B-16``) or ``hf-hub:`` id, as opposed to a transformers hub id / folder."""
    if name.startswith("hf-hub:"):
        return True
    if "/" in name or Path(name).expanduser().exists():
        return False
    try:
        return name in import_open_clip().list_models()
    except TeacherError:
        return name.startswith(("ViT-", "RN", "convnext", "EVA", "coca"))


def clip_backend(cfg: TeacherConfig) -> str:
    """``'open_clip'`` or ``'transformers'``: the backend :func:`build_clip` uses for ``cfg``."""
    if cfg.clip_backend != "auto":
        return cfg.clip_backend
    return "open_clip" if _is_open_clip_name(cfg.clip_model) else "transformers"


def build_clip(cfg: TeacherConfig, device: torch.device) -> CropEncoder:
    """The CLIP backend that ``cfg`` asks for."""
    backend = clip_backend(cfg)
    if backend == "open_clip":
        return OpenClip(cfg.clip_model, cfg.clip_pretrained, device, cfg.half)
    return TransformersClip(cfg.clip_model, device, cfg.half)
