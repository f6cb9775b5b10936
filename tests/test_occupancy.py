"""The occupancy grid as nerfacc keeps it: cells outside every training camera's view are dropped for good
(:meth:`OccupancyGrid.mark_invisible`), and nothing empties a cell because it was hidden."""

import math

import pytest
import torch

from ovseg3d.data.cameras import Cameras, project_points
from ovseg3d.data.lenses import LENS_FISHEYE, LENS_OPENCV, LENS_PINHOLE
from ovseg3d.field.space import from_unit
from ovseg3d.render.occupancy import OccupancyGrid


def look_at(eye: list[float], target: list[float], up: tuple[float, ...] = (0.0, 0.0, 1.0)) -> torch.Tensor:
    """``[3, 4]`` OpenGL camera-to-world (x right, y up, looking down -z)."""
    eye_t, target_t = torch.tensor(eye), torch.tensor(target)
    ahead = torch.nn.functional.normalize(target_t - eye_t, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(ahead, torch.tensor(up)), dim=0)
    return torch.stack([right, torch.linalg.cross(right, ahead), -ahead, eye_t], dim=1)


def cameras(c2w: list[torch.Tensor], size: int = 100, focal: float = 100.0, lens=None, coeffs=None) -> Cameras:  # noqa: ANN001
    n = len(c2w)
    full = torch.full((n,), focal)
    half = torch.full((n,), size / 2)
    return Cameras(torch.stack(c2w), full, full.clone(), half, half.clone(), size, size, lens, coeffs)


def cell_of(grid: OccupancyGrid, point: list[float]) -> int:
    return int(grid._cell_coords(torch.tensor([point]))[0][0])


def in_image(cams: Cameras, cam: int, points: torch.Tensor) -> torch.Tensor:
    u, v, front = project_points(cams, cam, points)
    return front & (u >= 0) & (u <= cams.width) & (v >= 0) & (v <= cams.height)


@pytest.mark.parametrize("contraction", ["none", "sphere"])
def test_a_cell_outside_every_camera_stays_empty_whatever_the_field_says(contraction):
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 16, contraction)
    cams = cameras([look_at([0.0, -3.0, 0.0], [0.0, 0.0, 0.0])], focal=200.0)  # along +y, half-width depth / 4
    marked = grid.mark_invisible(cams)
    assert 0 < marked < grid.occs.numel()
    behind, corner, ahead = (cell_of(grid, p) for p in ([0.0, -0.95, 0.95], [0.95, -0.95, -0.95], [0.0, 0.5, 0.0]))
    assert not grid.seen[behind] and not grid.seen[corner] and grid.seen[ahead]
    assert grid.occs[behind] == -1 and not grid.binaries.view(-1)[behind]

    def dense(x: torch.Tensor) -> torch.Tensor:  # an opaque field everywhere
        return torch.full((len(x),), 10.0)

    for step in (0, 1, 300, 301):  # warm-up (every cell) and later updates (random and occupied cells)
        grid.update(step, dense, warmup_steps=2, hold_occupied=step == 0)
        occupied = grid.binaries.view(-1)
        assert not occupied[behind] and not occupied[corner] and occupied[ahead]
        assert grid.occs[behind] == -1 and grid.occs[corner] == -1
    assert int(grid.binaries.sum()) == int(grid.seen.sum())  # every other cell is occupied
    assert grid.mark_invisible(cams) == marked  # again: nothing changes


