#!/usr/bin/env python
"""nerfacc's own Instant-NGP examples (v0.5.3) on an ovseg3d scene folder, by wall clock: the reference that
ovseg3d's field is compared against. On CUDA with tinycudann, or on a CPU (``--device cpu``) with tinycudann's
modules stood in for by ovseg3d's torch hash grid and torch MLPs (:func:`install_torch_tcnn`): nerfacc's sampler,
renderer, schedule and losses unchanged, for comparisons at equal steps where no GPU is lent.

Trains ``examples/train_ngp_nerf_prop.py`` (``prop``) and ``examples/train_ngp_nerf_occ.py`` (``occ``) with their
mip-NeRF 360 settings, on the photos and poses ovseg3d trains on (``ovseg3d.data.loader.load_scene``), brought
into nerfacc's frame as its ``datasets/nerf_360_v2.py`` would (OpenCV camera axes, ``similarity_from_cameras``,
median camera distance 1). nerfacc's fields and renderers are imported from its examples, unchanged
(``bash scripts/gpu_session.sh nerfacc-src`` exports them into ``.nerfacc/``; they are never committed).

The one deliberate change: the schedule runs by wall clock. Each mark is a fresh run whose learning-rate
milestones fall at 50 / 75 / 90 % of its seconds instead of its steps; the warm-up's 100 steps, the proposal
networks' requires-grad ramp (1000 steps) and the occupancy grid's updates (every 16 steps) stay in steps, as
they do not scale with ``max_steps`` in the examples. Training time excludes loading, warm-up and evaluation.

Scores every held-out view (every 8th by name, as nerfacc's loader) with the example's test renderer and a white
background (its test split's): mean per-view PSNR (the example's formula), SSIM (``ovseg3d.metrics.ssim``), and
the PSNR of 3 training views. Prints a table and writes JSON after each run (default
``bench/nerfacc_reference.json``).

    bash scripts/gpu_session.sh reference /path/bonsai --marks 30 90           # on a lent GPU (builds first)
    python3 -P scripts/nerfacc_reference.py /path/bonsai --marks 30 90 --method prop occ --out $OUT/ref.json
    python scripts/nerfacc_reference.py /path/bonsai --device cpu --method prop --steps 1300 --max-long-side 400 \
        --eval-every 4                                                        # 2 CPU cores, equal steps
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Literal, NoReturn

import imageio
import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from ovseg3d.atomic import write_json
from ovseg3d.errors import UsageError, check_writable
from ovseg3d.evaluate import training_views
from ovseg3d.metrics import ssim

NERFACC_SRC = Path(__file__).resolve().parent.parent / ".nerfacc"
NERFACC_VERSION = "0.5.3"
CHECK_EVERY = 20  # steps between clock reads (one synchronisation each)
WARMUP_STEPS = 20  # untimed steps of a throwaway model before the runs: CUDA kernels and allocators warm
MILESTONES = (0.5, 0.75, 0.9)  # of the budget: the examples' max_steps // 2, * 3 // 4, * 9 // 10
WHITE = (1.0, 1.0, 1.0)  # nerf_360_v2.SubjectLoader.preprocess: "just use white during inference"


@dataclass
class Args:
    scene: tyro.conf.Positional[Path]
    """Scene folder ovseg3d loads (COLMAP images/ + sparse/0/, transforms.json or LLFF), pinhole cameras."""
    method: list[Literal["prop", "occ"]] = field(default_factory=lambda: ["prop", "occ"])
    """nerfacc examples to run: prop (train_ngp_nerf_prop.py), occ (train_ngp_nerf_occ.py)."""
    marks: list[float] = field(default_factory=lambda: [30.0, 90.0])
    """Training budgets in seconds: one fresh run per method and mark."""
    out: Path = Path("bench/nerfacc_reference.json")
    save_render: Path | None = None
    """Folder for each run's render of the first held-out view (PNG)."""
    seed: int = 42
    device: Literal["cuda", "cpu"] = "cuda"
    """cuda: nerfacc's examples as they are (tinycudann); cpu: the same with tinycudann's modules replaced by
    ovseg3d's torch hash grid and torch MLPs (prop only: the occ example needs nerfacc's CUDA ops)."""
    steps: int = 0
    """Train for this many steps instead of the --marks seconds (the lr milestones at 50/75/90 % of them)."""
    max_long_side: int = 0
    """Downscale the photos so their long side is at most this (0 = as the scene has them)."""
    eval_every: int = 1
    """Score every N-th held-out view only (1 = all; a CPU renders the proposals' 400 samples a ray slowly)."""


# ---------------------------------------------------------------------------- nerfacc's frame (pure, CPU)


