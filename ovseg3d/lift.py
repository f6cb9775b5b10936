"""Training-free lifting of the 2D teachers onto a trained radiance field (issue 68; REFERENCE §11).

Instead of fitting a semantic field by gradient steps (:mod:`ovseg3d.distill`), each training view's teacher maps are
registered onto a sparse voxel grid by the field's own rendering weights (Dr. Splat, Occam's LGS, LightSplat do this
on Gaussians):

1. every ``lift_stride``-th pixel of each training view is marched through the trained field, as the distillation
   and ``export`` march it: the samples that carry the ray's sharpened weight (:func:`~ovseg3d.distill.semantic_samples`);
2. each sample adds ``w * f`` and ``w`` to the voxel it lies in, ``f`` being the teacher's values at the pixel (the
   CLIP feature at the chosen crop scale, PCA-reduced; RDA's teacher distribution ``softmax_c(R_c / T)`` at each
   scale; the DINO feature, PCA-reduced) and ``w`` its share of the ray's weight times the ray's opacity (times the
   teacher's crop coverage of the pixel);
3. each voxel's value is the sum over the samples divided by their weight: the weight-averaged mean of what the
   views saw there;
4. optionally (``lift_propagate`` iterations) the values are smoothed over the 6 neighbours of each voxel by their
   DINO affinity, FDA's idea in 3D: ``f <- (1 - a) f0 + a * sum_j A_ij f_j / sum_j A_ij`` with
   ``A_ij = max(0, cos(dino_i, dino_j) - t) / (1 - t)`` (``j`` includes ``i``).

A lifted run answers the same questions as a distilled one through the same interface (:func:`load_semantics`):
a ray's "latent" is the weighted mean of its samples' voxel values (read trilinearly between voxel centres), and
``field.decode`` turns it back into a CLIP and a DINO feature with the PCA bases, the CLIP feature's cosines with
the class texts set to RDA's optimum for the lifted distribution (:class:`LiftedDecoder`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ovseg3d.config import TrainConfig
from ovseg3d.data.cameras import Cameras, pixel_rays
from ovseg3d.distill import (
    CropCoverage,
    Distiller,
    SemanticRenders,
    TeacherSpace,
    distill_training,
    load_distiller,
    nearest_cell,
    semantic_samples,
)
from ovseg3d.errors import UsageError
from ovseg3d.field.semantic import SemanticOutput
from ovseg3d.field.space import to_unit
from ovseg3d.render.volume import accumulate
from ovseg3d.run import RunError, new_checkpoint_path, save_checkpoint
from ovseg3d.teachers.cache import TeacherFeatures
from ovseg3d.train import Trainer, Training
from ovseg3d.views import teachers_after_geometry

LIFT_FORMAT = 1
"""The layout of a checkpoint's ``lifted`` entry; another one is refused with one line."""


# ------------------------------------------------------------------------------------------------ the samples


# ------------------------------------------------------------------------------------------------ PCA bases


@dataclass
class Basis:
    """A linear reduction of teacher features: ``z = (x - mean) @ components.T`` and back, ``x ~ z @ components +
    mean``; ``components [k, D]`` orthonormal rows (the identity when nothing is reduced)."""

    mean: Tensor  # [D]
    components: Tensor  # [k, D]

    @classmethod
    def fit(cls, x: Tensor, k: int) -> Basis:
        """The ``k`` principal directions of ``x [P, D]`` (all ``D`` when ``k <= 0`` or ``k >= D``: no reduction)."""
        d = x.shape[1]
        if k <= 0 or k >= d:
            return cls(x.new_zeros(d), torch.eye(d, dtype=x.dtype, device=x.device))
        mean = x.mean(0)
        centred = x - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        return cls(mean, vectors[:, -k:].flip(1).T.contiguous())

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def project(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) @ self.components.T

    def restore(self, z: Tensor) -> Tensor:
        return z @ self.components + self.mean

    def frame(self) -> Tensor:
        """``[D, k + 1]`` orthonormal columns spanning the mean and the components: uncentred features' cosines
        within the directions the basis keeps (``[D, D]``, the identity, when nothing is reduced)."""
        if self.dim >= self.mean.shape[0]:
            return self.components.T
        return torch.linalg.qr(torch.cat([self.mean[:, None], self.components.T], 1).float()).Q