def test_a_cell_hidden_behind_fog_is_occupied_once_the_field_puts_density_there():
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 8)
    cams = cameras([look_at([0.0, 0.0, 3.0], [0.0, 0.0, 0.0], up=(0.0, 1.0, 0.0))])
    grid.mark_invisible(cams, near_plane=0.5)
    hidden = cell_of(grid, [0.1, 0.1, -0.6])
    assert grid.seen[hidden]  # behind the wall, but in the camera's view

    def fog(x: torch.Tensor) -> torch.Tensor:  # a foggy wall across the view, 0.25 < z < 0.5
        return torch.where((x[:, 2] > 0.25) & (x[:, 2] < 0.5), 0.5, 0.0)

    def fog_and_object(x: torch.Tensor) -> torch.Tensor:  # the field has learnt an object behind it
        return torch.maximum(fog(x), torch.where((x - torch.tensor([0.1, 0.1, -0.6])).norm(dim=-1) < 0.3, 5.0, 0.0))

    behind_wall = torch.rand(4096, 3) * torch.tensor([2.0, 2.0, 1.2]) - torch.tensor([1.0, 1.0, 1.0])  # z < 0.2

    def train(visibility_eps: float, field, steps: range) -> None:  # noqa: ANN001
        for step in steps:
            grid.observe(behind_wall, torch.full((len(behind_wall),), 1e-6))  # rays reach it only through the fog
            grid.update(step, field, occ_thre=0.01, ema_decay=0.5, warmup_steps=1000, visibility_eps=visibility_eps)

    train(0.0, fog, range(0, 10))  # early: only the fog
    assert not grid.binaries.view(-1)[hidden]
    train(0.0, fog_and_object, range(10, 20))
    assert grid.binaries.view(-1)[hidden]  # nothing empties it for having been hidden
    # the visibility record, for whoever turns it on, still empties what rays only reached through the fog
    train(1e-3, fog_and_object, range(20, 40))  # (its record of earlier, unobserved rays fades in ~10 updates)
    assert not grid.binaries.view(-1)[hidden] and grid.seen[hidden]


@pytest.mark.parametrize("reprobe_every", [4, 0])
def test_a_cell_the_visibility_record_emptied_is_marched_again_and_kept_once_a_ray_reaches_it(reprobe_every):
    """The visibility record (``--start fog``) empties a cell while it is hidden, never for good: its re-probes
    march the cell again, and a ray that reaches it then keeps it. Without re-probes it stays empty."""
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 8)
    hidden = cell_of(grid, [0.1, 0.1, -0.6])
    inside = torch.tensor([0.0, 0.0, -0.75]) + 0.25 * torch.rand(64, 3)  # points of that cell

    def dense(x: torch.Tensor) -> torch.Tensor:  # the field has density everywhere
        return torch.full((len(x),), 5.0)

    def train(transmittance: float, steps: range) -> list[bool]:
        occupied = []
        for step in steps:
            marched = inside[grid.query(inside)]  # rays sample only the occupied cells
            grid.observe(marched, torch.full((len(marched),), transmittance))
            reprobe = reprobe_every > 0 and (step + 1) % reprobe_every == 0  # the trainer's schedule
            grid.update(step, dense, ema_decay=0.5, warmup_steps=1000, visibility_eps=1e-3, reprobe=reprobe)
            occupied.append(bool(grid.binaries.view(-1)[hidden]))
        return occupied

    hidden_phase = train(1e-6, range(15))  # rays reach it only through fog
    assert all(hidden_phase[:10]) and not hidden_phase[-1]  # emptied once its record has faded
    assert any(hidden_phase[11:]) == (reprobe_every > 0)  # re-probed (and emptied again: still hidden)
    clear_phase = train(0.5, range(15, 25))  # the fog has cleared
    assert clear_phase[-1] == (reprobe_every > 0)


def test_a_cell_seen_only_at_the_edge_of_one_camera_image_is_kept():
    grid = OccupancyGrid(torch.tensor([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]), 16)  # cells of 0.25
    front_cam = look_at([0.0, 0.0, 3.0], [0.0, 0.0, 0.0], up=(0.0, 1.0, 0.0))
    away_cam = look_at([0.0, 0.0, -3.0], [0.0, 0.0, -6.0], up=(0.0, 1.0, 0.0))  # sees none of the grid
    cams = cameras([front_cam, away_cam], focal=200.0)  # half-width of the view: 0.25 x depth
    grid.mark_invisible(cams)
    edge = cell_of(grid, [-0.875, 0.125, -0.125])  # x in [-1, -0.75], depth 3 to 3.25: half-width 0.75 to 0.81
    centre = torch.tensor([[-0.875, 0.125, -0.125]])
    assert not in_image(cams, 0, centre).any()  # its centre (nerfacc's test point) is out of view ...
    assert in_image(cams, 0, torch.tensor([[-0.77, 0.01, -0.24]])).all()  # ... a part of it in view
    assert grid.seen[edge]
    assert not grid.seen[cell_of(grid, [-1.125, 0.125, -0.125])]  # the next cell out is out of view whole
    assert not grid.seen[cell_of(grid, [0.0, 1.9, 1.9])]  # near the camera, out of its view


