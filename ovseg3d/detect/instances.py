"""Object instances from a labelled cloud: connected components of each label's points on a voxel grid."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ovseg3d.errors import UsageError

_HALF_NEIGHBOURS = [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]  # 13 of the 26


def _pack(keys: np.ndarray) -> np.ndarray:
    """Non-negative ``[N, 3]`` int64 voxel keys -> one int64 each (21 bits an axis)."""
    return (keys[:, 0] << 42) | (keys[:, 1] << 21) | keys[:, 2]


def connected_components(xyz: np.ndarray, eps: float) -> np.ndarray:
    """``[N]`` component id (0..K-1, largest component first) of each point: points fall into voxels of edge
    ``eps`` and voxels touching by a face, an edge or a corner are connected."""
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    keys = np.floor((xyz - xyz.min(0)) / eps).astype(np.int64) + 1
    if keys.max() >= (1 << 21) - 1:
        raise UsageError(f"the cloud spans more than 2M voxels of {eps:g} along an axis: use a larger spacing")
    codes, inv = np.unique(_pack(keys), return_inverse=True)
    ukeys = np.stack([codes >> 42, (codes >> 21) & ((1 << 21) - 1), codes & ((1 << 21) - 1)], 1)
    pairs = []
    for d in _HALF_NEIGHBOURS:
        other = _pack(ukeys + np.array(d))
        j = np.searchsorted(codes, other)
        j = np.minimum(j, len(codes) - 1)
        hit = codes[j] == other
        pairs.append(np.stack([np.flatnonzero(hit), j[hit]], 1))
    edges = np.concatenate(pairs)
    comp = np.arange(len(codes))
    while True:  # min-label propagation with pointer jumping
        m = np.minimum(comp[edges[:, 0]], comp[edges[:, 1]])
        new = comp.copy()
        np.minimum.at(new, edges[:, 0], m)
        np.minimum.at(new, edges[:, 1], m)
        new = new[new]
        if np.array_equal(new, comp):
            break
        comp = new
    _, comp, sizes = np.unique(comp[inv.reshape(-1)], return_inverse=True, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[comp.reshape(-1)]


def label_instances(
    xyz: np.ndarray, label: np.ndarray, classes: list[int], eps: float, min_points: int
) -> list[tuple[int, np.ndarray]]:
    """``(class id, point indices)`` of every connected component of each class in ``classes`` with at least
    ``min_points`` points; points of different labels never share an instance, even where they touch."""
    out: list[tuple[int, np.ndarray]] = []
    for c in classes:
        idx = np.flatnonzero(label == c)
        if len(idx) < min_points:
            continue
        comp = connected_components(xyz[idx], eps)
        for k in range(int(comp.max()) + 1):
            members = idx[comp == k]
            if len(members) < min_points:
                break  # components come largest first
            out.append((c, members))
    return out


def clean_instance(xyz: np.ndarray, eps: float, keep_fraction: float = 0.01) -> np.ndarray:
    """Indices of the points of one instance that survive a DBSCAN-like clean-up: connected pieces at the
    finer ``eps`` that hold at least ``keep_fraction`` of the largest piece's points (at least 5)."""
    comp = connected_components(xyz, eps)
    sizes = np.bincount(comp)
    big = np.flatnonzero(sizes >= max(5, keep_fraction * sizes[0]))
    return np.flatnonzero(np.isin(comp, big))


