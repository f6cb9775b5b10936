"""Simulated teachers for scenes with ground-truth ``labels/`` and ``instances/`` maps.

They have the interfaces of the real CLIP and DINO teachers and feed the same extraction code, so the
3D side can be measured without weights. Each fault of the real teachers is simulated on purpose:

* **CLIP-like crops** (:class:`SyntheticClip`): a crop's embedding mixes the class text embeddings by the
  classes' share of the crop (so features bleed across object boundaries, more for big crops), plus
  Gaussian noise, a per-view shift (views disagree), and occasional confusion of the crop's main class
  with another one (a fixed "look-alike" class most of the time); noise and confusion grow as crops
  shrink, interpolated between the per-scale values of ``syn_noise`` / ``syn_confusion``.
* **Errors that persist across views** (``syn_errors="persistent"``, the default): real CLIP is wrong the same
  way from every side, which no averaging over views removes. Each object (instance) leans toward one
  look-alike class by a strength drawn once per object, varied a little per view (:meth:`SyntheticClip.lean`);
  an object's weight in a crop fades with its apparent size (small or distant objects are absorbed into their
  surroundings), and stuff classes (floor, wall, sky...) weigh more than objects (stuff bleeds into what
  stands on it). ``"per-view"`` keeps only the noise and confusion drawn afresh per view and crop.
* **Text** (:class:`SyntheticText`): a deterministic random unit vector per word; a phrase is the
  normalised sum of its words, so "ball" and "tennis ball" have cosine 1/sqrt(2).
* **DINO-like patches** (:class:`SyntheticDino`): per patch of the real DINO's grid (8x8 pixels of the
  image scaled to ``dino_long_side``), the mix of instance identity vectors by
  the instances' share of the patch, plus a texture term from the patch's colour statistics (different
  objects that look alike are alike) and noise.

Relevancy is then computed from the simulated features exactly as from real CLIP.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovseg3d.teachers.base import TeacherView
from ovseg3d.teachers.config import TeacherConfig, TeacherError
from ovseg3d.teachers.dino import dino_input_size

_STOP_WORDS = frozenset({"a", "an", "the", "of", "photo", "picture", "image", "in", "on"})
_LOOKALIKE = 0.6  # share of confusions (and of objects' leans) that go to the class's fixed look-alike
STUFF_WORDS = frozenset(
    {
        "floor",
        "wall",
        "ceiling",
        "ground",
        "sky",
        "grass",
        "road",
        "carpet",
        "rug",
        "building",
        "pavement",
        "sidewalk",
        "water",
        "sand",
        "snow",
        "field",
        "lawn",
    }
)


def is_stuff(name: str) -> bool:
    """Whether a class name is stuff (amorphous background: floor, wall, sky...) rather than a thing."""
    return any(w in STUFF_WORDS for w in re.findall(r"[a-z]+", name.lower()))


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def random_unit(dim: int, *key: object) -> Tensor:
    """A deterministic random unit vector ``[dim]`` for ``key`` (same key, same vector, any machine)."""
    g = torch.Generator().manual_seed(_seed(*key))
    return F.normalize(torch.randn(dim, generator=g, dtype=torch.float64), dim=0).float()


def _box_sums(integral: Tensor, boxes: Tensor) -> Tensor:
    """Sums over ``[K, 4]`` boxes from a ``[H+1, W+1, C]`` integral image -> ``[K, C]``."""
    x0, y0, x1, y1 = boxes.long().unbind(-1)
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def _integral(onehot: Tensor) -> Tensor:
    """``[H, W, C]`` -> ``[H+1, W+1, C]`` float64 summed-area table."""
    table = F.pad(onehot.double(), (0, 0, 1, 0, 1, 0))
    return table.cumsum(0).cumsum(1)


class SyntheticText:
    """Deterministic text embeddings composed from per-word vectors."""

    name = "synthetic-text"

    def __init__(self, dim: int = 512, seed: int = 0):
        self.embedding_dim = dim
        self.seed = seed

    def words(self, text: str) -> list[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return [w for w in words if w not in _STOP_WORDS] or words or ["<empty>"]

    def encode_text(self, texts: list[str]) -> Tensor:
        vecs = [
            torch.stack([random_unit(self.embedding_dim, "word", self.seed, w) for w in self.words(t)]).sum(0)
            for t in texts
        ]
        return F.normalize(torch.stack(vecs), dim=-1)


_Objects = tuple[Tensor, Tensor, Tensor, Tensor, list[tuple[int, float]]]
"""A view's objects for the persistent teacher: ids, classes, shares of the view, mask table, (look-alike, lean)."""


