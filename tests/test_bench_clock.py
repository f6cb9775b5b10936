"""``ovseg3d bench run clock`` (ovseg3d/bench/clock.py): the split (test views every 8th by name, validation from the
remaining photos, no overlap), the clock (the untimed warm-up is left out, the measured seconds cover the steps, the
schedule follows the clock's fraction), ovseg3d's trainer driven from outside through the harness, and the merge of
several calls' results. nerfacc is imported only where it is installed with its examples in ``.nerfacc/``; the
budget in seconds on a GPU only with CUDA."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types

import pytest
import torch

from ovseg3d.bench import clock, harness
from ovseg3d.bench.cli import benchmarks
from ovseg3d.cli import main

SCENE_ARGS = ["--width", "40", "--height", "30", "--n-views", "20", "--n-annotated", "0", "--supersample", "1"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "s"
    assert main(["synth", str(root), "--format", "transforms", *SCENE_ARGS]) == 0
    return root


def case(folder, variant="ovseg3d", device="cpu", **overrides):
    return harness.Case("clock", "s", folder, variant, overrides, 0, folder.parent, device, "tiny")


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


def test_setup_splits_as_the_loader_holds_out_and_trains_on_no_validation_view(scene_dir):
    s = clock.setup(case(scene_dir))
    assert s.split.test == s.scene.eval_ids == [0, 8, 16]
    assert s.split.val and not set(s.split.val) & set(s.scene.eval_ids)
    assert list(s.scene.train_ids) == s.split.train  # the validation views are not trained on
    names = [s.scene.image_paths[i].name for i in range(len(s.scene.images))]
    assert names == sorted(names)
    assert s.cfg.teachers.kind == "none" and s.ex is None  # no nerfacc unless a nerfacc method asks
    assert clock.setup(case(scene_dir, seed=5, steps=3)) is s  # seeds and budgets: one load
    with pytest.raises(ValueError, match="sorted-name"):
        clock.scene_split(dataclasses.replace(s.scene, eval_ids=[1, 9]))


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
    assert fake.syncs == 2  # before and after: no read between
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


def test_clocked_run_synchronises_cuda_at_each_read(monkeypatch):
    fake, built, calls = FakeClock(0.1), [], []
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda name=name: calls.append(name))
    device = types.SimpleNamespace(type="cuda")
    clock.clocked_run(lambda throwaway: FakeRun(fake, built), device, seconds=5.0, warmup=2, clock=fake)
    assert calls.count("synchronize") == 1 + 1 + 3 + 1  # after the warm-up; before, at each of 3 reads, after
    assert calls.index("reset_peak_memory_stats") < calls.index("synchronize", 1)  # the peak: the timed run's


def test_ovseg3d_trainer_driven_from_outside(scene_dir):
    """The real trainer (tiny preset, torch path): the external seconds cover its steps, its schedule is the clock's
    fraction of the budget, and the warm-up's throwaway trainer is not the one trained."""
    s, device = clock.setup(case(scene_dir)), torch.device("cpu")

    def build(seconds: float, steps: int, throwaway: bool):
        return clock.Ovseg3dRun(s.cfg, s.scene, device, 1.0 if throwaway and seconds else seconds, steps)

    run, steps, seconds, warm = clock.clocked_run(lambda t: build(0.0, 12, t), device, steps=12, warmup=3)
    t = run.trainer
    assert steps == t.step == 12 and t.progress() == 1.0
    assert len(t.images) == len(s.split.train)  # the validation views are not trained on
    assert seconds >= t.elapsed > 0  # the trainer's own per-step times lie inside the external clock's
    assert warm > 0

    run, steps, seconds, _ = clock.clocked_run(lambda t: build(0.3, 0, t), device, seconds=0.3, warmup=2)
    assert steps % clock.CHECK_EVERY == 0 and seconds >= 0.3
    # the schedule saw the fraction of the last read (capped at 1), not the trainer's own timer
    assert run.trainer.elapsed == pytest.approx(run.fraction * 0.3) and run.fraction == 1.0
    rgb = run.render(s.scene, s.split.test[0])
    assert rgb.shape == (s.scene.height, s.scene.width, 3)


