import math

import pytest
import torch

from ovseg3d.field.hashgrid import HashGridConfig
from ovseg3d.field.radiance import FieldConfig, RadianceField, spherical_harmonics
from ovseg3d.render.occupancy import OccupancyGrid, ray_aabb
from ovseg3d.render.renderer import (
    RenderOptions,
    cull_samples,
    refine_samples,
    render_image_rays,
    render_rays,
    scale_gradient,
)
from ovseg3d.render.volume import (
    RaySamples,
    accumulate,
    distortion_loss,
    render_weights,
    transmittance_and_alpha,
    visibility_mask,
)


def test_weights_match_closed_form_for_constant_density():
    sigma, delta, n = 2.0, 0.05, 40
    w = render_weights(torch.full((n,), sigma), torch.full((n,), delta), torch.zeros(n, dtype=torch.long), 1)
    i = torch.arange(n, dtype=torch.float64)
    expected = torch.exp(-sigma * delta * i) * (1 - math.exp(-sigma * delta))
    torch.testing.assert_close(w.double(), expected, atol=1e-6, rtol=1e-5)
    assert abs(float(w.sum()) - (1 - math.exp(-sigma * delta * n))) < 1e-5


def test_packed_rays_are_independent_and_precise():
    # many dense rays before a short one: the short ray must not see their optical depth
    counts = [200] * 50 + [3]
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    sigmas = torch.full((len(ray_indices),), 100.0)
    sigmas[-3:] = torch.tensor([1.0, 2.0, 3.0])
    deltas = torch.full_like(sigmas, 0.1)
    trans, alpha = transmittance_and_alpha(sigmas, deltas, ray_indices, len(counts))
    torch.testing.assert_close(trans[-3:], torch.tensor([1.0, math.exp(-0.1), math.exp(-0.3)]))
    assert trans[0] == 1.0 and trans[200] == 1.0


def test_visibility_mask_drops_hidden_and_empty_samples():
    sigmas = torch.tensor([0.0, 50.0, 1.0, 1.0])
    deltas = torch.full((4,), 0.5)
    keep = visibility_mask(sigmas, deltas, torch.zeros(4, dtype=torch.long), 1, early_stop_eps=1e-4, alpha_thre=0.01)
    assert keep.tolist() == [False, True, False, False]


def test_accumulate_sums_per_ray():
    w = torch.tensor([0.5, 0.25, 1.0])
    v = torch.tensor([[2.0], [4.0], [3.0]])
    out = accumulate(w, v, torch.tensor([0, 0, 2]), 3)
    assert out[:, 0].tolist() == [2.0, 0.0, 3.0]


def test_ray_aabb_known_answer():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    t0, t1 = ray_aabb(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[0.0, 0.0, -1.0]]), aabb)
    assert (t0.item(), t1.item()) == (4.0, 6.0)
    t0, t1 = ray_aabb(torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, -1.0]]), aabb)
    assert t1.item() < t0.item()  # a miss


