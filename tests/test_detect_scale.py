"""Scenes in arbitrary units (COLMAP's): the scale estimate, and detections that do not depend on the units."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from test_detect import box_surface, cloud_of, floor, mug

from ovseg3d.cli import main
from ovseg3d.detect.head import DetectOptions, detect
from ovseg3d.detect.priors import SizePriors
from ovseg3d.detect.scale import estimate_scale
from ovseg3d.export import LabelledCloud, write_ply

QUIET = {"up_hint": np.array([0.0, 0.0, 1.0]), "log": lambda *_: None}
CLASSES = ["mug", "book", "tissue box", "chair", "rubik cube", "floor"]


def chair(center, yaw: float, k: float = 1.7) -> np.ndarray:
    """A chair ``k`` times test_detect's 34 cm one (k = 1.7: 54 x 58 x 85 cm): seat, backrest on its -x side,
    four legs; its front is +x turned by ``yaw``."""
    parts = [box_surface([0, 0, 0.235], [0.32, 0.34, 0.03], 0.0), box_surface([-0.145, 0, 0.36], [0.03, 0.34, 0.22], 0)]
    parts += [box_surface([sx * 0.145, sy * 0.155, 0.11], [0.03, 0.03, 0.22], 0) for sx in (1, -1) for sy in (1, -1)]
    pts = np.concatenate(parts)[::3] * k  # a third of the points: the sampling step grows with k
    return pts @ np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]).T + center


def room() -> LabelledCloud:
    """A metric room: a mug, a book, a tissue box, a chair and a Rubik's cube on a 1.6 m floor."""
    parts = [
        (mug([-0.45, -0.4, 0.05], 2.0), 0),
        (box_surface([0.35, -0.45, 0.025], [0.24, 0.17, 0.05], 0.5), 1),
        (box_surface([-0.45, 0.35, 0.055], [0.25, 0.13, 0.11], -0.3), 2),
        (chair([0.3, 0.3, 0.0], 0.7), 3),
        (box_surface([0.0, -0.05, 0.03], [0.07, 0.07, 0.06], 0.2), 4),
        (floor(), 5),
    ]
    return cloud_of(parts, CLASSES)


def scaled(cloud: LabelledCloud, k: float) -> LabelledCloud:
    """``cloud`` with its coordinates (and voxel size) times ``k``: the same scene in units of 1/k metres."""
    return dataclasses.replace(cloud, xyz=(cloud.xyz.astype(np.float64) * k).astype(np.float32), voxel_size=0.0)


def by_class(result) -> dict:  # noqa: ANN001
    found = {d.name: d for d in result.detections}
    assert len(found) == len(result.detections), "one box per class in these scenes"
    return found


# ------------------------------------------------------------------------------------------ the estimator


@pytest.mark.parametrize("true_scale", [10.0, 0.1, 0.37])
def test_the_estimate_recovers_a_known_scale_and_leaves_an_outlier_out(true_scale):
    """Objects 15 % off their class's prior either way, one fragment a fifth of a chair, one class without a
    prior; sizes in units of 1/true_scale metres."""
    priors = SizePriors.load()
    names = ["mug", "book", "tissue box", "lamp", "bottle", "chair", "violin"]
    off = [1.15, 0.87, 1.0, 1.1, 0.9, 0.2, 1.0]
    sizes = [priors.sizes.get(n, np.ones(3)) * f / true_scale for n, f in zip(names, off)]
    est = estimate_scale(priors, names, sizes)
    assert est.metres_per_unit == pytest.approx(true_scale, rel=0.05)
    assert (est.source, est.objects, est.outliers) == ("estimated", 5, 1)
    assert est.describe() == "estimated from 5 objects (1 outlier left out)"
    # the plain median over every object, fragment included, would be further off
    votes = [np.median(np.log(priors.sizes[n] / s)) for n, s in zip(names, sizes) if n in priors.sizes]
    plain = math.exp(float(np.median(votes)))
    assert abs(math.log(plain / true_scale)) > abs(math.log(est.metres_per_unit / true_scale))


def test_nothing_to_estimate_from_is_scale_one_with_a_note():
    est = estimate_scale(SizePriors.load(), ["violin", "thing"], [np.ones(3), np.ones(3)])
    assert (est.metres_per_unit, est.source) == (1.0, "default")
    assert "no object of a class with a size prior" in est.describe()
    assert estimate_scale(SizePriors.load(), [], []).source == "default"


# ------------------------------------------------------------------------------------------ in detect


@pytest.mark.parametrize("k", [10.0, 0.1])
def test_a_scene_in_other_units_gives_the_same_detections(k):
    """The room in decimetres (k = 10) or in units of 10 m (k = 0.1): same classes and scores, boxes k times
    the metric ones, same yaws; the scale estimated is 1/k times the metric scene's."""
    cloud = room()
    base = detect(cloud, DetectOptions(), **QUIET)
    other = detect(scaled(cloud, k), DetectOptions(), **QUIET)
    assert base.scale.source == other.scale.source == "estimated" and base.scale.objects >= 4
    assert other.scale.metres_per_unit * k == pytest.approx(base.scale.metres_per_unit, rel=1e-3)
    a, b = by_class(base), by_class(other)
    assert sorted(a) == sorted(b) == sorted(CLASSES[:-1])
    for name in a:
        assert b[name].score == pytest.approx(a[name].score, abs=1e-3), name
        np.testing.assert_allclose(b[name].center, k * a[name].center, atol=1e-3 * k, err_msg=name)
        np.testing.assert_allclose(b[name].size, k * a[name].size, atol=1e-3 * k, err_msg=name)
        assert abs(math.degrees(math.remainder(b[name].yaw - a[name].yaw, 2 * math.pi))) < 1.0, name
        assert b[name].symmetric == a[name].symmetric
    assert not a["chair"].symmetric and abs(math.degrees(math.remainder(a["chair"].yaw - 0.7, 2 * math.pi))) < 5