@pytest.mark.parametrize("contraction", ["none", "sphere", "cube"])
@pytest.mark.parametrize("lens", [LENS_PINHOLE, LENS_OPENCV, LENS_FISHEYE])
def test_every_point_a_camera_sees_lies_in_a_kept_cell(contraction, lens):
    gen = torch.Generator().manual_seed(lens * 3 + len(contraction))
    c2w = []
    for i in range(5):  # cameras around the box at different heights, looking in
        a = 2 * math.pi * i / 5
        eye = [2.5 * math.cos(a), 2.5 * math.sin(a), 0.3 + 0.3 * i]
        c2w.append(look_at(eye, [0.0, 0.0, 0.4 * (i % 2)]))
    coeffs = {
        LENS_PINHOLE: [0.0] * 8,
        LENS_OPENCV: [-0.25, 0.06, 0.01, -0.012, -0.01, 0.0, 0.0, 0.0],
        LENS_FISHEYE: [0.05, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    }[lens]
    focal = 150.0 if lens == LENS_FISHEYE else 120.0
    cams = cameras(c2w, size=80, focal=focal, lens=torch.full((5,), lens), coeffs=torch.tensor([coeffs] * 5))
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -0.5, 1.0, 1.0, 1.5]), 16, contraction)
    near = 0.4
    marked = grid.mark_invisible(cams, near_plane=near)
    assert marked > 0
    x = from_unit(torch.rand(20000, 3, generator=gen), grid.aabb, contraction)
    seen = torch.zeros(len(x), dtype=torch.bool)
    for cam in range(len(cams)):
        far_enough = (x - cams.c2w[cam, :, 3]).norm(dim=-1) >= near
        seen |= in_image(cams, cam, x) & far_enough
    cells, _ = grid._cell_coords(x)
    assert seen.any() and grid.seen[cells[seen]].all()


def test_a_lens_that_sees_past_90_degrees_keeps_every_cell_beyond_its_near_plane():
    c2w = [look_at([0.0, -3.0, 0.0], [0.0, 0.0, 0.0])]
    wide = cameras(c2w, size=80, focal=20.0, lens=torch.tensor([LENS_FISHEYE]), coeffs=torch.zeros(1, 8))
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 8, "sphere")
    assert grid.mark_invisible(wide) == 0  # the image's sides lie 115 degrees off its axis
    narrow = cameras(c2w, size=80, focal=80.0, lens=torch.tensor([LENS_FISHEYE]), coeffs=torch.zeros(1, 8))
    assert grid.mark_invisible(narrow) > 0


def test_checkpoints_keep_the_marks_and_older_ones_still_load():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    cams = cameras([look_at([0.0, -3.0, 0.0], [0.0, 0.0, 0.0])])
    grid = OccupancyGrid(aabb, 8)
    grid.mark_invisible(cams)
    state = grid.state_dict()
    assert "seen" in state
    fresh = OccupancyGrid(aabb, 8)
    fresh.load_state_dict(state)  # strict
    assert torch.equal(fresh.seen, grid.seen) and torch.equal(fresh.occs, grid.occs)

    old = {k: v for k, v in OccupancyGrid(aabb, 8).state_dict().items() if k != "seen"}  # before `seen` existed
    loaded = OccupancyGrid(aabb, 8)
    loaded.load_state_dict(old)  # strict: all seen, as the checkpoint's run was
    assert loaded.seen.all() and loaded.binaries.all()
    marked = OccupancyGrid(aabb, 8)
    marked.mark_invisible(cams)  # the trainer marks first, then resumes from the older checkpoint
    marked.load_state_dict(old)
    assert torch.equal(marked.seen, grid.seen)
    assert not marked.binaries.view(-1)[~marked.seen].any() and (marked.occs[~marked.seen] == -1).all()
