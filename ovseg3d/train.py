"""The geometry stage: a radiance field trained on a scene's photos (the Trainer: build, step, state), its run
folder (checked options, checkpoints, resume) and its loop. The distillation (:mod:`ovseg3d.distill`) continues
from here; :func:`ovseg3d.pipeline.train` runs both, as ``ovseg3d train`` does."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ovseg3d import accel, losses
from ovseg3d.config import ConfigError, TrainConfig, apply_overrides, for_unbounded, read_toml, write_toml
from ovseg3d.data.cameras import Cameras, image_rays, pixel_rays
from ovseg3d.data.loader import load_scene, parse_classes
from ovseg3d.data.scene import GIVEN_BOUNDS, Scene, SceneError, check_poses
from ovseg3d.depth_prior import SIGMA_FLOOR, DepthPrior, band_samples, depth_prior, prior_loss, prior_rays
from ovseg3d.errors import UsageError
from ovseg3d.field.radiance import RadianceField
from ovseg3d.field.space import check_contraction, roi_center_half, step_scale
from ovseg3d.images import colorize_depth, save_png, side_by_side
from ovseg3d.render.occupancy import OccupancyGrid
from ovseg3d.render.proposal import ProposalConfig, ProposalSampler, interlevel_loss
from ovseg3d.render.renderer import (
    RenderOptions,
    RenderOutput,
    cull_samples,
    refine_samples,
    render_image_rays,
    render_rays,
)
from ovseg3d.render.volume import RaySamples, distortion_loss, ray_counts
from ovseg3d.run import (
    GEOMETRY_CHECKPOINT,
    RunError,
    check_run,
    check_scene,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_run_config,
    new_checkpoint_path,
    save_checkpoint,
    trim_log,
    write_checkpoint,
    write_run_info,
)
from ovseg3d.teachers.cache import TeacherFeatures


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' requested but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def scene_of(cfg: TrainConfig) -> Scene:
    """The scene of a train config, loaded at its training size; poses that no training can use (a rotation
    of all zeros, near >= far) are a one-line error naming the pose file."""
    scene = load_scene(
        cfg.scene,
        cfg.downscale,
        cfg.train_on_annotated,
        cfg.holdout_every,
        cfg.max_long_side,
        cfg.colmap_model,
        cfg.classes,
    )
    check_poses(scene, f"the COLMAP model {cfg.colmap_model}" if cfg.colmap_model is not None else None)
    return scene


def resolve_contraction(kind: str, scene: Scene) -> str:
    """``"auto"``: no contraction where the scene's box was given (LLFF depth bounds, a transforms.json
    ``"aabb"``), else the sphere contraction beyond the region of interest."""
    if kind != "auto":
        return check_contraction(kind)
    return "none" if scene.bounds in GIVEN_BOUNDS else "sphere"


def roi_box(scene: Scene, scale: float) -> Tensor:
    """The field's region of interest: the scene's box, its half sizes times ``scale`` about its centre where the
    box was estimated (a given box, LLFF's or a transforms.json's, is kept as it is)."""
    if scale <= 0:
        raise UsageError(f"roi_scale must be positive, got {scale}")
    if scene.bounds in GIVEN_BOUNDS or scale == 1.0:
        return scene.aabb
    center, half = roi_center_half(scene.aabb)
    return torch.cat([center - scale * half, center + scale * half])


def resolve_sampler(kind: str, contraction: str) -> str:
    """``"auto"``: the occupancy grid, bounded or not: with the unbounded field's clear-air start it beat the
    proposal networks on every scene measured, at equal steps and, being faster per step, at equal time
    (docs/benchmarks.md). ``contraction`` is the scene's, for a rule that would choose by it."""
    if kind not in ("auto", "grid", "proposal"):
        raise UsageError(f"sampler must be one of auto, grid, proposal, got {kind!r}")
    return "grid" if kind == "auto" else kind


def psnr(mse: float | Tensor) -> float:
    return -10.0 * math.log10(max(float(mse), 1e-12))


def ray_limits(
    cameras: Cameras, near_far: Tensor | None, cam: Tensor, dirs: Tensor, near_plane: float = 0.0
) -> tuple[Tensor | None, Tensor | None]:
    """Per-ray ``t`` limits ``[R]`` of rays ``dirs`` of cameras ``cam``: from the views' depth bounds
    ``near_far`` ``[N, 2]`` (z-depth -> distance along the ray) when the scene has them (LLFF), else the
    rays start at ``near_plane`` (world units; 0 = no limits)."""
    if near_far is None:
        return (torch.full_like(dirs[:, 0], near_plane), None) if near_plane > 0 else (None, None)
    cos = -(dirs * cameras.c2w[cam, :, 2]).sum(-1)  # cosine to the viewing axis (-z)
    bounds = near_far.to(dirs.device)[cam]
    return bounds[:, 0] / cos, bounds[:, 1] / cos


def lr_factor(cfg: TrainConfig, progress: float, step: int) -> float:
    """The learning rate's share of ``cfg.lr`` at ``progress`` (0-1 of the budget) and ``step``."""
    if cfg.lr_schedule == "exp":
        return cfg.lr_final_factor**progress
    if cfg.lr_schedule != "steps":
        raise ConfigError(f"lr_schedule must be 'exp' or 'steps', got {cfg.lr_schedule!r}")
    factor = 0.33 ** sum(progress >= m for m in (0.5, 0.75, 0.9))
    if step < cfg.lr_warmup_steps:
        factor *= 0.01 + 0.99 * step / cfg.lr_warmup_steps
    return factor