def test_march_keeps_only_occupied_cells():
    aabb = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, resolution=4)
    grid.binaries.zero_()
    grid.binaries[0, 1, 2, 3] = True  # cell x in [.25,.5), y in [.5,.75), z in [.75,1)
    o = torch.tensor([[0.3, 0.6, -1.0], [0.9, 0.9, -1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    s = grid.march(o, d, step_size=0.01)
    pts = s.positions(o, d)
    assert len(s) == 25 and (s.ray_indices == 0).all()
    assert ((pts[:, 2] >= 0.75) & (pts[:, 2] < 1.0)).all()


@pytest.mark.parametrize("contraction", ["none", "sphere", "cube"])
def test_grouped_march_keeps_exactly_the_samples_of_testing_every_step(contraction, monkeypatch):
    """The march tests groups of steps against the dilated grid first; it must keep the same samples as
    testing every step's midpoint, in sparse grids where most groups fail."""
    torch.manual_seed(3)
    grid = OccupancyGrid(torch.tensor([-1.0, -0.5, -1.0, 1.0, 1.5, 1.0]), resolution=16, contraction=contraction)
    grid.binaries.copy_(torch.rand(grid.binaries.shape) < 0.03)
    origins = torch.randn(3000, 3) * (2.0 if contraction == "none" else 4.0)
    dirs = torch.nn.functional.normalize(-origins + 0.5 * torch.randn(3000, 3), dim=-1)
    step = 0.01
    assert grid.group_size(step) >= 4  # the grouped path is the one under test
    grouped = grid.march(origins, dirs, step)
    monkeypatch.setattr(OccupancyGrid, "group_size", lambda self, step: 1)
    every = grid.march(origins, dirs, step)
    assert 1000 < len(every) == len(grouped)
    assert torch.equal(grouped.ray_indices, every.ray_indices)
    assert torch.equal(grouped.t_starts, every.t_starts) and torch.equal(grouped.t_ends, every.t_ends)


def test_grid_update_empties_free_space():
    aabb = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, resolution=8)
    ball = lambda x: ((x - 0.5).norm(dim=-1) < 0.2).float()  # noqa: E731
    grid.update(0, ball, warmup_steps=10)
    centers = (torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / 8
    inside = ((centers - 0.5).norm(dim=-1) < 0.1).reshape(8, 8, 8)
    far = ((centers - 0.5).norm(dim=-1) > 0.4).reshape(8, 8, 8)
    assert grid.binaries[0][inside].all() and not grid.binaries[0][far].any()


def test_render_image_rays_with_a_sample_cap_marches_fewer_samples_and_renders_about_the_same():
    torch.manual_seed(0)
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    field = RadianceField(aabb, FieldConfig(HashGridConfig(4, 2, 12, 4, 2.0), 16, 7, 16, 2))
    grid = OccupancyGrid(aabb, resolution=8)  # all occupied: every step is marched
    origins = torch.tensor([[0.0, 0.0, -3.0]]).expand(500, 3) + torch.randn(500, 3) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(500, 3) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    opts = RenderOptions(step_size=2 * math.sqrt(3) / 256)
    full = render_image_rays(field, grid, origins, dirs, opts, chunk=128)
    capped = render_image_rays(field, grid, origins, dirs, opts, chunk=128, max_per_ray=16)
    assert full.n_samples > 100 * 500 and capped.n_samples <= 17 * 500
    assert (capped.rgb - full.rgb).abs().max() < 0.05


def test_a_render_is_the_same_whatever_its_chunk_and_a_gpu_takes_bigger_chunks():
    from ovseg3d.config import CPU_EVAL_CHUNK, GPU_EVAL_CHUNK, TrainConfig

    cfg = TrainConfig()
    assert cfg.render_chunk("cpu") == CPU_EVAL_CHUNK and cfg.render_chunk("cuda") == GPU_EVAL_CHUNK > CPU_EVAL_CHUNK
    assert TrainConfig(eval_chunk=1000).render_chunk("cuda") == 1000  # --eval-chunk stands on any device
    torch.manual_seed(0)
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    field = RadianceField(aabb, FieldConfig(HashGridConfig(4, 2, 12, 4, 2.0), 16, 7, 16, 2))
    grid = OccupancyGrid(aabb, resolution=8)
    origins = torch.tensor([[0.0, 0.0, -3.0]]).expand(300, 3) + torch.randn(300, 3) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(300, 3) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    opts = RenderOptions(step_size=2 * math.sqrt(3) / 64)
    small, whole = (render_image_rays(field, grid, origins, dirs, opts, chunk=c) for c in (64, 300))
    assert torch.allclose(small.rgb, whole.rgb, atol=1e-6) and small.n_samples == whole.n_samples


def test_spherical_harmonics_are_orthonormal():
    d = torch.randn(200000, 3, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    sh = spherical_harmonics(d, 4)
    gram = sh.T @ sh / len(d) * 4 * math.pi  # Monte-Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_render_rays_backpropagates_to_grid_and_mlps():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    field = RadianceField(aabb, FieldConfig(HashGridConfig(4, 2, 12, 4, 2.0), 16, 7, 16, 2))
    grid = OccupancyGrid(aabb, 8)
    o = torch.tensor([[0.0, 0.0, 3.0]]).repeat(16, 1)
    d = torch.nn.functional.normalize(torch.randn(16, 3) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    out = render_rays(field, grid, o, d, RenderOptions(step_size=0.05), stratified=True)
    assert out.rgb.shape == (16, 3) and out.n_samples > 0
    assert ((out.opacity > 0) & (out.opacity <= 1)).all()
    out.rgb.sum().backward()
    assert field.grid.params.grad.abs().sum() > 0
    assert field.color_mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nerfacc_marching_matches_the_torch_marcher():
    pytest.importorskip("nerfacc")
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], device="cuda")
    grid = OccupancyGrid(aabb, resolution=32).cuda()
    grid.binaries.copy_(torch.rand_like(grid.binaries, dtype=torch.float32) > 0.7)
    o = torch.tensor([[0.0, 0.0, 3.0]], device="cuda").repeat(512, 1)
    d = torch.nn.functional.normalize(
        torch.randn(512, 3, device="cuda") * 0.2 + torch.tensor([0.0, 0.0, -1.0], device="cuda"), dim=-1
    )
    fast = grid.march(o, d, step_size=0.01)  # nerfacc on CUDA
    ref = grid._march_torch(o, d, *ray_aabb(o, d, aabb), 0.01)
    # both keep only occupied steps; counts agree up to steps straddling cell borders
    assert abs(len(fast) - len(ref)) <= 0.02 * len(ref)
    assert grid.query(fast.positions(o, d)).float().mean() > 0.98


def test_distortion_loss_matches_pairwise_definition():
    # two rays: the O(M) scan must equal the O(M^2) double sum of mip-NeRF 360
    ray_indices = torch.tensor([0, 0, 0, 1, 1])
    t_starts = torch.tensor([0.0, 0.5, 2.0, 1.0, 1.1])
    t_ends = torch.tensor([0.5, 1.0, 3.0, 1.1, 1.3])
    weights = torch.tensor([0.2, 0.3, 0.4, 0.6, 0.3])
    got = distortion_loss(weights, t_starts, t_ends, ray_indices, 2)
    mid, d = (t_starts + t_ends) / 2, t_ends - t_starts
    for r in range(2):
        m = ray_indices == r
        w, x = weights[m], mid[m]
        expected = (w[:, None] * w[None, :] * (x[:, None] - x[None, :]).abs()).sum() + (w**2 * d[m]).sum() / 3
        assert abs(float(got[r]) - float(expected)) < 1e-6


def test_distortion_loss_prefers_a_surface_to_fog():
    n = 20
    t = torch.linspace(0.0, 2.0, n + 1)
    rays = torch.zeros(n, dtype=torch.long)
    fog = torch.full((n,), 1.0 / n)
    surface = torch.zeros(n)
    surface[10] = 1.0
    loss_fog = distortion_loss(fog, t[:-1], t[1:], rays, 1)
    loss_surface = distortion_loss(surface, t[:-1], t[1:], rays, 1)
    assert float(loss_surface) < 0.1 * float(loss_fog)


def test_ray_limits_from_depth_bounds_or_the_near_plane():
    from ovseg3d.data.cameras import Cameras
    from ovseg3d.train import ray_limits

    c2w = torch.eye(4)[:3].unsqueeze(0)  # looking down -z from the origin
    cams = Cameras(c2w, torch.tensor([10.0]), torch.tensor([10.0]), torch.tensor([5.0]), torch.tensor([5.0]), 10, 10)
    dirs = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, -1.0]]), dim=-1)
    cam = torch.zeros(2, dtype=torch.long)
    near, far = ray_limits(cams, torch.tensor([[1.0, 4.0]]), cam, dirs, near_plane=0.3)
    torch.testing.assert_close(near, torch.tensor([1.0, math.sqrt(2)]))  # z-depth 1 -> distance along the ray
    torch.testing.assert_close(far, torch.tensor([4.0, 4 * math.sqrt(2)]))
    near, far = ray_limits(cams, None, cam, dirs, near_plane=0.3)
    assert near.tolist() == pytest.approx([0.3, 0.3]) and far is None
    assert ray_limits(cams, None, cam, dirs) == (None, None)


