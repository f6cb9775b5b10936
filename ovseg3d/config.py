"""Flat run configuration, presets in ``configs/*.toml``, and reading / writing config files.

A train config is resolved in this order, each layer overriding the one before:
dataclass defaults < preset file (``--preset NAME`` -> ``configs/NAME.toml``) < ``--config FILE``
< command-line flags. The resolved config is written to ``RUN/config.toml``.

The presets are read through importlib.resources from the package ``ovseg3d.configs``: pyproject.toml installs
the top-level ``configs/`` folder as that package, so editable and non-editable installs both find them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from ovseg3d.errors import UsageError
from ovseg3d.field.hashgrid import HashGridConfig
from ovseg3d.field.radiance import FieldConfig
from ovseg3d.teachers.config import TeacherConfig

PRESETS = "ovseg3d.configs"
"""The package of the presets (the top-level configs/ folder, mapped by pyproject.toml)."""


@dataclass
class TrainConfig:
    """Fit a hash-grid radiance field to a scene."""

    scene: Path = Path("scenes/demo")
    """Scene folder: 3D-OVS / LLFF (poses_bounds.npy), nerfstudio / instant-ngp (transforms.json) or COLMAP
    (images/ + sparse/0/ or sparse/). Optional masks of pixels not to train on (0 = leave out): a frame's
    mask_path, masks/<image name>.png, or instant-ngp's dynamic_mask_<stem>.png (non-zero = leave out)."""
    output: Path = Path("runs/demo")
    """Run folder: config, checkpoints, log, renders and metrics are written here."""
    preset: str = "cpu"
    """Named preset from configs/ (tiny, cpu, gpu); --config and flags override it."""
    config: Path | None = None
    """A TOML config file (e.g. a copy of configs/cpu.toml or RUN/config.toml) applied over the preset."""
    resume: bool = False
    """Continue the run in --output from its latest checkpoint (its saved config is the base)."""
    chosen: Annotated[tuple[str, ...], tyro.conf.Suppress] = ()
    """Settings the user chose, by flag or in the --config file (the CLI fills this in): a preset's [unbounded]
    table leaves them as they are, even where one equals the preset's own value."""

    # schedule
    steps: int = 4000
    """Training steps."""
    max_minutes: float = 0.0
    """Stop after this much training time (minutes; 0 = no limit). The lr schedule follows it."""
    seed: int = 0
    """Random seed for ray sampling and initialisation."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    threads: int = 0
    """CPU threads for torch (0 = all cores)."""

    # data
    downscale: int = 0
    """Train on images downscaled by this integer factor (0 = the smallest factor that brings the long side
    within --max-long-side; images_K/ folders are used when they match)."""
    max_long_side: int = 0
    """With --downscale 0: the longest image side to train on, in pixels (0 = full size). The cpu preset
    sets 640, the gpu preset 1600."""
    colmap_model: Path | None = None
    """A COLMAP sparse model folder to read the poses from (default: SCENE/sparse/0 or SCENE/sparse, when the
    scene has no poses_bounds.npy or transforms.json)."""
    train_on_annotated: bool = False
    """Also train on the views with 3D-OVS masks (the 3D-OVS protocol); by default they are held out."""
    holdout_every: int = 8
    """Without annotated views, hold out every N-th view for evaluation."""
    classes: tuple[str, ...] = ()
    """Class names for a scene without segmentations/classes.txt, e.g. --classes "chair, table, plant" (commas or
    separate words): the teachers' relevancy, the labels of the exported cloud and the detector's vocabulary. Kept
    in RUN/config.toml. Without any, the run keeps its CLIP feature field and answers free-text queries only."""

    # scene space
    contraction: Literal["auto", "none", "sphere", "cube"] = "auto"
    """Beyond the region of interest: 'none' (the box is the whole scene), 'sphere' (mip-NeRF 360's
    contraction of the world into a ball, so backgrounds and sky are modelled), 'cube' (nerfacto's
    L-infinity variant). 'auto': none where the scene's box is given (LLFF depth bounds, a transforms.json
    "aabb"), else sphere."""

    roi_scale: float = 1.0
    """Where the scene's box is estimated (no LLFF bounds, no transforms.json "aabb"): its half sizes times this.
    The estimate is a cube about where the cameras look, of half the cameras' distance to it; 2 holds the cameras
    (mip-NeRF 360's and nerfacc's normalisation), so the room around a subject keeps more of the grids."""

    # where the field's samples come from
    sampler: Literal["auto", "grid", "proposal"] = "auto"
    """'grid': an occupancy grid skips empty space and the march keeps what is left (Instant-NGP); 'proposal':
    small proposal density networks learn where along each ray the field's weight is and place its samples there
    (mip-NeRF 360, nerfacto). 'auto' is the grid: on 2 CPU cores, with the unbounded field's clear-air start
    (init_optical_depth), it beat the proposals at equal time on an outdoor scene from another generator, a
    generated one and instant-ngp's fox (the grid's steps are cheaper on a CPU). On a GPU the proposals won on
    mip-NeRF 360's bonsai (H100, 30 s: +1.8 dB), so the gpu preset's [unbounded] table sets 'proposal'."""
    proposal_samples: tuple[int, ...] = (64, 32)
    """Intervals per ray evaluated by each proposal network, in order (one network per entry)."""
    proposal_field_samples: int = 24
    """Intervals per ray the proposals give the radiance field."""
    init_optical_depth: float = 2.0
    """With --start clear (and auto's unbounded scenes): the field's density at the start, as the optical depth across the scene
    box's diagonal; the occupancy grid keeps every cell marched through its warm-up. A field that starts as thick
    fog (--start fog, optical depth 10 over the diagonal, every cell above the grid's threshold) was
    fitted by fog right in front of each camera, which no other view checks: on an outdoor scene from another
    generator, training views 26-28 dB, held-out 13 dB, rendered depths a tenth of the true ones. Held out at 1000
    steps there: 21.9 dB at 0.5, 23.1 at 2; instant-ngp's fox (about 1,300 steps): 22.4 at 0.5, 23.6 at 2."""
    start: Literal["auto", "clear", "fog"] = "auto"
    """The field's density at the start. 'clear': air of optical depth init_optical_depth across the box's
    diagonal, every occupancy cell marched through the grid's warm-up, then occupied where the field has put
    density (nerfacc's way). 'fog': twice the grid's threshold in every cell (an optical depth of about 10 across
    the box), emptied where rays clear it and, behind surfaces, by the visibility record (--occ-visibility-eps).
    'auto': clear for unbounded scenes (a contraction), fog for bounded ones. Measured at equal steps (1,500; 2,500
    on the demo), clear against fog: the demo 35.12 / 35.26 dB, the shared forward scene 32.79 / 32.30, the shared
    orbit 28.58 / 29.11 and 28.22 / 29.25 (two seeds), a generated orbit room 28.89 / 28.21; and a short run's
    export at half resolution lay 2.9x farther from the surfaces than at full (fog: under 1.5x; docs/benchmarks.md)."""
    interlevel_weight: float = 1.0
    """Weight of mip-NeRF 360's interlevel loss, which trains the proposal networks to bound the field's weights."""
    proposal_distortion_weight: float = 0.002
    """With proposals: weight of mip-NeRF 360's distortion loss over the normalised ray distance (nerfacto's
    0.002); --distortion-weight is the occupancy grid's."""

    # field
    grid_impl: Literal["auto", "torch", "tcnn"] = "auto"
    """Hash-grid implementation: tinycudann on CUDA when installed ('auto'), or the PyTorch path."""
    compile_grid: bool = False
    """torch.compile the torch hash grid's index arithmetic: about 8 % faster steps on a CPU, after a compilation
    of about 30 s the first time on a machine (then cached on disk by torch)."""
    n_levels: int = 8
    """Hash-grid levels."""
    n_features_per_level: int = 4
    """Features per level (1, 2, 4 or 8)."""
    log2_hashmap_size: int = 17
    """log2 of the entries per level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    max_resolution: int = 1024
    """Finest grid resolution (sets per_level_scale)."""
    hidden_dim: int = 64
    """Width of the density MLP."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density MLP to the colour MLP."""
    color_hidden_dim: int = 64
    """Width of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics degree of the view-direction encoding (1-4)."""
    appearance_dim: int = 0
    """Per-image appearance code fed to the colour MLP (nerfacto's appearance embedding), so exposure and white
    balance that change between photos are not learnt as floaters; held-out views use the mean code (0 = off)."""

    # sampling and rendering
    rays_per_step: int = 4096
    """Rays per step (the starting value when target_samples > 0)."""
    target_samples: int = 0
    """Cap on marched samples per step: rays beyond it are dropped, and the next step's ray count
    is set from the samples per ray (0 = fixed rays_per_step)."""
    render_steps: int = 256
    """Marching step = scene box diagonal / render_steps."""
    max_samples_per_ray: int = 0
    """While training, march at most about this many samples per ray (longer steps where the grid
    is still mostly occupied; 0 = no limit)."""
    refine_samples: int = 0
    """While training, split the marched intervals that carry rendering weight (the field's own density, no
    gradient) into up to about this many more samples per ray, so that small objects and surfaces are
    sampled finely even while the grid is still mostly occupied (0 = off). Orbit scene, cpu preset: 25.9 dB
    held out at 32 against 26.5 at 0 in the same 3 minutes (fewer rays per step), so it is off by default."""
    grad_scale_distance: float = 0.2
    """For scenes without depth bounds (transforms.json; LLFF rays already start at the near bound): scale the
    training gradients of samples nearer to the camera than this (a share of the scene box's diagonal) by
    (t / distance)^2, against floaters in front of single views ("Floaters No More"; 0 = off). Orbit scene,
    cpu preset: held-out 26.5 dB at 0, 27.8 at 0.2, 26.8 at 0.3."""
    near_plane: float = 0.05
    """For scenes without depth bounds (transforms.json): rays start this far from the camera, as a share of
    the scene box's diagonal (0 = at the camera). No floater can then sit right in front of one camera,
    where no other view sees it (orbit scene, cpu preset: 26.2 dB held out at 0.05; 24.0 at 0 with
    occ_threshold 0.002)."""
    early_stop_eps: float = 1e-4
    """Skip samples whose transmittance is below this (0 = never)."""
    train_early_stop: bool = False
    """Also skip them while training, which costs one more density pass per step without gradients. Off:
    training composites every marched sample (early stopping dropped 0-3 % of them on the demo and orbit
    scenes, so the extra pass cost more than it saved)."""
    alpha_thre: float = 0.0
    """Skip samples whose step opacity is below this."""
    occ_resolution: int = 64
    """Occupancy-grid cells per side."""
    occ_update_every: int = 16
    """Refresh the occupancy grid every N steps."""
    occ_warmup: int = 256
    """Steps during which every occupancy cell is refreshed."""
    occ_threshold: float = 0.01
    """Step opacity above which a cell is occupied."""
    occ_visibility_eps: float = 1e-3
    """Empty cells that training rays only reach with transmittance below this (0 = off, as in nerfacc): with
    --start fog, the fog behind surfaces that no ray clears. Not for good: every --occ-reprobe-every updates, the
    cells it emptied where the field has density are marched again for two updates, and kept if a ray then reaches
    them (a wall first hidden by the early fog). Cells outside every training view are dropped anyway (the grid's
    frustum test). Off, a short run's export at half resolution lay 1.6x farther from the surfaces than at full. For
    an orbit capture whose walls matter, use 0 with --background random: the record emptied a generated orbit
    room's far walls hidden behind the first floaters (median depth error 16.4 %, 3.9 % without it), while a forward
    room lost 0.7 dB without it (docs/benchmarks.md)."""
    occ_reprobe_every: int = 8
    """Grid updates between the visibility record's re-probes of the cells it emptied (0: never: an emptied cell
    stays empty, as before issue 48)."""
    occ_ema_decay: float = 0.95
    """Per-update decay of a cell's remembered opacity (lower forgets empty space sooner)."""
    background: Literal["black", "white", "random"] = "black"
    """Colour behind the field while training (evaluation uses black), when it has no learned background. With
    random, a new colour behind each ray at each step, an opaque surface is the only way to match a pixel, so in
    a closed room the far walls are where they are, not a half-transparent layer in front of them over black: on
    generated rooms a forward room's wall recall went from 0 to 90 % and an orbit's F-score from 25 to 87, though
    the demo scored less held out at 1,500 steps by 2.7 dB (docs/benchmarks.md)."""
    background_from: float = 0.0
    """With --background random: the share of the budget (0-1) trained on black before the colour behind each ray
    turns random (0: random from the start). Measured at 0.5, 1,500 steps: the demo keeps black's PSNR (34.38 dB,
    as black's on the same machine) but a forward room's wall is made opaque 13 % in front of where it is (0.6 % recalled,
    against 90 % with random from the start; docs/benchmarks.md)."""
    opacity_weight: float = 0.0
    """Weight of a loss asking every training ray to end on a surface, mean (1 - opacity)^2, for scenes where every
    pixel shows one (a closed room): the opacity that --background random asks for, without its colour noise. Not
    with a learned background (the sky is what rays leave through). 0 = off. Measured at 1,500 steps: at 0.01 a
    forward room's wall 86 % recalled within 1.7 % of its depth (0 % off) and its cloud's F-score 81.8 against 69.3,
    but the demo 1.3 dB lower and the cloud's precision 80 % against 99 %; at 0.05 the demo 2.2 dB lower
    (docs/benchmarks.md)."""
    learned_background: bool = True
    """With a contraction (unbounded scenes): learn the colour at infinity per view direction (a small MLP on
    the direction's spherical harmonics) for what a ray's leftover transmittance shows: the sky."""

    # optimisation
    lr: float = 1e-2
    """Adam learning rate at the start."""
    lr_final_factor: float = 0.03
    """Learning rate at the end, as a fraction of lr (with --lr-schedule exp)."""
    lr_schedule: Literal["exp", "steps"] = "exp"
    """How the learning rate falls over the budget (steps or minutes, whichever ends first): 'exp', an exponential
    decay from lr to lr * lr_final_factor; 'steps', Instant-NGP's and nerfacc's: lr until half the budget, then a
    third of it at 50, 75 and 90 %, after a linear warm-up of lr_warmup_steps."""
    lr_warmup_steps: int = 0
    """With --lr-schedule steps: steps of linear warm-up from a hundredth of lr (nerfacc: 100)."""
    weight_decay: float = 1e-6
    """Weight decay of the MLPs."""

    depth_weight: float = 0.0
    """Weight of the depth prior from the scene's structure-from-motion points (a COLMAP model's observations:
    each keypoint's ray should end at its point, with nothing in front of it; DS-NeRF, URF), 0 = off. Used only
    where a COLMAP model with 2D observations is found or given (``prepare``'s scenes, COLMAP folders, --depth-model).
    Measured at 1,300 steps with 64 rays (docs/benchmarks.md): 0.005 lifts instant-ngp's fox from 24.73 to 25.72 dB
    held out (on its own poses with prepare's points: 24.61 to 25.61) and mip-NeRF 360's bonsai from 23.22 to 23.28,
    and drops NeRF-Database's can from 29.64 to 28.83 and a phone video from 28.36 to 27.39: off by default."""
    depth_model: Path | None = None
    """With --depth-weight: the COLMAP model whose points give the prior, for a scene whose poses are in another file
    (a transforms.json made from it, LLFF's poses_bounds.npy); it is aligned to the scene's cameras by a similarity
    over the images both name. Default: the scene's own (SCENE/sparse/0, nerfstudio's SCENE/colmap/sparse/0, ...)."""
    depth_rays: int = 64
    """Rays through observed keypoints added to each step's batch when --depth-weight is above 0."""
    depth_band_samples: int = 8
    """With --depth-weight: samples put across each depth ray's band (two sigmas either side of its point) in
    place of the occupancy grid's there, so that a point in cells the grid skips still draws density; 0: none."""
    depth_until: float = 0.0
    """With --depth-weight: the prior's weight falls linearly from --depth-weight to 0 by this share of the budget
    (steps or minutes; URF lets its sparse depth go so): the points place the surfaces early and the colours refine
    them. 0: held at --depth-weight to the end."""
    depth_sigma_start: float = 0.0
    """The depth prior's band at the start, as a share of each point's depth, narrowing geometrically to the
    point's own uncertainty (at least 1 % of its depth) by depth_anneal of the budget (nerfstudio's
    depth-nerfacto anneals its sigma so); 0: the points' own from the start."""
    depth_anneal: float = 0.5
    """With --depth-sigma-start: the share of the budget (steps or minutes) over which the band narrows."""

    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (distances in units of the scene-box diagonal):
    pulls each ray's weight onto one surface instead of a fog, which also means fewer samples."""

    # outputs
    checkpoint_every: int = 500
    """Save a checkpoint every N steps (and at the end)."""
    log_every: int = 25
    """Append a line to RUN/log.jsonl every N steps."""
    eval_chunk: int = 0
    """Rays per chunk when rendering images, exports and detection's views (0: 8,192 on a CPU, whose caches want
    small chunks; 32,768 on a GPU, nerfstudio's chunk: a chunk launches the same few hundred kernels whatever its
    size, so on a GPU small chunks wait on launches)."""

    # distillation of the 2D teachers (after the geometry stage; needs --teacher clip|synthetic)
    distill_steps: int = 600
    """Distillation steps of the semantic field."""
    distill_minutes: float = 0.0
    """Stop distilling after this much time (minutes; 0 = no limit). The lr schedule follows it."""
    joint_after: float = 0.8
    """Fraction of the distillation after which RGB training of the radiance field resumes alongside
    (1 = never: the radiance field stays frozen)."""
    latent_dim: int = 32
    """Semantic latent rendered per ray, decoded per ray to CLIP / selection / DINO."""
    sem_levels: int = 8
    """Hash-grid levels of the semantic field."""
    sem_features_per_level: int = 4
    """Features per level of the semantic grid."""
    sem_log2_hashmap_size: int = 17
    """log2 entries per level of the semantic grid."""
    sem_max_resolution: int = 256
    """Finest resolution of the semantic grid."""
    sem_lr: float = 1e-2
    """Adam learning rate of the semantic field."""
    sem_rays: int = 2048
    """Random rays per distillation step (plus the FDA patches)."""
    scale_selection: bool = False
    """Learn 3D-OVS's selection over the teacher's crop scales per ray and train against the selected mix. Off
    (the default): train against the one scale --teacher-scale. The learned selection drifts to the coarse
    crops, which on small objects are mostly their surroundings (measured, same geometry: demo mIoU 89.5
    with it against 91.3 on the finest crop; orbit 33.9 against 52.4)."""
    teacher_scale: int = -1
    """Without --scale-selection: the teacher's crop scale to train against, indexed as in Python over
    --clip-scales ordered coarse to fine (0 = the coarsest, -1 = the finest)."""
    sem_max_samples: int = 32
    """Marched samples per ray for the semantic field (every k-th occupied step, k-times longer: the
    rendering weights of a coarser march; 0 = every step)."""
    sem_refine_samples: int = 0
    """Split the marched intervals that carry rendering weight into up to about this many more samples per
    ray before the semantic field reads them (as ``refine_samples``), so that objects smaller than the
    coarse step keep their own weight instead of handing it to the surface behind (0 = off). Orbit scene,
    600 steps: mIoU 43.7 -> 44.7 at 32, but 270 s instead of 180 s, so it is off by default."""
    sem_weight_eps: float = 0.01
    """Only samples with more than this share of their ray's semantic weight (see --sem-weight-power)
    evaluate the semantic field."""
    sem_weight_power: float = 4.0
    """The semantic latent is averaged along a ray with the radiance weights raised to this power (1 = the
    volume-rendering weights), in training and rendering alike: above 1 the samples at a ray's peak weight
    (its surface) dominate the haze in front of it. Re-distilled from the same fields, 520 / 600 steps:
    orbit mIoU 49.5 at 1, 63.0 at 2, 66.2 at 4, 60.4 at 8; demo 87.7 at 1, 90.8 at 4."""
    fda_patches: int = 4
    """FDA patches per step (0 = no FDA)."""
    fda_patch_size: int = 16
    """Rays per patch side."""
    fda_stride: int = 2
    """Pixels between neighbouring rays of a patch."""
    fda_start: float = 0.0
    """Fraction of the distillation before FDA starts (RDA first shapes the classes)."""
    fda_ramp: float = 0.0
    """Fraction of the distillation over which FDA's weights then ramp up linearly to their values."""
    fda_temperature: float = 0.05
    """Temperature of the class distributions softmax(cos(F, t_c) / T) that FDA compares (3D-OVS: 0.2; the
    same as RDA's field temperature here)."""
    fda_pos_weight: float = 20.0
    """FDA w+: pull DINO-similar pixels to one class distribution. 3D-OVS uses 200; measured on the demo
    scene (400 steps): w+ 20 -> mIoU 80.4, w+ 100 -> 46.3 (small objects merge into the floor)."""
    fda_neg_weight: float = 0.5
    """FDA w-: push DINO-dissimilar pixels apart (higher: sharper boundaries, less stable; at 2, textured
    objects split into two classes)."""
    coverage_weights: bool = True
    """Weigh each pixel's CLIP feature and RDA losses by how many of the teacher's crops cover it, relative to
    the image's interior (inverse-variance weighting: a border pixel's teacher averages fewer crops). Without
    it the border's noise becomes labels of classes the scene lacks, where a surface is seen only near the
    image's edges."""
    feature_weight: float = 1.0
    """Weight of the CLIP feature loss."""
    rda_weight: float = 1.0
    """Weight of the relevancy-distribution alignment (0 = off)."""
    rda_temperature: float = 0.1
    """Temperature of the teacher's class distribution softmax(relevancy / T) in RDA (relevancy is in [0, 1];
    3D-OVS: 1, which is nearly flat)."""
    rda_divergence: Literal["js", "kl"] = "kl"
    """Divergence of RDA: 'js' (3D-OVS) or 'kl' = KL(teacher || field). We measured that JS saturates where
    the field is confidently wrong (small objects under a majority class) and stops learning them."""
    rda_field_temperature: float = 0.05
    """Temperature of the field's class distribution softmax(cos(F, t) / T) in RDA."""
    dino_weight: float = 0.1
    """Weight of the DINO feature head's cosine loss."""

    # training-free lifting (--semantic lift; ovseg3d/lift.py, docs/method.md)
    semantic: Literal["distill", "lift"] = "distill"
    """The semantic stage: 'distill' fits a semantic field to the teachers by gradient steps (3D-OVS); 'lift'
    averages the teachers' maps onto a sparse voxel grid by the field's rendering weights, without gradient steps."""
    lift_resolution: int = 128
    """Lifting: voxels per side of the grid over the scene box (or the contracted world)."""
    lift_stride: int = 0
    """Lifting: march one ray every N pixels along each axis of each training view (0: the image's pixels per cell
    of the teacher's CLIP map)."""
    lift_clip_dim: int = 64
    """Lifting: principal components of the CLIP features kept per voxel (0 = all, no reduction)."""
    lift_dino_dim: int = 32
    """Lifting: principal components of the DINO features kept per voxel (0 = all)."""
    lift_propagate: int = 20
    """Lifting: iterations of propagation between neighbouring voxels by DINO affinity (FDA in 3D; 0 = off)."""
    lift_affinity: float = 0.7
    """Lifting: DINO cosine below which neighbours do not exchange features (FDA's 0.7)."""
    lift_propagate_weight: float = 0.9
    """Lifting: share of a voxel's value that comes from its neighbours at each propagation step."""
    lift_view_filter: int = 5
    """Lifting: iterations of FDA's pull and push in each teacher view before lifting (0 = off; 5 and
    ``lift_view_strength`` 5 chosen on training views of 3 scenes under both simulated teachers, +0.4 to +7.4 held-out
    mIoU there, about 0.1-0.5 s a view; docs/benchmarks.md): mean-field steps
    on the teacher's class distribution over a 7 x 7 window of its map, pulled toward the cells whose DINO features
    agree (cosine above ``lift_affinity``) and pushed from those that differ, so that it follows DINO's edges
    rather than the crops' blur. On the lifted crop scale (all of them with ``scale_selection``)."""
    lift_view_strength: float = 5.0
    """Lifting: the weight of the neighbours' pull and push against the teacher's own log-probability in
    ``lift_view_filter``'s steps."""
    teacher_views: int = 0
    """The teachers on K training views only (0: all of them): the K that best cover the trained field's surfaces
    (greedy coverage of each view's coarse depth, ovseg3d/views.py), chosen after the geometry, which then comes
    before the teachers. A video's neighbouring frames add little; each view skipped saves its CLIP and DINO passes."""
    teacher_view_depth: int = 2
    """--teacher-views: the views are chosen to see each surface this many times before a surface no view sees yet
    counts for more (1: plain coverage)."""

    # 2D teachers (their features are extracted, or reused from the cache, before training)
    teachers: Annotated[TeacherConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: TeacherConfig(kind="auto")
    )

    def render_chunk(self, device_type: str) -> int:
        """Rays per chunk of a render on a device of type ``device_type`` (``--eval-chunk``, or its default)."""
        if self.eval_chunk > 0:
            return self.eval_chunk
        return GPU_EVAL_CHUNK if device_type == "cuda" else CPU_EVAL_CHUNK

    def field_config(self) -> FieldConfig:
        scale = math.exp(math.log(self.max_resolution / self.base_resolution) / max(1, self.n_levels - 1))
        grid = HashGridConfig(
            self.n_levels, self.n_features_per_level, self.log2_hashmap_size, self.base_resolution, scale
        )
        return FieldConfig(
            grid, self.hidden_dim, self.geo_feat_dim, self.color_hidden_dim, self.sh_degree, self.appearance_dim
        )


CPU_EVAL_CHUNK = 8192
GPU_EVAL_CHUNK = 32768
"""--eval-chunk 0's rays per render chunk on a CPU and on a GPU (:meth:`TrainConfig.render_chunk`)."""

_RUN_KEYS = ("scene", "output", "preset", "config", "resume")


class ConfigError(UsageError):
    """A config file that cannot be used; one line naming the file."""


def read_toml(path: Path | Traversable) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


_PATH_KEYS = ("scene", "output", "config", "cache_dir", "colmap_model", "depth_model")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (the scripts' ``--set``) -> a dict; a value is read as JSON when it parses
    (numbers, true/false, lists), else kept as a string. A dotted key sets a nested table:
    ``teachers.clip_features=dense`` gives ``{"teachers": {"clip_features": "dense"}}``."""
    values: dict[str, Any] = {}
    for item in items:
        key, value = item.split("=", 1)
        *tables, name = key.split(".")
        target = values
        for table in tables:
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: '{table}' is set to a value, not a table")
        try:
            target[name] = json.loads(value)
        except json.JSONDecodeError:
            target[name] = value
    return values


def apply_overrides(cfg: Any, values: dict[str, Any], source: Path | str) -> Any:
    """A copy of the config dataclass ``cfg`` with ``values`` set (a TOML table sets a nested config);
    unknown keys are an error naming ``source``."""
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(unknown)}")
    typed = {}
    for key, value in values.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a table ([{key}])")
            value = apply_overrides(current, value, source)
        elif key in _PATH_KEYS and value is not None:
            value = Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        typed[key] = value
    return dataclasses.replace(cfg, **typed)


def preset_names() -> list[str]:
    """The presets shipped in the package (``configs/*.toml``)."""
    return sorted(p.name.removesuffix(".toml") for p in resources.files(PRESETS).iterdir() if p.name.endswith(".toml"))


def preset_path(name: str) -> Traversable:
    """``configs/NAME.toml`` as installed in the package ``ovseg3d.configs`` (a Path in an installed tree)."""
    folder = resources.files(PRESETS)
    path = folder / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(preset_names())
        raise ConfigError(f"unknown preset '{name}' (known: {known}; presets live in {folder})")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config (every field, with its help as a comment) as TOML; nested configs
    (the teachers) become tables after the top-level keys."""
    lines = ["# ovseg3d resolved train config: pass it back with --config to repeat this run", ""]
    tables = [f for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]
    lines += _toml_lines(cfg, skip=("config", "resume", *(f.name for f in tables)))
    for f in tables:
        lines += ["", f"[{f.name}]", *_toml_lines(getattr(cfg, f.name))]
    path.write_text("\n".join(lines) + "\n")


def _toml_lines(cfg: Any, skip: tuple[str, ...] = ()) -> list[str]:
    lines = []
    docs = _field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or f.name in skip:
            continue
        if f.name in docs:
            lines += [f"# {line.strip()}" for line in docs[f.name].splitlines()]
        lines.append(f"{f.name} = {_toml_value(value)}")
    return lines


def _field_docs(cls: type) -> dict[str, str]:
    """Field docstrings of a config dataclass (the string literal after each field)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value).strip()  # type: ignore[attr-defined]
    return docs


PREPARE = "prepare"
"""A preset's table of ``ovseg3d run``'s settings for ``prepare`` (frames of a video, working size)."""
UNBOUNDED = "unbounded"
"""A preset's table of settings for unbounded scenes (a contraction beyond an estimated box: 360-degree captures,
rooms, outdoor scenes), applied by :func:`for_unbounded` once the scene is known."""


def read_preset(preset: str) -> tuple[dict[str, Any], dict[str, Any], Traversable]:
    """A preset's top-level settings, its ``[unbounded]`` table (``{}`` without one) and its path; unknown keys in
    the table are a :class:`ConfigError`."""
    path = preset_path(preset)
    values = read_toml(path)
    values.pop(PREPARE, None)  # read by ovseg3d run (preset_prepare)
    unbounded = values.pop(UNBOUNDED, {})
    if not isinstance(unbounded, dict):
        raise ConfigError(f"{path}: '{UNBOUNDED}' must be a table ([{UNBOUNDED}])")
    apply_overrides(TrainConfig(), unbounded, f"{path} [{UNBOUNDED}]")  # its keys and nested tables are checked
    return values, unbounded, path


def preset_prepare(preset: str) -> dict[str, Any]:
    """A preset's ``[prepare]`` table: how ``ovseg3d run`` makes a scene of photos or a video with it (the fields
    of :class:`~ovseg3d.prepare.PrepareConfig`; ``{}`` without one)."""
    path = preset_path(preset)
    table = read_toml(path).get(PREPARE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: '{PREPARE}' must be a table ([{PREPARE}])")
    return table


def for_unbounded(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with its preset's ``[unbounded]`` settings, for a scene with a contraction. A setting is taken only
    where ``cfg`` still has the preset's own value, so a config file's or a flag's choice stands (one that sets a
    key to the preset's own value cannot be told from it, unless ``cfg.chosen`` names it, as the CLI does). Returns
    the config and the ``key = value`` lines taken."""
    top, unbounded, path = read_preset(cfg.preset)
    base = apply_overrides(TrainConfig(), top, path)
    taken = {k: v for k, v in unbounded.items() if k not in cfg.chosen and getattr(cfg, k) == getattr(base, k)}
    if not taken:
        return cfg, []
    return apply_overrides(cfg, taken, f"{path} [{UNBOUNDED}]"), [f"{k} = {_toml_value(v)}" for k, v in taken.items()]


def chosen_keys(args: list[str], config_file: Path | None) -> tuple[str, ...]:
    """The top-level :class:`TrainConfig` settings given as flags in ``args`` (``--key``, ``--key=value``,
    ``--no-key``; dashes or underscores) or set in the TOML ``config_file``: the user's choices (``chosen``)."""
    in_file = set(read_toml(config_file)) if config_file is not None else set()
    flags = {a.split("=", 1)[0].replace("_", "-") for a in args if a.startswith("--")}
    names = []
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in in_file or flag in flags or "--no-" + flag[2:] in flags:
            names.append(f.name)
    return tuple(names)


def resolve_base(preset: str, config_file: Path | None) -> TrainConfig:
    """Defaults < preset < config file (command-line flags go on top, in the CLI). The preset's ``[unbounded]``
    table comes later, once the scene is loaded (:func:`for_unbounded`)."""
    values, _, path = read_preset(preset)
    cfg = apply_overrides(TrainConfig(), values, path)
    cfg = dataclasses.replace(cfg, preset=preset)
    if config_file is not None:
        values = {k: v for k, v in read_toml(config_file).items() if k not in ("config", "resume")}
        cfg = apply_overrides(cfg, values, config_file)
    return cfg
