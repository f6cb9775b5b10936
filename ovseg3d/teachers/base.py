"""Contracts between the teachers and the rest of ovseg3d: what a teacher sees and what it returns."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


def half_dtype(device: torch.device, half: bool) -> torch.dtype | None:
    """The reduced precision teacher images run in: float16 on CUDA, bfloat16 on a CPU with native bf16
    (2.5x faster than float32 for ViT-B/16 on the 2-core test machine), else ``None`` (float32)."""
    if not half:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
        except (AttributeError, RuntimeError):
            return None
    return None


def precision_text(device: torch.device, half: bool) -> str:
    """What the teacher images run in, for the log: ``bfloat16``, ``float16``, or ``float32`` and why, where half
    precision was asked for and the CPU lacks native bfloat16 (its teachers take about 1.6x a frame's seconds: the
    same ViT-B passes on two 2-core hosts, issue 68)."""
    dtype = half_dtype(device, half)
    if dtype is not None:
        return str(dtype).removeprefix("torch.")
    if half and device.type == "cpu":
        return f"float32: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bfloat16"
    return "float32"


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype``, or nothing for float32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass
class TeacherView:
    """One input view as the teachers see it.

    Attributes:
        index: view index in the scene.
        image: ``[H, W, 3]`` uint8.
        labels: ``[H, W]`` uint8 class index (255 = none), only for simulated teachers.
        instances: ``[H, W]`` int instance id (0 = none), only for simulated teachers.
    """

    index: int
    image: Tensor
    labels: Tensor | None = None
    instances: Tensor | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


class CropEncoder(Protocol):
    """A CLIP-like image-text model: embeds image crops and texts into one space (unit vectors)."""

    name: str
    embedding_dim: int

    def encode_text(self, texts: list[str]) -> Tensor:
        """``T`` texts -> ``[T, D]`` unit embeddings (float32, CPU)."""
        ...

    def encode_crops(self, view: TeacherView, boxes: Tensor) -> Tensor:
        """``[K, 4]`` pixel boxes ``(x0, y0, x1, y1)`` (end exclusive, on the CPU) of ``view`` -> ``[K, D]``
        unit embeddings (float32, on the encoder's device: a view's crops stay there until its maps are made)."""
        ...


class PatchEncoder(Protocol):
    """A DINO-like model: one feature per image patch."""

    name: str
    feature_dim: int

    def encode_patches(self, view: TeacherView) -> Tensor:
        """``view`` -> ``[h, w, D]`` unit features, one per patch (float32, CPU)."""
        ...
