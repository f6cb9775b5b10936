"""Relevancy of CLIP features to texts (REFERENCE.md §1 and §2): pure functions over tensors.

* 3D-OVS, per class and scale: ``R_s,c = minmax_image(cos(F_s(p), t_c))``, min-max over the image.
* LERF, for a free-text query q against canonical negatives c_i:
  ``min_i softmax([tau cos(F, q), tau cos(F, c_i)])[0]`` with tau = 10.
* LERF's form for the classes (``--class-relevancy negatives``): class c against every other class and the
  canonical negatives.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")


def cosine(features: Tensor, texts: Tensor) -> Tensor:
    """Cosine of every feature with every text: ``[..., D] x [T, D] -> [..., T]`` (float32)."""
    return F.normalize(features.float(), dim=-1) @ F.normalize(texts.float(), dim=-1).T


def class_relevancy(features: Tensor, texts: Tensor, eps: float = 1e-6) -> Tensor:
    """3D-OVS relevancy maps of one image.

    Args:
        features: ``[S, H, W, D]`` CLIP features per scale.
        texts: ``[C, D]`` class text embeddings.

    Returns:
        ``[S, H, W, C]`` in [0, 1]: per (scale, class), the cosine min-max normalised over the image.
    """
    sim = cosine(features, texts)  # [S, H, W, C]
    lo = sim.amin(dim=(1, 2), keepdim=True)
    hi = sim.amax(dim=(1, 2), keepdim=True)
    return (sim - lo) / (hi - lo).clamp(min=eps)


def negatives_relevancy(features: Tensor, texts: Tensor, canonical: Tensor, temperature: float = 10.0) -> Tensor:
    """Class relevancy in LERF's form: ``[S, H, W, D]``, ``[C, D]`` classes, ``[K, D]`` canonical negatives ->
    ``[S, H, W, C]`` in [0, 1], for each class the least of ``sigmoid(tau (cos(F, t_c) - cos(F, n)))`` over the
    negatives ``n``: the other classes and the canonical ones. No normalisation over the image: a pixel is
    relevant to the class that beats every other text there, whatever else the image holds."""
    pos = cosine(features, texts)  # [S, H, W, C]
    neg = cosine(features, canonical)  # [S, H, W, K]
    pair = torch.sigmoid(temperature * (pos[..., :, None] - pos[..., None, :]))  # [S, H, W, C, C]: c against c'
    pair = pair.masked_fill(torch.eye(pos.shape[-1], dtype=torch.bool, device=pos.device), 1.0)
    against_classes = pair.amin(dim=-1)
    against_canonical = torch.sigmoid(temperature * (pos[..., :, None] - neg[..., None, :])).amin(dim=-1)
    return torch.minimum(against_classes, against_canonical)


def query_relevancy(features: Tensor, query: Tensor, negatives: Tensor, temperature: float = 10.0) -> Tensor:
    """LERF relevancy of a free-text query: ``[..., D]``, ``[D]``, ``[K, D]`` -> ``[...]`` in [0, 1].

    For each negative, the probability that the feature is the query rather than that negative
    (a two-way softmax of scaled cosines); the relevancy is the minimum over the negatives, so 0.5
    means "no more the query than the most similar negative".
    """
    return relevancy_from_cosines(cosine(features, query[None]), cosine(features, negatives), temperature)


def relevancy_from_cosines(pos: Tensor, neg: Tensor, temperature: float = 10.0) -> Tensor:
    """:func:`query_relevancy` from the cosines already taken: ``[..., 1]`` with the query, ``[..., K]`` with the
    negatives."""
    return torch.sigmoid(temperature * (pos - neg)).amin(dim=-1)


def teacher_segmentation(relevancy: Tensor) -> Tensor:
    """The 2D teacher's own labels: ``[S, H, W, C]`` relevancy -> ``[H, W]`` argmax over classes of the
    mean relevancy over scales (the baseline that distillation must beat)."""
    return relevancy.float().mean(dim=0).argmax(dim=-1)


def query_slug(query: str) -> str:
    """A property-name-safe form of a query (``"red mug"`` -> ``red_mug``)."""
    return re.sub(r"[^a-z0-9]+", "_", query.lower()).strip("_") or "query"
