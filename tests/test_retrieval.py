"""Pairs by retrieval (`ovseg3d prepare --matcher retrieval`): the VLAD vectors' parts, and on a generated orbit of
photos (a room of block-noise walls around a block-noise crate, ray-cast here, named in no order) the pairs hold
each photo's true neighbours, are few beside every pair, and map every photo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovseg3d.cli import main
from ovseg3d.prepare import largest_component
from ovseg3d.retrieval import global_descriptors, kmeans, retrieval_pairs, vlad


def test_kmeans_finds_three_separate_clusters():
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([m + rng.normal(0, 0.5, (200, 2)) for m in means]).astype(np.float32)
    centres = kmeans(x, 3)
    found = sorted(map(tuple, np.round(centres).astype(int)))
    assert found == [(0, 0), (0, 10), (10, 0)]


def test_vlad_is_unit_length_and_the_same_descriptors_give_the_same_vector():
    rng = np.random.default_rng(1)
    words = rng.normal(size=(8, 16)).astype(np.float32)
    d = rng.normal(size=(100, 16)).astype(np.float32)
    v = vlad(d, words)
    assert v.shape == (8 * 16,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert np.allclose(v, vlad(d[::-1], words))  # an unordered set
    assert not np.any(vlad(d[:0], words))  # no descriptors: zero


def test_photos_that_share_features_are_most_alike():
    """Photos drawn from three scenes' descriptor pools: each photo's most alike photos are of its own scene."""
    rng = np.random.default_rng(2)
    pools = [rng.integers(0, 256, (300, 128)) for _ in range(3)]
    photos = [pools[i % 3][rng.choice(300, 150, replace=False)].astype(np.uint8) for i in range(12)]
    pairs = retrieval_pairs(global_descriptors(photos, words=16), neighbours=3)
    assert all(i % 3 == j % 3 for i, j in pairs) and len(pairs) == 18  # each scene: all 6 pairs of its 4 photos


def test_retrieval_pairs_on_a_ring_are_each_ones_nearest_and_the_window():
    angle = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    vectors = np.stack([np.cos(angle), np.sin(angle)], 1)
    pairs = set(retrieval_pairs(vectors, neighbours=2))
    assert pairs == {tuple(sorted((i, (i + d) % 20))) for i in range(20) for d in (1, 19)}
    with_window = set(retrieval_pairs(vectors, neighbours=2, window=2))
    assert with_window - pairs == {(i, i + 2) for i in range(18)}


def test_the_largest_component_counts_joined_photos():
    assert largest_component(6, [(0, 1), (1, 2), (4, 5)]) == 3
    assert largest_component(3, []) == 1


# ---------------------------------------------------------------------------------------------------------------
# a generated orbit

ROOM = np.array([[-2.0, -2.0, 0.0], [2.0, 2.0, 2.5]])
CRATE = np.array([[-0.35, -0.35, 0.0], [0.35, 0.35, 0.7]])
TEXEL = 0.016  # metres a texel: blocks of 4 texels, about 6 pixels wide on the walls


def _textures(seed: int) -> np.ndarray:
    """``[12, 512, 512, 3]`` block noise: a texture for each face of the room and of the crate."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.random((12, 128, 128, 3)), np.ones((1, 4, 4, 1))).astype(np.float32)