class _Slab:
    """A density field that is ``sigma`` for ``lo <= x < hi`` and empty elsewhere (rays along +x)."""

    def __init__(self, lo: float, hi: float, sigma: float):
        self.lo, self.hi, self.sigma = lo, hi, sigma

    def density(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x[:, 0] >= self.lo) & (x[:, 0] < self.hi)
        return torch.where(inside, self.sigma, 0.0)


def _coarse(n_rays: int, t0: float, length: float, n: int) -> RaySamples:
    starts = t0 + length * torch.arange(n, dtype=torch.float32)
    return RaySamples(
        torch.arange(n_rays).repeat_interleave(n), starts.repeat(n_rays), (starts + length).repeat(n_rays), n_rays
    )


def test_refine_samples_splits_where_the_weight_is_and_keeps_the_ray_covered():
    # ray 0 crosses a slab at x in [1.0, 1.4); ray 1 (pointing away) sees nothing
    origins = torch.zeros(2, 3)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    grid = OccupancyGrid(torch.tensor([-3.0, -1, -1, 3, 1, 1]), resolution=8)
    coarse = _coarse(2, 0.0, 0.2, 10)  # intervals of 0.2 up to t = 2
    opts = RenderOptions(step_size=0.02, early_stop_eps=1e-4)
    fine = refine_samples(_Slab(1.0, 1.4, 3.0), grid, origins, dirs, coarse, opts, budget=16)

    r0, r1 = fine.ray_indices == 0, fine.ray_indices == 1
    # the empty ray is left alone
    torch.testing.assert_close(fine.t_starts[r1], coarse.t_starts[coarse.ray_indices == 1])
    # the slab's two intervals are cut finer, the empty space in front is not
    s, e = fine.t_starts[r0], fine.t_ends[r0]
    in_slab = (s >= 1.0 - 1e-6) & (e <= 1.4 + 1e-6)
    assert int(in_slab.sum()) > 2 and bool(((e - s)[in_slab] >= 0.02 - 1e-6).all())
    assert bool(((e - s)[s < 0.99] > 0.2 - 1e-6).all())
    # no gaps: each interval starts where the previous one ends, up to the ray's last kept sample
    torch.testing.assert_close(s[1:], e[:-1])
    assert float(s[0]) == 0.0
    # at most about `budget` more samples than the coarse march
    assert len(fine) <= len(coarse) + 16 + 2