def similarity_from_cameras(c2w: np.ndarray, strict_scaling: bool = False) -> tuple[np.ndarray, float]:
    """The similarity that nerfacc v0.5.3 normalises a mip-NeRF 360 scene with (``similarity_from_cameras`` in
    ``examples/datasets/nerf_360_v2.py``, from nerf-factory), restated.

    Args:
        c2w: ``[N, 3 or 4, 4]`` camera-to-world, OpenCV axes (x right, y down, z ahead).

    Returns:
        ``T`` ``[4, 4]`` (a rotation ``R`` and translation ``t``: ``x -> R x + t``) and ``scale``: nerfacc's world is
        ``scale * (R x + t)``. ``R`` turns the cameras' mean up (their ``-y``) onto ``-y``; ``t`` moves the median of
        the points where the optical axes pass closest to the origin to the origin; ``scale`` makes the median (max
        with ``strict_scaling``) camera distance 1.
    """
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    target = np.array([0.0, -1.0, 0.0])
    up = (rot @ target).mean(axis=0)  # each camera's -y in the world, averaged
    up /= np.linalg.norm(up)
    cos = float(up @ target)
    axis = np.cross(up, target)
    skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    if cos > -1:
        align = np.eye(3) + skew + skew @ skew / (1 + cos)  # Rodrigues: up onto target
    else:
        align = np.diag([-1.0, 1.0, 1.0])  # up is +y exactly (nerfacc's comment: turn 180 degrees about x)
    ahead = (align @ rot)[:, :, 2]
    pos = pos @ align.T
    nearest = pos + ((-pos * ahead).sum(-1, keepdims=True)) * ahead
    translate = -np.median(nearest, axis=0)
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = align, translate
    dist = np.linalg.norm(pos + translate, axis=-1)
    return transform, float(1.0 / (dist.max() if strict_scaling else np.median(dist)))


