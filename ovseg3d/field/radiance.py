"""The radiance field: hash grid -> density MLP (+ geometry features) -> colour MLP with SH directions."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ovseg3d.field.hashgrid import HashGridConfig, make_hash_grid
from ovseg3d.field.space import check_contraction, to_unit_scaled


class _TruncExp(torch.autograd.Function):
    """``exp`` whose gradient is computed with the input clamped at 15 (Instant-NGP's density activation)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


CPU_CHUNK = 1 << 17
"""Without gradients on a CPU, points go through the hash grid at most this many at a time: an export's batch of
8,192 rays holds about 600k samples, and such a batch ran about 0.6x as many points a second as batches of 2^16
to 2^18 on 2 CPU cores (the corners' gathers no longer stay in the caches)."""


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


# The real SH basis up to degree 4 (Instant-NGP's and tiny-cuda-nn's signs and order) as polynomials in the
# direction's components: for each basis function, {monomial: coefficient}, a monomial written as its letters
_SH_POLYNOMIALS: tuple[dict[str, float], ...] = (
    {"1": 0.28209479177387814},
    {"y": -0.48860251190291987},
    {"z": 0.48860251190291987},
    {"x": -0.48860251190291987},
    {"xy": 1.0925484305920792},
    {"yz": -1.0925484305920792},
    {"zz": 0.94617469575755997, "1": -0.31539156525251999},
    {"xz": -1.0925484305920792},
    {"xx": 0.54627421529603959, "yy": -0.54627421529603959},
    {"xxy": -3.0 * 0.59004358992664352, "yyy": 0.59004358992664352},
    {"xyz": 2.8906114426405538},
    {"y": 0.45704579946446572, "yzz": -5.0 * 0.45704579946446572},
    {"zzz": 5.0 * 0.3731763325901154, "z": -3.0 * 0.3731763325901154},
    {"x": 0.45704579946446572, "xzz": -5.0 * 0.45704579946446572},
    {"xxz": 1.4453057213202769, "yyz": -1.4453057213202769},
    {"xxx": -0.59004358992664352, "xyy": 3.0 * 0.59004358992664352},
)
# the monomials, built as: the squares and products from pairs of components, the cubes from a square times one
_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2))  # xx yy zz xy yz xz
_CUBES = ((0, 1), (1, 1), (3, 2), (2, 1), (2, 2), (2, 0), (0, 2), (1, 2), (0, 0), (1, 0))  # (pair, component)
_MONOMIALS = ("1", "x", "y", "z", "xx", "yy", "zz", "xy", "yz", "xz") + tuple(
    "".join(sorted("xyz"[_PAIRS[p][0]] + "xyz"[_PAIRS[p][1]] + "xyz"[c])) for p, c in _CUBES
)
_SH_CONSTANTS: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = {}


def _sh_constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The gathers' indices (on ``device``, so that no step copies them there) and the ``[20, 16]`` matrix of the
    basis functions' coefficients over :data:`_MONOMIALS`."""
    key = (device, dtype)
    if key not in _SH_CONSTANTS:
        m = torch.zeros(len(_MONOMIALS), len(_SH_POLYNOMIALS), dtype=torch.float64)
        for j, poly in enumerate(_SH_POLYNOMIALS):
            for mono, coef in poly.items():
                m[_MONOMIALS.index(mono), j] += coef
        indices = [[a for a, _ in _PAIRS], [b for _, b in _PAIRS], [p for p, _ in _CUBES], [c for _, c in _CUBES]]
        _SH_CONSTANTS[key] = (*(torch.tensor(i, device=device) for i in indices), m.to(device, dtype))
    return _SH_CONSTANTS[key]


