"""Which photos ``ovseg3d prepare`` matches with which: each photo with the photos that look most like it, found
from the photos' own SIFT descriptors, instead of every photo with every other.

A small visual vocabulary is learnt per scene (k-means on a sample of the photos' descriptors). Each photo becomes
one VLAD vector (Jégou et al., CVPR 2010): for each word, the sum of the residuals of the photo's descriptors that
fall nearest to it; each word's part normalised on its own (intra-normalisation, Arandjelović and Zisserman,
CVPR 2013), then a signed square root and one L2 norm over the whole. Two photos are as alike as the dot product of
their vectors. Each photo is paired with its ``neighbours`` most alike photos, as hloc's ``pairs_from_retrieval``
and COLMAP's vocabulary-tree matcher do, and with the next ``window`` photos in name order (a camera's own names
follow the capture: the near pairs that ``prepare``'s far-pair check maps first).

Pure numpy: no vocabulary file, nothing downloaded.
"""

from __future__ import annotations

import numpy as np

WORDS = 64  # words of the vocabulary: a VLAD vector of 64 x 128 numbers per photo
SAMPLE = 40_000  # descriptors drawn (evenly over the photos) to learn the vocabulary
KMEANS_ITERATIONS = 15


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[N]`` index of the centre ``[K, D]`` nearest to each row of ``x`` ``[N, D]`` (squared Euclidean)."""
    return np.argmin((centres * centres).sum(1)[None, :] - 2.0 * (x @ centres.T), axis=1)


def kmeans(x: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0) -> np.ndarray:
    """``[k, D]`` centres of the rows of ``x`` ``[N, D]`` by Lloyd's iterations from ``k`` distinct rows drawn at
    random (a centre left without rows moves to the row farthest from its own centre)."""
    if len(x) < k:
        raise ValueError(f"k-means of {len(x)} rows into {k} centres")
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iterations):
        label = nearest(x, centres)
        for j in range(k):
            members = x[label == j]
            if len(members):
                centres[j] = members.mean(0)
            else:
                far = np.argmax(((x - centres[label]) ** 2).sum(1))
                centres[j], label[far] = x[far], j
    return centres


def vocabulary(descriptors: list[np.ndarray], words: int = WORDS, sample: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """``[words, D]`` visual words learnt from up to ``sample`` descriptors drawn evenly over the photos (each
    ``[N_i, D]``); fewer words where the photos hold fewer than ``4 * words`` descriptors in all."""
    rng = np.random.default_rng(seed)
    each = max(1, sample // max(len(descriptors), 1))
    drawn = [d[rng.choice(len(d), min(each, len(d)), replace=False)] for d in descriptors if len(d)]
    pool = np.concatenate(drawn).astype(np.float32) if drawn else np.zeros((0, 1), np.float32)
    words = min(words, len(pool) // 4)
    if words < 1:
        raise ValueError("no descriptors to learn a vocabulary from")
    return kmeans(pool, words, seed=seed)


def vlad(descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
    """The VLAD vector ``[K * D]`` (unit length, or zero for no descriptors) of one photo's descriptors
    ``[N, D]`` over the words ``[K, D]``: per word the summed residuals of its descriptors, L2-normalised per word,
    then a signed square root and an L2 norm over the whole."""
    x = descriptors.astype(np.float32)
    sums = np.zeros_like(words)
    if len(x):
        label = nearest(x, words)
        np.add.at(sums, label, x - words[label])
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    v = np.sign(sums) * np.sqrt(np.abs(sums))
    return (v / max(float(np.linalg.norm(v)), 1e-12)).ravel()


def global_descriptors(descriptors: list[np.ndarray], words: int = WORDS, seed: int = 0) -> np.ndarray:
    """``[P, K * D]`` one VLAD vector per photo, over a vocabulary learnt from these photos' descriptors."""
    centres = vocabulary(descriptors, words, seed=seed)
    return np.stack([vlad(d, centres) for d in descriptors])


def retrieval_pairs(vectors: np.ndarray, neighbours: int, window: int = 0) -> list[tuple[int, int]]:
    """Index pairs ``i < j`` to match among the photos with global descriptors ``vectors`` ``[P, F]``: each photo
    with its ``neighbours`` most alike (largest dot product) and with the next ``window`` photos in order."""
    n = len(vectors)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(neighbours, n - 1)
    pairs = set()
    if k > 0:
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        pairs |= {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in top[i]}
    pairs |= {(i, j) for i in range(n) for j in range(i + 1, min(n, i + 1 + window))}
    return sorted(pairs)
