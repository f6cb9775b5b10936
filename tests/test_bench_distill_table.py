"""The distill benchmark's table of 3D against 2D (:func:`ovseg3d.bench.distill.markdown_table`): the median and
range of the distillation's seeds, and each other variant beside them (a lifting's 3D against the distillation's)."""

from __future__ import annotations

from ovseg3d.bench import distill
from ovseg3d.bench.result import summary


def test_the_table_takes_the_median_of_the_seeds_and_lists_each_variant() -> None:
    figures = {
        "a/default/miou": summary([50.0, 30.0, 45.0]),
        "a/default/teacher_miou": summary([40.0] * 3),
        "a/default/psnr": summary([30.0, 29.0, 31.0]),
        "a/negatives/miou": summary([20.0]),
        "a/negatives/teacher_miou": summary([10.0]),
        "a/lift/miou": summary([44.5]),
        "a/lift/teacher_miou": summary([40.0]),
        "b/default/miou": summary([38.0]),
        "b/default/teacher_miou": summary([40.0]),
    }
    lines = distill.markdown_table({"figures": figures}).splitlines()
    assert lines[0].endswith("| lift: 2D / 3D | negatives: 2D / 3D |")
    assert lines[2] == (
        "| a | 30.00 | 40.0 | 50.0 / 30.0 / 45.0 | **45.0** (30.0-50.0) | +5.0 "
        "| 40.0 / 44.5 (-0.5) | 10.0 / 20.0 (-25.0) |"
    )
    assert lines[3] == "| b | — | 40.0 | 38.0 | **38.0** (38.0-38.0) | -2.0 | — | — |"
