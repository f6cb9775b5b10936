"""Distilling the 2D teachers into a semantic field on top of a trained radiance field (3D-OVS, REFERENCE §1).

Schedule: the geometry stage (``Trainer``) runs first; then the semantic field trains against the teacher
features with the radiance field frozen; after ``joint_after`` of the distillation the radiance field
resumes its RGB steps alongside. The semantic field reads detached positions, so semantic losses never
move the geometry.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ovseg3d.config import TrainConfig
from ovseg3d.data.cameras import Cameras, image_rays, pixel_rays
from ovseg3d.errors import UsageError
from ovseg3d.field.hashgrid import HashGridConfig
from ovseg3d.field.semantic import SemanticConfig, SemanticField, SemanticOutput
from ovseg3d.losses import class_probabilities, fda_loss, feature_loss, rda_loss, weighted_mean
from ovseg3d.render.renderer import refine_samples
from ovseg3d.render.volume import accumulate, mask_indices, render_weights
from ovseg3d.run import new_checkpoint_path, save_checkpoint
from ovseg3d.teachers.cache import TeacherFeatures
from ovseg3d.teachers.clip import axis_coverage, crop_layout
from ovseg3d.train import Divergence, Trainer, Training, budget_bar


def nearest_cell(x: Tensor, image_size: int, map_size: int) -> Tensor:
    """Index of the cell of a ``map_size`` map that holds pixel coordinate ``x`` of an ``image_size`` image."""
    return ((x.float() + 0.5) * map_size / image_size).long().clamp(0, map_size - 1)


@dataclass
class TeacherTensors:
    """The cache in memory as float16 tensors (shapes as in :mod:`ovseg3d.teachers.cache`)."""

    clip: Tensor  # [N, h, w, S, D]
    relevancy: Tensor  # [N, hr, wr, S, C]
    dino: Tensor  # [N, hd, wd, Dd]
    text: Tensor  # [C, D] float32

    @classmethod
    def load(cls, features: TeacherFeatures, device: torch.device) -> TeacherTensors:
        def t(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.array(a)).to(device)

        return cls(t(features.clip), t(features.relevancy), t(features.dino), t(features.text).float())

    @staticmethod
    def _at(maps: Tensor, views: Tensor, u: Tensor, v: Tensor, width: int, height: int) -> Tensor:
        """Nearest map cell under pixel ``(u, v)`` of a ``width x height`` image."""
        h, w = maps.shape[1:3]
        return maps[views, nearest_cell(v, height, h), nearest_cell(u, width, w)]

    def lookup(self, views: Tensor, u: Tensor, v: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher CLIP ``[R, S, D]``, relevancy ``[R, S, C]`` and DINO ``[R, Dd]`` at pixels of scene views."""
        return (
            self._at(self.clip, views, u, v, width, height),
            self._at(self.relevancy, views, u, v, width, height),
            self._at(self.dino, views, u, v, width, height),
        )


@dataclass(frozen=True)
class TeacherSpace:
    """What the semantic field needs of its teacher once trained: the sizes of its heads and the CLIP text
    embeddings of the scene's classes that its features are read against.

    Every checkpoint keeps it (``semantic.teacher_space``), so ``eval``, ``render``, ``export`` and ``view``
    read a field without the teacher's maps: no cache of hundreds of MB copied onto the device, and no
    re-extraction when the cache went missing or its settings changed since training (the field was trained
    against these embeddings, not a rebuilt cache's)."""

    classes: tuple[str, ...]
    text: Tensor  # [C, D] float32
    clip_dim: int
    n_scales: int
    dino_dim: int

    @classmethod
    def of(cls, teacher: TeacherTensors, classes: list[str]) -> TeacherSpace:
        n_scales, clip_dim = teacher.clip.shape[3:]
        return cls(tuple(classes), teacher.text, int(clip_dim), int(n_scales), int(teacher.dino.shape[-1]))

    def state_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "text": self.text.detach().cpu(),
            "clip_dim": self.clip_dim,
            "n_scales": self.n_scales,
            "dino_dim": self.dino_dim,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> TeacherSpace:
        text = torch.as_tensor(state["text"]).float().to(device)
        return cls(
            tuple(state["classes"]), text, int(state["clip_dim"]), int(state["n_scales"]), int(state["dino_dim"])
        )


