import math

import pytest
import torch

from ovseg3d.field.hashgrid import (
    HashGridConfig,
    TorchHashGrid,
    _scatter_levels,
    _scatter_together,
    corner_indices_and_weights,
    corner_indices_and_weights_batched,
    grid_index,
    level_layout,
    make_hash_grid,
    reference_encode,
)


def test_layout_matches_hand_computed_levels():
    cfg = HashGridConfig(
        n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0
    )
    lay = level_layout(cfg)
    # scale = 2^l * 4 - 1 -> 3, 7, 15; res = ceil(scale) + 1 -> 4, 8, 16
    assert lay.scales == [3.0, 7.0, 15.0]
    assert lay.resolutions == [4, 8, 16]
    # 4^3 = 64 and 8^3 = 512 fit (dense); 16^3 = 4096 > 2^10 is hashed into 1024 entries
    assert lay.sizes == [64, 512, 1024]
    assert lay.dense == [True, True, False]
    assert lay.offsets == [0, 64, 576]
    assert lay.n_entries == 1600


def test_layout_rounds_dense_sizes_to_multiple_of_8():
    cfg = HashGridConfig(n_levels=1, base_resolution=3, per_level_scale=2.0)  # scale 2 -> res 3 -> 27
    assert level_layout(cfg).sizes == [32]


def test_grid_index_hand_computed():
    cells = torch.tensor([[1, 2, 3]])
    assert grid_index(cells, res=4, size=64, dense=True).item() == 1 + 2 * 4 + 3 * 16
    c = (3, 5, 7)
    expected = (c[0] * 1) ^ ((c[1] * 2654435761) % 2**32) ^ ((c[2] * 805459861) % 2**32)
    got = grid_index(torch.tensor([c]), res=100, size=2**19, dense=False).item()
    assert got == expected % 2**19


def test_fast_indices_match_reference_formula_with_wraparound():
    # a fine level so products overflow 32 bits: the int32 path must wrap exactly like uint32
    cfg = HashGridConfig(
        n_levels=6, n_features_per_level=2, log2_hashmap_size=14, base_resolution=16, per_level_scale=4.0
    )
    lay = level_layout(cfg)
    grid = TorchHashGrid(cfg)
    x = torch.rand(500, 3)
    rows, weights = corner_indices_and_weights(x, lay, grid._buf(x.device))
    for level in range(cfg.n_levels):
        pos = x * lay.scales[level] + 0.5
        cell = pos.floor().long()
        for corner in range(8):
            bits = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            ref = grid_index(cell + bits, lay.resolutions[level], lay.sizes[level], lay.dense[level])
            assert torch.equal(rows[:, level, corner].long(), ref + lay.offsets[level])
    torch.testing.assert_close(weights.sum(-1), torch.ones(500, cfg.n_levels))


@pytest.mark.parametrize("dense_levels", ["mixed", "all dense", "all hashed"])
def test_batched_indices_equal_the_per_plane_ones(dense_levels):
    # the GPU's path (broadcast over levels and corners) gives the same rows and bit-identical weights
    base, log2, scale = {"mixed": (16, 14, 2.5), "all dense": (2, 20, 2.0), "all hashed": (64, 10, 2.5)}[dense_levels]
    cfg = HashGridConfig(
        n_levels=6, n_features_per_level=2, log2_hashmap_size=log2, base_resolution=base, per_level_scale=scale
    )
    lay = level_layout(cfg)
    expect_dense = {"mixed": (1, 5), "all dense": (6, 6), "all hashed": (0, 0)}[dense_levels]
    assert expect_dense[0] <= sum(lay.dense) <= expect_dense[1]
    grid = TorchHashGrid(cfg)
    x = torch.rand(700, 3)
    x[:2] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    rows, weights = corner_indices_and_weights(x, lay, grid._buf(x.device))
    rows_b, weights_b = corner_indices_and_weights_batched(x, lay, grid._buf(x.device))
    assert rows_b.dtype == torch.int32 and rows_b.shape == rows.shape
    assert torch.equal(rows_b, rows)
    assert torch.equal(weights_b, weights)