def nerfacc_poses(c2w_gl: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """ovseg3d's ``[N, 3, 4]`` OpenGL camera-to-world -> ``[N, 3, 4]`` float64 as nerfacc's mip-NeRF 360 loader
    holds them (``SubjectLoader.__init__``): COLMAP's OpenCV axes (its ``OPENGL_CAMERA = False``), ``T @ c2w``, the
    positions times ``scale``. Also returns ``T`` and ``scale`` (:func:`similarity_from_cameras`)."""
    c2w = c2w_gl.double().cpu().numpy().copy() if isinstance(c2w_gl, Tensor) else np.array(c2w_gl, np.float64)
    c2w[:, :3, 1:3] *= -1.0  # OpenGL (right, up, back) -> OpenCV (right, down, ahead)
    bottom = np.broadcast_to(np.array([[[0.0, 0.0, 0.0, 1.0]]]), (len(c2w), 1, 4))
    c2w = np.concatenate([c2w, bottom], axis=1)
    transform, scale = similarity_from_cameras(c2w, strict_scaling=False)
    out = (transform @ c2w)[:, :3]
    out[:, :, 3] *= scale
    return out, transform, scale


def camera_rays(
    c2w: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, image_id: Tensor, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres as nerfacc's ``SubjectLoader.fetch_data`` makes them (OpenCV camera).

    Args:
        c2w: ``[N, 3, 4]`` nerfacc-frame camera-to-world (:func:`nerfacc_poses`); fx, fy, cx, cy: ``[N]`` pixels.
        image_id, x, y: ``[R]`` long camera, column, row.

    Returns:
        origins ``[R, 3]`` and unit view directions ``[R, 3]``.
    """
    camera_dirs = F.pad(
        torch.stack([(x - cx[image_id] + 0.5) / fx[image_id], (y - cy[image_id] + 0.5) / fy[image_id]], dim=-1),
        (0, 1),
        value=1.0,
    )
    pose = c2w[image_id]
    directions = (camera_dirs[:, None, :] * pose[:, :3, :3]).sum(dim=-1)
    origins = torch.broadcast_to(pose[:, :3, -1], directions.shape)
    return origins, directions / torch.linalg.norm(directions, dim=-1, keepdim=True)


def check_split(train_ids: list[int], eval_ids: list[int], n_views: int) -> None:
    """Raise ``ValueError`` unless the split is nerfacc's: every 8th view (``i % 8 == 0``) held out, the rest
    trained on (its loader's ``split_indices``)."""
    held = [i for i in range(n_views) if i % 8 == 0]
    if list(eval_ids) != held or list(train_ids) != [i for i in range(n_views) if i % 8]:
        raise ValueError(
            f"the scene's split is not nerfacc's (every 8th view held out): eval_ids {list(eval_ids)[:5]}..."
            " (a 3D-OVS scene holds out its annotated views)"
        )


def lr_factor(step: int, progress: float) -> float:
    """The examples' ``ChainedScheduler([LinearLR(start_factor=0.01, total_iters=100), MultiStepLR(gamma=0.33)])``
    after ``step`` scheduler steps, with the milestones at fractions :data:`MILESTONES` of the budget."""
    warm = 0.01 + 0.99 * min(step, 100) / 100
    return warm * 0.33 ** sum(progress >= m for m in MILESTONES)


# ---------------------------------------------------------------------------- nerfacc's examples (CUDA)


def fail(message: str) -> NoReturn:
    sys.exit(f"nerfacc_reference: {message}")


def load_examples(device: str = "cuda") -> SimpleNamespace:
    """nerfacc's example modules from ``.nerfacc/`` (imported as its training scripts import them), or exit with
    one line when CUDA, nerfacc, tinycudann with its networks, or the exported sources are missing.

    ``examples/utils.py`` needs nothing optional (numpy, torch, nerfacc, ``datasets.utils``): nothing is stubbed.
    With ``device="cpu"`` tinycudann is :func:`install_torch_tcnn`'s stand-in.
    """
    if device == "cuda" and not torch.cuda.is_available():
        fail(
            "CUDA is not available: nerfacc's examples with tinycudann run on a GPU only (--device cpu: torch modules)"
        )
    if not (NERFACC_SRC / "examples" / "utils.py").is_file():
        fail(
            f"{NERFACC_SRC}/examples/utils.py not found: run `bash scripts/gpu_session.sh nerfacc-src` and carry .nerfacc"
        )
    if device == "cpu":
        install_torch_tcnn()
    try:
        import nerfacc
        import tinycudann
    except (ImportError, OSError) as exc:  # tinycudann raises EnvironmentError (OSError) without a usable build
        fail(f"{exc} (nerfacc {NERFACC_VERSION} and tinycudann are needed; see scripts/gpu_session.sh reference)")
    if nerfacc.__version__ != NERFACC_VERSION:
        fail(f"nerfacc {nerfacc.__version__} is installed; the examples in .nerfacc are v{NERFACC_VERSION}'s")
    if device == "cuda":
        if not tinycudann.modules._C.has_networks():
            fail(
                "tinycudann was built without its networks (--no-networks); nerfacc's NGP fields use FullyFusedMLP: "
                "TCNN_NETWORKS=1 bash scripts/gpu_session.sh tcnn-build"
            )
        from nerfacc.cuda._backend import _C  # builds nerfacc's CUDA ops on first use (minutes): before any clock

        if _C is None:
            fail("nerfacc's CUDA ops are not available (no nvcc?)")
    # as `python examples/train_ngp_nerf_*.py` from nerfacc's root: `examples.utils`, `radiance_fields`, `datasets`
    for path in (NERFACC_SRC / "examples", NERFACC_SRC):
        sys.path.insert(0, str(path))
    clash = sys.modules.get("datasets")
    if clash is not None and not str(getattr(clash, "__file__", "")).startswith(str(NERFACC_SRC)):
        fail(
            f"a module `datasets` ({getattr(clash, '__file__', '?')}) is already imported; nerfacc's would be shadowed"
        )
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\..*", category=FutureWarning)  # ngp.py's imports
    from datasets.utils import Rays
    from examples import utils
    from nerfacc.estimators.occ_grid import OccGridEstimator
    from nerfacc.estimators.prop_net import PropNetEstimator, get_proposal_requires_grad_fn
    from radiance_fields.ngp import NGPDensityField, NGPRadianceField

    for module in (utils, sys.modules["datasets.utils"], sys.modules["radiance_fields.ngp"]):
        if not str(module.__file__).startswith(str(NERFACC_SRC)):
            fail(f"{module.__name__} was imported from {module.__file__}, not from {NERFACC_SRC}")
    return SimpleNamespace(
        utils=utils,
        Rays=Rays,
        NGPRadianceField=NGPRadianceField,
        NGPDensityField=NGPDensityField,
        PropNetEstimator=PropNetEstimator,
        get_proposal_requires_grad_fn=get_proposal_requires_grad_fn,
        OccGridEstimator=OccGridEstimator,
    )


# ---------------------------------------------------------------------------- tinycudann on a CPU (torch)


class _TorchMLP(torch.nn.Module):
    """tinycudann's ``FullyFusedMLP`` / ``CutlassMLP`` config as torch layers: ``n_hidden_layers`` ReLU layers of
    ``n_neurons``, no biases (tinycudann's networks have none), no output activation."""

    def __init__(self, n_input_dims: int, n_output_dims: int, network_config: dict) -> None:
        super().__init__()
        if network_config.get("activation", "ReLU") != "ReLU" or network_config.get("output_activation") != "None":
            raise ValueError(f"the torch stand-in has ReLU layers and no output activation only: {network_config}")
        width, layers = network_config["n_neurons"], []
        dims = [n_input_dims] + [width] * network_config["n_hidden_layers"] + [n_output_dims]
        for i in range(len(dims) - 1):
            layers.append(torch.nn.Linear(dims[i], dims[i + 1], bias=False))
            if i < len(dims) - 2:
                layers.append(torch.nn.ReLU())
        self.net = torch.nn.Sequential(*layers)
        self.n_output_dims = n_output_dims

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())


class _TorchEncoding(torch.nn.Module):
    """tinycudann's ``HashGrid`` (ovseg3d's parameter-compatible torch grid) or ``SphericalHarmonics`` (inside a
    ``Composite``, as nerfacc's field nests it; inputs in ``[0, 1]``, as tinycudann takes directions)."""

    def __init__(self, n_input_dims: int, encoding_config: dict) -> None:
        super().__init__()
        from ovseg3d.field.hashgrid import HashGridConfig, TorchHashGrid

        config = encoding_config
        if config["otype"] == "Composite":
            (config,) = config["nested"]
        self.otype = config["otype"]
        if self.otype == "HashGrid":
            fields = ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution", "per_level_scale")
            self.grid = TorchHashGrid(HashGridConfig(**{k: config[k] for k in fields}))
            self.n_output_dims = self.grid.output_dim
        elif self.otype == "SphericalHarmonics":
            self.degree = config["degree"]
            self.n_output_dims = self.degree**2
        else:
            raise ValueError(f"the torch stand-in has no {self.otype} encoding")

    def forward(self, x: Tensor) -> Tensor:
        from ovseg3d.field.radiance import spherical_harmonics

        if self.otype == "HashGrid":
            return self.grid(x)
        return spherical_harmonics(x.float() * 2.0 - 1.0, self.degree)


class _TorchNetworkWithInputEncoding(torch.nn.Module):
    def __init__(self, n_input_dims: int, n_output_dims: int, encoding_config: dict, network_config: dict) -> None:
        super().__init__()
        self.encoding = _TorchEncoding(n_input_dims, encoding_config)
        self.network = _TorchMLP(self.encoding.n_output_dims, n_output_dims, network_config)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(self.encoding(x))


def _upper_bound(keys: Tensor, values: Tensor) -> Tensor:
    """nerfacc's CUDA ``upper_bound`` over each row's ``keys[:-1]``: the first index whose key is above the value."""
    return torch.searchsorted(keys[:, :-1].contiguous(), values.contiguous(), right=True)


def torch_searchsorted(sorted_sequence: object, values: object) -> tuple[Tensor, Tensor]:
    """``nerfacc.pdf.searchsorted`` for batched ``[R, K]`` keys and ``[R, M]`` values (its CUDA kernel restated)."""
    keys, vals = sorted_sequence.vals, values.vals  # type: ignore[attr-defined]
    if keys.dim() != 2 or vals.dim() != 2:
        raise NotImplementedError("the torch stand-in of nerfacc's searchsorted takes batched rays only")
    p = _upper_bound(keys, vals)
    last = keys.shape[-1] - 1
    return (p - 1).clamp(0, last), p.clamp(0, last)


def importance_sample_batched(t: Tensor, cdfs: Tensor, n: int, stratified: bool = False) -> tuple[Tensor, Tensor]:
    """nerfacc's CUDA ``importance_sampling`` for batched rays, restated in torch.

    Args:
        t: ``[R, B + 1]`` interval edges along each ray; cdfs: ``[R, B + 1]`` the CDF at those edges.
        n: samples a ray; stratified: one uniform jitter a ray (else the centres of the CDF's steps).

    Returns:
        ``[R, n + 1]`` edges and ``[R, n]`` samples: the samples at even steps of each ray's CDF, inverted linearly
        within the edge interval that holds them; the edges half-way between samples, the first and last half a gap
        out, clamped to the ray's range.
    """
    u_floor, u_ceil = cdfs[:, :1], cdfs[:, -1:]
    bias = torch.rand_like(u_floor) if stratified else torch.full_like(u_floor, 0.5)
    sid = torch.arange(n, device=t.device, dtype=t.dtype)
    u = u_floor + (sid + bias) * (u_ceil - u_floor) / n
    p = _upper_bound(cdfs, u)
    last = t.shape[-1] - 1
    p0, p1 = (p - 1).clamp(0, last), p.clamp(0, last)
    c0, c1 = cdfs.gather(1, p0), cdfs.gather(1, p1)
    t0, t1 = t.gather(1, p0), t.gather(1, p1)
    flat = (c1 - c0) < 1e-10
    samples = torch.where(flat, 0.5 * (t0 + t1), (u - c0) * (t1 - t0) / torch.where(flat, 1.0, c1 - c0) + t0)
    mids = 0.5 * (samples[:, 1:] + samples[:, :-1])
    first = torch.maximum(samples[:, :1] - 0.5 * (samples[:, 1:2] - samples[:, :1]), t[:, :1])
    end = torch.minimum(samples[:, -1:] + 0.5 * (samples[:, -1:] - samples[:, -2:-1]), t[:, -1:])
    return torch.cat([first, mids, end], dim=-1), samples


def torch_importance_sampling(intervals: object, cdfs: Tensor, n: int, stratified: bool = False) -> tuple:
    """``nerfacc.pdf.importance_sampling`` for batched rays and an int ``n``: :func:`importance_sample_batched`
    with nerfacc's ``RayIntervals`` / ``RaySamples`` around it."""
    from nerfacc.data_specs import RayIntervals, RaySamples

    t = intervals.vals  # type: ignore[attr-defined]
    if t.dim() != 2 or not isinstance(n, int):
        raise NotImplementedError("the torch stand-in of nerfacc's importance_sampling takes batched rays only")
    edges, samples = importance_sample_batched(t, cdfs, n, stratified)
    return RayIntervals(vals=edges), RaySamples(vals=samples)


def install_torch_tcnn() -> None:
    """Put a module ``tinycudann`` in ``sys.modules`` whose ``Encoding``, ``Network`` and
    ``NetworkWithInputEncoding`` are torch modules (ovseg3d's hash grid, float32 MLPs), so that nerfacc's
    example fields build on a CPU. Not tinycudann: fp32 instead of its fp16 MLPs, torch's initialisation. Also puts
    torch restatements of nerfacc's CUDA ``importance_sampling`` and ``searchsorted`` in their place."""
    module = ModuleType("tinycudann")
    module.Encoding = _TorchEncoding  # type: ignore[attr-defined]
    module.Network = _TorchMLP  # type: ignore[attr-defined]
    module.NetworkWithInputEncoding = _TorchNetworkWithInputEncoding  # type: ignore[attr-defined]
    module.__torch_stand_in__ = True  # type: ignore[attr-defined]
    sys.modules["tinycudann"] = module
    # the two nerfacc ops on the proposal path that have no torch branch (the rest of it is torch on batched rays)
    import nerfacc.estimators.prop_net as prop_net
    import nerfacc.pdf as pdf

    for mod in (pdf, prop_net):
        mod.importance_sampling = torch_importance_sampling  # type: ignore[attr-defined]
        mod.searchsorted = torch_searchsorted  # type: ignore[attr-defined]


@dataclass
class Views:
    """The scene on the GPU in nerfacc's frame: all images and cameras, indexed by view."""

    images: Tensor  # [N, H, W, 3] uint8
    c2w: Tensor  # [N, 3, 4] float32, nerfacc's frame
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    train_ids: Tensor  # [T] long
    eval_ids: list[int]
    train_views: list[int]  # 3 training views scored beside the held-out ones


def load_views(root: Path, device: torch.device, max_long_side: int = 0, eval_every: int = 1) -> Views:
    from ovseg3d.data.loader import load_scene

    try:
        scene = load_scene(root, downscale=0 if max_long_side else 1, holdout_every=8, max_long_side=max_long_side)
        if scene.cameras.lens is not None:
            raise ValueError("its cameras have a lens model; nerfacc's loader takes pinhole cameras only")
        check_split(scene.train_ids, scene.eval_ids, len(scene.images))
    except (ValueError, OSError) as exc:  # ovseg3d's SceneError / UsageError are ValueErrors
        fail(f"{root}: {exc}")
    if scene.masks:
        print(f"note: {len(scene.masks)} views have masks; nerfacc's loader has none, every pixel is used")
    c2w, _, _ = nerfacc_poses(scene.cameras.c2w)
    cams = scene.cameras
    return Views(
        images=scene.images.to(device),
        c2w=torch.as_tensor(c2w, dtype=torch.float32, device=device),
        fx=cams.fx.to(device),
        fy=cams.fy.to(device),
        cx=cams.cx.to(device),
        cy=cams.cy.to(device),
        train_ids=torch.as_tensor(scene.train_ids, device=device),
        eval_ids=list(scene.eval_ids)[::eval_every],
        train_views=training_views(scene.train_ids, 3),
    )


def train_batch(views: Views, num_rays: int, rays_type: type) -> tuple[object, Tensor, Tensor]:
    """``fetch_data`` + ``preprocess`` of the training split: ``num_rays`` random pixels over all training images
    (``batch_over_images``) and one random background colour (``color_bkgd_aug="random"``)."""
    device = views.images.device
    height, width = views.images.shape[1:3]
    image_id = views.train_ids[torch.randint(0, len(views.train_ids), size=(num_rays,), device=device)]
    x = torch.randint(0, width, size=(num_rays,), device=device)
    y = torch.randint(0, height, size=(num_rays,), device=device)
    pixels = views.images[image_id, y, x] / 255.0
    origins, viewdirs = camera_rays(views.c2w, views.fx, views.fy, views.cx, views.cy, image_id, x, y)
    return rays_type(origins=origins, viewdirs=viewdirs), pixels, torch.rand(3, device=device)


def image_batch(views: Views, view: int, rays_type: type) -> tuple[object, Tensor]:
    """All rays of one view, ``[H, W]``, and its ``[H, W, 3]`` colours, as the test split's ``fetch_data``."""
    device = views.images.device
    height, width = views.images.shape[1:3]
    x, y = torch.meshgrid(torch.arange(width, device=device), torch.arange(height, device=device), indexing="xy")
    x, y = x.flatten(), y.flatten()
    ids = torch.full_like(x, view)
    origins, viewdirs = camera_rays(views.c2w, views.fx, views.fy, views.cx, views.cy, ids, x, y)
    rays = rays_type(origins=origins.reshape(height, width, 3), viewdirs=viewdirs.reshape(height, width, 3))
    return rays, views.images[view].float() / 255.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA), or the process's peak resident memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Progress:
    """Fraction of the budget spent, read by the learning-rate lambdas (updated at each clock read)."""

    fraction = 0.0


def time_scheduler(optimizer: torch.optim.Optimizer, progress: Progress) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, progress.fraction))