def test_declared_and_discovered():
    bench = benchmarks()["clock"]
    assert bench is clock.BENCHMARK and bench.repeats == 3 and bench.scenes == ()
    assert bench.variants["30s"] == {"max_minutes": 0.5} and bench.variants["ovseg3d"] == {}
    assert set(bench.default_variants) == {"ovseg3d", "prop"}
    ref = clock.nerfacc_reference()  # scripts/nerfacc_reference.py, the clock nerfacc's examples run on
    assert (ref.CHECK_EVERY, ref.WARMUP_STEPS) == (clock.CHECK_EVERY, clock.WARMUP_STEPS)
    assert clock.nerfacc_reference() is ref


def test_a_variant_names_one_method(scene_dir):
    for variant in ("30s", "ovseg3d+prop"):
        with pytest.raises(harness.BenchError, match="methods"):
            clock.measure(case(scene_dir, variant))
    with pytest.raises(harness.BenchError, match="CUDA only"):
        clock.measure(case(scene_dir, "occ"))


def test_run_through_the_harness_then_merged(scene_dir, tmp_path, capsys):
    out = tmp_path / "clock.json"
    data = harness.run(
        clock.BENCHMARK, out, tmp_path, [str(scene_dir)], ["ovseg3d+warmup2+val3"], ["steps=6", "max_minutes=0"],
        repeats=2, device="cpu", preset="tiny",
    )  # fmt: skip
    figures = data["figures"]
    key = "s/ovseg3d+warmup2+val3"
    assert figures[f"{key}/steps"]["runs"] == [6, 6]
    assert {f"{key}/{name}" for name in ("val_psnr", "test_psnr_view8", "peak_gib", "warmup_seconds")} <= set(figures)
    assert figures[f"{key}/test_views"]["median"] == 3 and figures[f"{key}/width"]["median"] == 40
    assert 5 < figures[f"{key}/test_psnr"]["median"] < 60
    psnrs = figures[f"{key}/test_psnr"]["runs"]

    other = tmp_path / "other.json"
    second = json.loads(out.read_text())
    second["figures"] = {k: {**v, "runs": [v["runs"][0] + 1]} for k, v in second["figures"].items()}
    second["command"] = "ovseg3d bench run clock --set seed=2"
    other.write_text(json.dumps(second))
    merged = clock.merge([out, tmp_path / "missing.json", other], tmp_path / "merged.json")
    assert merged["figures"][f"{key}/test_psnr"]["runs"] == [*psnrs, round(psnrs[0] + 1, 4)]
    assert merged["figures"][f"{key}/test_psnr"]["max"] == round(psnrs[0] + 1, 4)
    assert merged["merged_from"] == [str(out), str(other)] and "seed=2" in merged["command"]
    assert [c["repeats"] for c in merged["settings"]["calls"]] == [2, 2]
    assert json.loads((tmp_path / "merged.json").read_text())["figures"] == merged["figures"]
    assert key in capsys.readouterr().out  # the table
    with pytest.raises(harness.BenchError, match="none of"):
        clock.merge([tmp_path / "missing.json"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the clock's budget in seconds, synchronised: CUDA")
def test_ovseg3d_on_cuda_by_seconds(scene_dir):
    figures = clock.measure(case(scene_dir, "ovseg3d+warmup2+val0", device="cuda", max_minutes=0.01))
    assert figures["steps"] % clock.CHECK_EVERY == 0 and figures["train_seconds"] >= 0.6
    assert figures["peak_gib"] > 0 and "val_psnr" not in figures


@pytest.mark.skipif(
    not torch.cuda.is_available()
    or importlib.util.find_spec("nerfacc") is None
    or not (harness.ROOT / ".nerfacc/examples/utils.py").is_file(),
    reason="CUDA, nerfacc 0.5.3 and its examples in .nerfacc/ (a CPU's torch stand-ins take ~90 s for this)",
)
def test_nerfacc_prop_on_the_same_clock(scene_dir):
    figures = clock.measure(case(scene_dir, "prop+warmup2+val0", device="cuda", steps=2, max_minutes=0))
    assert figures["steps"] == 2 and figures["last_n_rays"] == 4096 and 0 < figures["test_psnr"] < 60
    assert clock.setup(case(scene_dir, device="cuda")).views.train_ids.tolist() == clock.split_views(20).train