def fit_bases(
    features: TeacherFeatures, views: list[int], scale: int, clip_dim: int, dino_dim: int
) -> tuple[Basis, Basis]:
    """PCA bases of the teacher's CLIP features (at crop ``scale``) and DINO features, from up to 8 views spread
    over ``views``, at most 32k pixels each."""
    picked = views[:: max(1, len(views) // 8)][:8]
    gen = torch.Generator().manual_seed(0)

    def pixels(maps: np.ndarray) -> Tensor:
        rows = []
        for v in picked:
            x = torch.from_numpy(np.asarray(maps[v], dtype=np.float32)).reshape(-1, maps.shape[-1])
            rows.append(x[torch.randperm(len(x), generator=gen)[:32768]])
        return torch.cat(rows)

    n_scales = features.clip.shape[3]
    clip = torch.from_numpy(
        np.stack([np.asarray(features.clip[v][:, :, scale % n_scales], np.float32) for v in picked])
    )
    clip = clip.reshape(-1, clip.shape[-1])
    return Basis.fit(clip, clip_dim), Basis.fit(pixels(features.dino), dino_dim)


# ------------------------------------------------------------------------------------------------ the voxels


class VoxelTable:
    """A sparse voxel grid of ``resolution^3`` cells over the field's unit cube (:func:`~ovseg3d.field.space.to_unit`:
    the ROI box, or the contracted world): the sorted flat keys of the cells that hold something, each one's row in
    ``values [M, C]``, grown as samples arrive."""

    def __init__(self, resolution: int, n_values: int, device: torch.device):
        self.resolution = resolution
        self.keys = torch.zeros(0, dtype=torch.long, device=device)  # sorted
        self.rows = torch.zeros(0, dtype=torch.long, device=device)  # row of each sorted key
        self.values = torch.zeros(1024, n_values, device=device)
        self.count = 0

    def cells(self, unit: Tensor) -> Tensor:
        """``[P, 3]`` unit-cube points -> ``[P]`` flat key of the cell holding each."""
        r = self.resolution
        c = (unit * r).long().clamp(0, r - 1)
        return (c[:, 0] * r + c[:, 1]) * r + c[:, 2]

    def find(self, keys: Tensor) -> Tensor:
        """``[P]`` row of each key, -1 where the cell holds nothing."""
        if len(self.keys) == 0:
            return torch.full_like(keys, -1)
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return torch.where(self.keys[at] == keys, self.rows[at], -1)

    def add(self, keys: Tensor, values: Tensor) -> None:
        """Add ``values [P, C]`` into the rows of ``keys [P]``, making rows for the new cells."""
        unique, inverse = torch.unique(keys, return_inverse=True)
        rows = self.find(unique)
        new = rows < 0
        n_new = int(new.sum())
        if n_new:
            rows[new] = torch.arange(self.count, self.count + n_new, device=keys.device)
            self.count += n_new
            if self.count > len(self.values):
                grown = self.values.new_zeros(max(self.count, 2 * len(self.values)), self.values.shape[1])
                grown[: len(self.values)] = self.values
                self.values = grown
            merged = torch.cat([self.keys, unique[new]])
            order = torch.argsort(merged)
            self.keys, self.rows = merged[order], torch.cat([self.rows, rows[new]])[order]
        summed = values.new_zeros(len(unique), values.shape[1]).index_add_(0, inverse, values)
        self.values.index_add_(0, rows, summed)

    def trim(self) -> Tensor:
        """The filled rows ``[M, C]`` (the spare rows of the last growth dropped)."""
        self.values = self.values[: self.count].contiguous()
        return self.values

    def neighbours(self) -> Tensor:
        """``[M, 6]`` row of each cell's 6 face neighbours (-1 where none holds anything), by row."""
        r = self.resolution
        by_row = torch.empty_like(self.keys)
        by_row[self.rows] = self.keys
        x, y, z = by_row // (r * r), (by_row // r) % r, by_row % r
        out = []
        for dx, dy, dz in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            nx, ny, nz = x + dx, y + dy, z + dz
            inside = (nx >= 0) & (nx < r) & (ny >= 0) & (ny < r) & (nz >= 0) & (nz < r)
            found = self.find((nx.clamp(0, r - 1) * r + ny.clamp(0, r - 1)) * r + nz.clamp(0, r - 1))
            out.append(torch.where(inside, found, -1))
        return torch.stack(out, 1)

    def read(self, unit: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
        """Values of ``table [M, C]`` at unit-cube points ``[P, 3]``, trilinear between the centres of the 8 cells
        around each point, over those that hold something (renormalised); and ``[P]`` the share of the 8 that
        did (0: nothing near, the value is 0)."""
        r = self.resolution
        pos = unit * r - 0.5
        base = pos.floor().long()
        frac = pos - base
        value = table.new_zeros(len(unit), table.shape[1])
        total = unit.new_zeros(len(unit))
        for corner in range(8):
            offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=unit.device)
            c = base + offset
            inside = ((c >= 0) & (c < r)).all(-1)
            c = c.clamp(0, r - 1)
            w = torch.where(offset.bool(), frac, 1.0 - frac).prod(-1)
            rows = self.find((c[:, 0] * r + c[:, 1]) * r + c[:, 2])
            w = torch.where(inside & (rows >= 0), w, 0.0)
            value += w[:, None] * table[rows.clamp(min=0)].float()
            total += w
        return value / total.clamp(min=1e-12)[:, None], total

    def state_dict(self) -> dict:
        return {"resolution": self.resolution, "keys": self.keys.cpu(), "rows": self.rows.cpu()}

    @classmethod
    def from_state(cls, state: dict, n_values: int, device: torch.device) -> VoxelTable:
        table = cls(int(state["resolution"]), n_values, device)
        table.keys, table.rows = state["keys"].to(device), state["rows"].to(device)
        table.count = len(table.keys)
        return table


# ------------------------------------------------------------------------------------------------ lifting


@dataclass(frozen=True)
class LiftLayout:
    """Where each thing lives in a voxel's row: the CLIP feature (PCA, ``clip`` dims a scale, ``scales`` of them),
    the DINO feature (PCA, ``dino`` dims), the relevancy (``n_scales * n_classes``), then the weight."""

    clip: int
    scales: int
    dino: int
    n_scales: int
    n_classes: int

    @property
    def width(self) -> int:
        return self.clip * self.scales + self.dino + self.n_scales * self.n_classes + 1

    def parts(self, row: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[..., width]`` -> CLIP ``[..., scales, clip]``, DINO, relevancy ``[..., S, C]``, weight ``[...]``."""
        a = self.clip * self.scales
        b = a + self.dino
        c = b + self.n_scales * self.n_classes
        shape = row.shape[:-1]
        return (
            row[..., :a].reshape(*shape, self.scales, self.clip),
            row[..., a:b],
            row[..., b:c].reshape(*shape, self.n_scales, self.n_classes),
            row[..., c],
        )


class ViewMaps:
    """One view's teacher maps, reduced: CLIP ``[h, w, scales, k]``, DINO ``[hd, wd, kd]``, and RDA's teacher
    distribution ``softmax_c(relevancy / temperature)`` ``[hr, wr, S*C]``, read at pixels by the nearest map cell (as
    the distillation reads them)."""

    def __init__(
        self,
        features: TeacherFeatures,
        view: int,
        clip: Basis,
        dino: Basis,
        scales: list[int],
        temperature: float,
        view_filter: tuple[int, float, float] = (0, 0.7, 5.0),
        dino_frame: Tensor | None = None,
    ):
        """``view_filter``: :func:`filter_view`'s iterations, DINO threshold and strength (0 iterations: none), on
        the DINO features within ``dino_frame`` (:meth:`Basis.frame`; ``None``: all their dimensions)."""
        raw = torch.from_numpy(np.asarray(features.clip[view][:, :, scales], dtype=np.float32))
        self.clip = clip.project(raw.to(clip.mean.device))
        raw_dino = torch.from_numpy(np.asarray(features.dino[view], dtype=np.float32)).to(dino.mean.device)
        self.dino = dino.project(raw_dino)
        rel = torch.from_numpy(np.asarray(features.relevancy[view], dtype=np.float32)).to(clip.mean.device)
        rel = torch.softmax(rel / temperature, -1)  # [hr, wr, S, C]
        if view_filter[0] > 0:  # on the lifted scales alone: the others' relevancy is kept as the teacher's
            framed = raw_dino if dino_frame is None else raw_dino @ dino_frame
            chosen = rel[:, :, scales]
            rel[:, :, scales] = filter_view(chosen.flatten(2), framed, rel.shape[-1], *view_filter).view(chosen.shape)
        self.relevancy = rel.reshape(*rel.shape[:2], -1)

    def at(self, u: Tensor, v: Tensor, width: int, height: int) -> Tensor:
        """``[R, scales * k + kd + S * C]`` the values under pixels ``(u, v)`` of a ``width x height`` image."""

        def cell(maps: Tensor) -> Tensor:
            h, w = maps.shape[:2]
            return maps[nearest_cell(v, height, h), nearest_cell(u, width, w)].reshape(len(u), -1)

        return torch.cat([cell(self.clip), cell(self.dino), cell(self.relevancy)], 1)


def filter_view(
    distribution: Tensor,
    dino: Tensor,
    n_classes: int,
    iterations: int,
    threshold: float,
    strength: float,
    window: int = 7,
) -> Tensor:
    """FDA's pull and push within one view, training-free: ``iterations`` steps of mean-field inference on the
    teacher's class distribution ``distribution [h, w, G * n_classes]`` (G groups, one per lifted scale, each summing
    to 1), ``q_i <- softmax(log p_i + strength * (sum_j A_ij q_j - sum_j N_ij q_j))`` over the cells ``j`` of a
    ``window`` x ``window`` neighbourhood of each cell ``i``. ``A_ij ~ max(0, cos(d_i, d_j) - threshold)`` (the pull,
    normalised over ``j``, the cell itself included) and ``N_ij ~ [cos(d_i, d_j) < threshold]`` (the push, a mean),
    of the DINO features ``dino [hd, wd, Dd]`` read at the map's cells (bilinear), as FDA pulls together and pushes
    apart the distillation's class distributions by the same threshold. Where DINO says two cells are one thing
    they come to agree, and a cell unlike its neighbours is drawn from their class: the crops' blur goes back to
    DINO's edges."""
    h, w, n = distribution.shape
    d = F.interpolate(dino.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear", align_corners=False)
    d = F.normalize(d, dim=1)[0]  # [Dd, h, w]
    pad, k2 = window // 2, window * window
    padded = F.pad(d, (pad, pad, pad, pad))  # zeros outside the map: cos 0, neither pulled nor pushed
    cos = torch.stack(  # [k2, h*w], in unfold's order of the window's cells
        [(padded[:, dy : dy + h, dx : dx + w] * d).sum(0).reshape(-1) for dy in range(window) for dx in range(window)]
    )
    inside = F.unfold(F.pad(torch.ones(1, 1, h, w), (pad,) * 4), window).view(k2, h * w).to(cos.device) > 0
    pull = ((cos - threshold) / (1.0 - threshold)).clamp(min=0.0)
    pull = pull / pull.sum(0, keepdim=True).clamp(min=1e-12)  # the cell itself has cos 1: never an empty row
    push = ((cos < threshold) & inside).float()
    push = push / push.sum(0, keepdim=True).clamp(min=1.0)
    weight = strength * (pull - push)  # [k2, h*w]: one product a step
    start = distribution.permute(2, 0, 1)[None].float()  # [1, n, h, w]
    prior = start.clamp(min=1e-6).log().view(n // n_classes, n_classes, h * w)
    current = start
    for _ in range(iterations):
        near = F.unfold(current, window, padding=pad).view(n, k2, h * w)
        message = (near * weight).sum(1).view(n // n_classes, n_classes, h * w)
        current = torch.softmax(prior + message, 1).view(1, n, h, w)
    return current[0].permute(1, 2, 0).to(distribution.dtype)


def lift_scales(cfg: TrainConfig, n_scales: int) -> list[int]:
    """The crop scales whose CLIP features are lifted: all of them with ``--scale-selection`` (chosen per voxel
    later), else the one ``--teacher-scale``."""
    return list(range(n_scales)) if cfg.scale_selection else [cfg.teacher_scale % n_scales]


def lift_stride(stride: int, features: TeacherFeatures, width: int, height: int) -> int:
    """``--lift-stride``, or for 0 the pixels per cell of the teacher's CLIP map (at least 1): the map holds no more
    than one ray per cell can carry, and the field's geometry comes back when the lifted voxels are rendered."""
    if stride > 0:
        return stride
    h, w = features.clip.shape[1:3]
    return max(1, min(width // w, height // h))


@torch.no_grad()
def lift(geo: Trainer, features: TeacherFeatures, log=print) -> LiftedSemantics:  # noqa: ANN001
    """Lift ``features`` onto ``geo``'s field (see the module docstring); the lifted semantics, ready to query."""
    cfg, dev, scene = geo.cfg, geo.device, geo.scene
    start = time.perf_counter()
    n_scales, n_classes = int(features.clip.shape[3]), int(features.relevancy.shape[-1])
    scales = lift_scales(cfg, n_scales)
    views = features.usable(scene.train_ids)  # the teachers' views (--teacher-views), else every training view
    clip_basis, dino_basis = fit_bases(features, views, scales[-1], cfg.lift_clip_dim, cfg.lift_dino_dim)
    clip_basis, dino_basis = (Basis(b.mean.to(dev), b.components.to(dev)) for b in (clip_basis, dino_basis))
    dino_frame = dino_basis.frame() if cfg.lift_view_filter > 0 else None  # the view filter's cosines, reduced
    layout = LiftLayout(clip_basis.dim, len(scales), dino_basis.dim, n_scales, n_classes)
    table = VoxelTable(cfg.lift_resolution, layout.width, dev)
    cameras = scene.cameras.to(dev)
    near_far = scene.near_far.to(dev) if scene.near_far is not None else None
    coverage = CropCoverage.of(geo) if cfg.coverage_weights and not cfg.teachers.dense() else None
    w, h, stride = scene.width, scene.height, lift_stride(cfg.lift_stride, features, scene.width, scene.height)
    gv, gu = torch.meshgrid(torch.arange(stride // 2, h, stride), torch.arange(stride // 2, w, stride), indexing="ij")
    gu, gv = gu.reshape(-1).to(dev), gv.reshape(-1).to(dev)
    chunk = cfg.render_chunk(dev.type)
    for view in tqdm(views, desc="lift", unit="view", leave=False):
        maps = ViewMaps(
            features,
            view,
            clip_basis,
            dino_basis,
            scales,
            cfg.rda_temperature,
            (cfg.lift_view_filter, cfg.lift_affinity, cfg.lift_view_strength),
            dino_frame,
        )
        used = scene.used_pixels([view])
        keep = torch.ones_like(gu, dtype=torch.bool) if used is None else used[0].to(dev)[gv, gu]
        us, vs = gu[keep], gv[keep]
        keys, values = [], []
        for s in range(0, len(us), chunk):
            u, v = us[s : s + chunk], vs[s : s + chunk]
            cam = torch.full_like(u, view)
            origins, dirs = pixel_rays(cameras, cam, u, v)
            points, share, ray, opacity = semantic_samples(
                geo, cameras, cam, origins, dirs, near_far, with_opacity=True
            )
            ray_weight = opacity
            if coverage is not None:
                ray_weight = ray_weight * coverage.at(u, v, w, h)[:, scales].mean(-1)
            weight = share * ray_weight[ray]
            unit, _ = to_unit(points, geo.field.aabb, geo.field.contraction)
            keys.append(table.cells(unit))
            values.append(weight[:, None] * torch.cat([maps.at(u, v, w, h)[ray], torch.ones_like(weight)[:, None]], 1))
        table.add(torch.cat(keys), torch.cat(values))  # once a view: the table's keys are sorted once a view
    sums = table.trim()
    lifted = LiftedSemantics.build(geo, features.classes, features.text, layout, table, sums, clip_basis, dino_basis)
    propagating = time.perf_counter()
    if cfg.lift_propagate > 0:
        lifted.propagate(cfg.lift_propagate, cfg.lift_affinity, cfg.lift_propagate_weight)
    lifted.seconds = time.perf_counter() - start
    lifted.propagate_seconds = time.perf_counter() - propagating
    log(
        f"lifted {len(views)} views ({len(gu)} rays each, one every {stride} pixels) onto {len(table.keys)} "
        f"voxels of {cfg.lift_resolution}^3 in {lifted.seconds:.1f} s, {lifted.propagate_seconds:.1f} s of it "
        f"propagating ({lifted.nbytes() / 2**20:.1f} MiB)"
    )
    return lifted


# ------------------------------------------------------------------------------------------------ reading it


class LiftedDecoder(nn.Module):
    """``field.decode`` of a lifted run: a ray's ``[clip_k, dino_kd, P_C]`` back to a CLIP and a DINO feature.

    The CLIP feature is restored from its reduction, then its cosines with the scene's class texts are set as RDA
    would have trained them (REFERENCE §1; KL, ``--rda-divergence kl``): RDA fits ``softmax_c(cos(F, t_c) / T_f)`` to
    the teacher's ``softmax_c(R_c / T_r)`` over every ray that sees a point, whose optimum is their weighted mean
    ``P``, the lifted distribution: ``cos(F, t_c) = mean_c(cos) + T_f (log P_c - mean_c(log P))``. Only the part of
    ``F`` in the span of the class texts changes (``F += pinv(T) (c' - c)``): a free-text query reads the rest as
    lifted. The teacher's raw cosines alone, unnormalised per image, label small objects as what surrounds them
    (measured on the demo: mIoU 40.0, below the 2D teacher's 52.1)."""

    def __init__(self, clip: Basis, dino: Basis, text: Tensor, temperature: float, n_scales: int, scale: int):
        super().__init__()
        self.register_buffer("clip_mean", clip.mean)
        self.register_buffer("clip_components", clip.components)
        self.register_buffer("dino_mean", dino.mean)
        self.register_buffer("dino_components", dino.components)
        self.register_buffer("text", F.normalize(text.float(), dim=-1))
        self.temperature, self.n_scales, self.scale = temperature, n_scales, scale

    @property
    def widths(self) -> tuple[int, int, int]:
        return int(self.clip_components.shape[0]), int(self.dino_components.shape[0]), int(self.text.shape[0])

    def decode(self, z: Tensor) -> SemanticOutput:
        """``[R, k + kd + C]`` -> CLIP ``[R, D]``, selection ``[R, S]`` (all on the lifted scale), DINO ``[R, Dd]``."""
        k, kd, n_classes = self.widths
        clip = z[:, :k] @ self.clip_components + self.clip_mean
        dino = z[:, k : k + kd] @ self.dino_components + self.dino_mean
        if n_classes:
            log_p = z[:, k + kd :].clamp(min=1e-6).log()
            cos = clip @ self.text.T
            target = cos.mean(-1, keepdim=True) + self.temperature * (log_p - log_p.mean(-1, keepdim=True))
            clip = clip + (target - cos) @ torch.linalg.pinv(self.text).T
        selection = z.new_zeros(len(z), self.n_scales)
        selection[:, self.scale] = 1.0
        return SemanticOutput(clip, selection, dino)


class LiftedSemantics(SemanticRenders):
    """A lifted run's semantics with the interface the later stages read a :class:`~ovseg3d.distill.Distiller`
    through (``cfg``, ``space``, ``field.decode``, ``render_latent``, ``render_semantics``, ``segment``).

    ``latent [M, k + kd + C]`` (float16): each voxel's CLIP feature at its crop scale and its DINO feature, reduced,
    and its relevancy at that scale; ``relevancy [M, S, C]`` (float16): the relevancy at every scale; ``weight [M]``:
    the rendering weight behind them."""

    def __init__(
        self,
        geo: Trainer,
        space: TeacherSpace,
        table: VoxelTable,
        latent: Tensor,
        relevancy: Tensor,
        weight: Tensor,
        decoder: LiftedDecoder,
    ):
        self.geo, self.space, self.table, self.device = geo, space, table, geo.device
        self.latent, self.relevancy, self.weight = latent, relevancy, weight
        self.field = decoder
        # what the later stages render and average per ray (and export's width for an empty batch)
        self.cfg = dataclasses.replace(geo.cfg, latent_dim=int(latent.shape[1]))
        self.seconds = self.propagate_seconds = 0.0

    @classmethod
    def build(
        cls,
        geo: Trainer,
        classes: list[str],
        text: np.ndarray,
        layout: LiftLayout,
        table: VoxelTable,
        sums: Tensor,
        clip: Basis,
        dino: Basis,
    ) -> LiftedSemantics:
        """Normalise the summed rows by their weight; with several lifted scales, keep each voxel's most confident
        one (:func:`choose_scale`)."""
        cfg = geo.cfg
        s_clip, s_dino, s_rel, weight = layout.parts(sums)
        mean = 1.0 / weight.clamp(min=1e-12)
        clip_f, dino_f, rel = s_clip * mean[:, None, None], s_dino * mean[:, None], s_rel * mean[:, None, None]
        rows = torch.arange(len(rel), device=rel.device)
        if layout.scales > 1:
            best = choose_scale(rel)
            clip_f, rel_f = clip_f[rows, best], rel[rows, best]
            scale = layout.n_scales - 1  # what the decoder reports: the choice is per voxel
        else:
            scale = cfg.teacher_scale % layout.n_scales
            clip_f, rel_f = clip_f[:, 0], rel[:, scale]
        text_t = torch.as_tensor(np.asarray(text), dtype=torch.float32, device=geo.device)
        space = TeacherSpace(tuple(classes), text_t, int(clip.mean.shape[0]), layout.n_scales, int(dino.mean.shape[0]))
        decoder = LiftedDecoder(clip, dino, text_t, cfg.rda_field_temperature, layout.n_scales, scale).to(geo.device)
        latent = torch.cat([clip_f, dino_f, rel_f], 1).half()
        return cls(geo, space, table, latent, rel.half(), weight.float(), decoder)

    def nbytes(self) -> int:
        tensors = (self.latent, self.relevancy, self.weight, self.table.keys, self.table.rows)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- view consistency ---------------------------------------------------------------------------------
    def propagate(self, iterations: int, threshold: float, alpha: float) -> None:
        """:func:`propagate` the CLIP feature and the class distribution over the voxels' face neighbours by their
        DINO affinity (the DINO feature stays as lifted)."""
        k, kd, _ = self.field.widths
        moved = torch.cat([self.latent[:, :k], self.latent[:, k + kd :]], 1).float()
        moved = propagate(moved, self.table.neighbours(), self.dino_embedding(), iterations, threshold, alpha).half()
        self.latent = torch.cat([moved[:, :k], self.latent[:, k : k + kd], moved[:, k:]], 1)

    def dino_embedding(self) -> Tensor:
        """``[M, kd + 1]`` vectors whose dot products are those of the voxels' restored DINO features ``z C + mu``
        (``C`` orthonormal rows): ``[z + C mu, sqrt(|mu|^2 - |C mu|^2)]``, without restoring the full width."""
        k, kd, _ = self.field.widths
        z = self.latent[:, k : k + kd].float()
        mu, comps = self.field.dino_mean, self.field.dino_components
        projected = comps @ mu
        rest = (mu.square().sum() - projected.square().sum()).clamp(min=0.0).sqrt()
        return torch.cat([z + projected, rest.expand(len(z), 1)], 1)

    # -- the distiller's interface --------------------------------------------------------------------------
    @torch.no_grad()
    def render_latent(self, cameras: Cameras, cam: Tensor, origins: Tensor, dirs: Tensor, near_far) -> Tensor:  # noqa: ANN001
        """``[R, k + kd + C]`` per ray: the lifted values at the samples that carry its weight, averaged with those
        weights (over the samples that have lifted voxels near them)."""
        points, share, ray, _ = semantic_samples(self.geo, cameras, cam, origins, dirs, near_far)
        unit, _ = to_unit(points, self.geo.field.aabb, self.geo.field.contraction)
        value, near = self.table.read(unit, self.latent)
        w = share * (near > 0)
        total = accumulate(w, None, ray, len(origins))
        return accumulate(w, value, ray, len(origins)) / total.clamp(min=1e-12)

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "lift_format": LIFT_FORMAT,
            "table": self.table.state_dict(),
            "latent": self.latent.cpu(),
            "relevancy": self.relevancy.cpu(),
            "weight": self.weight.cpu(),
            "decoder": {k: v.cpu() for k, v in self.field.state_dict().items()},
            "temperature": self.field.temperature,
            "n_scales": self.field.n_scales,
            "scale": self.field.scale,
            "teacher_space": self.space.state_dict(),
            "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, geo: Trainer, state: dict, where: str = "the checkpoint") -> LiftedSemantics:
        if state.get("lift_format") != LIFT_FORMAT:
            raise RunError(
                f"{where}: lifted semantics of format {state.get('lift_format')}, this ovseg3d reads format "
                f"{LIFT_FORMAT}: lift them again (ovseg3d run SCENE RUN --semantic lift, or train a new run)"
            )
        dev = geo.device
        d = state["decoder"]
        decoder = LiftedDecoder(
            Basis(d["clip_mean"], d["clip_components"]),
            Basis(d["dino_mean"], d["dino_components"]),
            d["text"],
            float(state["temperature"]),
            int(state["n_scales"]),
            int(state["scale"]),
        ).to(dev)
        latent = state["latent"].to(dev)
        table = VoxelTable.from_state(state["table"], latent.shape[1], dev)
        space = TeacherSpace.from_state(state["teacher_space"], dev)
        lifted = cls(geo, space, table, latent, state["relevancy"].to(dev), state["weight"].to(dev), decoder)
        lifted.seconds = float(state.get("seconds", 0.0))
        return lifted


def propagate(
    values: Tensor, neighbours: Tensor, dino: Tensor, iterations: int, threshold: float, alpha: float
) -> Tensor:
    """FDA in 3D: ``iterations`` steps of ``f <- (1 - alpha) f0 + alpha * sum_j A_ij f_j / sum_j A_ij`` over each
    voxel ``i`` and its neighbours ``j`` (``neighbours [M, n]``, -1: none), with
    ``A_ij = max(0, cos(dino_i, dino_j) - threshold) / (1 - threshold)`` and ``A_ii = 1``. ``values [M, F]``,
    ``dino [M, Dd]``; a sparse matrix product a step."""
    m, n = neighbours.shape
    unit = F.normalize(dino.float(), dim=-1)
    cos = (unit[:, None, :] * unit[neighbours.clamp(min=0)]).sum(-1)
    aff = torch.where(neighbours >= 0, ((cos - threshold) / (1.0 - threshold)).clamp(min=0.0), 0.0)
    aff = torch.cat([torch.ones_like(aff[:, :1]), aff], 1)  # the voxel itself first
    aff = aff / aff.sum(1, keepdim=True)
    rows = torch.arange(m, device=values.device)[:, None].expand(-1, n + 1)
    cols = torch.cat([rows[:, :1], neighbours.clamp(min=0)], 1)
    index = torch.stack([rows.reshape(-1), cols.reshape(-1)])
    graph = torch.sparse_coo_tensor(index, aff.reshape(-1), (m, m), check_invariants=False).coalesce()
    current = values
    for _ in range(iterations):
        current = (1.0 - alpha) * values + alpha * torch.sparse.mm(graph, current)
    return current


def choose_scale(probabilities: Tensor) -> Tensor:
    """What replaces 3D-OVS's learned selection when every crop scale is lifted: per voxel, the index ``[M]`` of the
    scale whose lifted class distribution ``[M, S, C]`` is most peaked (the largest class probability)."""
    return probabilities.float().amax(-1).argmax(-1)


# ------------------------------------------------------------------------------------------------ the stage


def load_semantics(trainer: Trainer, state: dict) -> Distiller | LiftedSemantics | None:
    """The run's semantics from a checkpoint ``state``: its lifted voxels, its distilled field, or ``None`` when it
    has neither (trained with ``--teacher none``)."""
    if "lifted" in state:
        return LiftedSemantics.from_state(trainer, state["lifted"])
    return load_distiller(trainer, state)


def lift_training(t: Training) -> LiftedSemantics:
    """The lift stage of a training whose geometry is done: the teachers lifted, saved in a checkpoint beside
    the geometry (``lifted``), one line in ``log.jsonl``."""
    if t.features is None:
        raise UsageError(f"{t.run}: no teacher features to lift (trained with --teacher none)")
    geo = t.trainer
    lifted = lift(geo, t.features, tqdm.write)
    save_checkpoint(new_checkpoint_path(t.run, geo.step), {**geo.state_dict(), "lifted": lifted.state_dict()})
    record = {
        "stage": "lift",
        "step": geo.step,
        "time": round(lifted.seconds, 3),
        "voxels": len(lifted.table.keys),
        "bytes": lifted.nbytes(),
    }
    with open(Path(t.run) / "log.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    return lifted


def semantic_training(t: Training) -> Distiller | LiftedSemantics:
    """The semantic stage the run's config asks for (``--semantic``): distillation or lifting, after the teachers
    on the views ``--teacher-views`` chooses when the geometry came first."""
    teachers_after_geometry(t)
    if t.trainer.cfg.semantic == "lift":
        return lift_training(t)
    return distill_training(t)
