"""Dense CLIP features guided by DINO, without training: ProxyCLIP (Lan et al., ECCV 2024), ``--clip-features dense``.

3D-OVS embeds thousands of crops a photo (:mod:`ovseg3d.teachers.clip`); ProxyCLIP gets a text-aligned CLIP
feature for every patch from one CLIP and one DINO pass per sliding window:

1. The photo is resized so that its short side is ``short_side`` (336) and its long side is a whole number of
   both models' patches, and covered by square windows of ``window`` (336) pixels, ``stride`` (112) apart, the
   last one of each row and column flush with the border (as mmseg's sliding inference).
2. Each window goes through CLIP's vision tower (position embeddings interpolated to the window's patch grid as
   DINO's code does, :mod:`ovseg3d.teachers.positions`) up to its last block. Of that block only the attention's
   value projection is kept (of ``layer_norm1`` of its input): the query-key attention, the residual and the MLP
   are dropped.
3. The proxy attention comes from DINO's last-layer patch tokens ``f_i`` of the window (its own normalisation,
   its finer patch grid): ``s_ij = cos(f_i, f_j)``, ``a_ij = (s_ij - beta mean(s)) gamma`` with the mean over the
   whole window's matrix, ``a_ij = -inf`` where negative, a softmax over ``j``. ``proxy="window"`` (ProxyCLIP's)
   runs DINO on each window; ``"image"`` cuts the window's tokens from one DINO pass over the whole resized photo,
   which is FDA's own DINO pass when the sizes agree (FDA takes the same pass's tokens before the final norm) and
   is resampled to FDA's grid when they do not (16:9 frames, :meth:`ProxyClip.fda_patches`), so that dense costs
   one CLIP pass a window and no more.
4. CLIP's values (patch tokens, per head) are resized bilinearly to DINO's grid; each head's output is
   ``softmax(a) v``; the heads are joined and go through the attention's output projection, CLIP's last layer
   norm and its visual projection, and are L2-normalised: one CLIP embedding per DINO patch.
5. The windows start on whole DINO patches, so their features are averaged over the windows covering each patch
   of the photo's DINO grid, and that map is resized bilinearly to the size the cache stores and L2-normalised.
   ProxyCLIP resizes each window's class logits to the window's pixels first and averages those (a logit is
   linear in the feature): the same inside the windows, apart within half a patch of a window's edge, and that
   took 1.1 s a window (512 channels at 336 x 336 pixels) of a photo's 12 s on 2 cores.

One scale: the cache holds one CLIP map and one relevancy map a view (the crops hold three). Written from the
paper and checked against the authors' code (``mc-lan/ProxyCLIP``) for the reading of the equations; a plain
reference (tests/test_dense_clip.py) runs one head and one window at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.teachers.base import TeacherView, autocast
from ovseg3d.teachers.config import TeacherError
from ovseg3d.teachers.dino import dino_input_size


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: ``stride`` apart, the last one flush with the end (one window when
    ``length <= window``)."""
    n = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, length) - window, 0) for i in range(n)]


def dense_input_size(width: int, height: int, short_side: int, multiple: int) -> tuple[int, int]:
    """``(w, h)`` of the photo resized for the windows: the short side ``short_side``, the long side rounded to
    ``multiple`` pixels (both models' patches tile every window)."""
    long = max(short_side, round(max(width, height) * short_side / min(width, height) / multiple) * multiple)
    return (short_side, long) if width <= height else (long, short_side)


def proxy_attention(proxy: Tensor, beta: float, gamma: float) -> Tensor:
    """ProxyCLIP's attention from proxy features ``[N, C]``: ``[N, N]`` rows that sum to 1.

    A row's largest similarity is its own (1), so a row is either partly kept or wholly below the offset (a window
    whose mean similarity exceeds ``1 / beta``): the method leaves such a row undefined (a softmax over nothing),
    here it attends to itself alone."""
    f = F.normalize(proxy.float(), dim=-1)
    sim = f @ f.T
    logits = (sim - sim.mean() * beta) * gamma
    dropped = logits < 0
    dropped.fill_diagonal_(False)
    return torch.softmax(logits.masked_fill(dropped, float("-inf")), dim=-1)


def count_windows(width: int, height: int, short_side: int, window: int, stride: int, multiple: int) -> int:
    """Windows a ``width x height`` photo takes (progress bars and benchmarks)."""
    w, h = dense_input_size(width, height, short_side, multiple)
    return len(window_starts(w, window, stride)) * len(window_starts(h, window, stride))