class PropMethod:
    """``train_ngp_nerf_prop.py``, its MIPNERF360_UNBOUNDED_SCENES settings."""

    num_rays = 4096  # init_batch_size (fixed)
    render = dict(
        num_samples=48,
        num_samples_per_prop=[256, 96],
        near_plane=0.2,
        far_plane=1e3,
        sampling_type="lindisp",
        opaque_bkgd=True,
    )
    test_chunk_size = 8192

    def __init__(self, ex: SimpleNamespace, progress: Progress, device: torch.device) -> None:
        self.ex = ex
        aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], device=device)
        self.proposal_networks = [
            ex.NGPDensityField(aabb=aabb, unbounded=True, n_levels=5, max_resolution=res).to(device)
            for res in (128, 256)
        ]
        params = [p for net in self.proposal_networks for p in net.parameters()]
        prop_optimizer = torch.optim.Adam(params, lr=1e-2, eps=1e-15, weight_decay=0.0)
        self.estimator = ex.PropNetEstimator(prop_optimizer, time_scheduler(prop_optimizer, progress)).to(device)
        self.grad_scaler = torch.amp.GradScaler(
            device.type, 2**10
        )  # = torch.cuda.amp.GradScaler(2**10), not deprecated
        self.radiance_field = ex.NGPRadianceField(aabb=aabb, unbounded=True).to(device)
        self.optimizer = torch.optim.Adam(self.radiance_field.parameters(), lr=1e-2, eps=1e-15, weight_decay=0.0)
        self.scheduler = time_scheduler(self.optimizer, progress)
        self.proposal_requires_grad_fn = ex.get_proposal_requires_grad_fn()

    def modules(self) -> list[torch.nn.Module]:
        return [self.radiance_field, *self.proposal_networks, self.estimator]

    def train_step(self, step: int, rays: object, pixels: Tensor, render_bkgd: Tensor) -> Tensor:
        proposal_requires_grad = self.proposal_requires_grad_fn(step)
        rgb, _, _, extras = self.ex.utils.render_image_with_propnet(
            self.radiance_field,
            self.proposal_networks,
            self.estimator,
            rays,
            **self.render,
            render_bkgd=render_bkgd,
            proposal_requires_grad=proposal_requires_grad,
        )
        self.estimator.update_every_n_steps(extras["trans"], proposal_requires_grad, loss_scaler=1024)
        loss = F.smooth_l1_loss(rgb, pixels)
        self.optimizer.zero_grad()
        self.grad_scaler.scale(loss).backward()  # not unscaled: Adam (the example's comment)
        self.optimizer.step()
        self.scheduler.step()
        return loss

    @torch.no_grad()
    def render_image(self, rays: object, render_bkgd: Tensor) -> Tensor:
        rgb, _, _, _ = self.ex.utils.render_image_with_propnet(
            self.radiance_field,
            self.proposal_networks,
            self.estimator,
            rays,
            **self.render,
            render_bkgd=render_bkgd,
            test_chunk_size=self.test_chunk_size,
        )
        return rgb