@pytest.mark.parametrize("n_feat, group_elements", [(2, 1 << 26), (2, 1), (4, 5000), (1, 1 << 26)])
def test_scatter_of_all_levels_at_once_equals_the_per_level_scatter(n_feat, group_elements, monkeypatch):
    import ovseg3d.field.hashgrid as hg

    monkeypatch.setattr(hg, "SCATTER_ELEMENTS", group_elements)  # all levels together, one by one, in groups
    cfg = HashGridConfig(n_levels=5, n_features_per_level=n_feat, log2_hashmap_size=9, base_resolution=4)
    lay = level_layout(cfg)
    grid = TorchHashGrid(cfg)
    x = torch.rand(300, 3)
    rows, weights = corner_indices_and_weights(x, lay, grid._buf(x.device))
    g = torch.randn(300, cfg.n_levels, n_feat)
    a = torch.zeros(lay.n_entries * n_feat)
    b = torch.zeros_like(a)
    _scatter_levels(a, rows, weights, g, range(cfg.n_levels))
    _scatter_together(b, rows, weights, g)
    assert a.abs().sum() > 0
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_feat, batched", [(1, None), (2, None), (4, None), (2, True), (1, True)])
def test_forward_and_gradient_match_brute_force(n_feat, batched):
    # batched: the GPU's path (broadcast indices, one scatter), forced on the CPU
    cfg = HashGridConfig(
        n_levels=5, n_features_per_level=n_feat, log2_hashmap_size=11, base_resolution=4, per_level_scale=2.0
    )
    grid = TorchHashGrid(cfg)
    grid.batched = batched
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(400, 3)
    x[:3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 1.0, 0.0]])  # faces and corners of the box
    params64 = grid.params.detach().double().requires_grad_()
    ref = reference_encode(params64, x.double(), cfg)
    grad_out = torch.randn_like(ref)
    ref.backward(grad_out)
    out = grid(x)
    out.backward(grad_out.float())
    assert out.shape == (400, 5 * n_feat)
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grid.params.grad.double(), params64.grad, atol=1e-5, rtol=1e-5)


def test_init_is_uniform_small_like_tcnn():
    grid = TorchHashGrid(HashGridConfig(n_levels=2, log2_hashmap_size=12))
    assert grid.params.abs().max() <= 1e-4
    assert grid.params.std() > 1e-5


def test_per_level_scale_of_config_spans_resolutions():
    cfg = HashGridConfig(n_levels=8, base_resolution=16, per_level_scale=math.exp(math.log(64) / 7))
    layout = level_layout(cfg)
    # the finest level's scale is 16 * 64 - 1 = 1023 up to float32 rounding; whether float32 lands a hair
    # above 1023 (-> tiny-cuda-nn's one-larger level, 1025) depends on the CPU's exp2 kernel (measured:
    # 1024 on one CI machine, 1025 on another), so the test checks the rule rather than the last bit
    assert layout.scales[-1] == pytest.approx(1023.0, abs=1e-3)
    assert layout.resolutions[-1] == math.ceil(layout.scales[-1]) + 1 and layout.resolutions[0] == 16


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tcnn_and_torch_grids_agree_on_the_same_parameters():
    pytest.importorskip("tinycudann")
    cfg = HashGridConfig(
        n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.5
    )
    tcnn_grid = make_hash_grid(cfg, "cuda", "tcnn")
    torch_grid = TorchHashGrid(cfg).cuda()
    assert tcnn_grid.params.numel() == torch_grid.params.numel()  # same level sizes (float32 scales)
    with torch.no_grad():
        torch_grid.params.copy_(torch.randn_like(torch_grid.params))
        tcnn_grid.params.copy_(torch_grid.params.to(tcnn_grid.params.dtype))
    x = torch.rand(10000, 3, device="cuda")
    a = tcnn_grid(x).float()
    b = torch_grid(x)
    torch.testing.assert_close(a, b, atol=2e-2, rtol=1e-2)  # tcnn outputs half precision


@pytest.mark.parametrize(
    ("cfg", "tcnn_n_params"),
    [
        # n_params() of tiny-cuda-nn 2.0's HashGrid for these configs, read on an H100 (torch bindings)
        (HashGridConfig(16, 2, 19, 16, 1.5), 13026992),
        (HashGridConfig(8, 4, 17, 16, 2.0), 3293184),
    ],
)
def test_level_sizes_match_tiny_cuda_nn(cfg, tcnn_n_params):
    # float64 scales give a smaller table for per_level_scale=1.5 (13044816): tcnn works in float32
    assert TorchHashGrid(cfg).params.numel() == tcnn_n_params


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_grid_on_cuda_matches_the_cpu_path():
    # on CUDA the torch grid takes the batched path (broadcast indices, one scatter): same output and gradient
    cfg = HashGridConfig(
        n_levels=16, n_features_per_level=2, log2_hashmap_size=15, base_resolution=16, per_level_scale=1.5
    )
    cpu_grid = TorchHashGrid(cfg)
    with torch.no_grad():
        cpu_grid.params.normal_()
    gpu_grid = TorchHashGrid(cfg).cuda()
    with torch.no_grad():
        gpu_grid.params.copy_(cpu_grid.params)
    x = torch.rand(20000, 3)
    grad_out = torch.randn(20000, cfg.output_dim)
    a = cpu_grid(x)
    a.backward(grad_out)
    b = gpu_grid(x.cuda())
    b.backward(grad_out.cuda())
    torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpu_grid.params.grad.cpu(), cpu_grid.params.grad, atol=1e-4, rtol=1e-4)
