"""Multi-resolution hash encoding with tiny-cuda-nn's indexing and parameter layout (REFERENCE.md §7).

The parameters are one flat vector ``params`` laid out exactly as tiny-cuda-nn's ``HashGrid``
(levels one after another, ``F`` features per entry, element ``(offset_l + index) * F + f``), so
a field trained with tinycudann on a GPU loads and renders here on a CPU, and the other way round.

Per level ``l``::

    scale_l = 2 ** (l * log2(per_level_scale)) * base_resolution - 1
    res_l   = ceil(scale_l) + 1
    size_l  = min(next_multiple_of_8(res_l ** 3), 2 ** log2_hashmap_size)
    pos     = scale_l * x + 0.5            (x in [0, 1]^3)
    index   = dense  x + y*res + z*res^2   if res_l ** 3 <= size_l
              else   (x*1) ^ (y*2654435761) ^ (z*805459861)  in uint32
              then % size_l

The torch path is written for CPU speed: the forward is one ``embedding_bag`` over all levels and
corners, and the backward scatters into the flat gradient with 1-D ``scatter_add_`` split across
threads by level (REFERENCE.md §7, "CPU speed facts"). On a GPU, where a step costs about as many
microseconds as it launches kernels, the same arithmetic runs broadcast over levels and corners
(:func:`corner_indices_and_weights_batched`) and the backward is one scatter over all levels: about
40 kernels a grid and step instead of some 200.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovseg3d.errors import UsageError

PRIMES = (1, 2654435761, 805459861)
_UINT32 = 0xFFFFFFFF
# points encoded at a time without gradients on a CPU: 32k points' corner tables (about 4 MB) stay in cache,
# which makes a 540k-point evaluation chunk about twice as fast as encoding it whole
NO_GRAD_CHUNK = 32768
# backward on a GPU: levels scattered together while their [N, L, 8, F] contributions stay under this many elements
SCATTER_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class HashGridConfig:
    """tiny-cuda-nn ``HashGrid`` hyper-parameters (same names as its JSON config)."""

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0

    def tcnn_config(self) -> dict:
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
        }

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features_per_level


@dataclass(frozen=True)
class LevelLayout:
    """Per-level constants of a hash grid, as plain Python lists."""

    scales: list[float]
    resolutions: list[int]
    sizes: list[int]  # table entries per level
    offsets: list[int]  # first entry of each level in the flat table
    dense: list[bool]

    @property
    def n_entries(self) -> int:
        return self.offsets[-1] + self.sizes[-1]


def level_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """``2 ** (level * log2(per_level_scale)) * base_resolution - 1`` in float32 arithmetic, as
    tiny-cuda-nn computes it: in float64 a scale such as ``1.5 ** 2 * 16 - 1 = 35`` is an exact
    integer, in float32 it is ``35.000004``, whose ``ceil`` gives tiny-cuda-nn's one-larger level."""
    f32 = np.float32
    log2_scale = np.log2(f32(per_level_scale))
    return float(np.exp2(f32(level) * log2_scale) * f32(base_resolution) - f32(1.0))