class OccMethod:
    """``train_ngp_nerf_occ.py``, its MIPNERF360_UNBOUNDED_SCENES settings."""

    target_sample_batch_size = 1 << 18
    render = dict(near_plane=0.2, render_step_size=1e-3, cone_angle=0.004, alpha_thre=1e-2)
    test_max_samples = 1024

    def __init__(self, ex: SimpleNamespace, progress: Progress, device: torch.device) -> None:
        self.ex = ex
        self.num_rays = 1024  # init_batch_size; then sized to keep target_sample_batch_size samples a step
        aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], device=device)
        self.estimator = ex.OccGridEstimator(roi_aabb=aabb, resolution=128, levels=4).to(device)
        self.grad_scaler = torch.amp.GradScaler(device.type, 2**10)
        self.radiance_field = ex.NGPRadianceField(aabb=self.estimator.aabbs[-1]).to(device)
        self.optimizer = torch.optim.Adam(self.radiance_field.parameters(), lr=1e-2, eps=1e-15, weight_decay=0.0)
        self.scheduler = time_scheduler(self.optimizer, progress)

    def modules(self) -> list[torch.nn.Module]:
        return [self.radiance_field, self.estimator]

    def train_step(self, step: int, rays: object, pixels: Tensor, render_bkgd: Tensor) -> Tensor | None:
        step_size = self.render["render_step_size"]
        self.estimator.update_every_n_steps(
            step=step, occ_eval_fn=lambda x: self.radiance_field.query_density(x) * step_size, occ_thre=1e-2
        )
        rgb, _, _, n_rendering_samples = self.ex.utils.render_image_with_occgrid(
            self.radiance_field, self.estimator, rays, **self.render, render_bkgd=render_bkgd
        )
        if n_rendering_samples == 0:
            return None  # the example's `continue`
        self.num_rays = int(len(pixels) * (self.target_sample_batch_size / float(n_rendering_samples)))
        loss = F.smooth_l1_loss(rgb, pixels)
        self.optimizer.zero_grad()
        self.grad_scaler.scale(loss).backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss

    @torch.no_grad()
    def render_image(self, rays: object, render_bkgd: Tensor) -> Tensor:
        rgb, _, _, _ = self.ex.utils.render_image_with_occgrid_test(
            self.test_max_samples, self.radiance_field, self.estimator, rays, **self.render, render_bkgd=render_bkgd
        )
        return rgb


