"""How the 2D teachers are made: one flat dataclass shared by ``ovseg3d extract`` and ``ovseg3d train``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from ovseg3d.errors import UsageError

TeacherKind = Literal["auto", "none", "clip", "synthetic"]


class TeacherError(UsageError):
    """A teacher that cannot be built or run (missing weights, bad model, scene without labels); one line."""


@dataclass
class TeacherConfig:
    """2D teachers (REFERENCE.md §1): CLIP patch features at three scales + relevancy, and DINO features."""

    kind: Annotated[TeacherKind, tyro.conf.arg(name="teacher")] = "clip"
    """'clip': real CLIP + DINO models; 'synthetic': simulated teachers built from the scene's labels/ and
    instances/ maps (no weights needed); 'none': no teacher; 'auto' (train's default): synthetic for a
    scene with labels/ and instances/ for every view (a generated one), else clip."""
    clip_model: str = "openai/clip-vit-base-patch16"
    """CLIP model: a Hugging Face hub id (transformers format, e.g. openai/clip-vit-base-patch16), an
    open_clip architecture (e.g. ViT-B-16, with --clip-pretrained), or a local folder saved by
    save_pretrained / a downloaded hub snapshot."""
    clip_backend: Literal["auto", "transformers", "open_clip"] = "auto"
    """'auto': open_clip for an open_clip architecture name when open_clip is installed, else transformers."""
    clip_pretrained: str = "laion2b_s34b_b88k"
    """open_clip only: pretrained tag (e.g. laion2b_s34b_b88k, openai) or a local weights file."""
    clip_features: Literal["crops", "dense"] = "crops"
    """How the CLIP feature maps are made. 'crops': 3D-OVS's crops at the --clip-scales (thousands of CLIP
    passes a photo: minutes a photo on a CPU); 'dense': ProxyCLIP (training-free, DINO-guided attention on CLIP's
    last-block values over sliding windows: a few CLIP and DINO passes a photo), one scale; transformers CLIP
    only. The presets take dense (the gpu preset since issue 49: a 60-frame video's maps in 9.9 s against 41.7 s
    of crops on an H200). The simulated teacher draws crops whatever this says."""
    dense_short_side: int = 336
    """dense: the photo's short side for the windows (ProxyCLIP: 336)."""
    dense_window: int = 336
    """dense: square window side in pixels (ProxyCLIP: 336)."""
    dense_stride: int = 112
    """dense: pixels between windows (ProxyCLIP: 112)."""
    dense_proxy: Literal["window", "image"] = "window"
    """dense: where the proxy attention's DINO tokens come from. 'window' (ProxyCLIP's): a DINO pass on each
    window; 'image': the window's part of one DINO pass over the whole resized photo, which is also FDA's DINO
    pass when the sizes agree (a 4:3 photo at the defaults): a photo then costs its CLIP windows and nothing
    more (the cpu preset's choice)."""
    proxy_beta: float = 1.2
    """dense: proxy attention offset: similarities below beta x their mean are not attended to (ProxyCLIP: 1.2)."""
    proxy_gamma: float = 3.0
    """dense: proxy attention sharpness: the offset similarities are multiplied by it before the softmax (3.0)."""
    clip_scales: tuple[int, ...] = (5, 7, 10)
    """Patch sizes as divisors of min(W, H): one feature map per entry (3D-OVS: 5, 7, 10)."""
    clip_stride: float = 0.25
    """Crop stride as a fraction of the patch size (3D-OVS: 1/4)."""
    clip_grow: float = 0.1
    """Each crop side grows by a random amount in [0, this x patch] (3D-OVS's random crop growth)."""
    clip_batch: int = 64
    """Crops per CLIP forward pass: a speed setting, the features do not depend on it (the gpu preset: 256)."""
    feature_long_side: int = 64
    """Long side of the stored CLIP feature maps (pixels; capped at the image size). CLIP features are
    smooth at the crop stride, and 512 float16 channels per scale make these maps the bulk of the cache."""
    relevancy_long_side: int = 128
    """Long side of the stored relevancy maps (computed at this size; the CLIP maps are area-averaged from it)."""
    class_relevancy: Literal["minmax", "negatives"] = "minmax"
    """How a class's relevancy map is made from the CLIP features. 'minmax' (3D-OVS's): the cosine with the class
    text, min-max normalised over the image, per class and scale; 'negatives' (LERF's form): the least of
    sigmoid(10 (cos(F, t_c) - cos(F, n))) over the negatives n, every other class and LERF's canonical phrases
    (object, things, stuff, texture), so that a pixel is relevant to the class that beats all others there."""
    teacher_long_side: int = 0
    """Resize input images so their long side is this before the teachers see them (0 = original size)."""
    dino_model: str = "facebook/dino-vitb8"
    """DINO model: hub id or local folder; a transformers ViT (facebook/dino-vits8, facebook/dino-vitb8) or
    DINOv2 (facebook/dinov2-small, ...)."""
    dino_long_side: int = 448
    """DINO input long side in pixels (images are scaled down or up to it, rounded to the patch size);
    features come one per patch. The simulated DINO uses the same patch grid."""
    half: bool = True
    """Run the teacher image models in float16 on CUDA, bfloat16 on a CPU that has it (else float32)."""
    teacher_seed: int = 0
    """Seed of the crop growth and of the simulated teachers' noise."""
    cache_dir: Path | None = None
    """Where features are cached (default: SCENE/features/<teacher>)."""

    # simulated teachers (--teacher synthetic); see ovseg3d/teachers/synthetic.py
    syn_dim: int = 512
    """Simulated CLIP embedding size."""
    syn_noise: tuple[float, ...] = (0.6, 0.8, 1.0)
    """Per-scale noise on each crop embedding (relative to a unit class embedding; one value per scale)."""
    syn_confusion: tuple[float, ...] = (0.1, 0.2, 0.3)
    """Per-scale probability that a crop's main class is seen as another class (one value per scale)."""
    syn_view_noise: float = 0.3
    """Per-view shift of every embedding (view-inconsistent teacher), relative to a unit embedding."""
    syn_errors: Literal["persistent", "per-view"] = "persistent"
    """How the simulated CLIP errs. 'persistent' (CLIP-like): each object leans toward one look-alike class by a
    strength drawn once per object (wrong from every side when it leans past half), small objects are absorbed into
    their surroundings and stuff (floor, wall, sky...) bleeds into what stands on it, on top of the per-crop noise and
    confusion; 'per-view': only the noise and confusion drawn afresh per view and crop (the teacher before issue 67,
    whose errors averaging over views removes by construction)."""
    syn_lean: float = 0.6
    """persistent: the largest lean of an object toward its look-alike class; each object's lean is drawn once,
    uniformly in [0, syn_lean] (past 0.5 the object reads as the look-alike)."""
    syn_lean_view: float = 0.1
    """persistent: spread of an object's lean from view to view (its look differs by side), so an object leaning
    near 0.5 is wrong from some views only."""
    syn_absorb: float = 0.002
    """persistent: an object covering this share of a view keeps half its weight in the crops that see it (the rest
    goes to its surroundings): small or distant objects fade into what is around them."""
    syn_stuff_bleed: float = 0.25
    """persistent: extra weight of stuff classes (floor, wall, ceiling, ground, sky...) in a crop, so stuff bleeds
    into the objects on it."""
    syn_dino_dim: int = 384
    """Simulated DINO feature size (ViT-S/8: 384)."""
    syn_dino_texture: float = 0.5
    """Weight of the texture (colour statistics) term in simulated DINO features."""
    syn_dino_noise: float = 0.3
    """Noise on simulated DINO features."""

    def n_scales(self) -> int:
        """Crop scales (of the simulated teacher and of 'crops'; a 'dense' cache holds one map)."""
        return len(self.clip_scales)

    def dense(self) -> bool:
        """Whether the CLIP maps come from ProxyCLIP (real teachers with --clip-features dense)."""
        return self.kind == "clip" and self.clip_features == "dense"

    def check(self) -> None:
        """Raise TeacherError on settings that cannot work."""
        if not self.clip_scales or min(self.clip_scales) < 1:
            raise TeacherError(f"clip_scales must be positive divisors, got {self.clip_scales}")
        if not 0 < self.clip_stride <= 1:
            raise TeacherError(f"clip_stride must be in (0, 1], got {self.clip_stride}")
        if min(self.feature_long_side, self.relevancy_long_side) < 1 or self.dino_long_side < 8:
            raise TeacherError("feature_long_side and relevancy_long_side must be >= 1, dino_long_side >= 8")
        if self.clip_features not in ("crops", "dense"):
            raise TeacherError(f"clip_features must be crops or dense, got {self.clip_features!r}")
        if min(self.dense_short_side, self.dense_window, self.dense_stride) < 1 or self.proxy_gamma <= 0:
            raise TeacherError("dense_short_side, dense_window, dense_stride and proxy_gamma must be positive")
        if self.syn_errors not in ("persistent", "per-view"):
            raise TeacherError(f"syn_errors must be persistent or per-view, got {self.syn_errors!r}")
        if not 0 <= self.syn_lean <= 1 or min(self.syn_lean_view, self.syn_absorb, self.syn_stuff_bleed) < 0:
            raise TeacherError("syn_lean must be in [0, 1]; syn_lean_view, syn_absorb and syn_stuff_bleed >= 0")
        for name in ("syn_noise", "syn_confusion"):
            if len(getattr(self, name)) != self.n_scales():
                raise TeacherError(f"{name} needs one value per CLIP scale ({self.n_scales()})")