@dataclass
class StepStats:
    """One geometry step. ``loss`` (the colour MSE) stays a device tensor: reading it every step would make a GPU
    wait for the step to finish; :meth:`read` does it at the log steps."""

    loss: Tensor
    n_rays: int
    n_samples: int

    def read(self) -> dict[str, float | int]:
        """The log record's values: loss, psnr, n_rays, n_samples (one read from the device)."""
        mse = float(self.loss)
        return {"loss": mse, "psnr": psnr(mse), "n_rays": self.n_rays, "n_samples": self.n_samples}


class Divergence:
    """Whether any loss since the start was not finite, kept on the device (no read per step); :meth:`check`
    reads it, before each log line and checkpoint, so that a diverged field is never saved."""

    def __init__(self, device: torch.device):
        self.flag = torch.zeros((), dtype=torch.bool, device=device)

    def update(self, loss: Tensor) -> None:
        torch.logical_or(self.flag, ~torch.isfinite(loss.detach()), out=self.flag)

    def check(self, step: int, what: str, fix: str) -> None:
        if bool(self.flag):
            raise RunError(f"{what} diverged by step {step} (a loss that is not finite): {fix}")


def usable_pixels(scene: Scene, device: torch.device) -> Tensor | None:
    """``[P]`` the flat indices ``(i * H + y) * W + x`` of the pixels of training view ``i`` (its place in
    ``scene.train_ids``) that its mask lets training use, on ``device`` (int32 while they fit); ``None`` when no
    training view has a mask. Masks that leave no training pixel are a :class:`SceneError`."""
    used = scene.used_pixels(scene.train_ids)
    if used is None:
        return None
    flat = used.flatten().nonzero()[:, 0]
    if len(flat) == 0:
        raise SceneError(f"{scene.root}: the masks leave no pixel of the {len(scene.train_ids)} training views")
    return flat.to(torch.int32 if used.numel() < 2**31 else torch.int64).to(device)