def _box_hits(origin: np.ndarray, dirs: np.ndarray, box: np.ndarray, inside: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distance ``[R]`` to where each ray meets the box (leaving it from ``inside``, else entering; inf: never) and
    the axis ``[R]`` of the face it meets."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (box[0] - origin) / dirs, (box[1] - origin) / dirs
    near, far = np.minimum(t0, t1), np.maximum(t0, t1)
    if inside:
        return far.min(1), far.argmin(1)
    t_in, t_out = near.max(1), far.min(1)
    return np.where((t_in <= t_out) & (t_in > 0), t_in, np.inf), near.argmax(1)


def _render(eye: np.ndarray, target: np.ndarray, textures: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8: the room and the crate seen from ``eye`` looking at ``target`` (60 degrees across)."""
    w, h = size
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    f = 0.5 * w / np.tan(np.radians(30))
    u, v = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
    dirs = (forward * f + u[..., None] * right + v[..., None] * down).reshape(-1, 3)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t_room, axis_room = _box_hits(eye, dirs, ROOM, inside=True)
    t_crate, axis_crate = _box_hits(eye, dirs, CRATE, inside=False)
    crate = t_crate < t_room
    t = np.where(crate, t_crate, t_room)
    axis = np.where(crate, axis_crate, axis_room)
    hit = eye + t[:, None] * dirs
    lower = np.where(crate[:, None], CRATE[0], ROOM[0])[np.arange(len(hit)), axis]
    face = 6 * crate + 2 * axis + (hit[np.arange(len(hit)), axis] > lower + 1e-6)
    s = np.choose(axis, [hit[:, 1], hit[:, 0], hit[:, 0]])  # the two coordinates along the face met
    r = np.choose(axis, [hit[:, 2], hit[:, 2], hit[:, 1]])
    size_t = textures.shape[1]
    i, j = (np.floor(s / TEXEL).astype(int) % size_t), (np.floor(r / TEXEL).astype(int) % size_t)
    return (textures[face, j, i] * 255).reshape(h, w, 3).astype(np.uint8)


ORBIT_VIEWS = 30


@pytest.fixture(scope="module")
def orbit(tmp_path_factory):
    """30 photos around the crate, 12 degrees apart (at 320x240), named by a random shuffle; the camera centres by
    name."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("orbit") / "photos"
    folder.mkdir()
    textures = _textures(4)
    shuffle = np.random.default_rng(5).permutation(ORBIT_VIEWS)
    centres = {}
    for k in range(ORBIT_VIEWS):
        a = 2 * np.pi * k / ORBIT_VIEWS
        eye = np.array([1.3 * np.cos(a), 1.3 * np.sin(a), 1.2])
        name = f"photo_{shuffle[k]:02d}.png"
        Image.fromarray(_render(eye, np.array([0.0, 0.0, 0.4]), textures, (320, 240))).save(folder / name)
        centres[name] = eye
    return folder, centres


@pytest.fixture(scope="module")
def prepared_by_retrieval(orbit, tmp_path_factory):
    pytest.importorskip("pycolmap")
    out = tmp_path_factory.mktemp("orbit_prepared") / "scene"
    cmd = ["prepare", str(orbit[0]), str(out), "--matcher", "retrieval", "--retrieval-neighbours", "4"]
    assert main([*cmd, "--retrieval-window", "0", "--max-features", "2048"]) == 0
    return out


def test_retrieval_pairs_hold_each_photos_true_neighbours_and_map_every_photo(orbit, prepared_by_retrieval):
    folder, centres = orbit
    names = sorted(centres)
    pairs = {tuple(sorted(line.split())) for line in (prepared_by_retrieval / "pairs.txt").read_text().splitlines()}
    for name in names:  # the two cameras nearest each photo's, 12 degrees either way round the orbit
        dist = {other: float(np.linalg.norm(centres[other] - centres[name])) for other in names if other != name}
        for other in sorted(dist, key=dist.get)[:2]:
            assert tuple(sorted((name, other))) in pairs, f"{name} was not matched with its neighbour {other}"
    every = ORBIT_VIEWS * (ORBIT_VIEWS - 1) // 2
    assert len(pairs) <= ORBIT_VIEWS * 4 and len(pairs) < every / 3  # 435 pairs matched exhaustively
    stats = json.loads((prepared_by_retrieval / "prepare.json").read_text())
    assert stats["matcher"] == "retrieval" and stats["matched_pairs"] == len(pairs)
    assert stats["registered"] == ORBIT_VIEWS


def test_a_photo_set_is_matched_by_retrieval_unless_it_is_small_and_a_bad_count_is_one_line(tmp_path, capsys):
    from ovseg3d.prepare import PrepareConfig

    assert PrepareConfig().matcher == "auto" and PrepareConfig().exhaustive_up_to < 80
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--retrieval-neighbours", "0"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "--retrieval-neighbours 0" in said[0]