def test_refine_samples_drops_what_lies_behind_an_opaque_surface():
    origins, dirs = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    grid = OccupancyGrid(torch.tensor([-3.0, -1, -1, 3, 1, 1]), resolution=8)
    coarse = _coarse(1, 0.0, 0.2, 10)
    fine = refine_samples(_Slab(0.6, 0.8, 1e4), grid, origins, dirs, coarse, RenderOptions(0.02, 1e-4), budget=8)
    assert float(fine.t_ends.max()) <= 0.8 + 1e-6


def test_cull_samples_keeps_the_visible_samples_of_a_surface_and_drops_empty_and_hidden_ones():
    origins, dirs = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    grid = OccupancyGrid(torch.tensor([-3.0, -1, -1, 3, 1, 1]), resolution=8)
    grid.occs.fill_(1.0)  # a grid that has learnt its density: the threshold is alpha_thre itself
    coarse = _coarse(1, 0.0, 0.2, 10)  # intervals of 0.2 up to t = 2
    opts = RenderOptions(0.02, early_stop_eps=1e-4, alpha_thre=0.01)
    kept = cull_samples(_Slab(0.6, 1.0, 20.0), grid, origins, dirs, coarse, opts)
    # the empty space in front (alpha 0) and everything behind the opaque slab (transmittance ~ e^-8) are dropped
    assert kept.t_starts.tolist() == pytest.approx([0.6, 0.8])


