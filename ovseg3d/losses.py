"""Distillation losses of 3D-OVS (REFERENCE.md §1): pure functions over per-ray tensors.

* feature: ``1 - cos(F, normalize(sum_s sel_s F_s))`` against the teacher feature at the selected scale;
* RDA: Jensen-Shannon between the field's class distribution ``softmax_c(cos(F, t_c) / tau_f)``
  and the teacher's ``softmax_c(sum_s sel_s R_s,c / tau_r)``;
* FDA: on patches of rays, ``D_ij = cos(dino_i, dino_j) - 0.7``, ``J_ij = JS(P_i, P_j)``,
  ``w+ mean_{D>0}(D J) + w- mean_{D<0}(D J)``: DINO-similar pixels are pulled to one class
  distribution, dissimilar ones pushed apart.

And one term of the radiance field's: ``opacity_loss`` (``--opacity-weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def js_divergence(p: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """Jensen-Shannon divergence of distributions over the last axis (natural log; in [0, ln 2])."""
    m = 0.5 * (p + q)
    kl_pm = (p * (torch.log(p + eps) - torch.log(m + eps))).sum(-1)
    kl_qm = (q * (torch.log(q + eps) - torch.log(m + eps))).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """``KL(p || q)`` over the last axis (natural log)."""
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1)


def class_probabilities(features: Tensor, texts: Tensor, temperature: float = 0.2) -> Tensor:
    """``softmax_c(cos(F, t_c) / T)``: ``[R, D]``, ``[C, D]`` -> ``[R, C]``."""
    cos = F.normalize(features, dim=-1) @ F.normalize(texts, dim=-1).T
    return torch.softmax(cos / temperature, dim=-1)


def select_scales(values: Tensor, selection: Tensor) -> Tensor:
    """``sum_s sel_s V_s``: ``[R, S, K]`` teacher values per scale, ``[R, S]`` weights -> ``[R, K]``."""
    return (selection[:, :, None] * values).sum(1)


def opacity_loss(opacity: Tensor) -> Tensor:
    """``mean (1 - opacity)^2`` over rays ``[R]``: 0 when every ray ends on a surface, growing as rays leave
    through the field (what a random training background asks for, without its colour noise)."""
    return (1.0 - opacity).square().mean()


def weighted_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean of ``values [R]``, weighted by ``weights [R]`` when given."""
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum().clamp(min=1e-12)


def feature_loss(rendered: Tensor, teacher: Tensor, selection: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean ``1 - cos(F, normalize(sum_s sel_s F_s))``; ``[R, D]``, ``[R, S, D]``, ``[R, S]``; ``weights [R]``
    weigh the rays (the teacher's crop coverage)."""
    target = F.normalize(select_scales(teacher.float(), selection), dim=-1)
    return weighted_mean(1.0 - F.cosine_similarity(rendered, target, dim=-1), weights)


def rda_loss(
    rendered: Tensor,
    texts: Tensor,
    relevancy: Tensor,
    selection: Tensor,
    tau_r: float = 0.1,
    tau_f: float = 0.05,
    divergence: str = "js",
    weights: Tensor | None = None,
) -> Tensor:
    """Relevancy-distribution alignment: mean JS between the field's ``softmax_c(cos(F, t_c) / tau_f)`` and
    the teacher's ``softmax_c(sum_s sel_s R_s,c / tau_r)``; ``relevancy``: ``[R, S, C]`` in [0, 1];
    ``weights [R]``, when given, weigh the rays in the mean.

    3D-OVS uses the unnormalised ``F . t_c``; we measured that the feature's length then grows with the
    majority class until JS saturates (ln 2) on small objects and their gradient vanishes, so the logits
    here are bounded cosines."""
    p_field = class_probabilities(rendered, texts, tau_f)
    p_teacher = torch.softmax(select_scales(relevancy.float(), selection) / tau_r, dim=-1)
    if divergence == "kl":
        return weighted_mean(kl_divergence(p_teacher, p_field), weights)
    return weighted_mean(js_divergence(p_field, p_teacher), weights)


def fda_loss(
    probs: Tensor,
    dino: Tensor,
    w_pos: float = 200.0,
    w_neg: float = 0.2,
    threshold: float = 0.7,
    used: Tensor | None = None,
) -> Tensor:
    """Feature-distribution alignment over patches.

    Args:
        probs: ``[B, N, C]`` class distributions of the ``N`` rays of each of ``B`` patches.
        dino: ``[B, N, Dd]`` DINO features of the same pixels.
        used: ``[B, N]`` bool, the pixels a mask lets training use (pairs with another pixel count only when
            both are used); ``None``: all.
    """
    d = F.normalize(dino.float(), dim=-1)
    sim = d @ d.transpose(1, 2) - threshold  # [B, N, N]
    js = js_divergence(probs[:, :, None, :], probs[:, None, :, :])  # [B, N, N]
    dj = sim * js
    pos, neg = (sim > 0).to(dj.dtype), (sim < 0).to(dj.dtype)
    if used is not None:
        pairs = (used[:, :, None] & used[:, None, :]).to(dj.dtype)
        pos, neg = pos * pairs, neg * pairs
    # means over the pairs of each sign, 0 where there is none (masked sums: no read back from the device)
    loss = w_pos * (dj * pos).sum() / pos.sum().clamp(min=1.0) + w_neg * (dj * neg).sum() / neg.sum().clamp(min=1.0)
    return loss