class SyntheticClip:
    """A CLIP-like crop encoder that reads the ground-truth label map instead of pixels.

    Its noise is drawn per call, so it is always called with :attr:`batch_size` crops (whatever
    ``clip_batch``, a speed setting of the real CLIP, says): the same settings give the same features."""

    name = "synthetic-clip"
    batch_size = 64

    def __init__(self, classes: list[str], cfg: TeacherConfig, scene_key: str = ""):
        """``scene_key``: what tells this scene from another (:func:`~ovseg3d.teachers.extract.scene_key`), so that
        object 3 of one scene does not lean as object 3 of every other."""
        if not classes:
            raise TeacherError("the synthetic teacher needs the scene's classes (segmentations/classes.txt)")
        self.cfg = cfg
        self.scene_key = scene_key
        self.text = SyntheticText(cfg.syn_dim, cfg.teacher_seed)
        self.embedding_dim = cfg.syn_dim
        self.class_text = self.text.encode_text(classes)  # [C, D]
        self.clutter = random_unit(cfg.syn_dim, "clutter", cfg.teacher_seed)  # unlabelled pixels
        n = len(classes)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed("lookalike", cfg.teacher_seed)))
        self.lookalike = perm[(torch.argsort(perm) + 1) % n] if n > 1 else torch.zeros(1, dtype=torch.long)
        # noise and confusion by relative crop size: the per-scale values sit at side / min(W, H) = 1 / k
        order = np.argsort([1.0 / k for k in cfg.clip_scales])
        self._sizes = np.array([1.0 / cfg.clip_scales[i] for i in order])
        self._noise = np.array([cfg.syn_noise[i] for i in order])
        self._confusion = np.array([cfg.syn_confusion[i] for i in order])
        self._integral: tuple[int, Tensor] | None = None
        self._objects_of: tuple[int, _Objects] | None = None
        self.stuff = [is_stuff(c) for c in classes]
        # each class's fixed look-alike among the classes of its kind (things, stuff): the next in a seeded cycle
        self.kin_lookalike = list(range(n))
        for kind in (False, True):
            members = [int(c) for c in perm if self.stuff[int(c)] == kind]
            for a, b in zip(members, members[1:] + members[:1]):
                self.kin_lookalike[a] = b

    def encode_text(self, texts: list[str]) -> Tensor:
        return self.text.encode_text(texts)

    def _shares(self, view: TeacherView, boxes: Tensor) -> Tensor:
        """``[K, C + 1]`` weight of each class in each box (last column: unlabelled), summing to 1: the classes'
        pixel shares, or with persistent errors the objects' shares moved by :meth:`_persistent_weights`."""
        if view.labels is None:
            raise TeacherError(f"view {view.index} has no label map: the synthetic teacher needs labels/")
        if self.cfg.syn_errors == "persistent":
            return self._persistent_weights(view, boxes)
        if self._integral is None or self._integral[0] != view.index:
            n = len(self.class_text)
            labels = view.labels.long().clamp(max=n)  # 255 (none) -> n
            self._integral = (view.index, _integral(F.one_hot(labels, n + 1)))
        sums = _box_sums(self._integral[1], boxes)
        return sums / sums.sum(-1, keepdim=True).clamp(min=1.0)

    def _objects(self, view: TeacherView) -> _Objects:
        """The view's objects: region ids ``[M]`` (instance ids; ``-1 - c`` for the pixels of class ``c`` without an
        instance, ``-1 - C`` for those without a label either), their classes ``[M]`` (``C`` for unlabelled), their
        share of the view ``[M]``, and the ``[H+1, W+1, M]`` summed-area table of their masks (cached for the
        view)."""
        if self._objects_of is not None and self._objects_of[0] == view.index:
            return self._objects_of[1]
        if view.instances is None:
            raise TeacherError(f"view {view.index} has no instance map: the persistent teacher needs instances/")
        n = len(self.class_text)
        labels = view.labels.long().clamp(max=n).flatten()
        instances = view.instances.long().flatten()
        # a region: an instance, or, where a scene gives no instance (0: often its floor, walls or sky), each of
        # the classes labelled there; region ids -1 - c for those, so that they draw their own leans
        regions = torch.where(instances > 0, instances, -1 - labels)
        ids, inverse = torch.unique(regions, return_inverse=True)
        # each region's class: the most common label under it in this view
        counts = torch.zeros(len(ids), n + 1, dtype=torch.long).index_put_(
            (inverse, labels), torch.ones_like(labels), accumulate=True
        )
        classes = counts.argmax(-1)
        area = counts.sum(-1).double() / labels.numel()
        table = _integral(F.one_hot(inverse.reshape(view.height, view.width), len(ids)))
        # each object's look-alike and lean in this view, drawn once for all of the view's crops
        leans = [self.lean(i, c, view.index) if c < n else (c, 0.0) for i, c in zip(ids.tolist(), classes.tolist())]
        self._objects_of = (view.index, (ids, classes, area, table, leans))
        return self._objects_of[1]

    def lean(self, instance: int, cls: int, view: int) -> tuple[int, float]:
        """``(look-alike class, lean)`` of one object in one view. The look-alike, a class of the same kind (a thing
        for a thing, stuff for stuff; its class's fixed look-alike most of the time), and the object's lean
        (uniform in ``[0, syn_lean]``) are drawn once per object of the scene, so the same object errs the same way from every
        side; the lean then moves by ``N(0, syn_lean_view)`` per view. Past 0.5 the object reads as its look-alike."""
        cfg, n = self.cfg, len(self.class_text)
        kin = [c for c in range(n) if c != cls and self.stuff[c] == self.stuff[cls]]
        if not kin:  # nothing of its kind to be taken for
            return cls, 0.0
        g = torch.Generator().manual_seed(_seed("object", cfg.teacher_seed, self.scene_key, instance))
        u_alike, u_lean = torch.rand(2, generator=g).tolist()
        other = kin[int(torch.randint(len(kin), (1,), generator=g))]
        alike = self.kin_lookalike[cls] if u_alike < _LOOKALIKE else other
        g_view = torch.Generator().manual_seed(_seed("lean", cfg.teacher_seed, self.scene_key, instance, view))
        lean = cfg.syn_lean * u_lean + cfg.syn_lean_view * float(torch.randn(1, generator=g_view))
        return alike, min(max(lean, 0.0), 1.0)

    def _persistent_weights(self, view: TeacherView, boxes: Tensor) -> Tensor:
        """``[K, C + 1]`` class weights of the crops with errors that persist across views.

        Each object's share of a crop is split between its class and its look-alike by its lean; an object's
        weight fades by ``1 - a0 / (a0 + area)`` (a0 = ``syn_absorb``, area its share of the view) and stuff's grows
        by ``1 + syn_stuff_bleed``; the weights are then normalised to sum to 1 over the crop."""
        cfg, n = self.cfg, len(self.class_text)
        _, classes, area, table, leans = self._objects(view)
        shares = _box_sums(table, boxes)  # [K, M] pixel counts
        weights = torch.zeros(len(boxes), n + 1, dtype=torch.float64)
        for m, cls in enumerate(classes.tolist()):
            if cls == n:
                weights[:, n] += shares[:, m]
                continue
            if self.stuff[cls]:
                share = shares[:, m] * (1.0 + cfg.syn_stuff_bleed)
            else:  # absorbed into the surroundings as it shrinks
                share = shares[:, m] * (float(area[m]) / (cfg.syn_absorb + float(area[m])))
            alike, lean = leans[m]
            weights[:, cls] += share * (1.0 - lean)
            weights[:, alike] += share * lean
        return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)

    def encode_crops(self, view: TeacherView, boxes: Tensor) -> Tensor:
        cfg = self.cfg
        g = torch.Generator().manual_seed(_seed("crops", cfg.teacher_seed, view.index, *boxes[0].tolist(), len(boxes)))
        shares = self._shares(view, boxes).float()
        n_cls = len(self.class_text)
        rel = ((boxes[:, 2] - boxes[:, 0]).float() / min(view.width, view.height)).numpy()
        noise = torch.from_numpy(np.interp(rel, self._sizes, self._noise)).float()
        confusion = torch.from_numpy(np.interp(rel, self._sizes, self._confusion)).float()
        # confusion: the crop's main class is taken for another one
        main = shares[:, :n_cls].argmax(-1)
        confused = (torch.rand(len(boxes), generator=g) < confusion) & (shares[:, :n_cls].amax(-1) > 0) & (n_cls > 1)
        other = (main + torch.randint(1, max(n_cls, 2), (len(boxes),), generator=g)) % n_cls
        wrong = torch.where(torch.rand(len(boxes), generator=g) < _LOOKALIKE, self.lookalike[main], other)
        rows = torch.nonzero(confused).squeeze(-1)
        moved = shares[rows, main[rows]]
        shares[rows, main[rows]] = 0.0
        shares[rows, wrong[rows]] += moved
        emb = shares[:, :n_cls] @ self.class_text + shares[:, n_cls:] * self.clutter
        emb = emb + cfg.syn_view_noise * random_unit(cfg.syn_dim, "view", cfg.teacher_seed, view.index)
        emb = emb + noise[:, None] * torch.randn(len(boxes), cfg.syn_dim, generator=g) / cfg.syn_dim**0.5
        return F.normalize(emb, dim=-1)