class Trainer:
    """One scene's radiance field, occupancy grid and optimiser, stepped one batch at a time."""

    def __init__(self, cfg: TrainConfig, scene: Scene, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.cfg, self.scene, self.device = cfg, scene, device
        aabb = roi_box(scene, cfg.roi_scale).to(device)
        contraction = resolve_contraction(cfg.contraction, scene)
        field_cfg = dataclasses.replace(
            cfg.field_config(),
            n_images=len(scene.train_ids),
            background=cfg.learned_background and contraction != "none",
        )
        self.field = RadianceField(aabb, field_cfg, device, cfg.grid_impl, cfg.compile_grid, contraction)
        self.grid: OccupancyGrid | ProposalSampler  # where the field's samples come from
        if resolve_sampler(cfg.sampler, contraction) == "proposal":
            prop_cfg = ProposalConfig(tuple(cfg.proposal_samples), cfg.proposal_field_samples)
            self.grid = ProposalSampler(aabb, contraction, prop_cfg, device, cfg.grid_impl)
        else:
            self.grid = OccupancyGrid(aabb, cfg.occ_resolution, contraction).to(device)
        self._set_box()
        self._init_density_bias()
        mlp_params = [p for n, p in self.field.named_parameters() if not n.startswith("grid.")]
        groups = [
            {"params": list(self.field.grid.parameters()), "weight_decay": 0.0},
            {"params": mlp_params, "weight_decay": cfg.weight_decay},
        ]
        if self.proposal:
            groups.append({"params": list(self.grid.parameters()), "weight_decay": 0.0})
        self.optimizer = torch.optim.Adam(
            groups,
            lr=cfg.lr,
            betas=(0.9, 0.99),
            eps=1e-15,
            fused=True,  # one kernel over the whole table: ~8x faster than the default on a CPU
        )
        self.images = scene.images[scene.train_ids].to(device)  # [N, H, W, 3] uint8
        self.pixels = usable_pixels(scene, device)  # the flat pixels a mask lets training use; None: all
        self.cameras: Cameras = scene.cameras.subset(scene.train_ids).to(device)
        self.near_far = scene.near_far[scene.train_ids].to(device) if scene.near_far is not None else None
        if not self.proposal:  # cells outside every training view: empty for good (nerfacc's mark_invisible_cells)
            near = self.near_far[:, 0] if self.near_far is not None else self.cfg.near_plane * self.diag
            self.grid.mark_invisible(self.cameras, near_plane=near)
        self.depth = self._depth_prior(scene) if cfg.depth_weight > 0 else None
        self.divergence = Divergence(device)
        self.step = 0
        self.elapsed = 0.0  # training seconds so far
        self.n_rays = cfg.rays_per_step
        if self.proposal and cfg.target_samples > 0:  # a fixed number of field samples per ray: rays from the cap
            self.n_rays = max(64, cfg.target_samples // cfg.proposal_field_samples)

    def _depth_prior(self, scene: Scene) -> DepthPrior | None:
        """The scene's structure-from-motion observations on the training device, those a ray can reach (beyond the
        near plane, inside a bounded field's box), or ``None`` where the scene has none (one line says which)."""
        given = self.cfg.depth_model or self.cfg.colmap_model
        try:
            prior = depth_prior(scene, given)
        except SceneError as e:
            if given is not None or scene.format == "colmap":
                raise
            print(f"depth prior: {e}; trained without it")  # a model found beside poses made otherwise
            return None
        if prior is None:
            if scene.format == "colmap" or given is not None:
                print("depth prior: the COLMAP model has no points observed by the scene's views; trained without it")
            return None
        keep = prior.depth > self.cfg.near_plane * self.diag + 3.0 * prior.sigma
        if not self.contracted:
            aabb = self.field.aabb.cpu()
            keep &= ((prior.xyz >= aabb[:3]) & (prior.xyz <= aabb[3:])).all(-1)
        prior = prior.select(keep)
        print(f"depth prior: {len(prior):,} observations of the COLMAP model's points")
        return prior.to(self.device) if len(prior) else None

    def _with_depth_rays(
        self, origins: Tensor, dirs: Tensor, target: Tensor, cam: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The batch with ``depth_rays`` rays through random observed keypoints in front (the sample cap drops rays
        from the end), and the observations' indices (``None`` without a depth prior)."""
        if self.depth is None or self.depth_weight() <= 0:
            return origins, dirs, target, cam, None
        index = torch.randint(0, len(self.depth), (self.cfg.depth_rays,), device=self.device)
        o, d = prior_rays(self.depth, self.cameras, index)
        c = self.depth.cam[index]
        h, w = self.images.shape[1:3]
        u = self.depth.u[index].long().clamp(0, w - 1)
        v = self.depth.v[index].long().clamp(0, h - 1)
        t = self.images[c, v, u].float() / 255.0
        return torch.cat([o, origins]), torch.cat([d, dirs]), torch.cat([t, target]), torch.cat([c, cam]), index

    def _depth_band(self, index: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """Depth and band (sigma) of the prior's observations ``index`` at this point of the budget."""
        if index is None:
            return None
        p = self.depth
        assert p is not None
        sigma = p.sigma[index]
        start = self.cfg.depth_sigma_start
        if start > 0:  # a wide band first, narrowing to the points' own (depth-nerfacto's annealed sigma)
            done = min(self.progress() / max(self.cfg.depth_anneal, 1e-9), 1.0)
            share = start * (SIGMA_FLOOR / start) ** done
            sigma = torch.maximum(sigma, share * p.depth[index])
        return p.depth[index], sigma

    def depth_weight(self) -> float:
        """The depth prior's weight at this point of the budget: --depth-weight, falling linearly to 0 by
        --depth-until of the budget when that is set (URF's schedule)."""
        until = self.cfg.depth_until
        if until <= 0:
            return self.cfg.depth_weight
        return self.cfg.depth_weight * max(0.0, 1.0 - self.progress() / until)

    def _depth_loss(
        self,
        out: RenderOutput,
        samples: RaySamples,
        index: Tensor | None,
        n_rays: int,
        band: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | None:
        """The depth prior's loss on the first rays of the batch (those :meth:`_with_depth_rays` put there);
        ``band``: :meth:`_depth_band` of ``index`` when the step has it already."""
        band = band if band is not None else self._depth_band(index)
        if band is None or out.weights is None:
            return None
        assert index is not None and self.depth is not None
        k = min(len(index), n_rays)
        return prior_loss(out.weights, samples, band[0][:k], band[1][:k], self.depth.weight[index[:k]])

    @property
    def contracted(self) -> bool:
        return self.field.contraction != "none"

    @property
    def clear_start(self) -> bool:
        """The field starts as clear air (``start``), the occupancy grid marching every cell through its warm-up."""
        return self.cfg.start == "clear" or (self.cfg.start == "auto" and self.contracted)

    @property
    def proposal(self) -> bool:
        """The field's samples come from proposal networks (else from the occupancy grid's march)."""
        return isinstance(self.grid, ProposalSampler)

    def _set_box(self) -> None:
        """Step size and scale from the field's ROI box (the scene's, or a checkpoint's)."""
        aabb = self.field.aabb
        self.diag = float(torch.linalg.norm(aabb[3:] - aabb[:3]))
        self.opts = RenderOptions(self.diag / self.cfg.render_steps, self.cfg.early_stop_eps, self.cfg.alpha_thre)

    def _init_density_bias(self) -> None:
        """The field's density at the start (``start``): clear air of optical depth ``init_optical_depth`` across
        the box (the grid marches every cell through its warm-up, then keeps the cells the field has put density
        in), or fog at twice the occupancy threshold in every cell (free space is trained below the threshold and
        occluded space emptied by the grid's visibility record, ``occ_visibility_eps``)."""
        sigma0 = 2.0 * self.cfg.occ_threshold / self.opts.step_size
        if self.clear_start:
            sigma0 = self.cfg.init_optical_depth / self.diag
        with torch.no_grad():
            self.field.density_mlp[-1].bias[0] = math.log(sigma0)

    # -- schedule ---------------------------------------------------------------------------
    def progress(self) -> float:
        by_steps = self.step / max(1, self.cfg.steps)
        by_time = self.elapsed / (60.0 * self.cfg.max_minutes) if self.cfg.max_minutes > 0 else 0.0
        return min(1.0, max(by_steps, by_time))

    def random_background(self) -> bool:
        """Whether this step's rays end on a random colour (``--background random`` past ``--background-from``)."""
        return self.cfg.background == "random" and self.progress() >= self.cfg.background_from

    def done(self) -> bool:
        return self.progress() >= 1.0

    def _set_lr(self) -> None:
        lr = self.cfg.lr * lr_factor(self.cfg, self.progress(), self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- one step ---------------------------------------------------------------------------
    def sample_batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Random pixels of the training views: origins, directions, colours ``[R, 3]``, camera ``[R]``."""
        n_img, h, w, _ = self.images.shape
        if self.pixels is None:
            flat = torch.randint(0, n_img * h * w, (self.n_rays,), device=self.device)
        else:  # uniform over the pixels the masks leave
            flat = self.pixels[torch.randint(0, len(self.pixels), (self.n_rays,), device=self.device)].long()
        cam, v, u = flat // (h * w), (flat // w) % h, flat % w
        origins, dirs = pixel_rays(self.cameras, cam, u, v)
        target = self.images[cam, v, u].float() / 255.0
        return origins, dirs, target, cam

    def ray_limits(self, cameras: Cameras, near_far: Tensor | None, cam: Tensor, dirs: Tensor):
        """:func:`ray_limits` with this run's near plane (``near_plane`` is a share of the box diagonal)."""
        return ray_limits(cameras, near_far, cam, dirs, self.cfg.near_plane * self.diag)

    def update_grid(self) -> None:
        if self.proposal:
            return  # proposal networks learn from the loss
        step_size, aabb, kind = self.opts.step_size, self.field.aabb, self.field.contraction
        self.grid.update(
            self.step,
            lambda x: self.field.density(x) * step_size * step_scale(x, aabb, kind),
            occ_thre=self.cfg.occ_threshold,
            ema_decay=self.cfg.occ_ema_decay,
            visibility_eps=self.cfg.occ_visibility_eps,
            reprobe=self._reprobe_due(),
            warmup_steps=self.cfg.occ_warmup,
            hold_occupied=self.clear_start and self.step < self.cfg.occ_warmup,  # the field starts as clear air
        )

    def _reprobe_due(self) -> bool:
        """This grid update re-probes the cells the visibility record emptied: every ``occ_reprobe_every``-th
        update, counted from the step (so a resumed run keeps the schedule)."""
        every = self.cfg.occ_reprobe_every
        return every > 0 and (self.step // self.cfg.occ_update_every + 1) % every == 0

    def train_step(self) -> StepStats:
        start = time.perf_counter()
        self.field.train()
        if self.step % self.cfg.occ_update_every == 0:
            self.update_grid()
        self._set_lr()
        origins, dirs, target, cam = self.sample_batch()
        origins, dirs, target, cam, depth_index = self._with_depth_rays(origins, dirs, target, cam)
        near, far = self.ray_limits(self.cameras, self.near_far, cam, dirs)
        if self.proposal:
            return self._proposal_step(start, origins, dirs, target, cam, near, far)
        samples = self.grid.march(
            origins, dirs, self.opts.step_size, near, far, stratified=True, max_per_ray=self.cfg.max_samples_per_ray
        )
        observe = self.cfg.occ_visibility_eps > 0
        opts = self.opts if self.cfg.train_early_stop else dataclasses.replace(self.opts, early_stop_eps=0.0)
        if self.cfg.refine_samples > 0:
            samples = refine_samples(
                self.field, self.grid, origins, dirs, samples, opts, self.cfg.refine_samples, observe=observe
            )
            opts, observe = dataclasses.replace(opts, early_stop_eps=0.0), False  # done by the refinement
        elif opts.early_stop_eps > 0 or opts.alpha_thre > 0:
            # the samples the rendering will use, before the sample cap: the next step's ray count then follows
            # the samples a ray really costs (nerfacc's dynamic batch counts them after its sigma_fn)
            samples = cull_samples(self.field, self.grid, origins, dirs, samples, opts, observe)
            opts, observe = dataclasses.replace(opts, early_stop_eps=0.0, alpha_thre=0.0), False
        band = self._depth_band(depth_index)
        if band is not None:  # the prior rays' points sampled for sure, whatever the grid holds there
            samples = band_samples(samples, *band, self.cfg.depth_band_samples)
        origins, dirs, target, samples = self._cap_samples(origins, dirs, target, samples)
        background = None  # black, or the field's own colour at infinity when it learns one
        if not self.field.cfg.background and self.random_background():
            background = torch.rand_like(target)
        elif not self.field.cfg.background and self.cfg.background == "white":
            background = torch.ones_like(target)
        dist_w = self.cfg.distortion_weight
        out = render_rays(
            self.field,
            self.grid,
            origins,
            dirs,
            opts,
            background=background,
            samples=samples,
            observe=observe,
            distortion=dist_w > 0,
            grad_scale_distance=self.cfg.grad_scale_distance * self.diag if self.near_far is None else 0.0,
            appearance=self.field.appearance_codes(cam[: len(origins)], len(origins)),
            distortion_scale=0.5 * self.diag if self.contracted else 0.0,
        )
        mse = F.mse_loss(out.rgb, target)
        loss = mse
        if self.cfg.opacity_weight > 0 and not self.field.cfg.background:
            loss = loss + self.cfg.opacity_weight * losses.opacity_loss(out.opacity)
        depth_loss = self._depth_loss(out, samples, depth_index, len(origins), band)
        if depth_loss is not None:
            loss = loss + self.depth_weight() * depth_loss
        if out.distortion is not None:
            loss = loss + dist_w * out.distortion.mean() / (1.0 if self.contracted else self.diag)
        return self._apply(start, loss, mse, len(origins), out.n_samples)

    def _apply(self, start: float, loss: Tensor, mse: Tensor, n_rays: int, n_samples: int) -> StepStats:
        """The optimiser step on ``loss``; the step's count, time and stats."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.divergence.update(loss)
        self.step += 1
        self.elapsed += time.perf_counter() - start
        return StepStats(mse.detach(), n_rays, n_samples)

    def _proposal_step(
        self,
        start: float,
        origins: Tensor,
        dirs: Tensor,
        target: Tensor,
        cam: Tensor,
        near,
        far,  # noqa: ANN001
    ) -> StepStats:
        """One step with proposal sampling: the proposals place ``proposal_field_samples`` intervals per ray, the
        field renders them; the colour loss, the interlevel loss (the proposals learn the field's weights) and the
        distortion loss over the normalised ray distance."""
        assert isinstance(self.grid, ProposalSampler)
        self.grid.train()
        spacing, edges, rounds = self.grid.propose(origins, dirs, near, far, stratified=True)
        samples = self.grid.samples(spacing, edges)
        opts = dataclasses.replace(self.opts, early_stop_eps=0.0, alpha_thre=0.0)  # every sample: [R, K] weights
        out = render_rays(
            self.field,
            self.grid,
            origins,
            dirs,
            opts,
            samples=samples,
            grad_scale_distance=self.cfg.grad_scale_distance * self.diag if self.near_far is None else 0.0,
            appearance=self.field.appearance_codes(cam, len(origins)),
        )
        mse = F.mse_loss(out.rgb, target)
        assert out.weights is not None
        weights = out.weights.view(len(origins), -1)
        loss = mse + self.cfg.interlevel_weight * interlevel_loss(
            edges, weights, [(r.edges, r.weights) for r in rounds], backend=self.grid.backend
        )
        if self.cfg.proposal_distortion_weight > 0:  # over s, the normalised distance the samples are spaced in
            dist = distortion_loss(
                out.weights, edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1), samples.ray_indices, len(origins)
            )
            loss = loss + self.cfg.proposal_distortion_weight * dist.mean()
        return self._apply(start, loss, mse, len(origins), out.n_samples)

    def check_finite(self) -> None:
        """Raise :class:`RunError` if a loss so far was not finite (the field diverged)."""
        self.divergence.check(
            self.step,
            "training",
            f"lower --lr {self.cfg.lr:g}, or check the scene's poses (nothing after the last checkpoint was saved)",
        )

    def _cap_samples(
        self, origins: Tensor, dirs: Tensor, target: Tensor, samples: RaySamples
    ) -> tuple[Tensor, Tensor, Tensor, RaySamples]:
        """Keep the first rays whose marched samples fit in ``target_samples``, and set the next
        step's ray count from this step's samples per ray (nerfacc's dynamic batch, but bounded)."""
        cap = self.cfg.target_samples
        if cap <= 0:
            return origins, dirs, target, samples
        counts = ray_counts(samples.ray_indices, len(origins))
        n_keep = max(1, int((torch.cumsum(counts, 0) <= cap).sum()))
        per_ray = max(1.0, len(samples) / len(origins))
        self.n_rays = int(min(max(cap / per_ray, 256), self.cfg.rays_per_step * 4))
        if n_keep >= len(origins):
            return origins, dirs, target, samples
        kept = samples.select(samples.ray_indices < n_keep)
        kept.n_rays = n_keep
        return origins[:n_keep], dirs[:n_keep], target[:n_keep], kept

    # -- rendering ----------------------------------------------------------------------------
    @torch.no_grad()
    def render_view(
        self, cameras: Cameras, idx: int, near_far: Tensor | None = None, max_per_ray: int = 0
    ) -> RenderOutput:
        """Render camera ``idx``; ``near_far``: optional ``[N, 2]`` depth bounds of ``cameras``; ``max_per_ray``: see
        :func:`render_image_rays`. Fields come back shaped ``[H, W, ...]``."""
        self.field.eval()
        cams = cameras.to(self.device)
        origins, dirs = image_rays(cams, idx)
        cam = torch.full((len(dirs),), idx, dtype=torch.long, device=self.device)
        near, far = self.ray_limits(cams, near_far, cam, dirs)
        out = render_image_rays(
            self.field,
            self.grid,
            origins,
            dirs,
            self.opts,
            self.cfg.render_chunk(self.device.type),
            near,
            far,
            max_per_ray,
        )
        h, w = cameras.height, cameras.width
        return RenderOutput(out.rgb.view(h, w, 3), out.depth.view(h, w), out.opacity.view(h, w), out.n_samples)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "n_rays": self.n_rays,
            "field": self.field.state_dict(),
            "grid": self.grid.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.grid.load_state_dict(state["grid"])
        self._set_box()
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.n_rays = int(state.get("n_rays", self.cfg.rays_per_step))
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


# option -> (lowest, highest, whether the lowest is allowed); None: no bound on that side
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    **{k: (1, None, True) for k in ("steps", "distill_steps", "rays_per_step", "checkpoint_every", "log_every")},
    **{k: (1, None, True) for k in ("render_steps", "occ_resolution", "occ_update_every")},
    **{k: (1, None, True) for k in ("holdout_every", "n_levels", "base_resolution", "hidden_dim", "color_hidden_dim")},
    **{k: (1, None, True) for k in ("latent_dim", "sem_levels", "sem_rays", "sem_max_resolution", "fda_stride")},
    **{k: (1, 30, True) for k in ("log2_hashmap_size", "sem_log2_hashmap_size")},
    "sh_degree": (1, 4, True),
    "fda_patch_size": (2, None, True),
    **{k: (0, None, True) for k in ("max_minutes", "distill_minutes", "threads", "downscale", "max_long_side")},
    "eval_chunk": (0, None, True),
    **{k: (0, None, True) for k in ("geo_feat_dim", "appearance_dim", "target_samples", "max_samples_per_ray")},
    **{
        k: (0, None, True)
        for k in ("refine_samples", "occ_warmup", "occ_reprobe_every", "sem_max_samples", "sem_refine_samples")
    },
    **{k: (0, None, True) for k in ("fda_patches", "fda_ramp", "weight_decay", "distortion_weight")},
    **{k: (0, None, True) for k in ("grad_scale_distance", "feature_weight", "rda_weight", "dino_weight")},
    **{k: (0, None, True) for k in ("fda_pos_weight", "fda_neg_weight")},
    **{k: (0, None, False) for k in ("lr", "sem_lr", "lr_final_factor", "sem_weight_power", "occ_threshold")},
    **{k: (0, None, False) for k in ("rda_temperature", "rda_field_temperature", "fda_temperature")},
    **{k: (0, 1, True) for k in ("joint_after", "fda_start", "occ_ema_decay", "occ_visibility_eps")},
    **{k: (0, 1, True) for k in ("early_stop_eps", "alpha_thre", "sem_weight_eps", "near_plane")},
}


def validate_config(cfg: TrainConfig) -> None:
    """Refuse, in one line naming the option, a train config that would fail in its first steps (or never
    end): counts below 1, rates and temperatures that are not above 0, shares outside 0..1, NaN."""
    for name, (low, high, low_ok) in _RANGES.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{_option(name)} {value!r}: must be a number")
        if not math.isfinite(value):
            raise UsageError(f"{_option(name)} {value}: must be a finite number")
        if low is not None and (value < low or (value == low and not low_ok)):
            need = f"at least {low}" if low_ok else f"above {low}"
            raise UsageError(f"{_option(name)} {value}: must be {need}" + (f" (and at most {high})" if high else ""))
        if high is not None and value > high:
            raise UsageError(f"{_option(name)} {value}: must be at most {high}")
    if cfg.n_features_per_level not in (1, 2, 4, 8):
        raise UsageError(f"--n-features-per-level {cfg.n_features_per_level}: must be 1, 2, 4 or 8")
    if cfg.sem_features_per_level not in (1, 2, 4, 8):
        raise UsageError(f"--sem-features-per-level {cfg.sem_features_per_level}: must be 1, 2, 4 or 8")
    if cfg.max_resolution < cfg.base_resolution:
        raise UsageError(
            f"--max-resolution {cfg.max_resolution}: must be at least --base-resolution {cfg.base_resolution}"
        )


def prepare_run(cfg: TrainConfig) -> Path:
    """Create (or, with --resume, check) the run folder; never overwrites a run that saved a checkpoint. A run
    folder whose training never saved one (made by an older ovseg3d that left it behind) is started over."""
    run = Path(cfg.output)
    if run.exists() and not run.is_dir():
        raise RunError(f"--output {run} is a file, not a folder: choose another --output")
    ckpts = list_checkpoints(run)
    if cfg.resume:
        if not run.is_dir():
            raise RunError(f"--resume: {run} does not exist: train it first (ovseg3d train SCENE --output {run})")
        check_run(run)
        if not ckpts:
            raise RunError(
                f"--resume: {run} has no checkpoint to resume from (its training never saved one): "
                f"train it again without --resume"
            )
        latest_checkpoint(run)  # a one-line error when none of them is readable
        return run
    if ckpts:
        raise RunError(f"{run} already holds a run: pass --resume to continue it, or choose another --output")
    if (run / "run.json").exists():
        tqdm.write(f"note: {run} holds a run that never saved a checkpoint: starting it over", file=sys.stderr)
        _discard(run, fresh=False)
    run.mkdir(parents=True, exist_ok=True)
    return run


_RUN_FILES = ("run.json", "config.toml", "log.jsonl", GEOMETRY_CHECKPOINT, "eval.json")
_RUN_FOLDERS = ("checkpoints", "renders")


def _discard(run: Path, fresh: bool) -> None:
    """Remove what training wrote in ``run`` before its first checkpoint: the whole folder when this training
    made it (``fresh``), else only the run's own files (and the folder, if that leaves it empty)."""
    if fresh:
        shutil.rmtree(run, ignore_errors=True)
        return
    for name in _RUN_FILES:
        (run / name).unlink(missing_ok=True)
    for name in _RUN_FOLDERS:
        shutil.rmtree(run / name, ignore_errors=True)
    if run.is_dir() and not any(run.iterdir()):
        run.rmdir()


def save_panel(run: Path, scene: Scene, view: int, out: RenderOutput) -> Path:
    """Write ``RUN/renders/view_NNN.png``: ground truth | render | depth."""
    depth = colorize_depth(out.depth, out.opacity)
    panel = side_by_side(scene.image_float(view), out.rgb.clamp(0, 1).cpu(), depth)
    path = run / "renders" / f"view_{view:03d}.png"
    save_png(path, panel)
    return path


def save_renders(trainer: Trainer, run: Path, limit: int = 0) -> list[Path]:
    """Render the held-out views (the first ``limit`` of them; 0 = all) and write their panels."""
    scene = trainer.scene
    views = scene.eval_ids[:limit] if limit > 0 else scene.eval_ids
    return [save_panel(run, scene, i, trainer.render_view(scene.cameras, i, scene.near_far)) for i in views]


@dataclass
class Training:
    """A started training: its run folder, trainer (restored when resumed), the teacher features (``None``
    without a teacher), and a resumed run's semantic state to continue its distillation from (``None`` when
    its geometry has steps left or it had no distillation yet)."""

    run: Path
    trainer: Trainer
    features: TeacherFeatures | None
    semantic: dict | None
    fresh: bool
    """This training made the run folder."""
    resume: bool
    teachers: tuple | None = None
    """With ``--teacher-views``: the teacher models, loaded before the geometry (a missing model fails then) and
    run on the chosen views after it (:func:`ovseg3d.views.teachers_after_geometry`); ``features`` is ``None`` until
    then."""

    @property
    def has_teacher(self) -> bool:
        return self.features is not None or self.teachers is not None


def start_training(cfg: TrainConfig) -> Training:
    """Check the options (before anything is written), make or check the run folder, load the scene and the
    teacher features and build (or restore) the trainer. A failure here leaves no run folder behind."""
    validate_config(cfg)  # before anything is written
    accel.configure_cpu_allocator()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg = dataclasses.replace(cfg, scene=Path(cfg.scene).resolve())
    fresh = not Path(cfg.output).exists()
    run = prepare_run(cfg)
    try:
        trainer, features, semantic, teachers = _start(cfg, run)
    except BaseException:  # bad scene, missing teacher weights, Ctrl-C: no dead run folder
        abandon(run, fresh, cfg.resume)
        raise
    return Training(run, trainer, features, semantic, fresh, cfg.resume, teachers)


def abandon(run: Path, fresh: bool, resume: bool) -> None:
    """After a failure: remove what a new training wrote when it never saved a checkpoint."""
    if not resume and not list_checkpoints(run):
        _discard(run, fresh)


def train_geometry(t: Training) -> bool:
    """The geometry steps left (checkpoints as it goes); with a teacher, ``geometry.pt`` (the radiance field
    before distillation) when it ran steps or is missing. Returns whether it ran any step."""
    try:
        ran = _loop(t.trainer, t.run)
    except BaseException:  # a failed first step, Ctrl-C: no dead run folder
        abandon(t.run, t.fresh, t.resume)
        raise
    if t.has_teacher and (ran or not (t.run / GEOMETRY_CHECKPOINT).exists()):
        write_checkpoint(t.run / GEOMETRY_CHECKPOINT, t.trainer.state_dict())
    return ran


def preview(trainer: Trainer, run: Path) -> str:
    """Render the first held-out view (``ovseg3d eval`` renders and scores them all); the line that says so."""
    paths = save_renders(trainer, run, limit=1)
    return f"; a held-out view in {paths[0]} (ovseg3d eval {run}: all of them, scored)" if paths else ""


def _start(cfg: TrainConfig, run: Path) -> tuple[Trainer, TeacherFeatures | None, dict | None, tuple | None]:
    """Load the scene and the teacher features, build (or restore) the trainer, write the run's files. Returns
    the trainer, the teacher features (``None`` without a teacher) and, when a resumed run's geometry is done
    and its checkpoint has one, the semantic field's state to continue the distillation from."""
    if cfg.resume:
        cfg = _resumed_config(cfg, run)
        check_scene(run, resume=True)
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, classes=tuple(parse_classes(cfg.classes)))
    scene = scene_of(cfg)
    if cfg.teachers.kind == "auto":
        from ovseg3d.teachers.extract import resolve_kind

        cfg = dataclasses.replace(cfg, teachers=dataclasses.replace(cfg.teachers, kind=resolve_kind(scene)))
    features, teachers = None, None
    if cfg.teachers.kind != "none" and cfg.teacher_views > 0:
        from ovseg3d.teachers.extract import build_teachers

        cfg.teachers.check()
        teachers = build_teachers(scene, cfg.teachers, device)  # run after the geometry, on the views it picks
    elif cfg.teachers.kind != "none":
        from ovseg3d.teachers.extract import ensure_features

        features = ensure_features(scene, cfg.teachers, device)
    unbounded_line = ""
    if not cfg.resume and resolve_contraction(cfg.contraction, scene) != "none":
        cfg, taken = for_unbounded(cfg)
        if taken:
            unbounded_line = f"unbounded scene: the {cfg.preset} preset's [unbounded] settings {', '.join(taken)}"
    chosen = cfg.sampler == "auto"
    cfg = dataclasses.replace(cfg, contraction=resolve_contraction(cfg.contraction, scene))
    cfg = dataclasses.replace(cfg, sampler=resolve_sampler(cfg.sampler, cfg.contraction))
    trainer = Trainer(cfg, scene, device)
    semantic = None
    if cfg.resume:
        state = load_checkpoint(latest_checkpoint(run), device)  # type: ignore[arg-type]
        trainer.load_state_dict(state)
        # more geometry steps to come: the distillation starts over on the new geometry
        if trainer.done() and "semantic" in state:
            semantic = state["semantic"]
        trim_log(run, trainer.step, int(semantic["step"]) if semantic is not None else None)
    else:
        write_run_info(run, cfg)
    write_toml(cfg, run / "config.toml")
    tqdm.write(
        f"ovseg3d train: {scene.root} ({scene.format}, {len(scene.train_ids)} train / {len(scene.eval_ids)} "
        f"held-out views, {scene.width}x{scene.height}) -> {run}  [{accel.describe(device, cfg.grid_impl)}]"
    )
    lo, hi = scene.aabb[:3].tolist(), scene.aabb[3:].tolist()
    box = " x ".join(f"[{a:.3g}, {b:.3g}]" for a, b in zip(lo, hi))
    tqdm.write(
        f"scene box {box}: {scene.bounds}; contraction beyond it: {cfg.contraction}; {sampler_line(trainer, chosen)}"
    )
    if unbounded_line:
        tqdm.write(unbounded_line)
    if scene.masks:
        tqdm.write(masks_line(scene))
    return trainer, features, semantic, teachers


def sampler_line(trainer: Trainer, chosen: bool) -> str:
    """Where the field's samples come from, for the training log (``chosen``: by ``--sampler auto``)."""
    cfg = trainer.cfg
    if trainer.proposal:
        rounds = " -> ".join(str(n) for n in (*cfg.proposal_samples, cfg.proposal_field_samples))
        return f"samples: proposal networks, {rounds} per ray"
    why = " (auto; --sampler proposal for proposal networks)" if chosen and trainer.contracted else ""
    return f"samples: occupancy grid{why}, {cfg.occ_resolution}^3 cells"


def masks_line(scene: Scene) -> str:
    """What the scene's masks leave out, for the training log: views with a mask and their share of pixels."""
    train = [v for v in scene.train_ids if v in scene.masks]
    left = sum(int((~scene.masks[v]).sum()) for v in train) / max(1, len(scene.train_ids) * scene.height * scene.width)
    held = sum(1 for v in scene.eval_ids if v in scene.masks)
    return (
        f"masks: {len(train)} of {len(scene.train_ids)} training views ({100 * left:.1f} % of their pixels left out)"
        + (f", {held} of {len(scene.eval_ids)} held-out views (scored on what they keep)" if held else "")
    )


# what --resume may change: the schedule, how often to save and log, and where and how fast to run
RESUME_MAY_CHANGE = (
    "steps",
    "max_minutes",
    "distill_steps",
    "distill_minutes",
    "checkpoint_every",
    "log_every",
    "eval_chunk",
    "device",
    "threads",
    "compile_grid",
    "teachers.clip_batch",
    "teachers.cache_dir",
)
_NOT_SETTINGS = ("output", "resume", "config")


def _flat(cfg: TrainConfig) -> dict[str, object]:
    """A config's settings as ``{key: value}``, nested configs as ``teachers.key``; the scene resolved."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in dataclasses.asdict(value).items()})  # type: ignore[arg-type]
        elif f.name == "scene":
            out[f.name] = Path(value).resolve()
        elif f.name not in _NOT_SETTINGS:
            out[f.name] = value
    return out


def _given_settings(cfg: TrainConfig, kept: dict[str, object]) -> tuple[dict[str, object], set[str]]:
    """The settings of a --resume invocation, a --config file's values over the run's saved ones ``kept`` and
    the flags over them; and the keys that the file gives."""
    given = _flat(cfg)
    if cfg.config is None:
        return given, set()
    values = {k: v for k, v in read_toml(Path(cfg.config)).items() if k not in _NOT_SETTINGS}
    try:
        in_file = _flat(apply_overrides(TrainConfig(), values, cfg.config))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    from_file = {k for k, v in values.items() if not isinstance(v, dict)}
    from_file |= {f"{k}.{sub}" for k, v in values.items() if isinstance(v, dict) for sub in v}
    for key in from_file:
        if given[key] == kept[key]:  # no flag changed it
            given[key] = in_file[key]
    return given, from_file


def _resumed_config(cfg: TrainConfig, run: Path) -> TrainConfig:
    """The run's saved config with this invocation's schedule and other :data:`RESUME_MAY_CHANGE` settings (so
    a run can be extended). Any other setting given that differs from the saved one (model flags, another
    --preset, another SCENE, a --config file) is refused in one line listing them."""
    saved = load_run_config(run)
    kept, default = _flat(saved), _flat(TrainConfig())
    given, from_file = _given_settings(cfg, kept)
    # `ovseg3d train --resume` builds its config over the saved one, so whatever differs was given; a config
    # built over the defaults (train() called with a fresh TrainConfig) only gives what differs from them
    model_keys = [k for k in kept if k not in RESUME_MAY_CHANGE and k not in ("scene", "preset")]
    over_defaults = all(given[k] == default[k] for k in model_keys if kept[k] != default[k])
    if over_defaults and any(kept[k] != default[k] for k in model_keys):
        candidates = [k for k in kept if given[k] != default[k] or k in from_file]
    else:
        candidates = list(kept)
    differ = [k for k in candidates if k not in RESUME_MAY_CHANGE and given[k] != kept[k]]
    if differ:
        listed = ", ".join(f"{k} (saved {_show(kept[k])}, given {_show(given[k])})" for k in differ)
        raise RunError(
            f"--resume: {run} was trained with other settings: {listed}; drop them to continue the run as it was "
            f"saved (only {', '.join(RESUME_MAY_CHANGE[:6])}, device, threads may change), or train a new run "
            f"with another --output"
        )
    schedule = {k: given[k] for k in RESUME_MAY_CHANGE if "." not in k}  # flags over a --config file
    teachers = {k.split(".")[1]: given[k] for k in RESUME_MAY_CHANGE if k.startswith("teachers.")}
    teachers = dataclasses.replace(saved.teachers, **teachers)
    return dataclasses.replace(saved, **schedule, teachers=teachers, resume=True, output=run)


def _show(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def budget_bar(bar: tqdm, step: int, progress: float) -> None:
    """Keep a bar's total at the steps the run will really take: its step budget, or as many steps as its time
    budget allows at the pace so far, whichever ends it first (``progress`` = the larger share used)."""
    if progress > 0 and step > 0:
        total = max(step + (progress < 1.0), round(step / progress))
        if abs(total - bar.total) > 0.01 * bar.total or progress >= 1.0:
            bar.total = total


def _loop(trainer: Trainer, run: Path) -> bool:
    """The geometry steps left; saves a checkpoint every ``checkpoint_every`` steps and at the end. Returns
    whether it ran any step."""
    cfg = trainer.cfg
    start = trainer.step
    with open(run / "log.jsonl", "a") as log, tqdm(total=cfg.steps, initial=trainer.step, unit="step") as bar:
        while not trainer.done():
            stats = trainer.train_step()
            budget_bar(bar, trainer.step, trainer.progress())
            bar.update(1)
            checkpoint = trainer.step % cfg.checkpoint_every == 0 or trainer.done()
            if trainer.step % cfg.log_every == 0 or checkpoint:  # the only steps that read from the device
                trainer.check_finite()
                values = stats.read()
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}",
                    psnr=f"{values['psnr']:.2f}",
                    rays=stats.n_rays,
                    spr=f"{stats.n_samples / max(stats.n_rays, 1):.1f}",
                )
                record = {
                    "step": trainer.step,
                    "time": round(trainer.elapsed, 3),
                    **values,
                }
                if not trainer.proposal:
                    record["occupied"] = round(trainer.grid.occupied_fraction(), 4)
                log.write(json.dumps(record) + "\n")
                log.flush()
            if checkpoint:
                save_checkpoint(new_checkpoint_path(run, trainer.step), trainer.state_dict())
    return trainer.step != start


def load_trainer(run: Path, device_name: str = "auto", force: bool = False) -> Trainer:
    """A Trainer restored from a run folder's latest checkpoint (for eval, render and export). A run whose scene
    changed since training is refused unless ``force`` (:func:`~ovseg3d.run.check_scene`)."""
    check_run(run)
    cfg = load_run_config(run)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise RunError(f"{run} has no checkpoint yet: train it first")
    check_scene(run, force)
    device = resolve_device(device_name)
    scene = scene_of(cfg)
    trainer = Trainer(cfg, scene, device)
    state = load_checkpoint(ckpt, device)
    state.pop("optimizer", None)
    trainer.load_state_dict(state)
    return trainer