def test_cull_samples_caps_the_opacity_threshold_at_the_grids_mean_so_clear_air_keeps_its_samples():
    origins, dirs = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    grid = OccupancyGrid(torch.tensor([-3.0, -1, -1, 3, 1, 1]), resolution=8)
    coarse = _coarse(1, 0.0, 0.2, 10)
    faint = _Slab(-10.0, 10.0, 0.01)  # alpha = 0.002 a step: below alpha_thre everywhere
    opts = RenderOptions(0.02, early_stop_eps=1e-4, alpha_thre=0.01)
    grid.occs.fill_(0.0015)  # the field's start: the grid's mean opacity is about the faint field's
    assert len(cull_samples(faint, grid, origins, dirs, coarse, opts)) == 10
    grid.occs.fill_(0.5)
    assert len(cull_samples(faint, grid, origins, dirs, coarse, opts)) == 0


def test_scale_gradient_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    scale = torch.tensor([0.0, 0.5, 1.0])
    y = scale_gradient(x * x, scale)
    torch.testing.assert_close(y, torch.tensor([1.0, 4.0, 9.0]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 2.0, 6.0]))


def test_median_depth_and_spread_tell_a_surface_from_fog():
    """A crisp wall: median depth at the wall, spread about one step; fog of density 2 from x = 1: the
    weight's quartiles are the exponential's (1 + ln(4/3)/2, 1 + ln 2/2, 1 + ln 4/2), spread ~0.41."""
    from ovseg3d.render.renderer import render_median_depth

    origins, dirs = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    grid = OccupancyGrid(torch.tensor([-3.0, -1, -1, 3, 1, 1]), resolution=8)
    opts = RenderOptions(0.005, 1e-4)
    depth, opacity, spread = render_median_depth(_Slab(1.0, 1.2, 1e4), grid, origins, dirs, opts)
    assert abs(float(depth) - 1.0) < 0.01 and float(opacity) > 0.99 and float(spread) < 0.01
    depth, opacity, spread = render_median_depth(_Slab(1.0, 2.9, 2.0), grid, origins, dirs, opts)
    assert abs(float(depth) - (1 + math.log(2) / 2)) < 0.01
    assert abs(float(spread) - (math.log(4) - math.log(4 / 3)) / 2 / (1 + math.log(2) / 2)) < 0.02


