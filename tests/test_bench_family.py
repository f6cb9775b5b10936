"""The scene-family and batch benchmarks (ovseg3d.bench.family, ovseg3d.bench.batch): their generated scenes resolve,
an unknown variant or option fails before anything runs, and the gravity check's frames are what it says."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import numpy as np
import pytest

from ovseg3d.bench import batch, family, harness
from ovseg3d.synth.config import SynthConfig


def test_the_family_scenes_resolve_to_the_members_of_bench_family():
    for name in (*family.BENCHMARK.scenes, "outdoor_lens5", *batch.BENCHMARK.scenes):
        SynthConfig(**harness.SCENES[name].synth)  # a setting the generator lacks would fail here
    assert family.BENCHMARK.scenes == (
        *[f"forward_s{s}_tilt{t}" for s, t in zip(range(1, 6), (10, 16, 22, 29, 35), strict=True)],
        "orbit_s1",
        "orbit_s2",
        "outdoor_s1",
    )
    assert harness.SCENES["forward_s2_tilt16"].synth == {"seed": 2, "elevation_deg": 16.25}
    assert harness.SCENES["outdoor_lens5"].synth == {**harness.OUTDOOR, "seed": 5}


@pytest.mark.parametrize("bench", [family.BENCHMARK, batch.BENCHMARK], ids=lambda b: b.name)
def test_an_unknown_variant_or_option_fails_before_anything_runs(tmp_path, bench):
    for kwargs, words in [({"variants": ["nope"]}, "unknown variant"), ({"sets": ["no_such=1"]}, "no_such")]:
        with pytest.raises(harness.BenchError, match=words):
            harness.run(bench, tmp_path / "r.json", tmp_path, **kwargs)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "scenes").exists()


def test_a_spread_variant_trains_as_its_base_and_the_far_walls_combine():
    assert harness.select(family.BENCHMARK, None, None) == (list(family.MEMBERS), ["default"])  # not every variant
    (case,) = harness.cases(family.BENCHMARK, harness.ROOT, ["orbit_s1"], ["random_background+spread0"])
    assert case.overrides == {**family.BUDGET, "background": "random"}
    (walls,) = harness.cases(
        family.BENCHMARK, harness.ROOT, ["orbit_s1"], ["random_background+no_visibility"], ["distill_steps=100"]
    )
    assert walls.config().occ_visibility_eps == 0.0 and walls.config().distill_steps == 100


@dataclass
class Cloud:
    xyz: np.ndarray
    label: np.ndarray
    classes: list
    voxel_size: float = 0.05


def test_gravity_is_found_in_every_turned_frame_of_a_floor_and_a_table():
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(-2, 2, (4000, 2)), np.zeros(4000)]
    table = np.c_[rng.uniform(-0.5, 0.5, (1000, 2)), np.full(1000, 0.7)]
    cloud = Cloud(np.r_[floor, table], np.r_[np.zeros(4000, int), np.ones(1000, int)], ["floor", "table"])
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)  # level cameras on a circle, looking at the middle
    forward = np.c_[-np.cos(angles), -np.sin(angles), np.zeros(12)]
    right = np.cross(forward, [0.0, 0, 1])
    c2w = np.stack(
        [
            np.c_[right[i], np.cross(right[i], forward[i]), -forward[i], [3 * np.cos(a), 3 * np.sin(a), 1.5]]
            for i, a in enumerate(angles)
        ]
    )
    rotations = family.FRAMES
    assert all(np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1) for r in rotations)
    errors = family.gravity_errors(cloud, family.rolled(c2w, family.ROLL_DEG), rotations)
    assert len(errors) == 7 and max(errors) < 2.0 and np.ptp(errors) < 1e-6, errors  # the same in every frame


def test_the_batch_config_file_is_the_overrides():
    values = {**batch.BUDGET, "background": "random", "teachers": {"kind": "synthetic"}, "proposal_samples": [64, 32]}
    assert tomllib.loads(batch.toml(values)) == values
