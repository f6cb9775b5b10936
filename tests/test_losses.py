"""Distillation losses (REFERENCE.md §1): JS, feature, RDA, FDA, and the semantic field's selection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovseg3d.field.hashgrid import HashGridConfig
from ovseg3d.field.semantic import SemanticConfig, SemanticField
from ovseg3d.losses import class_probabilities, fda_loss, feature_loss, js_divergence, rda_loss


def test_js_is_symmetric_zero_for_equal_and_ln2_for_disjoint():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 4, generator=g), -1)
    q = torch.softmax(torch.randn(5, 4, generator=g), -1)
    torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
    torch.testing.assert_close(js_divergence(p, p), torch.zeros(5), atol=1e-6, rtol=0)
    assert torch.all(js_divergence(p, q) > 0)
    disjoint = js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert float(disjoint) == pytest.approx(math.log(2), abs=1e-5)


def _fda_step(dino_cos: float) -> tuple[float, float]:
    """JS between two rays' class distributions before and after one gradient step of FDA."""
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], requires_grad=True)  # [1 patch, 2 rays, 3]
    angle = math.acos(dino_cos)
    dino = torch.tensor([[[1.0, 0.0], [math.cos(angle), math.sin(angle)]]])
    before = float(js_divergence(*torch.softmax(logits.detach(), -1)[0]))
    fda_loss(torch.softmax(logits, -1), dino, w_pos=200.0, w_neg=200.0).backward()
    with torch.no_grad():
        after = float(js_divergence(*torch.softmax(logits - 0.01 * logits.grad, -1)[0]))
    return before, after


def test_fda_pulls_dino_similar_pixels_together_and_pushes_dissimilar_apart():
    before, after = _fda_step(0.95)
    assert after < before
    before, after = _fda_step(0.1)
    assert after > before


def test_feature_loss_is_zero_at_the_selected_teacher_feature():
    teacher = F.normalize(torch.randn(6, 3, 8), dim=-1)
    sel = torch.tensor([[0.0, 1.0, 0.0]]).expand(6, 3)
    assert float(feature_loss(teacher[:, 1] * 3.0, teacher, sel)) == pytest.approx(0.0, abs=1e-6)
    assert float(feature_loss(teacher[:, 0], teacher, sel)) > 0.1


def test_rda_is_low_when_the_field_agrees_with_the_relevancy():
    texts = torch.eye(3)
    relevancy = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 2, 3)  # every scale says class 0
    sel = torch.full((4, 2), 0.5)
    agree = rda_loss(torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3), texts, relevancy, sel)
    disagree = rda_loss(torch.tensor([[0.0, 1.0, 0.0]]).expand(4, 3), texts, relevancy, sel)
    assert float(agree) < 0.05 < float(disagree)
    probs = class_probabilities(torch.randn(4, 3), texts)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_a_ray_weighted_zero_does_not_count_in_the_feature_and_rda_losses():
    """Coverage weights: a zero-weight ray drops out of the mean; equal weights are the plain mean."""
    g = torch.Generator().manual_seed(2)
    rendered = torch.randn(5, 3, generator=g)
    teacher = F.normalize(torch.randn(5, 2, 3, generator=g), dim=-1)
    relevancy = torch.rand(5, 2, 3, generator=g)
    sel = torch.tensor([[1.0, 0.0]]).expand(5, 2)
    texts = torch.eye(3)
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    for loss in (
        lambda r, t, rel, s, wt: feature_loss(r, t, s, wt),
        lambda r, t, rel, s, wt: rda_loss(r, texts, rel, s, divergence="kl", weights=wt),
    ):
        assert float(loss(rendered, teacher, relevancy, sel, w)) == pytest.approx(
            float(loss(rendered[:4], teacher[:4], relevancy[:4], sel[:4], None)), rel=1e-5
        )
        assert float(loss(rendered, teacher, relevancy, sel, torch.full((5,), 0.3))) == pytest.approx(
            float(loss(rendered, teacher, relevancy, sel, None)), rel=1e-5
        )


def test_semantic_field_selection_is_a_distribution_over_scales():
    grid = HashGridConfig(2, 2, 10, 4, 2.0)
    field = SemanticField(
        torch.tensor([0.0, 0, 0, 1, 1, 1]), SemanticConfig(grid, latent_dim=8, clip_dim=16, n_scales=3, dino_dim=4)
    )
    out = field.decode(field.latent(torch.rand(10, 3)))
    assert out.clip.shape == (10, 16) and out.dino.shape == (10, 4) and out.selection.shape == (10, 3)
    torch.testing.assert_close(out.selection.sum(-1), torch.ones(10))
    assert torch.all(out.selection >= 0)


def test_training_selection_learned_or_one_scale():
    from ovseg3d.distill import training_selection

    learned = torch.softmax(torch.randn(5, 3), -1)
    assert training_selection(learned, learned=True) is learned
    finest = torch.tensor([[0.0, 0.0, 1.0]]).expand(5, 3)
    torch.testing.assert_close(training_selection(learned), finest)  # the default: the finest scale
    torch.testing.assert_close(training_selection(learned, scale=2), finest)
    torch.testing.assert_close(training_selection(learned, scale=-3), torch.tensor([[1.0, 0.0, 0.0]]).expand(5, 3))


def test_the_fscore_of_a_cloud_missing_its_floor_is_low():
    """A room's floor and a box on it, sampled as the true surface; a cloud of the box alone is accurate
    (precision 1) but misses the floor, so its completeness and F-score are low; the whole cloud scores 1."""
    from ovseg3d.metrics import nearest_distances, surface_fscore

    g = torch.linspace(-1, 1, 60)
    floor = torch.stack([*torch.meshgrid(g, g, indexing="ij"), torch.zeros(60, 60)], -1).reshape(-1, 3)
    h = torch.linspace(-0.2, 0.2, 20)
    box = torch.stack([*torch.meshgrid(h, h, indexing="ij"), torch.full((20, 20), 0.4)], -1).reshape(-1, 3)
    truth = torch.cat([floor, box])
    tau = 0.01 * 2 * 2**0.5  # 1 % of the room's diagonal
    for cloud, low in ((box + 0.001, True), (truth + 0.001, False)):
        to_truth = nearest_distances(cloud, truth)
        scores = surface_fscore(to_truth, nearest_distances(truth, cloud), tau)
        assert scores["precision"] == 1.0
        if low:
            assert scores["recall"] < 0.2 and scores["fscore"] < 0.9
        else:
            assert scores["recall"] == 1.0 and scores["fscore"] == 1.0
    assert surface_fscore(torch.zeros(0), nearest_distances(truth, torch.zeros(0, 3)), tau)["fscore"] == 0.0