class _ColouredSlab(_Slab):
    def __call__(self, x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.density(x), torch.full((len(x), 3), 0.5)


@pytest.mark.parametrize("early_stop_eps", [0.0, 1e-4])
def test_render_rays_reports_visibility_with_or_without_the_hidden_sample_pass(early_stop_eps):
    """The grid learns that the space behind an opaque slab is unseen whether or not the renderer runs its
    no-gradient pass first; in front of it, and on a ray that misses it, the space is seen."""
    origins = torch.zeros(2, 3)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    grid = OccupancyGrid(torch.tensor([-3.0, -1, -1, 3, 1, 1]), resolution=6)
    grid.visibility.zero_()
    out = render_rays(
        _ColouredSlab(1.0, 2.0, 1e3), grid, origins, dirs, RenderOptions(0.05, early_stop_eps), observe=True
    )
    torch.testing.assert_close(out.rgb[0], torch.full((3,), 0.5))
    seen = grid.visibility.view(6, 6, 6)[:, 3, 3]  # the cells along the x axis, x from -3 to 3 in steps of 1
    assert bool((seen[:4] > 0.99).all())  # x < 1: in front of the slab, or on the ray that misses it
    assert float(seen[5]) < 1e-3  # x in [2, 3): behind the slab


def test_the_grouped_march_uses_the_dilation_of_the_grid_as_it_is_after_every_update():
    # update() replaces the binaries tensor; a cache keyed by id() sometimes returned the previous grid's
    # dilation (a freed tensor's id is reused), so marching depended on memory addresses
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), resolution=8)
    gen = torch.Generator().manual_seed(0)
    for step in range(60):
        for _ in range(1 + step % 2):  # sometimes two updates between marches
            blob = torch.rand(3, generator=gen) * 1.6 - 0.8
            grid.update(step, lambda x, c=blob: ((x - c).norm(dim=-1) < 0.3).float(), occ_thre=0.5, ema_decay=0.0)
        expected = torch.nn.functional.max_pool3d(grid.binaries.float()[None], 3, stride=1, padding=1)
        assert torch.equal(grid._dilated(), expected.bool().reshape(-1)), f"stale after update {step}"


def test_a_grid_update_keeps_the_largest_value_of_a_cell_drawn_more_than_once():
    # after the warm-up the cells are drawn at random and among the occupied ones, so some come twice; each
    # keeps max(decayed value, its samples' values), whatever the order of the writes
    grid = OccupancyGrid(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), resolution=4)
    grid.occs.fill_(0.5)
    grid.binaries.fill_(True)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def occ(x: torch.Tensor) -> torch.Tensor:
        values = torch.rand(len(x))
        seen.append((grid._cell_coords(x)[0], values))
        return values

    before = grid.occs.clone()
    grid.update(1000, occ, ema_decay=0.9, warmup_steps=10)
    cells, values = (torch.cat(parts) for parts in zip(*seen))
    assert len(cells) > len(cells.unique())  # some cell was drawn twice
    expected = before.clone()
    expected[cells] = before[cells] * 0.9
    for cell, value in zip(cells.tolist(), values.tolist()):
        expected[cell] = max(expected[cell].item(), value)
    torch.testing.assert_close(grid.occs, expected, rtol=0, atol=0)


def test_spherical_harmonics_match_the_basis_written_out():
    # the monomial form against the basis term by term (Instant-NGP's signs and order)
    d = torch.randn(5000, 3, dtype=torch.float64)
    x, y, z = (d / d.norm(dim=-1, keepdim=True)).unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    written = torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ],
        -1,
    )
    dirs = torch.stack([x, y, z], -1)
    for degree in (1, 2, 3, 4):
        sh = spherical_harmonics(dirs, degree)
        assert sh.shape == (5000, degree * degree)
        torch.testing.assert_close(sh, written[:, : degree * degree], atol=1e-12, rtol=0)
    torch.testing.assert_close(spherical_harmonics(dirs.float(), 4), written.float(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind", ["none", "sphere", "cube"])
def test_to_unit_scaled_equals_to_unit_and_step_scale(kind):
    from ovseg3d.field.space import step_scale, to_unit, to_unit_scaled

    aabb = torch.tensor([-1.0, -2.0, 0.5, 1.0, 0.0, 2.5])
    x = torch.randn(2000, 3) * 4.0  # inside the box and up to several box sizes beyond it
    u, inside, scale = to_unit_scaled(x, aabb, kind)
    u_ref, inside_ref = to_unit(x, aabb, kind)
    torch.testing.assert_close(u, u_ref)
    assert torch.equal(inside, inside_ref)
    if kind == "none":
        assert scale is None
    else:
        torch.testing.assert_close(scale, step_scale(x, aabb, kind))
        assert (scale > 1.5).any() and (scale == 1.0).any()