class ProxyClip:
    """ProxyCLIP over a transformers CLIP (:class:`~ovseg3d.teachers.clip.TransformersClip`) and a DINO
    (:class:`~ovseg3d.teachers.dino.TransformersDino`): :meth:`encode_view` gives ``[1, h, w, D]`` unit
    features, the dense counterpart of :func:`~ovseg3d.teachers.clip.multiscale_features`."""

    def __init__(
        self,
        clip,  # noqa: ANN001 - a TransformersClip
        dino,  # noqa: ANN001 - a TransformersDino
        short_side: int = 336,
        window: int = 336,
        stride: int = 112,
        beta: float = 1.2,
        gamma: float = 3.0,
        proxy: str = "window",
    ):
        vision = getattr(getattr(clip, "model", None), "vision_model", None)
        if vision is None:
            raise TeacherError(
                f"--clip-features dense needs a transformers CLIP (got {clip.name}): use --clip-backend "
                "transformers, or --clip-features crops"
            )
        self.clip, self.dino, self.vision = clip, dino, vision
        self.clip_patch = int(vision.config.patch_size)
        self.multiple = math.lcm(self.clip_patch, int(dino.patch))
        if window % self.multiple or short_side % self.multiple or short_side < window or stride < 1:
            raise TeacherError(
                f"--dense-window {window} and --dense-short-side {short_side} must be multiples of {self.multiple} "
                "(the CLIP and DINO patches), the window at most the short side, --dense-stride positive"
            )
        if proxy not in ("window", "image"):
            raise TeacherError(f"--dense-proxy must be window or image, got {proxy!r}")
        if stride % int(dino.patch):
            raise TeacherError(f"--dense-stride {stride} must be a multiple of DINO's patch ({dino.patch})")
        self.proxy = proxy
        self._tokens: tuple[int, tuple[int, int], Tensor] | None = None  # the last view's image-wide DINO tokens
        self.short_side, self.window, self.stride = short_side, window, stride
        self.beta, self.gamma = beta, gamma
        self.name = f"proxyclip({clip.name}, {dino.name})"
        self.embedding_dim = clip.embedding_dim

    def windows(self, width: int, height: int) -> int:
        return count_windows(width, height, self.short_side, self.window, self.stride, self.multiple)

    def clip_values(self, pixels: Tensor) -> Tensor:
        """CLIP's last-block values of a window (``[1, 3, h, w]``, CLIP-normalised): ``[heads, gh, gw, hd]``."""
        vision = self.vision
        hidden = vision.embeddings(pixels, interpolate_pos_encoding=True)
        hidden = vision.pre_layrnorm(hidden)
        for layer in vision.encoder.layers[:-1]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
        attn = vision.encoder.layers[-1].self_attn
        values = attn.v_proj(vision.encoder.layers[-1].layer_norm1(hidden))[0, 1:]  # [gh*gw, E], CLS dropped
        gh, gw = pixels.shape[2] // self.clip_patch, pixels.shape[3] // self.clip_patch
        heads = attn.num_heads
        return values.reshape(gh, gw, heads, -1).permute(2, 0, 1, 3)

    def window_features(self, window: Tensor, proxy: Tensor | None = None) -> Tensor:
        """Features of one window (``[3, h, w]`` in [0, 1] on the model's device): ``[H, W, D]`` unit vectors
        on DINO's patch grid. ``proxy``: the window's DINO tokens ``[H, W, C]`` (default: DINO run on it)."""
        clip, vision = self.clip, self.vision
        mean = torch.tensor(clip.mean, device=window.device).view(1, 3, 1, 1)
        std = torch.tensor(clip.std, device=window.device).view(1, 3, 1, 1)
        with autocast(clip.device, clip.dtype):
            values = self.clip_values((window[None] - mean) / std)
        proxy = self.dino.encode_pixels(window) if proxy is None else proxy  # [H, W, C]
        big_h, big_w = proxy.shape[:2]
        attn = proxy_attention(proxy.reshape(big_h * big_w, -1), self.beta, self.gamma)
        v = F.interpolate(values.float().permute(0, 3, 1, 2), size=(big_h, big_w), mode="bilinear", align_corners=False)
        v = v.flatten(2).transpose(1, 2)  # [heads, H*W, hd]
        heads_out = attn[None] @ v  # [heads, H*W, hd]
        joined = heads_out.transpose(0, 1).reshape(big_h * big_w, -1)
        last = vision.encoder.layers[-1].self_attn
        with autocast(clip.device, clip.dtype):
            out = clip.model.visual_projection(
                vision.post_layernorm(last.out_proj(joined.to(last.out_proj.weight.dtype)))
            )
        return F.normalize(out.float(), dim=-1).reshape(big_h, big_w, -1)

    @torch.no_grad()
    def encode_view(
        self, view: TeacherView, out_size: tuple[int, int], on_window: Callable[[int], None] | None = None
    ) -> Tensor:
        """``[1, out_h, out_w, D]`` unit features of ``view``, on the model's device; ``on_window(1)`` after each
        window (progress bars)."""
        device = self.clip.device
        w, h = dense_input_size(view.width, view.height, self.short_side, self.multiple)
        image = view.image.to(device).permute(2, 0, 1)[None].float() / 255.0
        image = F.interpolate(image, size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
        tokens = None
        if self.proxy == "image":
            tokens, fda = self.dino.tokens(image)
            self._tokens = (view.index, (w, h), fda)
        p = int(self.dino.patch)
        total = torch.zeros(h // p, w // p, self.embedding_dim, device=device)  # on the photo's DINO grid
        count = torch.zeros(h // p, w // p, 1, device=device)
        side = self.window // p
        for y in window_starts(h, self.window, self.stride):
            for x in window_starts(w, self.window, self.stride):
                part = None if tokens is None else tokens[y // p : y // p + side, x // p : x // p + side]
                feats = self.window_features(image[:, y : y + self.window, x : x + self.window], part)
                total[y // p : y // p + side, x // p : x // p + side] += feats
                count[y // p : y // p + side, x // p : x // p + side] += 1
                if on_window is not None:
                    on_window(1)
        mean = (total / count).permute(2, 0, 1)[None]
        out_w, out_h = out_size
        small = F.interpolate(mean, size=(out_h, out_w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        return F.normalize(small, dim=-1)[None]

    def fda_patches(self, view: TeacherView) -> Tensor | None:
        """FDA's DINO features of ``view`` (:meth:`TransformersDino.encode_patches`: the last block's tokens, before
        the norm the proxy is taken after, L2-normalised) from the image-wide pass just made for it, else ``None``.

        When that pass saw FDA's own input size (4:3 photos) its tokens are FDA's exactly. Otherwise (16:9 frames:
        592 x 336 here against FDA's 448 x 256) its token grid is resampled to FDA's (:func:`resample_tokens`), when
        it is at least as fine on both axes; a coarser pass (square photos: 336 against FDA's 448) would blur FDA's
        boundaries, and ``None`` leaves FDA to its own pass."""
        if self._tokens is None or self._tokens[0] != view.index:
            return None
        p = int(self.dino.patch)
        size = dino_input_size(view.width, view.height, self.dino.long_side, p)
        tokens = self._tokens[2]
        if size == self._tokens[1]:
            return F.normalize(tokens, dim=-1).cpu()
        grid = (size[1] // p, size[0] // p)
        if grid[0] > tokens.shape[0] or grid[1] > tokens.shape[1]:
            return None
        return resample_tokens(tokens, grid).cpu()


def resample_tokens(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[H, W, C]`` tokens of an image resampled to the token grid ``(h, w)`` of the same image at another size:
    unit vectors, bilinear between the unit tokens (cell centres aligned, as the images' own resizes).

    The pass's tokens are normalised first, so that a mean is one of directions, as FDA's cosines see them, and not
    led by the pre-norm tokens' magnitudes; the mean is normalised again. Bilinear rather than an area mean: from
    the proxy's 42 x 74 tokens of a 16:9 frame to FDA's 32 x 56 (a step of 1.3 tokens, so every token is read),
    both are as close to FDA's own pass in the mean cosine (0.986 with real-size DINO ViT-B/8 of random weights, a
    bound on the token field, not on semantics), and the pairwise cosines FDA takes of them are closer with
    bilinear (mean error 0.016 against 0.020; issue 68; measured with scripts/bench_fda_reuse.py at the time, now
    ``ovseg3d bench run teachers --variants fda``)."""
    unit = F.normalize(tokens.float(), dim=-1).permute(2, 0, 1)[None]
    small = F.interpolate(unit, size=grid, mode="bilinear", align_corners=False)
    return F.normalize(small[0].permute(1, 2, 0), dim=-1)
