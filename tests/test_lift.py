"""Training-free lifting (issue 68): each view's teacher features land where the field's rendering weights put them
(on an opaque plane, nothing behind it), several views' features are averaged by those weights, and a lifted run
answers ``render --query``, ``export`` and ``detect`` with the files a distilled run writes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovseg3d.cli import main
from ovseg3d.config import resolve_base
from ovseg3d.data.cameras import Cameras
from ovseg3d.data.scene import Scene
from ovseg3d.lift import LiftedSemantics, VoxelTable, lift, propagate
from ovseg3d.teachers.cache import TeacherFeatures
from ovseg3d.train import Trainer

BOX = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
SLAB = 0.1  # the plane z = 0 is a slab this thick on each side
RESOLUTION = 32  # voxels per side: 6.25 cm
W, H = 16, 12


class PlaneField(nn.Module):
    """A toy radiance field: an opaque slab about the plane z = 0, empty everywhere else (the trained field's
    place in the Trainer: lifting reads only its density, box and contraction)."""

    contraction = "none"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("aabb", BOX.clone())

    def density(self, x: Tensor) -> Tensor:
        return torch.where(x[:, 2].abs() < SLAB, 50.0, 0.0)


def plane_trainer(positions: list[tuple[float, float, float]]) -> Trainer:
    """A Trainer (the tiny preset) over cameras looking straight down at the plane from ``positions`` (x, y, z),
    with the toy field in place of its radiance field."""
    n = len(positions)
    c2w = torch.zeros(n, 3, 4)
    c2w[:, :, :3] = torch.eye(3)  # OpenGL: the camera looks down its -z
    c2w[:, :, 3] = torch.tensor(positions)
    full = torch.full((n,), float(W))
    cams = Cameras(c2w, full, full, full / 2, torch.full((n,), H / 2.0), W, H)
    images = torch.zeros(n, H, W, 3, dtype=torch.uint8)
    scene = Scene(
        Path("plane"), "transforms", [Path(f"{i}.png") for i in range(n)], images, cams, None, BOX, list(range(n)), []
    )
    cfg = dataclasses.replace(
        resolve_base("tiny", None), lift_resolution=RESOLUTION, lift_stride=1, lift_clip_dim=0, lift_dino_dim=0
    )
    cfg = dataclasses.replace(cfg, coverage_weights=False, sem_weight_power=1.0, contraction="none", lift_propagate=0)
    trainer = Trainer(cfg, scene, torch.device("cpu"))
    trainer.field = PlaneField()
    return trainer


def teacher(clip_per_view: list[list[float]]) -> TeacherFeatures:
    """A teacher whose CLIP feature is one constant vector per view (maps of 4 x 3 cells, one scale)."""
    clip = np.array(clip_per_view, dtype=np.float16)[:, None, None, None, :] * np.ones((1, 3, 4, 1, 1), np.float16)
    n, d = len(clip_per_view), clip.shape[-1]
    relevancy = np.full((n, 3, 4, 1, 2), 0.5, np.float16)
    dino = np.ones((n, 3, 4, 3), np.float16)
    text = np.eye(2, d, dtype=np.float32)
    return TeacherFeatures(Path("teacher"), {"classes": ["a", "b"]}, clip, relevancy, dino, text)


def voxel_centres(table: VoxelTable) -> Tensor:
    """``[M, 3]`` world centres of the table's voxels, by row."""
    r = table.resolution
    keys = torch.empty_like(table.keys)
    keys[table.rows] = table.keys
    cell = torch.stack([keys // (r * r), (keys // r) % r, keys % r], 1).float()
    return BOX[:3] + (cell + 0.5) / r * (BOX[3:] - BOX[:3])


def test_lifting_puts_a_view_on_the_plane_and_nothing_behind_it():
    trainer = plane_trainer([(0.0, 0.0, 2.0)])
    lifted = lift(trainer, teacher([[1.0, 0.0, 0.0, 0.0]]), log=lambda s: None)
    z = voxel_centres(lifted.table)[:, 2]
    voxel = 2.0 / RESOLUTION
    assert len(z) > 50  # the plane seen by 16 x 12 rays
    assert z.max() < SLAB + voxel  # nothing in the air above the slab
    assert z.min() > -SLAB - voxel  # nor behind it
    # the side the camera sees takes the weight: the weighted mean height lies in the slab's upper half
    assert (lifted.weight * z).sum() / lifted.weight.sum() > 0.0
    clip = lifted.latent[:, :4].float()
    assert torch.allclose(clip, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand_as(clip), atol=1e-3)


def test_two_views_that_disagree_are_averaged_by_their_weights():
    a, b = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]
    positions = [(0.0, 0.0, 2.0), (0.1, 0.05, 0.7)]  # the nearer view puts more rays into each voxel
    both = lift(plane_trainer(positions), teacher([a, b]), log=lambda s: None)
    alone = [lift(plane_trainer([p]), teacher([f]), log=lambda s: None) for p, f in zip(positions, (a, b))]

    def weight_at(lifted: LiftedSemantics, keys: Tensor) -> Tensor:
        rows = lifted.table.find(keys)
        return torch.where(rows >= 0, lifted.weight[rows.clamp(min=0)], 0.0)

    keys = both.table.keys
    w_a, w_b = weight_at(alone[0], keys), weight_at(alone[1], keys)
    shared = (w_a > 1e-3) & (w_b > 1e-3)
    assert shared.sum() >= 8
    expected = torch.stack([w_a, w_b, torch.zeros_like(w_a), torch.zeros_like(w_a)], 1) / (w_a + w_b)[:, None]
    got = both.latent[both.table.rows, :4].float()
    assert torch.allclose(got[shared], expected[shared], atol=2e-3)
    assert torch.allclose(weight_at(both, keys), w_a + w_b, rtol=1e-4)
    # not a plain mean: the two views weigh the shared voxels differently
    assert (w_a[shared] / w_b[shared]).std() > 0.1


def test_propagation_flows_between_dino_alike_neighbours_only():
    # three voxels in a row: the first two look alike to DINO, the third does not look like the second
    neighbours = torch.tensor([[1, -1], [0, 2], [1, -1]])
    dino = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    values = torch.tensor([[1.0], [0.0], [5.0]])
    out = propagate(values, neighbours, dino, iterations=10, threshold=0.7, alpha=0.9)[:, 0]
    assert out[2] == 5.0  # no affinity: nothing flows in or out
    assert 0.3 < out[1] < 1.0 and 0.3 < out[0] < 1.0  # the alike pair meets between 0 and 1
    assert torch.equal(propagate(values, neighbours, dino, iterations=0, threshold=0.7, alpha=0.9), values)


# ------------------------------------------------------------------------------------ a lifted run end to end

TINY_SCENE = ["--width", "40", "--height", "30", "--n-views", "8", "--n-annotated", "2", "--supersample", "1"]
FEW_CROPS = ["--teacher", "synthetic", "--clip-scales", "2", "3", "--clip-stride", "0.5", "--syn-noise", "0.6", "0.8"]
FEW_CROPS += ["--syn-confusion", "0.1", "0.2"]  # a teacher in seconds


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lift")
    scene = root / "scene"
    assert main(["synth", str(scene), *TINY_SCENE]) == 0
    out = {}
    for semantic in ("distill", "lift"):
        run = out[semantic] = root / semantic
        args = ["train", str(scene), "--output", str(run), "--preset", "tiny", "--device", "cpu"]
        assert main([*args, *FEW_CROPS, "--semantic", semantic, "--lift-resolution", "32"]) == 0
        assert main(["render", str(run), "--query", "book", "--device", "cpu"]) == 0
        assert main(["export", str(run), "--queries", "book", "--features", "--device", "cpu"]) == 0
        assert main(["detect", str(run), "--device", "cpu"]) == 0
    return out


def file_formats(run: Path) -> dict[str, object]:
    """What a user reads of a run's outputs, without the values: file names, PLY header, npz arrays' names, kinds
    and widths, JSON keys."""
    ply = (run / "export" / "points.ply").read_bytes()
    header = ply[: ply.index(b"end_header")].decode().splitlines()
    npz = np.load(run / "export" / "points.npz")
    detections = json.loads((run / "detections.json").read_text())
    return {
        "renders": sorted(p.name for p in (run / "renders").glob("*.png")),
        "ply": [line for line in header if not line.startswith("element vertex")],
        "npz": {k: (npz[k].dtype.str, npz[k].shape[1:]) for k in npz.files},
        "points.json": sorted(json.loads((run / "export" / "points.json").read_text())),
        "detections.json": sorted(detections),
        "box": sorted(detections["boxes"][0]) if detections["boxes"] else None,
    }


def test_a_lifted_run_answers_with_the_files_of_a_distilled_one(runs):
    lifted, distilled = file_formats(runs["lift"]), file_formats(runs["distill"])
    assert any(name.startswith("rel_") for name in lifted["renders"])
    assert any(line.startswith("property float rel_") for line in lifted["ply"])
    assert lifted == distilled
    log = [json.loads(line) for line in (runs["lift"] / "log.jsonl").read_text().splitlines()]
    assert [r["voxels"] for r in log if r.get("stage") == "lift"][0] > 0
    assert not any(r.get("stage") == "distill" for r in log)


def test_a_lifted_checkpoint_of_another_format_is_refused_in_one_line(runs, tmp_path, capsys):
    from ovseg3d.run import latest_checkpoint, load_checkpoint, write_checkpoint

    run = Path(shutil.copytree(runs["lift"], tmp_path / "old"))
    path = latest_checkpoint(run)
    state = load_checkpoint(path)
    state["lifted"]["lift_format"] = 0
    write_checkpoint(path, state)
    capsys.readouterr()
    assert main(["render", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lifted semantics of format 0, this ovseg3d reads format 1" in err


def test_the_benchmarks_lift_and_distil_again_on_a_runs_geometry(runs, tmp_path) -> None:
    """``ovseg3d bench run teacher_views`` / ``distill`` (bench_lift's runs): the semantic stage on a stored geometry,
    in a run folder of its own, with the lifting's size and seconds or the distillation's steps."""
    from ovseg3d.bench.harness import Case
    from ovseg3d.bench.teacher_views import semantic_run

    case = Case("teacher_views", "s", runs["distill"], "v", {"semantic": "lift"}, 0, tmp_path, "cpu", "tiny")
    trainer, lifted = semantic_run(case, runs["distill"], tmp_path / "lift", {})
    record = [json.loads(x) for x in (tmp_path / "lift" / "log.jsonl").read_text().splitlines()][-1]
    assert record["stage"] == "lift" and lifted["voxels"] == record["voxels"] > 0
    assert lifted["structure_mib"] == round(record["bytes"] / 2**20, 1) and lifted["rss_grew_mib"] >= 0
    assert 0 <= lifted["propagate_seconds"] <= lifted["lift_seconds"] <= lifted["semantic_seconds"] + 0.1
    assert lifted["views"] == len(trainer.scene.train_ids) and lifted["coverage"] == 1.0
    case = dataclasses.replace(case, overrides={"semantic": "distill", "distill_steps": 3, "distill_minutes": 0.0})
    _, distilled = semantic_run(case, runs["distill"], tmp_path / "distill", {})
    assert distilled["steps"] == 3 and "voxels" not in distilled
    assert (runs["distill"] / "geometry.pt").is_file()  # the source is left as it was


def test_the_view_filter_draws_a_blurred_teachers_edge_back_to_dinos():
    """Two things side by side, DINO telling them apart at column 10 of a 20-column map; the teacher's distribution
    blurs the edge 3 columns into the right one. FDA's pull and push in the view put the edge back where DINO has it,
    and each scale's distribution still sums to 1."""
    from ovseg3d.lift import filter_view

    h, w = 12, 20
    left, right = torch.zeros(8), torch.zeros(8)
    left[0], right[1] = 1.0, 1.0
    dino = torch.where(torch.arange(w)[None, :, None] < 10, left, right).expand(h, w, 8).clone()
    truth = (torch.arange(w) >= 10).long().expand(h, w)
    teacher = (torch.arange(w) >= 13).long().expand(h, w)  # the crops' blur: columns 10-12 read as the left thing
    probability = torch.full((h, w, 2), 0.3).scatter(-1, teacher[..., None], 0.7)
    two_scales = torch.cat([probability, probability], -1)
    assert (probability.argmax(-1) == truth).float().mean() < 0.9
    out = filter_view(two_scales, dino, 2, 5, 0.7, 5.0)
    assert torch.equal(out[..., :2].argmax(-1), truth) and torch.equal(out[..., 2:].argmax(-1), truth)
    assert torch.allclose(out.view(h, w, 2, 2).sum(-1), torch.ones(h, w, 2), atol=1e-5)
    assert torch.equal(filter_view(two_scales, dino, 2, 0, 0.7, 5.0), two_scales)  # no steps: the teacher as it is


def test_the_view_filter_changes_the_lifted_scale_alone():
    """A view's maps as lifting reads them (``ViewMaps``): with the filter on the middle of three crop scales, that
    scale's distribution is the filter's and the other two stay the teacher's softmax."""
    from ovseg3d.lift import Basis, ViewMaps, filter_view

    g = torch.Generator().manual_seed(0)
    relevancy = torch.rand(2, 12, 16, 3, 4, generator=g).numpy().astype(np.float16)
    dino = F.normalize(torch.randn(2, 6, 8, 5, generator=g), dim=-1).numpy().astype(np.float16)
    clip = F.normalize(torch.randn(2, 6, 8, 3, 7, generator=g), dim=-1).numpy().astype(np.float16)
    features = TeacherFeatures(Path("."), {"classes": list("abcd")}, clip, relevancy, dino, np.zeros((4, 7)))
    bases = Basis.fit(torch.randn(10, 7), 0), Basis.fit(torch.randn(10, 5), 0)
    plain = ViewMaps(features, 1, *bases, [1], 0.1).relevancy.view(12, 16, 3, 4)
    filtered = ViewMaps(features, 1, *bases, [1], 0.1, (3, 0.7, 5.0)).relevancy.view(12, 16, 3, 4)
    torch.testing.assert_close(filtered[:, :, [0, 2]], plain[:, :, [0, 2]])
    expected = filter_view(plain[:, :, 1], torch.from_numpy(dino[1]).float(), 4, 3, 0.7, 5.0)
    torch.testing.assert_close(filtered[:, :, 1], expected)
    assert not torch.allclose(filtered[:, :, 1], plain[:, :, 1])