def training_selection(selection: Tensor, learned: bool = False, scale: int = -1) -> Tensor:
    """``[R, S]`` weights of the teacher's scales in the training targets: the field's rendered selection
    ``selection`` (3D-OVS's, when ``learned``), else all on the one ``scale`` (Python index: -1 = the last,
    the finest)."""
    n_rays, n_scales = selection.shape
    if learned:
        return selection
    one = selection.new_zeros(n_rays, n_scales)  # not F.one_hot, which reads its indices' range back
    one[:, scale % n_scales] = 1.0
    return one


@dataclass
class DistillStats:
    """One distillation step; the losses stay one device tensor ``[5]`` (loss, feature, rda, fda, dino) until
    :meth:`read`, at the log steps (a read per step would make a GPU wait for each step to finish)."""

    losses: Tensor
    n_rays: int

    def read(self) -> dict[str, float | int]:
        loss, feature, rda, fda, dino = self.losses.tolist()
        return {"loss": loss, "feature": feature, "rda": rda, "fda": fda, "dino": dino, "n_rays": self.n_rays}


def semantic_weights(
    weights: Tensor, ray_indices: Tensor, n_rays: int, power: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Which samples the semantic field reads, and their weights: the radiance weights raised to ``power``
    and normalised per ray, for the samples whose normalised weight is above ``eps``.

    Returns ``keep`` ``[K]``, the indices of the samples kept, and their weights (each kept ray's sum to 1)."""
    sharp = weights**power if power != 1.0 else weights
    total = accumulate(sharp, None, ray_indices, n_rays)[:, 0]
    share = sharp / total[ray_indices].clamp(min=1e-12)
    keep = mask_indices((share > eps) & (sharp > 0))
    kept, kept_rays = sharp[keep], ray_indices[keep]
    total = accumulate(kept, None, kept_rays, n_rays)[:, 0]
    return keep, kept / total[kept_rays]


@dataclass
class CropCoverage:
    """The teacher's crop coverage (:func:`~ovseg3d.teachers.clip.crop_coverage`) per scale over its source
    image, kept per axis (the crops form a grid): ``rows [h, S]`` and ``cols [w, S]``."""

    rows: Tensor
    cols: Tensor

    @classmethod
    def of(cls, geo: Trainer) -> CropCoverage:
        from ovseg3d.teachers.extract import source_size

        teachers = geo.cfg.teachers
        width, height = source_size(geo.scene, teachers)
        layouts = [crop_layout(width, height, d, teachers.clip_stride) for d in teachers.clip_scales]
        rows = torch.stack([axis_coverage(height, *layout) for layout in layouts], -1)
        cols = torch.stack([axis_coverage(width, *layout) for layout in layouts], -1)
        return cls(rows.to(geo.device), cols.to(geo.device))

    def at(self, u: Tensor, v: Tensor, width: int, height: int) -> Tensor:
        """``[R, S]`` the coverage under pixels ``(u, v)`` of a ``width x height`` scene image."""
        row = nearest_cell(v, height, len(self.rows))
        col = nearest_cell(u, width, len(self.cols))
        return self.rows[row] * self.cols[col]


class SemanticRenders:
    """What the later stages render from a run's semantics, over its ``render_latent`` (rays -> ``[R, L]``), its
    ``field.decode`` and its ``space``: the distilled field's (:class:`Distiller`) and the lifted voxels'
    (:class:`~ovseg3d.lift.LiftedSemantics`)."""

    cfg: TrainConfig
    device: torch.device
    space: TeacherSpace
    field: nn.Module

    def render_latent(self, cameras: Cameras, cam: Tensor, origins: Tensor, dirs: Tensor, near_far) -> Tensor:  # noqa: ANN001
        raise NotImplementedError

    @torch.no_grad()
    def render_semantics(self, cameras: Cameras, idx: int, near_far: Tensor | None = None) -> Tensor:
        """``[H, W, D]`` normalised CLIP feature of camera ``idx``."""
        self.field.eval()
        cams = cameras.to(self.device)
        origins, dirs = image_rays(cams, idx)
        cam = torch.full((len(dirs),), idx, dtype=torch.long, device=self.device)
        chunks = []
        chunk = self.cfg.render_chunk(self.device.type)
        for s in range(0, len(dirs), chunk):
            sl = slice(s, s + chunk)
            z = self.render_latent(cams, cam[sl], origins[sl], dirs[sl], near_far)
            chunks.append(F.normalize(self.field.decode(z).clip, dim=-1))
        return torch.cat(chunks).view(cameras.height, cameras.width, -1)

    def segment(self, cameras: Cameras, idx: int, near_far: Tensor | None = None) -> Tensor:
        """``[H, W]`` class index (argmax of the cosine with the class texts)."""
        feats = self.render_semantics(cameras, idx, near_far)
        return (feats @ F.normalize(self.space.text, dim=-1).T).argmax(-1).cpu()


def semantic_samples(
    geo: Trainer,
    cameras: Cameras,
    cam: Tensor,
    origins: Tensor,
    dirs: Tensor,
    near_far: Tensor | None,
    with_opacity: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The samples the semantic half reads along rays ``[R]`` of the trained field: ``points [K, 3]``, their
    weights ``[K]`` (the radiance weights raised to ``sem_weight_power``, each ray's summing to 1; only the samples
    that carry weight), their ``ray_indices [K]`` and, ``with_opacity``, each ray's opacity ``[R]`` (the sum of its
    plain weights; else ``None``)."""
    cfg = geo.cfg
    near, far = geo.ray_limits(cameras, near_far, cam, dirs)
    samples = geo.grid.march(
        origins, dirs, geo.opts.step_size, near, far, stratified=False, max_per_ray=cfg.sem_max_samples
    )
    if cfg.sem_refine_samples > 0:
        samples = refine_samples(geo.field, geo.grid, origins, dirs, samples, geo.opts, cfg.sem_refine_samples)
    sigma = geo.field.density(samples.positions(origins, dirs))
    weights = render_weights(sigma, samples.deltas, samples.ray_indices, len(origins))
    opacity = accumulate(weights, None, samples.ray_indices, len(origins))[:, 0] if with_opacity else None
    keep, share = semantic_weights(weights, samples.ray_indices, len(origins), cfg.sem_weight_power, cfg.sem_weight_eps)
    samples = samples.select(keep)
    return samples.positions(origins, dirs), share, samples.ray_indices, opacity


class Distiller(SemanticRenders):
    """The semantic field, its optimiser and one distillation step over a trained :class:`Trainer`."""

    def __init__(self, geo: Trainer, features: TeacherFeatures | None = None, space: TeacherSpace | None = None):
        """Over the teacher's ``features`` (to train), or only its ``space`` (to read a trained field: a
        checkpoint's, see :func:`load_distiller`; :meth:`train_step` then refuses)."""
        cfg = geo.cfg
        self.geo, self.cfg, self.device = geo, cfg, geo.device
        self.teacher: TeacherTensors | None = None
        if features is not None:
            self.teacher = TeacherTensors.load(features, geo.device)
            space = TeacherSpace.of(self.teacher, features.classes)
        if space is None:
            raise ValueError("a Distiller needs the teacher's features or its space")
        self.space = space
        n_scales, clip_dim = space.n_scales, space.clip_dim
        if not -n_scales <= cfg.teacher_scale < n_scales:
            raise UsageError(
                f"--teacher-scale {cfg.teacher_scale}: the teacher has {n_scales} scales "
                f"(0 to {n_scales - 1}, or -1 to -{n_scales} from the finest)"
            )
        scale = math.exp(math.log(cfg.sem_max_resolution / 16) / max(1, cfg.sem_levels - 1))
        grid = HashGridConfig(cfg.sem_levels, cfg.sem_features_per_level, cfg.sem_log2_hashmap_size, 16, scale)
        sem = SemanticConfig(grid, cfg.latent_dim, 64, clip_dim, n_scales, space.dino_dim)
        # the field's initialisation and the pixels drawn depend on cfg.seed alone: not on what drew from torch's
        # global stream before (the geometry, a teacher cache rebuilt, a preview's randomised PCA)
        with torch.random.fork_rng(devices=[geo.device] if geo.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            self.field = SemanticField(geo.field.aabb, sem, geo.device, cfg.grid_impl, geo.field.contraction)
        self.rng = torch.Generator(geo.device).manual_seed(cfg.seed)
        # fused: one kernel for all parameters, its step counts on the device (the default reads them every step)
        self.optimizer = torch.optim.Adam(
            self.field.parameters(), lr=cfg.sem_lr, betas=(0.9, 0.99), eps=1e-15, fused=True
        )
        self.divergence = Divergence(geo.device)
        self.train_views = torch.as_tensor(geo.scene.train_ids, device=geo.device)  # the pixel table's positions
        # the views with teacher maps (--teacher-views), and the pixel table cut to them
        usable = features.usable(geo.scene.train_ids) if features is not None else list(geo.scene.train_ids)
        self.teacher_views = torch.as_tensor(usable, device=geo.device)
        self.pixels = geo.pixels
        if geo.pixels is not None and len(usable) < len(geo.scene.train_ids):
            keep = torch.isin(self.train_views, self.teacher_views)
            h, w = geo.scene.height, geo.scene.width
            self.pixels = geo.pixels[keep[geo.pixels.long() // (h * w)]]
        scene = geo.scene  # all the scene's views (pixels are drawn from its training views), on the device once
        self.cameras = scene.cameras.to(geo.device)
        self.near_far = scene.near_far.to(geo.device) if scene.near_far is not None else None
        self.coverage = CropCoverage.of(geo) if cfg.coverage_weights and not cfg.teachers.dense() else None
        used = scene.used_pixels(list(range(len(scene))))  # masks: [N, H, W] bool of every view, or None
        self.used = used.to(geo.device) if used is not None else None
        self.step = 0
        self.elapsed = 0.0

    # -- schedule --------------------------------------------------------------------------------------
    def progress(self) -> float:
        cfg = self.cfg
        by_steps = self.step / max(1, cfg.distill_steps)
        by_time = self.elapsed / (60.0 * cfg.distill_minutes) if cfg.distill_minutes > 0 else 0.0
        return min(1.0, max(by_steps, by_time))

    def done(self) -> bool:
        return self.progress() >= 1.0

    # -- rays ------------------------------------------------------------------------------------------
    def sample_pixels(self) -> tuple[Tensor, Tensor, Tensor]:
        """Random pixels plus ``fda_patches`` strided square patches (last ``B*N`` rays): views, u, v. The random
        pixels are drawn among those the masks leave (the geometry's table); a patch may cover masked pixels,
        which :meth:`losses` leaves out."""
        cfg, dev = self.cfg, self.device
        w, h = self.geo.scene.width, self.geo.scene.height
        n = cfg.sem_rays

        def draw(high: int, count: int) -> Tensor:
            return torch.randint(high, (count,), device=dev, generator=self.rng)

        if self.pixels is None:
            views = self.teacher_views[draw(len(self.teacher_views), n)]
            u, v = draw(w, n), draw(h, n)
        else:
            flat = self.pixels[draw(len(self.pixels), n)].long()
            views, v, u = self.train_views[flat // (h * w)], (flat // w) % h, flat % w
        k, s = cfg.fda_patch_size, cfg.fda_stride
        span_w, span_h = min(w, (k - 1) * s + 1), min(h, (k - 1) * s + 1)
        step_w, step_h = max(1, (span_w - 1) // (k - 1)), max(1, (span_h - 1) // (k - 1))
        b = cfg.fda_patches
        pv = self.teacher_views[draw(len(self.teacher_views), b)]
        x0, y0 = draw(w - (k - 1) * step_w, b), draw(h - (k - 1) * step_h, b)
        gy, gx = torch.meshgrid(torch.arange(k, device=dev), torch.arange(k, device=dev), indexing="ij")
        pu = (x0[:, None] + gx.reshape(1, -1) * step_w).reshape(-1)
        pvv = (y0[:, None] + gy.reshape(1, -1) * step_h).reshape(-1)
        pviews = pv[:, None].expand(b, k * k).reshape(-1)
        return torch.cat([views, pviews]), torch.cat([u, pu]), torch.cat([v, pvv])

    def render_latent(self, cameras: Cameras, cam: Tensor, origins: Tensor, dirs: Tensor, near_far) -> Tensor:
        """``[R, L]`` latent per ray: the semantic latent of the samples that carry weight, averaged with the
        (frozen, no-grad) radiance weights."""
        with torch.no_grad():
            points, weights, rays, _ = semantic_samples(self.geo, cameras, cam, origins, dirs, near_far)
        return accumulate(weights, self.field.latent(points), rays, len(origins))

    # -- one step --------------------------------------------------------------------------------------
    def train_step(self) -> DistillStats:
        start = time.perf_counter()
        cfg, geo = self.cfg, self.geo
        self.field.train()
        lr = cfg.sem_lr * cfg.lr_final_factor ** self.progress()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        views, u, v = self.sample_pixels()
        scene = geo.scene
        origins, dirs = pixel_rays(self.cameras, views, u, v)
        z = self.render_latent(self.cameras, views, origins, dirs, self.near_far)
        out = self.field.decode(z)
        if self.teacher is None:
            raise UsageError("this distiller reads a trained semantic field: it has no teacher features to train on")
        t_clip, t_rel, t_dino = self.teacher.lookup(views, u, v, scene.width, scene.height)
        cover = None if self.coverage is None else self.coverage.at(u, v, scene.width, scene.height)
        used = None if self.used is None else self.used[views, v, u]
        stats = self.losses(out, t_clip, t_rel, t_dino, cover, used)
        self.optimizer.zero_grad(set_to_none=True)
        stats[0].backward()
        self.optimizer.step()
        self.divergence.update(stats[0])
        if cfg.joint_after < 1.0 and self.progress() >= cfg.joint_after:
            geo.train_step()
        self.step += 1
        self.elapsed += time.perf_counter() - start
        return DistillStats(torch.stack([x.detach() for x in stats]), len(views))

    def check_finite(self) -> None:
        """Raise :class:`RunError` if a distillation loss so far (or a joint geometry step's) was not finite."""
        fix = f"lower --sem-lr {self.cfg.sem_lr:g} (nothing after the last checkpoint was saved)"
        self.divergence.check(self.step, "distillation", fix)
        self.geo.check_finite()

    def losses(
        self,
        out: SemanticOutput,
        t_clip: Tensor,
        t_rel: Tensor,
        t_dino: Tensor,
        cover: Tensor | None = None,
        used: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """The losses of one batch; ``cover [R, S]``: the teacher's crop coverage of each ray's pixel per scale
        (weighs the CLIP feature and RDA terms when given); ``used [R]`` bool: the rays whose pixel a mask lets
        training use (the others count in no term)."""
        cfg = self.cfg
        text = self.space.text
        selection = training_selection(out.selection, cfg.scale_selection, cfg.teacher_scale)
        weights = None if cover is None else (selection.detach() * cover).sum(-1)
        if used is not None:
            weights = used.float() if weights is None else weights * used
        feat = feature_loss(out.clip, t_clip, selection, weights)
        rda = (
            rda_loss(
                out.clip,
                text,
                t_rel,
                selection,
                cfg.rda_temperature,
                cfg.rda_field_temperature,
                cfg.rda_divergence,
                weights,
            )
            if len(text)
            else feat.new_zeros(())
        )
        dino_cos = F.cosine_similarity(out.dino, t_dino.float(), dim=-1)
        dino = weighted_mean(1.0 - dino_cos, None if used is None else used.float())
        fda = feat.new_zeros(())
        n_patch = cfg.fda_patches * cfg.fda_patch_size**2
        ramp = min(1.0, max(0.0, (self.progress() - cfg.fda_start) / max(cfg.fda_ramp, 1e-6)))
        if n_patch and len(text) and ramp > 0 and (cfg.fda_pos_weight > 0 or cfg.fda_neg_weight > 0):
            probs = class_probabilities(out.clip[-n_patch:], text, cfg.fda_temperature).view(
                cfg.fda_patches, -1, len(text)
            )
            fda = fda_loss(
                probs,
                t_dino[-n_patch:].view(cfg.fda_patches, -1, t_dino.shape[-1]),
                ramp * cfg.fda_pos_weight,
                ramp * cfg.fda_neg_weight,
                used=None if used is None else used[-n_patch:].view(cfg.fda_patches, -1),
            )
        loss = cfg.feature_weight * feat + cfg.rda_weight * rda + fda + cfg.dino_weight * dino
        return loss, feat, rda, fda, dino

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "field": self.field.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "teacher_space": self.space.state_dict(),
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        if "rng" in state:  # a resumed distillation draws the pixels it would have drawn (older checkpoints: anew)
            self.rng.set_state(state["rng"].cpu())


def load_distiller(trainer: Trainer, state: dict) -> Distiller | None:
    """The run's trained distiller from a checkpoint ``state`` (``None`` if the run has no semantic field).

    It reads the field against the teacher space saved with it (:class:`TeacherSpace`): the teacher's cache is
    not needed. A checkpoint from before that was saved, or whose classes are not the scene's any more, is
    read against the teacher's cache (reused, or rebuilt with a notice)."""
    if "semantic" not in state:
        return None
    sem = dict(state["semantic"])
    sem.pop("optimizer", None)
    saved = sem.pop("teacher_space", None)
    space = TeacherSpace.from_state(saved, trainer.device) if saved is not None else None
    if space is not None and list(space.classes) == list(trainer.scene.classes):
        distiller = Distiller(trainer, space=space)
    else:
        from ovseg3d.teachers.extract import ensure_features

        distiller = Distiller(
            trainer, ensure_features(trainer.scene, trainer.cfg.teachers, trainer.device, log=lambda s: None)
        )
    distiller.load_state_dict(sem)
    return distiller


def distill_training(t: Training) -> Distiller:
    """The distillation stage of a training whose geometry is done: the semantic field (continued from a resumed
    run's state) trained to its budget, checkpoints as it goes."""
    if t.features is None:
        raise UsageError(f"{t.run}: no teacher features to distil (trained with --teacher none)")
    distiller = Distiller(t.trainer, t.features)
    if t.semantic is not None:  # continuing a distillation (the geometry did not change since)
        distiller.load_state_dict(t.semantic)
    distill_loop(distiller, t.run)
    return distiller


def distill_loop(distiller: Distiller, run: Path) -> None:
    """The distillation steps left; a checkpoint (geometry and semantic field) every ``checkpoint_every``
    steps and at the end."""
    cfg = distiller.cfg
    geo = distiller.geo
    with (
        open(run / "log.jsonl", "a") as log,
        tqdm(total=cfg.distill_steps, initial=distiller.step, unit="step", desc="distill") as bar,
    ):
        while not distiller.done():
            stats = distiller.train_step()
            budget_bar(bar, distiller.step, distiller.progress())
            bar.update(1)
            checkpoint = distiller.step % cfg.checkpoint_every == 0 or distiller.done()
            if distiller.step % cfg.log_every == 0 or checkpoint:  # the only steps that read from the device
                distiller.check_finite()
                values = stats.read()
                bar.set_postfix(feat=f"{values['feature']:.3f}", rda=f"{values['rda']:.3f}", fda=f"{values['fda']:.3f}")
                record = {
                    "stage": "distill",
                    "distill_step": distiller.step,
                    "time": round(distiller.elapsed, 3),
                    **values,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
            if checkpoint:
                state = {**geo.state_dict(), "semantic": distiller.state_dict()}
                save_checkpoint(new_checkpoint_path(run, geo.step + distiller.step), state)
