"""scripts/bench_clock.py's pure parts on the torch path: the split (test views every 8th by name, validation from
the remaining photos, no overlap) and the clock (the untimed warm-up is left out, the measured seconds cover the
steps, the schedule follows the clock's fraction). nerfacc is not imported."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bench_scripts import load_script

from ovseg3d.cli import main

clock = load_script("bench_clock")

SCENE_ARGS = ["--width", "40", "--height", "30", "--n-views", "20", "--n-annotated", "0", "--supersample", "1"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "s"
    assert main(["synth", str(root), "--format", "transforms", *SCENE_ARGS]) == 0
    return root


@pytest.mark.parametrize("n", [1, 9, 20, 252, 292])
def test_split_test_every_8th_validation_from_the_rest(n):
    split = clock.split_views(n)
    assert split.test == list(range(0, n, 8))
    assert set(split.train) | set(split.val) | set(split.test) == set(range(n))
    assert not set(split.train) & set(split.val) and not set(split.val) & set(split.test)
    assert not set(split.train) & set(split.test)
    rest = [i for i in range(n) if i % 8]
    assert split.val == rest[4::8]  # every 8th of the training photos, from the 5th
    assert split.train == sorted(split.train) and split.val == sorted(split.val)


def test_split_of_bonsai_size():
    split = clock.split_views(292)  # mip-NeRF 360's bonsai: 37 held-out views
    assert (len(split.test), len(split.val), len(split.train)) == (37, 32, 223)


def test_scene_split_matches_the_loaders_held_out_views(scene_dir):
    cfg = clock.ovseg3d_config("tiny", scene_dir, "cpu")
    from ovseg3d.train import scene_of

    scene = scene_of(cfg)
    split = clock.scene_split(scene)
    assert split.test == scene.eval_ids == [0, 8, 16]
    assert split.val and not set(split.val) & set(scene.eval_ids)
    names = [scene.image_paths[i].name for i in range(len(scene.images))]
    assert names == sorted(names)
    with pytest.raises(ValueError, match="sorted-name"):
        clock.scene_split(dataclasses.replace(scene, eval_ids=[1, 9]))


class FakeClock:
    """A clock that each step advances by ``dt``; counts synchronisations."""

    def __init__(self, dt: float) -> None:
        self.now, self.dt, self.syncs = 100.0, dt, 0

    def __call__(self) -> float:
        return self.now

    def step(self, i: int) -> None:
        self.now += self.dt

    def sync(self) -> None:
        self.syncs += 1


def test_run_clocked_by_seconds_reads_every_check_and_stops_past_the_budget():
    fake, fractions = FakeClock(0.1), []
    steps, seconds = clock.run_clocked(fake.step, fake.sync, fractions.append, seconds=5.0, clock=fake)
    assert steps == 60  # 20 steps (2 s) a read: 2, 4, then 6 s >= 5
    assert seconds == pytest.approx(6.0)
    assert fractions == [0.0, pytest.approx(0.4), pytest.approx(0.8), 1.0]
    assert fake.syncs == 1 + 3 + 1  # before, at each read, after


def test_run_clocked_by_steps():
    fake, fractions = FakeClock(0.5), []
    steps, seconds = clock.run_clocked(fake.step, fake.sync, fractions.append, steps=4, clock=fake)
    assert (steps, seconds) == (4, pytest.approx(2.0))
    assert fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError):
        clock.run_clocked(fake.step, fake.sync, fractions.append, seconds=1.0, steps=3)


class FakeRun:
    def __init__(self, fake: FakeClock, log: list) -> None:
        self.fake, self.log, self.steps = fake, log, 0
        log.append(self)

    def step(self, i: int) -> None:
        self.fake.step(i)
        self.steps += 1

    def set_progress(self, fraction: float) -> None:
        pass


def test_clocked_run_leaves_the_warm_up_out():
    fake, built = FakeClock(0.25), []
    run, steps, seconds, warm = clock.clocked_run(
        lambda throwaway: FakeRun(fake, built), torch.device("cpu"), steps=8, warmup=20, clock=fake
    )
    assert len(built) == 2 and built[0].steps == 20 and run is built[1] and run.steps == 8
    assert warm == pytest.approx(5.0) and seconds == pytest.approx(2.0)  # 20 warm-up steps not in the 8 steps' 2 s


def test_ovseg3d_trainer_driven_from_outside(scene_dir):
    """The real trainer (tiny preset, torch path): the external seconds cover its steps, its schedule is the clock's
    fraction of the budget, and the warm-up's throwaway trainer is not the one trained."""
    from ovseg3d.train import scene_of

    cfg = clock.ovseg3d_config("tiny", scene_dir, "cpu")
    scene = scene_of(cfg)
    split = clock.scene_split(scene)
    scene = dataclasses.replace(scene, train_ids=split.train)
    cfg = clock.ovseg3d_for_scene(cfg, scene)
    device = torch.device("cpu")

    def build(seconds: float, steps: int, throwaway: bool):
        return clock.Ovseg3dRun(cfg, scene, device, 1.0 if throwaway and seconds else seconds, 0 if seconds else steps)

    run, steps, seconds, warm = clock.clocked_run(lambda t: build(0.0, 12, t), device, steps=12, warmup=3)
    t = run.trainer
    assert steps == t.step == 12 and t.progress() == 1.0
    assert len(t.images) == len(split.train)  # the validation views are not trained on
    assert seconds >= t.elapsed > 0  # the trainer's own per-step times lie inside the external clock's
    assert warm > 0

    run, steps, seconds, _ = clock.clocked_run(lambda t: build(0.3, 0, t), device, seconds=0.3, warmup=2)
    assert steps % clock.CHECK_EVERY == 0 and seconds >= 0.3
    # the schedule saw the fraction of the last read (capped at 1), not the trainer's own timer
    assert run.trainer.elapsed == pytest.approx(run.fraction * 0.3) and run.fraction == 1.0
    rgb = run.render(scene, split.test[0])
    assert rgb.shape == (scene.height, scene.width, 3)


def test_summary_median_and_range():
    runs = [
        {"method": "m", "budget": "5 steps", "test_psnr": p, "test_ssim": 0.5, "val_psnr": None, "steps": 5}
        for p in (20.0, 22.0, 21.0)
    ]
    for r in runs:
        r.update(train_view_psnr=1.0, train_seconds=1.0)
    s = clock.summarise(runs)["m 5 steps"]
    assert s["test_psnr"] == {"median": 21.0, "min": 20.0, "max": 22.0, "n": 3}
    assert "val_psnr" not in s
