"""DINO patch features through transformers: DINO ViT (``facebook/dino-vits8``, ``-vitb8``) or DINOv2.

3D-OVS uses the last block's tokens of DINO ViT-B/8, one 768-d feature per 8x8 patch (REFERENCE.md §1),
only to say which pixels belong together (FDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.teachers.base import TeacherView, autocast, half_dtype
from ovseg3d.teachers.config import TeacherError
from ovseg3d.teachers.hub import load_pretrained, read_preprocessor, require_model
from ovseg3d.teachers.positions import interpolate_as_dino

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_input_size(width: int, height: int, long_side: int, patch: int) -> tuple[int, int]:
    """``(w, h)``: the image scaled (down or up) to ``long_side`` and rounded to whole patches.

    Small images are enlarged: the patch grid then has about ``long_side / patch`` cells on the long side
    whatever the photo's size, so FDA sees object boundaries at a few pixels' precision."""
    s = long_side / max(width, height)
    return max(patch, round(width * s / patch) * patch), max(patch, round(height * s / patch) * patch)


class TransformersDino:
    """A DINO / DINOv2 backbone; :meth:`encode_patches` returns its last-layer patch tokens."""

    def __init__(self, name: str, device: torch.device, long_side: int = 448, half: bool = True):
        require_model(name, "DINO model", "--dino-model")  # a missing model fails before transformers loads
        from transformers import AutoConfig, AutoModel

        config = load_pretrained(AutoConfig.from_pretrained, name, "DINO model", "--dino-model")
        kind = config.model_type
        if kind not in ("vit", "dinov2", "dinov2_with_registers"):
            raise TeacherError(f"DINO model '{name}' is a '{kind}' model; expected a ViT (DINO) or DINOv2")
        extra = {"add_pooling_layer": False} if kind == "vit" else {}
        model = load_pretrained(AutoModel.from_pretrained, name, "DINO model", "--dino-model", **extra)
        if kind == "vit":
            interpolate_as_dino(model.embeddings)  # other input sizes as DINO's own code (positions.py)
        self.name = name
        self.device = device
        self.dtype = half_dtype(device, half)
        self.model = model.to(device).eval()
        self.kind = kind
        self.patch = int(config.patch_size)
        self.n_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        self.feature_dim = int(config.hidden_size)
        self.long_side = long_side
        pre = read_preprocessor(name)
        self.mean = tuple(pre.get("image_mean", IMAGENET_MEAN))
        self.std = tuple(pre.get("image_std", IMAGENET_STD))

    def resized(self, view: TeacherView) -> Tensor:
        """``view`` at DINO's input size (:func:`dino_input_size`): ``[3, h, w]`` in [0, 1] on the model's device."""
        w, h = dino_input_size(view.width, view.height, self.long_side, self.patch)
        image = view.image.to(self.device).permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(image, size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)

    @torch.no_grad()
    def encode_patches(self, view: TeacherView) -> Tensor:
        """FDA's unit features of ``view``: ``[h / patch, w / patch, D]`` on the CPU (:meth:`tokens`)."""
        return F.normalize(self.tokens(self.resized(view))[1], dim=-1).cpu()

    @torch.no_grad()
    def encode_pixels(self, image: Tensor) -> Tensor:
        """Last-layer patch tokens of ``image`` after the model's final norm (ProxyCLIP's proxy): see :meth:`tokens`."""
        return self.tokens(image, with_fda=False)[0]

    @torch.no_grad()
    def tokens(self, image: Tensor, with_fda: bool = True) -> tuple[Tensor, Tensor]:
        """Patch tokens of ``image`` (``[3, h, w]`` in [0, 1] on the model's device, sides whole patches), each
        ``[h / patch, w / patch, D]`` float32 on the device, not normalised: ``(proxy, fda)``.

        ``proxy``: after the model's final LayerNorm (``last_hidden_state``), as ProxyCLIP takes DINO's tokens
        (``get_intermediate_layers``). ``fda``: for DINO (kind ``vit``) the last block's output before that norm,
        as 3D-OVS takes them (a forward hook on ``blocks[-1]``, ``models/DINO_extractor.py``); for DINOv2 the
        normalised tokens its own feature API gives. One forward pass gives both; ``with_fda=False`` (the proxy of a
        window alone) keeps no layer outputs and returns the proxy's tokens twice."""
        mean = torch.tensor(self.mean, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=image.device).view(1, 3, 1, 1)
        pixels = (image[None] - mean) / std
        vit = self.kind == "vit"
        last_block = vit and with_fda  # the layers' outputs kept only when FDA's tokens are asked for
        extra = {"interpolate_pos_encoding": True, "output_hidden_states": last_block} if vit else {}
        with autocast(self.device, self.dtype):
            out = self.model(pixel_values=pixels, **extra)
        grid = (image.shape[1] // self.patch, image.shape[2] // self.patch, -1)
        proxy = out.last_hidden_state[0, self.n_prefix :].float().reshape(grid)
        fda = out.hidden_states[-1][0, self.n_prefix :].float().reshape(grid) if last_block else proxy
        return proxy, fda