METHODS: dict[str, Callable[..., PropMethod | OccMethod]] = {"prop": PropMethod, "occ": OccMethod}


def train(
    ex: SimpleNamespace, method: str, views: Views, seconds: float, max_steps: int = 0
) -> tuple[PropMethod | OccMethod, dict]:
    """A fresh model of ``method`` trained for ``seconds`` of wall clock (or ``max_steps`` steps when > 0, untimed
    warm-up). Returns the model and the training numbers."""
    device = views.images.device
    progress = Progress()
    model = METHODS[method](ex, progress, device)
    for module in model.modules():
        module.train()
    step, elapsed, loss = 0, 0.0, None
    synchronize(device)
    start = time.perf_counter()
    while True:
        rays, pixels, render_bkgd = train_batch(views, model.num_rays, ex.Rays)
        loss = model.train_step(step, rays, pixels, render_bkgd)
        step += 1
        if max_steps:
            progress.fraction = step / max_steps
            if device.type == "cpu" and step % 100 == 0:
                print(f"  step {step}/{max_steps}, {time.perf_counter() - start:.0f} s, loss {loss}", flush=True)
            if step >= max_steps:
                break
        elif step % CHECK_EVERY == 0:
            synchronize(device)
            elapsed = time.perf_counter() - start
            progress.fraction = elapsed / seconds
            if elapsed >= seconds:
                break
    synchronize(device)
    elapsed = time.perf_counter() - start
    return model, {
        "steps": step,
        "train_seconds": elapsed,
        "steps_per_s": step / elapsed,
        "last_loss": None if loss is None else loss.item(),
        "last_num_rays": model.num_rays,
        "peak_train_gib": peak_gib(device),
    }


