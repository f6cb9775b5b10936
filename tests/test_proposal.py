"""Proposal sampling for unbounded scenes (mip-NeRF 360 / nerfacto): spacing, inverse transform sampling, the
interlevel and distortion losses, and proposal networks that learn where a known density is."""

from __future__ import annotations

import pytest
import torch

from ovseg3d.render.proposal import (
    ProposalConfig,
    ProposalSampler,
    dense_weights,
    interlevel_loss,
    make_spacing,
    outer_bound,
    sample_from_histogram,
    uniform_edges,
)
from ovseg3d.render.volume import distortion_loss
from ovseg3d.train import resolve_sampler

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


def test_distortion_loss_of_a_small_ray_equals_the_hand_computed_value():
    # one ray, intervals [0, 1] and [1, 3] with weights 0.5 and 0.25: midpoints 0.5 and 2
    # sum_ij w_i w_j |m_i - m_j| = 2 * 0.5 * 0.25 * 1.5 = 0.375; 1/3 sum_i w_i^2 d_i = (0.25 * 1 + 0.0625 * 2) / 3 = 0.125
    w = torch.tensor([0.5, 0.25])
    got = distortion_loss(w, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.0]), torch.tensor([0, 0]), 1)
    assert float(got[0]) == pytest.approx(0.5, abs=1e-6)


def test_spacing_is_linear_in_the_box_then_linear_in_disparity_out_to_the_far_distance():
    origins = torch.tensor([[-3.0, 0.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0]])
    sp = make_spacing(origins, dirs, AABB, 1000.0, torch.tensor([0.1]), None)
    t = sp.to_t(torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]]))[0]
    assert t[0] == pytest.approx(0.1) and t[2] == pytest.approx(4.0)  # the box's exit at t = 4 is s = 0.5
    assert t[1] == pytest.approx(0.5 * (0.1 + 4.0))
    assert 1.0 / t[3] == pytest.approx(0.5 * (1 / 4.0 + 1 / 1000.0))  # halfway in disparity
    assert t[4] == pytest.approx(1000.0, rel=1e-5)
    s = torch.linspace(0, 1, 101)[None]
    assert bool((sp.to_t(s)[0].diff() > 0).all())  # monotone


def test_inverse_transform_sampling_puts_the_new_intervals_where_the_mass_is():
    edges = uniform_edges(1, 10, False, torch.device("cpu"))
    weights = torch.zeros(1, 10)
    weights[0, 6] = 1.0  # all the mass in [0.6, 0.7]
    new = sample_from_histogram(edges, weights, 20, stratified=False)
    mids = 0.5 * (new[0, 1:] + new[0, :-1])
    inside = ((mids > 0.6) & (mids < 0.7)).float().mean()
    assert float(inside) > 0.8  # the padding leaves a few elsewhere
    assert bool((new.diff(dim=-1) >= 0).all())
    jittered = sample_from_histogram(edges, weights, 20, stratified=True)
    assert not torch.equal(jittered, new) and bool((jittered.diff(dim=-1) >= 0).all())


def test_outer_bound_and_interlevel_loss():
    field_edges = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
    field_w = torch.zeros(1, 10)
    field_w[0, 3] = 0.9
    # a proposal with the same mass in a bin that covers the field's: the bound holds, no loss
    good_edges = torch.tensor([[0.0, 0.25, 0.45, 1.0]])
    good_w = torch.tensor([[0.0, 0.9, 0.05]], requires_grad=True)
    assert float(outer_bound(field_edges, good_edges, good_w.detach())[0, 3]) == pytest.approx(0.9)
    assert float(interlevel_loss(field_edges, field_w, [(good_edges, good_w)]).detach()) == pytest.approx(0.0, abs=1e-6)
    # a proposal that puts the mass elsewhere is penalised, and the gradient raises the bin under the field's mass
    bad_w = torch.tensor([[0.0, 0.05, 0.9]], requires_grad=True)
    loss = interlevel_loss(field_edges, field_w, [(good_edges, bad_w)])
    assert float(loss.detach()) > 0.5
    loss.backward()
    assert float(bad_w.grad[0, 1]) < 0 and float(bad_w.grad[0, 2]) == 0.0


class _Sphere(torch.nn.Module):
    """A known density: 50 inside a sphere of radius 0.3 about (0.4, 0, 0), 0 elsewhere."""

    def forward(self, x, aabb, contraction):  # noqa: ANN001
        return 50.0 * ((x - torch.tensor([0.4, 0.0, 0.0])).norm(dim=-1) < 0.3).float()


class _Empty(torch.nn.Module):
    def forward(self, x, aabb, contraction):  # noqa: ANN001
        return torch.zeros(len(x))