def _box_gaps(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``[K, K]`` distances between axis-aligned boxes ``lo``/``hi [K, 3]`` (0 where they overlap)."""
    gap = np.maximum(0.0, np.maximum(lo[:, None] - hi[None], lo[None] - hi[:, None]))
    return np.linalg.norm(gap, axis=2)


def merge_pieces(
    xyz: np.ndarray,
    pieces: list[np.ndarray],
    score: Callable[[np.ndarray], float],
    gap: float,
    max_points: int = 4000,
) -> list[np.ndarray]:
    """Join pieces of one class (point indices into ``xyz``) while that helps: of the pairs whose bounding
    boxes are less than ``gap`` apart, the one whose joined points ``score`` best is joined, if that beats
    both pieces alone; again until no pair does. A chair seen from the front can fall apart into its seat
    edge, its backrest and its legs, none of them chair-sized; two mugs side by side joined are no more
    mug-sized than either. ``score`` sees an even sample of at most ``max_points`` of the class's points."""
    rate = min(1.0, max_points / max(1, sum(len(p) for p in pieces)))
    rng = np.random.default_rng(0)
    alive = dict(enumerate(pieces))
    sample = {k: p if rate >= 1 else p[rng.random(len(p)) < rate] for k, p in alive.items()}
    scores = {k: score(xyz[s]) for k, s in sample.items()}
    box = {k: (xyz[p].min(0), xyz[p].max(0)) for k, p in alive.items()}
    joined: dict[tuple[int, int], float] = {}  # scores of the joined pairs, kept until a piece changes
    while len(alive) > 1:
        keys = sorted(alive)
        lo = np.stack([box[k][0] for k in keys])
        hi = np.stack([box[k][1] for k in keys])
        best, pair = 0.0, None
        for i, j in np.argwhere(np.triu(_box_gaps(lo, hi) < gap, 1)):
            a, b = keys[i], keys[j]
            if (a, b) not in joined:
                joined[a, b] = score(xyz[np.concatenate([sample[a], sample[b]])])
            if joined[a, b] > max(scores[a], scores[b], best):
                best, pair = joined[a, b], (a, b)
        if pair is None:
            break
        a, b = pair
        alive[a] = np.concatenate([alive[a], alive.pop(b)])
        sample[a] = np.concatenate([sample[a], sample.pop(b)])
        scores[a] = best
        b_lo, b_hi = box.pop(b)
        box[a] = (np.minimum(box[a][0], b_lo), np.maximum(box[a][1], b_hi))
        joined = {k: v for k, v in joined.items() if a not in k and b not in k}
    return [alive[k] for k in sorted(alive)]


def join_stacked(
    xyz_up: np.ndarray, pieces: list[np.ndarray], min_overlap: float = 0.5, max_gap: float = 2.0
) -> list[np.ndarray]:
    """Pieces of one class (point indices into ``xyz_up``, +z up) joined where one stands over the other: their
    footprints (upright boxes' x-y extents) overlap by at least ``min_overlap`` of the smaller one, and the
    height between them is less than ``max_gap`` times the taller piece's height. A tall object whose middle the
    export missed (seen at a grazing angle, or labelled otherwise there) falls apart into stacked pieces with a
    gap between them (the shared forward room's vase: pieces 0.11 and 0.13 tall, 0.18 apart); two objects of one
    class side by side do not overlap in plan. Until no pair joins."""
    parts = [p for p in pieces if len(p)]
    while len(parts) > 1:
        lo = np.stack([xyz_up[p].min(0) for p in parts])
        hi = np.stack([xyz_up[p].max(0) for p in parts])
        area = np.prod(hi[:, :2] - lo[:, :2], axis=1)
        pair = None
        for i, j in itertools.combinations(range(len(parts)), 2):
            over = np.prod(np.maximum(0.0, np.minimum(hi[i, :2], hi[j, :2]) - np.maximum(lo[i, :2], lo[j, :2])))
            gap = max(lo[i, 2], lo[j, 2]) - min(hi[i, 2], hi[j, 2])
            tall = max(hi[i, 2] - lo[i, 2], hi[j, 2] - lo[j, 2])
            if over >= min_overlap * max(min(area[i], area[j]), 1e-12) and gap < max_gap * tall:
                pair = (i, j)
                break
        if pair is None:
            break
        i, j = pair
        parts[i] = np.concatenate([parts[i], parts[j]])
        del parts[j]
    return parts