def psnr_of(rgb: Tensor, pixels: Tensor) -> float:
    """The examples' PSNR: ``-10 log10(mse)``."""
    return float(-10.0 * torch.log(F.mse_loss(rgb, pixels)) / np.log(10.0))


def evaluate(model: PropMethod | OccMethod, views: Views, rays_type: type, save: Path | None) -> dict:
    """The held-out views (PSNR, SSIM) and :attr:`Views.train_views` (PSNR), white background, eval mode."""
    for module in model.modules():
        module.eval()
    white = torch.tensor(WHITE, device=views.images.device)
    start = time.perf_counter()
    held, train_psnr = [], []
    for view in [*views.eval_ids, *views.train_views]:
        rays, pixels = image_batch(views, view, rays_type)
        rgb = model.render_image(rays, white)
        if view in views.eval_ids:
            held.append((psnr_of(rgb, pixels), ssim(rgb.float().cpu(), pixels.float().cpu())))
        else:
            train_psnr.append(psnr_of(rgb, pixels))
        if save is not None and view == views.eval_ids[0]:
            save.parent.mkdir(parents=True, exist_ok=True)
            imageio.imwrite(save, (rgb.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
    return {
        "psnr": sum(p for p, _ in held) / len(held),
        "ssim": sum(s for _, s in held) / len(held),
        "train_view_psnr": sum(train_psnr) / len(train_psnr),
        "per_view_psnr": {v: p for v, (p, _) in zip(views.eval_ids, held)},
        "eval_seconds": time.perf_counter() - start,
        "peak_gib": peak_gib(views.images.device),  # training and evaluation
    }


def print_table(runs: list[dict]) -> None:
    print(
        f"{'method':<7} {'budget s':>8} {'steps':>7} {'steps/s':>8} {'PSNR':>7} {'SSIM':>7} {'train PSNR':>10} {'peak GiB':>9}"
    )
    for r in runs:
        print(
            f"{r['method']:<7} {r['seconds']:>8g} {r['steps']:>7} {r['steps_per_s']:>8.1f} {r['psnr']:>7.2f} "
            f"{r['ssim']:>7.4f} {r['train_view_psnr']:>10.2f} {r['peak_train_gib']:>9.2f}"
        )


def main() -> None:
    args = tyro.cli(Args, description=__doc__)
    if not args.marks or any(not math.isfinite(s) or s <= 0 for s in args.marks):
        fail(f"--marks must be positive seconds, got {args.marks}")
    if not args.method:
        fail("--method needs prop and/or occ")
    try:
        check_writable(args.out.absolute().parent, "--out's folder")
    except UsageError as exc:
        fail(str(exc))
    if args.device == "cpu" and "occ" in args.method:
        fail("--device cpu runs the prop example only (the occ example's grid needs nerfacc's CUDA ops)")
    if args.steps < 0 or args.eval_every < 1:
        fail(f"--steps must be >= 0 and --eval-every >= 1, got {args.steps} and {args.eval_every}")
    ex = load_examples(args.device)
    import nerfacc

    device = torch.device(args.device)
    views = load_views(args.scene, device, args.max_long_side, args.eval_every)
    height, width = views.images.shape[1:3]
    print(f"{args.scene}: {len(views.train_ids)} training, {len(views.eval_ids)} held-out views, {width}x{height}")
    report = {
        "machine": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads",
        "tinycudann": "torch stand-in (ovseg3d's hash grid, fp32 MLPs)" if device.type == "cpu" else "tinycudann",
        "torch": torch.__version__,
        "nerfacc": nerfacc.__version__,
        "nerfacc_examples": (NERFACC_SRC / "COMMIT").read_text().strip()
        if (NERFACC_SRC / "COMMIT").is_file()
        else None,
        "scene": str(args.scene.resolve()),
        "size": [width, height],
        "views": {"train": len(views.train_ids), "eval": len(views.eval_ids), "train_scored": views.train_views},
        "eval_every": args.eval_every,
        "images_gib": views.images.numel() / 2**30,
        "seed": args.seed,
        "runs": [],
    }
    if device.type == "cuda" and not args.steps:
        for method in args.method:  # untimed: first launches, allocator, nerfacc's / tinycudann's lazy set-up
            ex.utils.set_random_seed(args.seed)
            train(ex, method, views, seconds=0.0, max_steps=WARMUP_STEPS)
    budgets = [0.0] if args.steps else args.marks
    for method in args.method:
        for seconds in budgets:
            ex.utils.set_random_seed(args.seed)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model, stats = train(ex, method, views, seconds, max_steps=args.steps)
            label = f"{args.steps}steps" if args.steps else f"{seconds:g}s"
            save = None if args.save_render is None else args.save_render / f"nerfacc_{method}_{label}.png"
            row = {"method": method, "seconds": stats["train_seconds"] if args.steps else seconds, **stats}
            row.update(evaluate(model, views, ex.Rays, save))
            print(
                f"{method} {label}: {row['steps']} steps, PSNR {row['psnr']:.2f} SSIM {row['ssim']:.4f} "
                f"(training views {row['train_view_psnr']:.2f}), eval {row['eval_seconds']:.1f} s",
                flush=True,
            )
            report["runs"].append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.out, report)  # after each run: a call stopped at its limit keeps what was done
            del model
    print_table(report["runs"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