def _rays(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from about (-3, 0, 0) through the sphere's neighbourhood."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.tensor([-3.0, 0.0, 0.0]) + 0.05 * torch.randn(n, 3, generator=g)
    target = torch.tensor([0.4, 0.0, 0.0]) + 0.15 * torch.randn(n, 3, generator=g)
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    return origins, dirs


def _share_in_sphere(sampler: ProposalSampler, origins: torch.Tensor, dirs: torch.Tensor) -> float:
    samples = sampler.march(origins, dirs)
    inside = (samples.positions(origins, dirs) - torch.tensor([0.4, 0.0, 0.0])).norm(dim=-1) < 0.35
    return float(inside.float().mean())


def test_proposals_of_a_known_density_concentrate_the_samples_on_the_sphere():
    sampler = ProposalSampler(AABB, "sphere", ProposalConfig(samples=(64, 32), field_samples=16))
    sampler.nets = torch.nn.ModuleList([_Sphere(), _Sphere()])
    origins, dirs = _rays(64)
    share = _share_in_sphere(sampler, origins, dirs)
    # the sphere holds about 0.6 of the 4 units of these rays inside the box, a small part of the whole ray
    uniform = ProposalSampler(AABB, "sphere", ProposalConfig(samples=(64,), field_samples=16))
    uniform.nets = torch.nn.ModuleList([_Empty()])
    assert share > 0.6 > 3 * _share_in_sphere(uniform, origins, dirs)


def test_proposal_networks_learn_where_the_field_weight_is():
    """The proposal networks, trained with the interlevel loss alone against a field with a known sphere of
    density, end up putting most of the field's samples on the sphere (they start spread along the ray)."""
    torch.manual_seed(0)
    cfg = ProposalConfig(samples=(48, 24), field_samples=16, log2_hashmap_size=12, max_resolutions=(64, 64))
    sampler = ProposalSampler(AABB, "sphere", cfg)
    field = _Sphere()
    origins, dirs = _rays(256, seed=1)
    before = _share_in_sphere(sampler, origins, dirs)
    opt = torch.optim.Adam(sampler.parameters(), lr=1e-2, eps=1e-15)
    for step in range(150):
        o, d = _rays(256, seed=step + 2)
        spacing, edges, rounds = sampler.propose(o, d, None, None, stratified=True)
        t = spacing.to_t(edges)
        mid = 0.5 * (t[:, 1:] + t[:, :-1])
        sigma = field(o[:, None] + mid[..., None] * d[:, None], AABB, "sphere")
        w = dense_weights(sigma, t)
        loss = interlevel_loss(edges, w, [(r.edges, r.weights) for r in rounds])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _share_in_sphere(sampler, origins, dirs)
    assert before < 0.3 and after > 0.6, (before, after)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_proposal_sampling_on_cuda_equals_the_cpu():
    torch.manual_seed(0)
    sampler = ProposalSampler(AABB, "sphere", ProposalConfig(), grid_impl="torch")
    origins, dirs = _rays(512)
    cpu = sampler.march(origins, dirs, near=torch.full((512,), 0.1))
    gpu = sampler.to("cuda").march(origins.cuda(), dirs.cuda(), near=torch.full((512,), 0.1, device="cuda"))
    torch.testing.assert_close(gpu.t_starts.cpu(), cpu.t_starts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.t_ends.cpu(), cpu.t_ends, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nerfacc_and_torch_proposal_paths_agree_on_cuda():
    """nerfacc's kernels (importance_sampling, searchsorted) and the dense torch code: the same field samples
    through both proposal rounds of a sphere-learning sampler, the same interlevel loss, and jittered samples
    from the same distribution."""
    from ovseg3d import accel

    if accel.nerfacc("cuda") is None:
        pytest.skip("nerfacc (pip install ovseg3d[cuda]) is not installed or its CUDA ops did not build")
    torch.manual_seed(0)
    sampler = ProposalSampler(AABB, "sphere", ProposalConfig(), device="cuda", grid_impl="torch")
    with torch.no_grad():  # a density with structure, so that the histograms are far from uniform
        for net in sampler.nets:
            net.mlp[-1].bias.fill_(1.0)
            for p in net.grid.parameters():
                p.normal_(0.0, 1.0)
    origins, dirs = (x.cuda() for x in _rays(2048))
    near = torch.full((2048,), 0.1, device="cuda")
    fast = sampler.march(origins, dirs, near=near)
    sampler.backend = "torch"
    dense = sampler.march(origins, dirs, near=near)
    torch.testing.assert_close(fast.t_starts, dense.t_starts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.t_ends, dense.t_ends, rtol=1e-4, atol=1e-4)

    _, edges, rounds = sampler.propose(origins, dirs, near, None, stratified=True)
    w = torch.rand(edges.shape[0], edges.shape[1] - 1, device="cuda") * 0.2
    hists = [(r.edges, r.weights) for r in rounds]
    torch.testing.assert_close(
        interlevel_loss(edges, w, hists, backend="auto"),
        interlevel_loss(edges, w, hists, backend="torch"),
        rtol=1e-3,
        atol=1e-6,
    )
    # jittered: one offset per ray in both, so the mean field sample sits at the same place along the rays
    s_fast = sample_from_histogram(rounds[-1].edges, rounds[-1].weights, 24, True, "auto")
    s_dense = sample_from_histogram(rounds[-1].edges, rounds[-1].weights, 24, True, "torch")
    assert torch.all(s_fast[:, 1:] >= s_fast[:, :-1])
    assert abs(float(s_fast.mean() - s_dense.mean())) < 0.01


def test_an_unknown_proposal_backend_is_refused():
    with pytest.raises(ValueError, match="unknown proposal backend"):
        ProposalSampler(AABB, "sphere", ProposalConfig(), grid_impl="torch", backend="jax")


def test_an_unbounded_scene_trains_with_proposals_and_says_so(tmp_path, capsys):
    """``--sampler proposal`` on a scene without a given box trains, says so and evaluates; the run's config
    records it, and a run folder saved before the option existed reads as the occupancy grid it was trained with."""
    from ovseg3d.cli import main
    from ovseg3d.run import load_run_config

    scene, run = tmp_path / "scene", tmp_path / "run"
    toy = ["--width", "64", "--height", "48", "--n-views", "10", "--supersample", "1", "--outdoor"]
    assert main(["synth", str(scene), *toy, "--cameras", "orbit", "--format", "colmap", "--seed", "2"]) == 0
    capsys.readouterr()
    train = ["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu", "--teacher", "none"]
    assert main([*train, "--sampler", "proposal"]) == 0
    assert "samples: proposal networks, 64 -> 32 -> 24 per ray" in capsys.readouterr().out
    assert load_run_config(run).sampler == "proposal"
    assert main(["eval", str(run), "--no-renders"]) == 0
    assert "train " in capsys.readouterr().out
    config = run / "config.toml"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("sampler")))
    assert load_run_config(run).sampler == "grid"