def test_a_scene_in_decimetres_read_as_metres_loses_its_objects():
    """What the estimate is for: at scale 1 every object of the 10x scene is ten times its class's size."""
    result = detect(scaled(room(), 10.0), DetectOptions(scale=1.0), **QUIET)
    assert result.detections == [] and result.rejected["size prior"] == 5
    assert (result.scale.metres_per_unit, result.scale.source) == (1.0, "given")


def test_a_lone_wrong_sized_object_is_still_dropped_among_right_sized_ones():
    """A 4 cm "chair" with four metric objects: the consensus leaves it out of the estimate, and the prior drops
    it. (Alone, the estimate would make it chair-sized: see test_size_prior_drops_a_box_far_from_its_class_size.)"""
    parts = [
        (mug([-0.45, -0.4, 0.05], 2.0), 0),
        (box_surface([0.35, -0.45, 0.025], [0.24, 0.17, 0.05], 0.5), 1),
        (box_surface([-0.45, 0.35, 0.055], [0.25, 0.13, 0.11], -0.3), 2),
        (box_surface([0.3, 0.3, 0.02], [0.04, 0.04, 0.04], 0.0), 3),
        (box_surface([0.0, -0.05, 0.03], [0.07, 0.07, 0.06], 0.2), 4),
        (floor(), 5),
    ]
    result = detect(scaled(cloud_of(parts, CLASSES), 3.0), DetectOptions(min_points=10), **QUIET)
    assert (result.scale.objects, result.scale.outliers) == (4, 1)
    assert result.scale.metres_per_unit == pytest.approx(1 / 3, rel=0.2)
    assert sorted(by_class(result)) == ["book", "mug", "rubik cube", "tissue box"]
    assert result.rejected["size prior"] == 1


class AspectClassifier:
    """A stand-in for the depth-map classifier that names an instance by its shape alone (as CLIP on depth
    maps would: they are normalised to the unit sphere): flat -> book, else tissue box."""

    def classify(self, points: torch.Tensor, names: list[str]) -> torch.Tensor:
        ext = points.amax(0) - points.amin(0)
        flat = float(ext[2]) < 0.2 * float(ext[:2].max())
        probs = torch.full((len(names),), 0.01)
        probs[names.index("book" if flat else "tissue box")] = 1.0
        return probs / probs.sum()


@pytest.mark.parametrize("k", [1.0, 10.0])
def test_an_unlabelled_cloud_is_scaled_by_its_named_instances(k):
    """No labels: the instances named by the image cue vote for the scale before the prior is applied."""
    parts = [
        (box_surface([0.3, -0.3, 0.025], [0.24, 0.17, 0.05], 0.5), 0),
        (box_surface([-0.3, 0.3, 0.055], [0.25, 0.13, 0.11], -0.3), 0),
        (box_surface([-0.3, -0.3, 0.025], [0.26, 0.18, 0.04], 1.1), 0),
        (floor(), 0),
    ]
    cloud = scaled(cloud_of(parts, ["thing"]), k)
    cloud.label[:] = -1
    cloud.classes = []
    opts = DetectOptions(classes=["book", "tissue box"], background=[])
    result = detect(cloud, opts, depth=AspectClassifier(), **QUIET)
    assert result.scale.source == "estimated" and result.scale.objects == 3
    assert result.scale.metres_per_unit * k == pytest.approx(1.0, rel=0.1)
    assert sorted(d.name for d in result.detections) == ["book", "book", "tissue box"]
    forced = detect(cloud, dataclasses.replace(opts, scale=1.0), depth=AspectClassifier(), **QUIET)
    assert len(forced.detections) == (3 if k == 1.0 else 0)


def test_the_command_takes_a_scale_and_says_which_it_used(tmp_path, capsys):
    """``--scale`` is used as given; without it the estimate is written and printed."""
    write_ply(tmp_path / "room.ply", scaled(room(), 10.0))
    args = ["detect", str(tmp_path / "room.ply"), "--up", "0", "0", "1", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "given.json"), "--scale", "0.1"]) == 0
    assert "scale 0.1 m per scene unit: given" in capsys.readouterr().out
    given = json.loads((tmp_path / "given.json").read_text())
    assert (given["scale"], given["scale_from"]) == (0.1, "given")
    assert main([*args, "--output", str(tmp_path / "estimated.json")]) == 0
    assert "m per scene unit: estimated from 5 objects" in capsys.readouterr().out
    estimated = json.loads((tmp_path / "estimated.json").read_text())
    assert estimated["scale_from"] == "estimated from 5 objects" and 0.07 < estimated["scale"] < 0.14
    assert sorted(b["class"] for b in given["boxes"]) == sorted(b["class"] for b in estimated["boxes"])
    assert len(given["boxes"]) == 5
    assert main([*args, "--output", str(tmp_path / "metres.json"), "--scale", "1"]) == 0
    assert json.loads((tmp_path / "metres.json").read_text())["boxes"] == []
    assert main([*args, "--scale", "-1"]) == 2
