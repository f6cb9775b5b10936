"""bench_distill's table of 3D against 2D: the median and range of the method's seeds, each ablation beside them."""

from __future__ import annotations

from bench_scripts import load_script


def _row(miou: float, teacher: float = 40.0) -> dict:
    return {"miou": miou, "teacher_miou": teacher, "psnr": 30.0}


def test_the_table_takes_the_median_of_the_seeds_and_lists_each_ablation() -> None:
    bench = load_script("bench_distill")
    result = {
        "scenes": {
            "a": {"full": _row(50.0), "seed1": _row(30.0), "seed2": _row(45.0), "negatives": _row(20.0, 10.0)},
            "b": {"full": _row(38.0)},
        }
    }
    lines = bench.markdown_table(result).splitlines()
    assert lines[0].endswith("| negatives: 2D / 3D |")
    assert "| 50.0 / 30.0 / 45.0 | **45.0** (30.0-50.0) | +5.0 | 10.0 / 20.0 |" in lines[2]
    assert "| **38.0** (38.0-38.0) | -2.0 | — |" in lines[3]