def test_auto_is_the_occupancy_grid_and_the_log_says_it(tmp_path, capsys):
    from ovseg3d.cli import main

    scene, run = tmp_path / "scene", tmp_path / "run"
    assert main(["synth", str(scene), "--width", "48", "--height", "36", "--n-views", "6", "--supersample", "1"]) == 0
    capsys.readouterr()
    train = ["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu", "--teacher", "none"]
    assert main([*train, "--steps", "5"]) == 0
    assert "samples: occupancy grid, 16^3 cells" in capsys.readouterr().out
    assert resolve_sampler("auto", "sphere") == "grid" and resolve_sampler("proposal", "none") == "proposal"


def test_a_held_grid_updates_its_opacities_but_keeps_every_cell_occupied():
    from ovseg3d.render.occupancy import OccupancyGrid

    grid = OccupancyGrid(AABB, 8, "sphere")
    empty = lambda x: torch.zeros(len(x))  # noqa: E731
    grid.update(0, empty, warmup_steps=4, hold_occupied=True)
    assert grid.occupied_fraction() == 1.0 and float(grid.occs.max()) == 0.0
    grid.update(1, empty, warmup_steps=4)
    assert grid.occupied_fraction() == 0.0


def test_far_distance_is_read_once_and_follows_a_new_box():
    from ovseg3d.syncs import count_syncs

    sampler = ProposalSampler(AABB, "sphere", ProposalConfig(samples=(16,), field_samples=8), grid_impl="torch")
    first = sampler.far_distance()
    syncs = count_syncs(lambda: [sampler.far_distance() for _ in range(5)])
    assert sum(syncs.values()) == 0  # kept: no value read back again
    state = sampler.state_dict()
    state["aabbs"] = state["aabbs"] * 2.0  # a box twice the size, as a checkpoint of another scene brings
    sampler.load_state_dict(state)
    assert sampler.far_distance() == pytest.approx(2.0 * first)


def test_a_bounded_box_gives_finite_samples_up_to_where_the_rays_leave_it():
    # without a contraction every ray ends in the box (share 1 of s inside it): its last edge, s = 1, maps to the exit
    from ovseg3d.render.occupancy import ray_aabb

    sampler = ProposalSampler(AABB, "none", ProposalConfig(samples=(32, 16), field_samples=8), grid_impl="torch")
    origins, dirs = _rays(128)
    spacing, edges, rounds = sampler.propose(origins, dirs, None, None, stratified=False)
    for r in rounds:
        t = spacing.to_t(r.edges)
        assert torch.isfinite(t).all() and torch.isfinite(r.weights).all()
    _, t_exit = ray_aabb(origins, dirs, sampler.aabb)
    torch.testing.assert_close(spacing.to_t(rounds[0].edges)[:, -1], t_exit)
    samples = sampler.march(origins, dirs)
    assert torch.isfinite(samples.t_ends).all() and (samples.t_ends <= t_exit[samples.ray_indices] + 1e-4).all()