def spherical_harmonics(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis of unit directions, ``[N, 3]`` -> ``[N, degree^2]`` (degree 1..4).

    The monomials up to degree 3 times a constant matrix: a handful of kernels whatever the degree, where the
    basis written out term by term launched about 45 (a GPU's training step is counted in kernel launches)."""
    pair_a, pair_b, cube_p, cube_c, matrix = _sh_constants(dirs.device, dirs.dtype)
    pairs = dirs.index_select(1, pair_a) * dirs.index_select(1, pair_b)  # [N, 6]
    cubes = pairs.index_select(1, cube_p) * dirs.index_select(1, cube_c)  # [N, 10]
    mono = torch.cat([torch.ones_like(dirs[:, :1]), dirs, pairs, cubes], -1)  # [N, 20]
    return mono @ matrix[:, : degree * degree]


@dataclass(frozen=True)
class FieldConfig:
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    hidden_dim: int = 64
    geo_feat_dim: int = 15
    color_hidden_dim: int = 64
    sh_degree: int = 4
    appearance_dim: int = 0  # per-image appearance code fed to the colour MLP (0 = none)
    n_images: int = 0  # training images with a code
    background: bool = False  # a learned colour at infinity per view direction (the sky of unbounded scenes)


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RadianceField(nn.Module):
    """Density and colour at world points inside ``aabb`` (outside it the density is zero), or everywhere with
    a ``contraction`` of the world beyond the box (:mod:`ovseg3d.field.space`).

    ``grid_impl``: ``"auto" | "torch" | "tcnn"`` (see :func:`make_hash_grid`); the state dict is the
    same for both, so a GPU-trained field loads on a CPU.
    """

    def __init__(
        self,
        aabb: Tensor,
        cfg: FieldConfig,
        device: torch.device | str = "cpu",
        grid_impl: str = "auto",
        compile_grid: bool = False,
        contraction: str = "none",
    ):
        super().__init__()
        self.cfg = cfg
        self.contraction = check_contraction(contraction)
        self.register_buffer("aabb", aabb.float().clone())
        self.grid = make_hash_grid(cfg.grid, device, grid_impl, compile_grid)
        self.density_mlp = _mlp([cfg.grid.output_dim, cfg.hidden_dim, 1 + cfg.geo_feat_dim])
        sh_dim = cfg.sh_degree**2
        self.color_mlp = _mlp(
            [cfg.geo_feat_dim + sh_dim + cfg.appearance_dim, cfg.color_hidden_dim, cfg.color_hidden_dim, 3]
        )
        if cfg.appearance_dim > 0:
            self.appearance = nn.Embedding(max(1, cfg.n_images), cfg.appearance_dim)
            nn.init.zeros_(self.appearance.weight)
        if cfg.background:
            self.background_mlp = _mlp([16, cfg.color_hidden_dim, 3])  # degree-4 SH of the direction
        self.to(device)

    def background_color(self, dirs: Tensor) -> Tensor | None:
        """``[R, 3]`` colour seen at infinity along unit directions ``[R, 3]`` (what a ray's leftover transmittance
        shows), or ``None`` without a learned background."""
        if not self.cfg.background:
            return None
        return torch.sigmoid(self.background_mlp(spherical_harmonics(dirs, 4)))

    def appearance_codes(self, images: Tensor | None, n: int) -> Tensor | None:
        """``[n, A]`` appearance codes of training images ``images`` ``[n]``, or their mean for views without one
        (held-out views: nerfacto's average appearance); ``None`` without appearance codes."""
        if self.cfg.appearance_dim == 0:
            return None
        if images is None:
            return self.appearance.weight.mean(0, keepdim=True).expand(n, -1)
        return self.appearance(images)

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[P, 3]`` world points -> density ``[P]`` (zero outside the box without a contraction) and geometry
        features ``[P, G]``.

        With a contraction the network's density is per unit of contracted length: the world density is it over
        :func:`~ovseg3d.field.space.step_scale` (``|xn|^2`` beyond the ROI), so a marching step has the same
        opacity for the same output everywhere, and the far shell starts as transparent as the ROI instead of a
        wall of fog one long far interval thick."""
        if len(x) > CPU_CHUNK and x.device.type == "cpu" and not torch.is_grad_enabled():
            parts = [self._features(x[s : s + CPU_CHUNK]) for s in range(0, len(x), CPU_CHUNK)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        xn, inside, scale = to_unit_scaled(x, self.aabb, self.contraction)
        h = self.density_mlp(self.grid(xn).float())
        sigma = trunc_exp(h[:, 0])
        sigma = sigma * inside if scale is None else sigma / scale
        return sigma, h[:, 1:]

    def density(self, x: Tensor) -> Tensor:
        """``[P, 3]`` -> ``[P]`` volume density."""
        return self._features(x)[0]

    def forward(self, x: Tensor, dirs: Tensor, appearance: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``[P, 3]`` points and unit directions (and ``[P, A]`` appearance codes, default: the mean code) ->
        density ``[P]`` and colour ``[P, 3]`` in [0, 1]."""
        sigma, geo = self._features(x)
        return sigma, self.color(geo, dirs, appearance)

    def density_and_geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[P, 3]`` world points -> density ``[P]`` and the geometry features ``[P, G]`` that :meth:`color`
        reads (one hash-grid pass for both)."""
        return self._features(x)

    def color(self, geo: Tensor, dirs: Tensor, appearance: Tensor | None = None) -> Tensor:
        """``[P, G]`` geometry features, ``[P, 3]`` unit directions (``[P, A]`` codes) -> ``[P, 3]`` colour."""
        sh = spherical_harmonics(dirs, self.cfg.sh_degree)
        parts = [geo, sh]
        if self.cfg.appearance_dim > 0:
            parts.append(appearance if appearance is not None else self.appearance_codes(None, len(geo)))
        return torch.sigmoid(self.color_mlp(torch.cat(parts, dim=-1)))