class SyntheticDino:
    """A DINO-like patch encoder from the instance map and the image's colour statistics."""

    name = "synthetic-dino"
    patch = 8

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.feature_dim = cfg.syn_dino_dim
        g = torch.Generator().manual_seed(_seed("texture", cfg.teacher_seed))
        self.texture_proj = torch.randn(6, cfg.syn_dino_dim, generator=g)

    def encode_patches(self, view: TeacherView) -> Tensor:
        if view.instances is None:
            raise TeacherError(f"view {view.index} has no instance map: the synthetic teacher needs instances/")
        cfg, p = self.cfg, self.patch
        w, h = (n // p for n in dino_input_size(view.width, view.height, cfg.dino_long_side, p))
        # the real DINO's patch grid mapped back onto the image: cells of (fractional) source pixels
        cols = torch.linspace(0, view.width, w + 1).round().long()
        rows = torch.linspace(0, view.height, h + 1).round().long()
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        x0, x1 = cols[xs], torch.maximum(cols[xs + 1], cols[xs] + 1).clamp(max=view.width)
        y0, y1 = rows[ys], torch.maximum(rows[ys + 1], rows[ys] + 1).clamp(max=view.height)
        x0, y0 = torch.minimum(x0, x1 - 1), torch.minimum(y0, y1 - 1)
        boxes = torch.stack([x0, y0, x1, y1], -1).reshape(-1, 4)
        ids, inverse = torch.unique(view.instances.long(), return_inverse=True)
        shares = _box_sums(_integral(F.one_hot(inverse, len(ids))), boxes).float()
        shares = shares / shares.sum(-1, keepdim=True).clamp(min=1.0)
        identity = torch.stack([random_unit(cfg.syn_dino_dim, "instance", cfg.teacher_seed, int(i)) for i in ids])
        rgb = view.image.double() / 255.0
        mean = _box_sums(_integral(rgb), boxes)
        sq = _box_sums(_integral(rgb * rgb), boxes)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double()[:, None]
        mean, sq = mean / area, sq / area
        stats = torch.cat([mean - 0.5, 2.0 * (sq - mean * mean).clamp(min=0).sqrt()], -1).float()  # [K, 6]
        texture = F.normalize(stats @ self.texture_proj, dim=-1)
        g = torch.Generator().manual_seed(_seed("dino", cfg.teacher_seed, view.index))
        noise = torch.randn(len(boxes), cfg.syn_dino_dim, generator=g) / cfg.syn_dino_dim**0.5
        feats = shares @ identity + cfg.syn_dino_texture * texture + cfg.syn_dino_noise * noise
        return F.normalize(feats, dim=-1).reshape(h, w, -1)