def level_layout(cfg: HashGridConfig, dims: int = 3) -> LevelLayout:
    """The tiny-cuda-nn layout of ``cfg``: scale, resolution, table size and offset of each level."""
    scales, resolutions, sizes, offsets, dense = [], [], [], [], []
    offset = 0
    max_size = 2**cfg.log2_hashmap_size
    for level in range(cfg.n_levels):
        scale = level_scale(level, cfg.per_level_scale, cfg.base_resolution)
        res = int(math.ceil(scale)) + 1
        full = res**dims
        size = min((full + 7) // 8 * 8, max_size)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(size)
        offsets.append(offset)
        dense.append(full <= size)
        offset += size
    return LevelLayout(scales, resolutions, sizes, offsets, dense)


def grid_index(cells: Tensor, res: int, size: int, dense: bool) -> Tensor:
    """Table index of integer grid vertices at one level, as tiny-cuda-nn computes it.

    Args:
        cells: ``[..., 3]`` int64 vertex coordinates (non-negative).
    Returns:
        ``[...]`` int64 index in ``[0, size)``.
    """
    if dense:
        idx = cells[..., 0] + cells[..., 1] * res + cells[..., 2] * (res * res)
    else:
        idx = (cells[..., 0] * PRIMES[0]) & _UINT32
        idx = idx ^ ((cells[..., 1] * PRIMES[1]) & _UINT32)
        idx = idx ^ ((cells[..., 2] * PRIMES[2]) & _UINT32)
    return idx % size


def _as_int32(value: int) -> int:
    """The int32 with the same bits as the uint32 ``value`` (products wrap identically)."""
    return value - (1 << 32) if value >= (1 << 31) else value


class _Buffers:
    """Per-level constants as tensors on one device, built once per (layout, device).

    Dense levels form a prefix of the levels (resolution grows with the level); hashed levels all
    have ``2 ** log2_hashmap_size`` entries, so their ``% size`` is a bit mask, which lets the whole
    index computation run in int32 (uint32 products keep their low 32 bits under int32 wrap-around).
    """

    def __init__(self, layout: LevelLayout, device: torch.device):
        n_dense = sum(layout.dense)
        self.n_dense = n_dense
        self.scales = torch.tensor(layout.scales, dtype=torch.float32, device=device)  # [L]
        res = torch.tensor(layout.resolutions[:n_dense], dtype=torch.int32, device=device)
        self.dense_strides = torch.stack([torch.ones_like(res), res, res * res], dim=-1)  # [Ld, 3]
        self.dense_sizes = torch.tensor(layout.sizes[:n_dense], dtype=torch.int32, device=device)
        self.hash_mask = (layout.sizes[-1] - 1) if n_dense < len(layout.sizes) else 0
        self.primes = [_as_int32(p) for p in PRIMES]
        self.offsets = torch.tensor(layout.offsets, dtype=torch.int32, device=device)
        # the batched path's constants: corner c = 4*bx + 2*by + bz, and the primes as an int32 vector
        self.corner_bits = torch.tensor(
            [[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=torch.int32, device=device
        )  # [8, 3]
        self.prime_vec = torch.tensor(self.primes, dtype=torch.int32, device=device)  # [3]


def corner_indices_and_weights(x: Tensor, layout: LevelLayout, buf: _Buffers) -> tuple[Tensor, Tensor]:
    """Flat-table rows and trilinear weights of the 8 corners of every point at every level.

    Corner ``c`` = ``4*bx + 2*by + bz`` (``b`` = 1: upper neighbour in that dimension).

    Written for eager CPU speed: every operation runs on whole ``[N, L]`` planes (one per axis and
    corner) instead of broadcasting over tiny trailing axes, which makes it about as fast as the same
    arithmetic through ``torch.compile``, without the compilation.

    Args:
        x: ``[N, 3]`` float32 positions in ``[0, 1]``.
    Returns:
        rows ``[N, L, 8]`` int32 (``offset_l + index``), weights ``[N, L, 8]`` float32.
    """
    pos = x.t()[:, :, None] * buf.scales + 0.5  # [3, N, L]
    cell = pos.floor()
    upper = pos - cell  # weight of the upper neighbour, per axis
    lower = 1.0 - upper
    lo = cell.int()
    n, n_levels = pos.shape[1], pos.shape[2]
    # each corner is written into its slice of the output: twice as fast as stacking 8 planes
    weights = torch.empty(n, n_levels, 8, dtype=pos.dtype, device=pos.device)
    rows = torch.empty(n, n_levels, 8, dtype=torch.int32, device=pos.device)
    wxy = [lower[0] * lower[1], lower[0] * upper[1], upper[0] * lower[1], upper[0] * upper[1]]
    for c in range(8):
        torch.mul(wxy[c >> 1], upper[2] if c & 1 else lower[2], out=weights[..., c])
    nd = buf.n_dense
    if nd > 0:
        d = lo[:, :, :nd]
        stride_y, stride_z = buf.dense_strides[:, 1], buf.dense_strides[:, 2]
        x_, y_, z_ = d[0], d[1] * stride_y, d[2] * stride_z
        xy = [x_ + y_, x_ + (y_ + stride_y), (x_ + 1) + y_, (x_ + 1) + (y_ + stride_y)]
        for c in range(8):
            corner = (xy[c >> 1] + (z_ + stride_z if c & 1 else z_)) % buf.dense_sizes
            torch.add(corner, buf.offsets[:nd], out=rows[:, :nd, c])
    if nd < n_levels:
        h = lo[:, :, nd:]
        p = buf.primes  # (v + 1) * p == v * p + p under int32 wrap-around, as in uint32
        hx, hy, hz = h[0] * p[0], h[1] * p[1], h[2] * p[2]
        xy = [hx ^ hy, hx ^ (hy + p[1]), (hx + p[0]) ^ hy, (hx + p[0]) ^ (hy + p[1])]
        for c in range(8):
            corner = (xy[c >> 1] ^ (hz + p[2] if c & 1 else hz)) & buf.hash_mask
            torch.add(corner, buf.offsets[nd:], out=rows[:, nd:, c])
    return rows, weights


def corner_indices_and_weights_batched(x: Tensor, layout: LevelLayout, buf: _Buffers) -> tuple[Tensor, Tensor]:
    """:func:`corner_indices_and_weights` broadcast over levels and corners: the same rows and the same weights
    (the same float32 operations in the same order), in about 20 kernels instead of about 100. The GPU's path,
    where a kernel's launch costs more than its work; on a CPU the per-plane version is faster."""
    pos = x[:, None, :] * buf.scales[:, None] + 0.5  # [N, L, 3]
    cell = pos.floor()
    upper = (pos - cell)[:, :, None, :]  # [N, L, 1, 3]
    bits = buf.corner_bits  # [8, 3]
    w = torch.where(bits.bool(), upper, 1.0 - upper)  # [N, L, 8, 3]
    weights = w[..., 0] * w[..., 1] * w[..., 2]  # [N, L, 8], as (x * y) * z in the per-plane version
    vert = cell.int()[:, :, None, :] + bits  # [N, L, 8, 3]
    n_levels = pos.shape[1]
    nd = buf.n_dense
    if nd == n_levels:
        return _dense_rows(vert, buf, nd), weights
    if nd == 0:
        return _hashed_rows(vert, buf, nd), weights
    return torch.cat([_dense_rows(vert[:, :nd], buf, nd), _hashed_rows(vert[:, nd:], buf, nd)], 1), weights


def _dense_rows(vert: Tensor, buf: _Buffers, nd: int) -> Tensor:
    """Rows of the dense levels' corners ``vert`` ``[N, nd, 8, 3]`` -> ``[N, nd, 8]`` int32."""
    s = buf.dense_strides[:, None, :]  # [nd, 1, 3]
    idx = (vert[..., 0] + vert[..., 1] * s[..., 1] + vert[..., 2] * s[..., 2]) % buf.dense_sizes[:, None]
    return idx + buf.offsets[:nd, None]


def _hashed_rows(vert: Tensor, buf: _Buffers, nd: int) -> Tensor:
    """Rows of the hashed levels' corners ``vert`` ``[N, L - nd, 8, 3]`` -> ``[N, L - nd, 8]`` int32 (int32
    products wrap as uint32 ones do)."""
    h = vert * buf.prime_vec
    return ((h[..., 0] ^ h[..., 1] ^ h[..., 2]) & buf.hash_mask) + buf.offsets[nd:, None]


_POOL = ThreadPoolExecutor(max_workers=2)


def _scatter_levels(
    grad: Tensor, rows: Tensor, weights: Tensor, grad_out: Tensor, levels: Iterable[int | slice]
) -> None:
    """``grad[rows*F + f] += weights * grad_out[..., f]`` for some levels, one 1-D scatter per entry of
    ``levels``: a level, or a slice of levels scattered together.

    Pairs of features are added as one complex64 (two float32 side by side): half the scatter
    elements, and 1-D ``scatter_add_`` is far faster on CPU than row-wise ``index_add_``.

    Shapes: rows, weights ``[N, L, 8]``; grad_out ``[N, L, F]``; grad ``[n_entries * F]``.
    """
    n_feat = grad_out.shape[-1]
    pack = 2 if n_feat % 2 == 0 else 1
    target = grad.view(torch.complex64) if pack == 2 else grad
    per_entry = n_feat // pack
    sub = torch.arange(per_entry, device=rows.device)
    for level in levels:
        contrib = weights[:, level, :, None] * grad_out[:, level, None, :]  # [N, (G,) 8, F]
        if pack == 2:
            contrib = contrib.view(torch.complex64)
        index = rows[:, level, :, None].long() * per_entry + sub
        target.scatter_add_(0, index.reshape(-1), contrib.reshape(-1))


def _scatter_together(grad: Tensor, rows: Tensor, weights: Tensor, grad_out: Tensor) -> None:
    """:func:`_scatter_levels` for all levels at once (in groups of levels when the contributions would exceed
    :data:`SCATTER_ELEMENTS`): a GPU's backward, a handful of kernels whatever the number of levels."""
    n, n_levels, _ = rows.shape
    group = max(1, SCATTER_ELEMENTS // max(1, n * 8 * grad_out.shape[-1]))
    _scatter_levels(grad, rows, weights, grad_out, [slice(f, f + group) for f in range(0, n_levels, group)])


class _HashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, params: Tensor, rows: Tensor, weights: Tensor, n_feat: int, together: bool) -> Tensor:  # type: ignore[override]
        n, n_levels, _ = rows.shape
        table = params.view(-1, n_feat)
        out = F.embedding_bag(
            rows.reshape(n * n_levels, 8), table, per_sample_weights=weights.reshape(n * n_levels, 8), mode="sum"
        )
        ctx.save_for_backward(rows, weights)
        ctx.n_params = params.numel()
        ctx.together = together
        return out.view(n, n_levels * n_feat)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        rows, weights = ctx.saved_tensors
        n, n_levels, _ = rows.shape
        grad = torch.zeros(ctx.n_params, dtype=torch.float32, device=grad_out.device)
        if n == 0:  # no point (e.g. every sample of a step left the occupied cells): nothing to scatter
            return grad, None, None, None, None
        g = grad_out.float().reshape(n, n_levels, -1).contiguous()
        if ctx.together:
            _scatter_together(grad, rows, weights, g)
        elif grad.device.type == "cpu" and n_levels > 1:
            # levels write disjoint slices of the table: interleave them over two threads
            jobs = [_POOL.submit(_scatter_levels, grad, rows, weights, g, range(k, n_levels, 2)) for k in (0, 1)]
            for job in jobs:
                job.result()
        else:
            _scatter_levels(grad, rows, weights, g, range(n_levels))
        return grad, None, None, None, None


class TorchHashGrid(nn.Module):
    """Pure-PyTorch multi-resolution hash encoding, parameter-compatible with tiny-cuda-nn.

    ``forward(x)``: ``[N, 3]`` positions in ``[0, 1]`` -> ``[N, n_levels * F]`` float32, level-major.
    Gradients flow to ``params`` only (positions are treated as constants).
    """

    def __init__(self, cfg: HashGridConfig, seed: int = 1337, compile: bool = False):
        super().__init__()
        self.cfg = cfg
        # torch.compile gains little on the gather or the scatter (REFERENCE.md §7), so only the index and
        # weight arithmetic is compiled: about 8 % of a CPU training step, for ~30 s of first compilation.
        self._indices = (
            torch.compile(corner_indices_and_weights, dynamic=True) if compile else corner_indices_and_weights
        )
        self.layout = level_layout(cfg)
        gen = torch.Generator().manual_seed(seed)
        n_params = self.layout.n_entries * cfg.n_features_per_level
        init = (torch.rand(n_params, generator=gen) * 2.0 - 1.0) * 1e-4
        self.params = nn.Parameter(init)
        self._buffers_cache: dict[torch.device, _Buffers] = {}
        self.batched: bool | None = None
        """Broadcast over levels and corners, one scatter in the backward (:func:`corner_indices_and_weights_batched`):
        ``None`` chooses by device (on everything but a CPU)."""

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def _buf(self, device: torch.device) -> _Buffers:
        if device not in self._buffers_cache:
            self._buffers_cache[device] = _Buffers(self.layout, device)
        return self._buffers_cache[device]

    def forward(self, x: Tensor) -> Tensor:
        x, buf = x.float(), self._buf(x.device)
        n_feat = self.cfg.n_features_per_level
        if self.batched or (self.batched is None and x.device.type != "cpu"):
            rows, weights = corner_indices_and_weights_batched(x, self.layout, buf)
            return _HashGridFunction.apply(self.params, rows, weights, n_feat, True)
        if torch.is_grad_enabled() or len(x) <= NO_GRAD_CHUNK:
            rows, weights = self._indices(x, self.layout, buf)
            return _HashGridFunction.apply(self.params, rows, weights, n_feat, False)
        # without gradients nothing has to be kept: encode in pieces whose temporaries stay in the CPU's caches
        out = torch.empty(len(x), self.output_dim, device=x.device)
        for s in range(0, len(x), NO_GRAD_CHUNK):
            rows, weights = self._indices(x[s : s + NO_GRAD_CHUNK], self.layout, buf)
            out[s : s + NO_GRAD_CHUNK] = _HashGridFunction.apply(self.params, rows, weights, n_feat, False)
        return out


def reference_encode(params: Tensor, x: Tensor, cfg: HashGridConfig) -> Tensor:
    """Slow per-level, per-corner reference of the encoding (for tests). Same shapes as forward."""
    layout = level_layout(cfg)
    n_feat = cfg.n_features_per_level
    table = params.view(-1, n_feat)
    feats = []
    for level in range(cfg.n_levels):
        pos = x * layout.scales[level] + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        acc = torch.zeros(x.shape[0], n_feat, dtype=params.dtype)
        for corner in range(8):
            bits = [(corner >> d) & 1 for d in range(3)]
            vert = cell.long() + torch.tensor(bits)
            w = torch.ones(x.shape[0])
            for d in range(3):
                w = w * (frac[:, d] if bits[d] else 1.0 - frac[:, d])
            idx = grid_index(vert, layout.resolutions[level], layout.sizes[level], layout.dense[level])
            acc = acc + w[:, None] * table[layout.offsets[level] + idx]
        feats.append(acc)
    return torch.cat(feats, dim=-1)


def make_hash_grid(
    cfg: HashGridConfig, device: torch.device | str, implementation: str = "auto", compile: bool = False
) -> nn.Module:
    """A hash grid whose parameter is called ``params`` in either implementation.

    ``implementation``: ``"tcnn"`` (requires tinycudann on a CUDA device), ``"torch"``, or ``"auto"``
    (tinycudann when usable, else torch). Input ``[N, 3]`` in ``[0, 1]``; output ``[N, L*F]``.
    """
    from ovseg3d import accel

    tcnn = accel.tcnn(device) if implementation in ("auto", "tcnn") else None
    if implementation == "tcnn" and tcnn is None:
        raise UsageError(
            "--grid-impl tcnn needs tinycudann, installed and passing its test (see the line above), and a CUDA "
            "device; use --grid-impl torch or auto"
        )
    if tcnn is None:
        return TorchHashGrid(cfg, compile=compile).to(device)
    return tcnn.Encoding(3, cfg.tcnn_config()).to(device)
