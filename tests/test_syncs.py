"""The training steps leave a GPU to run ahead: a geometry step and a distillation step read no value back
from the device in their own code (only the sampler, whose sample counts depend on the data, does), and a
diverged training is still caught, at the next log step, before anything is saved."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from ovseg3d.cli import main
from ovseg3d.config import resolve_base
from ovseg3d.distill import Distiller
from ovseg3d.syncs import count_syncs
from ovseg3d.teachers.config import TeacherConfig
from ovseg3d.train import start_training

SCENE = ["--width", "48", "--height", "36", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]
STEP_CODE = ("ovseg3d/train.py", "ovseg3d/distill.py", "ovseg3d/losses.py")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncs") / "scene"
    assert main(["synth", str(path), *SCENE]) == 0
    return path


def test_the_counter_sees_reads_and_data_dependent_sizes():
    x = torch.randn(100)
    counts = count_syncs(lambda: (float(x.sum()), x[x > 0], torch.nonzero(x), x + 1, x.sum() * 2))
    ops = Counter()
    for (op, _), n in counts.items():
        ops[op] += n
    assert ops["_local_scalar_dense"] == 1 and ops["index[bool]"] == 1 and ops["nonzero"] >= 1
    assert set(ops) <= {"_local_scalar_dense", "index[bool]", "nonzero"}  # x + 1 and the sum are not counted
    assert {at for _, at in counts} == {"(outside ovseg3d)"}


def test_a_geometry_and_a_distillation_step_read_nothing_back_outside_the_sampler(scene, tmp_path):
    cfg = resolve_base("tiny", None)
    cfg = dataclasses.replace(
        cfg, scene=scene, output=tmp_path / "run", device="cpu", teachers=TeacherConfig(kind="synthetic"), seed=0
    )
    t = start_training(cfg)
    for _ in range(10):  # the occupancy grid's warm-up
        t.trainer.train_step()
    distiller = Distiller(t.trainer, t.features)
    distiller.train_step()

    def steps() -> None:
        for _ in range(3):
            t.trainer.train_step()
            distiller.train_step()

    counts = count_syncs(steps)
    reads = {at for (op, at) in counts if op == "_local_scalar_dense"}
    assert any(at.startswith("ovseg3d/render/occupancy.py") for at in reads)  # the torch marcher's sizes
    # the one read of a step's own code: how many of the marched rays fit the sample budget
    own = {at for at in reads if at.startswith(STEP_CODE) and "(_cap_samples)" not in at}
    assert own == set(), own
    assert not {at for (op, at) in counts if op == "index[bool]" and at.startswith(STEP_CODE)}


def test_a_diverging_training_stops_at_the_next_log_step_with_one_line(scene, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu", "--teacher", "none"]
    assert main([*args, "--lr", "1e6"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ovseg3d ")]
    assert len(lines) == 1 and "diverged by step 5" in lines[0] and "--lr 1e+06" in lines[0], lines
    assert not run.exists()  # it never saved a checkpoint: no dead run folder


def test_a_step_whose_samples_all_left_the_grid_has_zero_gradients():
    from ovseg3d.field.hashgrid import HashGridConfig, TorchHashGrid

    grid = TorchHashGrid(HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10))
    out = grid(torch.zeros(0, 3))
    out.sum().backward()
    assert out.shape == (0, 8) and grid.params.grad is not None and not grid.params.grad.any()


def test_op_counter_counts_kernels_not_views_by_function():
    from ovseg3d.field.radiance import spherical_harmonics
    from ovseg3d.syncs import count_ops

    d = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    counts = count_ops(lambda: (spherical_harmonics(d, 4), d.view(-1), d.t(), d[:, 0]))
    # the SH basis: 4 gathers, 2 products, ones_like, cat and one matmul; the views below it count nothing
    assert counts == {"ovseg3d/field/radiance.py (spherical_harmonics)": 9}


def test_a_random_background_starts_at_its_share_of_the_budget(scene, tmp_path, monkeypatch):
    """--background random --background-from 0.5: the rays end on black for the first half of the steps and on a
    new random colour at each step after; black stays black throughout."""
    import ovseg3d.train as train

    seen: list[torch.Tensor | None] = []
    render = train.render_rays

    def spy(*args, **kwargs):
        seen.append(kwargs.get("background"))
        return render(*args, **kwargs)

    monkeypatch.setattr(train, "render_rays", spy)
    base = dataclasses.replace(
        resolve_base("tiny", None), scene=scene, device="cpu", teachers=TeacherConfig(kind="none"), steps=8
    )
    t = start_training(dataclasses.replace(base, output=tmp_path / "r", background="random", background_from=0.5))
    for _ in range(8):
        t.trainer.train_step()
    assert [b is None for b in seen] == [True] * 4 + [False] * 4
    assert not torch.equal(seen[-1], seen[-2]) and 0 <= float(seen[-1].min()) and float(seen[-1].max()) <= 1
    seen.clear()
    t = start_training(dataclasses.replace(base, output=tmp_path / "b", background="black", background_from=0.5))
    for _ in range(8):
        t.trainer.train_step()
    assert seen == [None] * 8


def test_the_opacity_loss_asks_every_ray_to_end_on_a_surface(scene, tmp_path, monkeypatch):
    """--opacity-weight: mean (1 - opacity)^2, 0 for opaque rays, larger as more light leaves; the trainer adds it
    over its training rays only when asked."""
    from ovseg3d import losses

    assert float(losses.opacity_loss(torch.ones(5))) == 0.0
    assert float(losses.opacity_loss(torch.tensor([0.5, 1.0]))) == 0.125
    assert float(losses.opacity_loss(torch.zeros(3))) > float(losses.opacity_loss(torch.full((3,), 0.5)))
    seen: list[int] = []
    loss = losses.opacity_loss
    monkeypatch.setattr(losses, "opacity_loss", lambda opacity: seen.append(len(opacity)) or loss(opacity))
    base = dataclasses.replace(
        resolve_base("tiny", None), scene=scene, device="cpu", teachers=TeacherConfig(kind="none"), steps=4
    )
    for weight, name in ((0.0, "off"), (0.05, "on")):
        t = start_training(dataclasses.replace(base, output=tmp_path / name, opacity_weight=weight))
        for _ in range(3):
            t.trainer.train_step()
        assert (len(seen) == 3 and min(seen) > 0) if weight else seen == []
