"""The teachers' and the GPU benchmarks (ovseg3d.bench.teachers, ovseg3d.bench.gpu): the resampled tokens' comparison,
the random models made only where no model is given, and the teachers' figures from tiny models on small photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_clip, save_tiny_dino

from ovseg3d.bench import gpu, harness, teachers
from ovseg3d.bench import result as results


def test_tokens_compared_with_themselves_agree_and_a_shuffle_does_not():
    tokens = torch.nn.functional.normalize(torch.randn(6, 8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    same = teachers.compare(tokens, tokens)
    assert same["cos_mean"] == pytest.approx(1.0) and same["cos_min"] == pytest.approx(1.0)
    assert same["similarity_mae"] == pytest.approx(0.0, abs=1e-6)
    shuffled = teachers.compare(tokens.flip(0), tokens)
    assert shuffled["cos_mean"] < 0.5 and shuffled["similarity_mae"] > 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return save_tiny_clip(root / "clip"), save_tiny_dino(root / "dino")


def _case(tmp_path: Path, variant: str, sets: list[str]) -> harness.Case:
    (case,) = harness.cases(teachers.BENCHMARK, tmp_path, variants=[variant], sets=sets)
    return case


def test_given_models_are_used_and_none_is_made(tmp_path, models):
    clip, dino = models
    cfg = teachers.teacher_config(
        _case(tmp_path, "crops", [f"teachers.clip_model={clip}", f"teachers.dino_model={dino}"])
    )
    assert (cfg.kind, cfg.clip_model, cfg.dino_model, cfg.clip_features) == ("clip", str(clip), str(dino), "crops")
    assert not (tmp_path / "models").exists()


def test_the_teachers_figures_from_tiny_models(tmp_path, models, monkeypatch):
    monkeypatch.setattr(results, "commit", lambda root=None: "abc1234")
    monkeypatch.setattr(teachers, "SIZES", ((120, 90), (160, 120)))  # small photos: the same code, seconds
    clip, dino = models
    sets = [f"teachers.clip_model={clip}", f"teachers.dino_model={dino}", "teachers.clip_batch=4"]
    # small windows and DINO input: the proxy's grid still finer than FDA's on the 16:9 frame
    sets += [f"teachers.{k}={v}" for k, v in (("dense_short_side", 112), ("dense_window", 112), ("dense_stride", 56))]
    sets += ["teachers.dino_long_side=112"]
    variants = ["crops", "dense_image", "fda"]
    data = harness.run(teachers.BENCHMARK, tmp_path / "r.json", tmp_path, variants=variants, sets=sets, command="t")
    fig = {k: v["median"] for k, v in results.load(tmp_path / "r.json")["figures"].items()}
    assert data["teacher"]["kind"] == "clip"
    # the crops: a photo's crops at the rate measured on four batches of the larger photo
    assert fig["demo/crops/seconds_120x90"] == pytest.approx(
        fig["demo/crops/crops_120x90"] / fig["demo/crops/crops_per_s"], rel=1e-3
    )
    assert fig["demo/crops/scene_30_minutes"] == pytest.approx(fig["demo/crops/seconds"] / 2, rel=1e-3)
    # dense: the map, then its relevancy and FDA's features on top
    assert fig["demo/dense_image/seconds_160x120"] >= fig["demo/dense_image/map_seconds_160x120"] > 0
    assert fig["demo/dense_image/windows_160x120"] >= 1
    # FDA on the 16:9 frame: from the proxy's pass, close to its own
    assert fig["demo/fda/once_seconds"] > fig["demo/fda/fda_reused_seconds"] > 0
    assert -1 <= fig["demo/fda/cos_p5"] <= fig["demo/fda/cos_mean"] <= 1


def test_the_gpu_scenes_are_known_and_a_run_keeps_the_real_teachers_apart(tmp_path):
    assert {"gpu_forward", "gpu_orbit"} <= set(harness.SCENES)
    assert harness.SCENES["gpu_forward"].synth["width"] == 1000 and harness.SCENES["gpu_orbit"].synth["n_views"] == 150
    cases = harness.cases(gpu.BENCHMARK, tmp_path)
    assert [c.variant for c in cases] == ["default", "real_teachers"] and cases[0].preset == "gpu"
