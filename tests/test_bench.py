"""The benchmark harness (ovseg3d.bench): result files refused without a machine, commit or teacher; benchmarks
refused at declaration for an unknown scene or option; repeats summarised as median and range; and the README's
and docs/benchmarks.md's tables equal to what the result files give."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ovseg3d.bench import harness, tables
from ovseg3d.bench import result as results
from ovseg3d.bench.cli import benchmarks
from ovseg3d.config import resolve_base


def _result(**changes: object) -> dict:
    data = {
        "benchmark": "toy",
        "command": "ovseg3d bench run toy",
        "commit": "abc1234",
        "measured": "2026-11-28",
        "machine": {"description": "2 CPU cores", "cpu": "x", "cores": 2, "gpu": None},
        "teacher": {"kind": "synthetic", "errors": "persistent", "weights": None},
        "figures": {"demo/default/miou": results.summary([50.0, 30.0, 45.0])},
        "seconds": 1.0,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_the_readme_and_benchmarks_tables_are_what_the_result_files_give():
    assert tables.differences() == []


def test_every_result_file_is_valid():
    files = sorted(tables.RESULTS.glob("*.json"))
    assert files
    for path in files:
        results.load(path)


@pytest.mark.parametrize("missing", ["machine", "commit", "teacher"])
def test_a_result_without_machine_commit_or_teacher_is_refused_in_one_line(tmp_path, missing):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({k: v for k, v in _result().items() if k != missing}))
    with pytest.raises(results.ResultError) as err:
        results.load(path)
    assert str(err.value).count("\n") == 0 and f"no {missing}" in str(err.value) and str(path) in str(err.value)


def test_the_summary_is_the_median_and_range_of_the_runs():
    assert results.summary([50.0, 30.0, 45.0]) == {"runs": [50.0, 30.0, 45.0], "median": 45.0, "min": 30.0, "max": 50.0}


def _measure(case: harness.Case) -> dict[str, float]:
    return {"score": 10.0 + case.seed, "steps": case.config().steps}


def test_an_unknown_scene_or_option_fails_when_declared():
    with pytest.raises(harness.BenchError, match="unknown scene"):
        harness.Benchmark("toy", "a toy", _measure, ("score",), scenes=("demo", "nowhere"))
    with pytest.raises(harness.BenchError, match="no_such_option"):
        harness.Benchmark("toy", "a toy", _measure, ("score",), variants={"bad": {"no_such_option": 1}})
    with pytest.raises(harness.BenchError, match="nope"):
        harness.Benchmark("toy", "a toy", _measure, ("score",), variants={"bad": {"teachers": {"nope": 1}}})


def test_a_bad_set_or_variant_fails_before_anything_runs(tmp_path):
    calls = []
    bench = harness.Benchmark("toy", "a toy", lambda c: calls.append(c) or {"score": 1.0}, ("score",))
    for kwargs, words in [
        ({"sets": ["no_such_option=3"]}, "no_such_option"),
        ({"variants": ["other"]}, "unknown variant"),
        ({"scenes": ["nowhere"]}, "unknown scene"),
    ]:
        with pytest.raises(harness.BenchError, match=words):
            harness.run(bench, tmp_path / "r.json", tmp_path, **kwargs)
    assert calls == [] and not (tmp_path / "r.json").exists()
    sceneless = harness.Benchmark("toy", "a toy", lambda c: calls.append(c) or {"score": 1.0}, ("score",), scenes=())
    with pytest.raises(harness.BenchError, match="--scenes"):
        harness.run(sceneless, tmp_path / "r.json", tmp_path)
    with pytest.raises(harness.BenchError, match="default variant"):
        harness.Benchmark("toy", "a toy", lambda c: {}, ("score",), default_variants=("nope",))


def test_without_variants_the_default_ones_run(tmp_path):
    bench = harness.Benchmark(
        "toy",
        "a toy",
        lambda c: {"score": 1.0},
        ("score",),
        variants={"default": {}, "slow": {"steps": 5}},
        default_variants=("default",),
    )
    assert [c.variant for c in harness.cases(bench, tmp_path)] == ["default"]
    assert [c.variant for c in harness.cases(bench, tmp_path, variants=["slow"])] == ["slow"]
    tiny = harness.cases(bench, tmp_path, preset="tiny")[0]
    assert tiny.preset == "tiny" and tiny.config().steps == resolve_base("tiny", None).steps


def test_the_teacher_recorded_is_the_one_the_runs_use(tmp_path):
    bench = harness.Benchmark("toy", "a toy", lambda c: {"score": 1.0}, ("score",), teacher={"kind": "synthetic"})
    plain = harness.cases(bench, tmp_path)[0]
    assert harness.teacher_record(bench, plain)["kind"] == "synthetic"
    clip = harness.cases(bench, tmp_path, sets=["teachers.kind=clip"])[0]
    assert harness.teacher_record(bench, clip) == {"kind": "clip", "errors": None, "weights": None}
    assert harness.teachers_record(bench, [plain, plain]) == harness.teacher_record(bench, plain)
    bench = dataclasses.replace(bench, variants={"default": {}, "per_view": {"teachers": {"syn_errors": "per-view"}}})
    both = harness.cases(bench, tmp_path, variants=["default", "per_view"])
    record = harness.teachers_record(bench, both)
    assert record["errors"] == "persistent / per-view" and record["by_variant"]["per_view"]["errors"] == "per-view"


def test_a_run_writes_each_figure_over_seeds_with_the_machine_commit_and_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "commit", lambda root=None: "abc1234")  # CI's checkout may not be a git one
    bench = harness.Benchmark(
        "toy", "a toy", _measure, ("score", "steps"), variants={"short": {"steps": 7}}, repeats=3,
        teacher={"kind": "synthetic", "errors": "persistent"},
    )  # fmt: skip
    data = harness.run(bench, tmp_path / "r.json", tmp_path, sets=["max_minutes=0"], command="toy")
    saved = results.load(tmp_path / "r.json")
    assert saved == data and saved["command"] == "toy" and saved["commit"] == "abc1234"
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["description"]
    assert saved["machine"]["cpu_capability"] and isinstance(saved["machine"]["cpu_bf16"], bool)
    assert saved["figures"]["demo/short/score"] == {
        "runs": [10.0, 11.0, 12.0],
        "median": 11.0,
        "min": 10.0,
        "max": 12.0,
    }
    assert saved["figures"]["demo/short/steps"]["median"] == 7.0
    assert saved["settings"]["set"] == ["max_minutes=0"] and saved["teacher"]["errors"] == "persistent"
    joined = harness.run(bench, tmp_path / "j.json", tmp_path, variants=["short+short"], repeats=1, command="toy")
    assert (
        joined["settings"]["variants"] == {"short+short": {"steps": 7}}
        and "demo/short+short/score" in joined["figures"]
    )


def test_the_declared_benchmarks_load():
    assert "masks" in benchmarks()


def test_a_row_without_its_file_says_missing_and_names_the_command(tmp_path):
    row = tables.Row("toy", "toy.json", lambda d: "fig", "ovseg3d bench run toy", "faults")
    assert "**missing**" in tables.markdown((row,), tmp_path) and "`ovseg3d bench run toy`" in tables.markdown(
        (row,), tmp_path
    )
    results.write(_result(measured="2026-11-01"), tmp_path / "toy.json")
    line = tables.markdown((row,), tmp_path).splitlines()[2]
    assert "fig" in line and "2 CPU cores" in line and "simulated, persistent errors" in line
    stale = tables.Row("toy", "toy.json", lambda d: "fig", "c", "faults", since="2026-11-20")
    assert "**stale**" in tables.markdown((stale,), tmp_path)


def _figures(values: dict[str, list[float]]) -> dict:
    return {
        "figures": {
            k: {"runs": v, "median": sorted(v)[len(v) // 2], "min": min(v), "max": max(v)} for k, v in values.items()
        }
    }


def test_the_coverage_and_walls_figures_say_their_medians_from_the_files_keys():
    k = "/data/bonsai/field_only+stride4"
    cover = {
        f"{k}/{n}": [v, v + 0.01, v + 0.02]
        for n, v in (
            ("coverage", 0.9),
            ("consistent_coverage", 0.8),
            ("coverage_precision", 0.97),
            ("coverage_near", 1.0),
            ("coverage_middle", 0.9),
            ("coverage_far", 0.7),
        )
    }
    cover[f"{k}/points"] = [40_000.0] * 3
    text = tables.coverage_figure(_figures(cover))
    assert "covers **91.0 % (90.0-92.0 %, 3 runs)**" in text and "far third 101 / 91 / 71 %" in text
    assert "precision against the field 98.0 %" in text and "40 k points" in text
    walls = {}
    for variant, err in (
        ("random_background+no_visibility+depth_errors", 0.04),
        ("random_background+visibility+depth_errors", 0.16),
    ):
        walls |= {
            f"orbit_s1/{variant}/depth_wall_median_rel_error": [err, err + 0.01, err - 0.01],
            f"orbit_s1/{variant}/depth_wall_within_2pct": [0.3] * 3,
            f"orbit_s1/{variant}/depth_wall_grid_marched": [1.0] * 3,
            f"orbit_s1/{variant}/psnr": [30.0, 31.0, 29.0],
        }
    off, on = tables.walls_figure(_figures(walls)).split("; ")
    assert off.startswith("record off: wall depth error **4.0 % (3.0-5.0 %, 3 runs)**") and "30.00 (29.00-31.00" in off
    assert on.startswith("record on: wall depth error **16.0 % (15.0-17.0 %, 3 runs)**")


def test_the_teacher_views_table_gives_each_ks_coverage_and_median_from_the_file(tmp_path):
    values = {}
    for scene, base in (("demo", 60.0), ("orbit", 40.0)):
        for variant, cover in (("k4", 0.8), ("k12", 0.97), ("all", 1.0)):
            values[f"{scene}/{variant}/coverage"] = [cover] * 3
            values[f"{scene}/{variant}/miou"] = [base + cover, base + cover + 2, base + cover - 1]
        values[f"{scene}/all/views"] = [32.0] * 3
        values[f"{scene}/all/teacher_miou"] = [base - 10] * 3
    lines = tables.teacher_views_table(_figures(values)).splitlines()
    assert lines[0] == "| K | demo: coverage | demo: 3D mIoU | orbit: coverage | orbit: 3D mIoU |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 4", "| 12", "| all 32", "| 2D teacher"]
    assert lines[3] == "| 12 | 97.0 % | 61.0 (60.0-63.0, 3 runs) | 97.0 % | 41.0 (40.0-43.0, 3 runs) |"
    assert lines[5] == "| 2D teacher |  | 50.0 |  | 30.0 |"
    item = tables.Detail("toy", ("toy.json",), tables.teacher_views_table)
    assert tables.detail(item, tmp_path) == "**missing**: no `results/toy.json` yet"


def test_the_lift_sweep_and_video_tables_take_their_cells_from_the_files_keys(tmp_path):
    values = {"demo/default/teacher_miou": [47.6] * 3, "demo/default/miou": [66.0, 68.0, 75.0]}
    for variant, miou in (("lift", 72.0), ("lift_view_filter", 74.0)):
        values[f"demo/{variant}/miou"] = [miou] * 3
    for variant in ("default", "lift", "lift_view_filter"):
        values[f"demo/{variant}/semantic_seconds"] = [10.0, 12.0, 11.0]
    (row,) = tables.lift_table(_figures(values)).splitlines()[2:]
    assert row == (
        "| demo, persistent (47.6) | 68.0 (66.0-75.0, 3 runs) | 72.0 (3 runs alike) | 74.0 (3 runs alike) | +6.0 "
        "| 11.0 / 11.0 / 11.0 |"
    )
    sweep = {}
    for prefix, base in (("", 70.0), ("per_view_teacher+", 90.0)):
        for variant, gain in (("lift_view_filter", 1.0), ("lift_view_filter10+lift_view_strength2.5", 2.0)):
            sweep[f"demo/{prefix}{variant}/train_miou"] = [base + gain]
            sweep[f"demo/{prefix}{variant}/miou"] = [base]
    lines = tables.filter_sweep_table(_figures(sweep)).splitlines()
    assert lines[0] == "| N, strength | demo persistent | demo per-view | mean, training views |"
    assert lines[2] == "| 10, 2.5 | 72.0 / 70.0 | 92.0 / 90.0 | 82.00 |"  # the best mean first
    assert lines[3] == "| 5, 5 (the default) | 71.0 / 70.0 | 91.0 / 90.0 | 81.00 |"
    video = {f"in/lift_k12/{stage}_seconds": [10.0, 30.0, 20.0] for stage in ("prepare", "geometry", "export")}
    video |= {"in/lift_k12/seconds": [30.0, 90.0, 60.0], "in/lift_k12/psnr": [27.5, 28.0, 27.0]}
    lines = tables.video_table(_figures(video)).splitlines()
    assert lines[0] == "| stage, s | run 1 | run 2 | run 3 | median |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| prepare",
        "| geometry",
        "| export",
        "| **stages**",
        "| held out, dB",
    ]
    assert lines[-1] == "| held out, dB | 27.50 | 28.00 | 27.00 | **27.50** |"
    results.write(_result(), tmp_path / "a.json")
    one = tables.detail(tables.Detail("toy", ("a.json",), lambda data: "T"), tmp_path)
    assert one == "T\n\n*From `results/a.json` (3 runs each): 2 CPU cores (2026-11-28, commit abc1234), teacher " + (
        "simulated, persistent errors.*"
    )
    both = tables.Detail("toy", ("a.json", "b.json"), tables.video_table)
    assert tables.detail(both, tmp_path) == "**missing**: no `results/b.json` yet"


def test_the_clock_figure_sets_each_methods_median_beside_the_others_at_each_budget():
    values = {}
    for variant, psnr, steps in (
        ("prop+90s+val0", 29.0, 9000.0),
        ("ovseg3d+30s+val0", 27.5, 2500.0),
        ("prop+30s+val0", 27.0, 3000.0),
        ("ovseg3d+90s+val0", 30.0, 7000.0),
    ):
        k = f".real/bonsai/{variant}"
        values |= {f"{k}/test_psnr": [psnr, psnr + 0.2, psnr - 0.1], f"{k}/steps": [steps] * 3}
        values |= {f"{k}/width": [799.0] * 3, f"{k}/height": [532.0] * 3, f"{k}/test_views": [37.0] * 3}
    text = tables.clock_figure(_figures(values))
    assert text.startswith("799×532, 37 held-out views: 30 s: ovseg3d **27.50 (27.40-27.70, 3 runs) dB** (2500 steps)")
    thirty, ninety = text.split(": ", 1)[1].split("; ")
    assert "nerfacc's prop example **27.00 (26.90-27.20, 3 runs) dB** (3000 steps)" in thirty
    assert ninety.startswith("90 s: ovseg3d **30.00") and ninety.endswith("(9000 steps)")


def test_a_cpu_rows_machine_names_its_vector_level_and_bfloat16_a_gpu_rows_does_not():
    cpu = {"description": "2 CPU cores", "gpu": None, "cpu_capability": "AVX2", "cpu_bf16": False}
    assert tables.machine_text(cpu) == "2 CPU cores, AVX2 without bfloat16"
    assert tables.machine_text({**cpu, "cpu_bf16": True}) == "2 CPU cores, AVX2 with bfloat16"
    assert tables.machine_text({**cpu, "gpu": "H200", "description": "one H200"}) == "one H200"
    assert tables.machine_text({"description": "2 CPU cores"}) == "2 CPU cores"  # files written before the fields


def test_variants_join_with_a_plus_and_a_scene_may_be_a_folder(tmp_path):
    bench = harness.Benchmark(
        "toy", "a toy", _measure, ("score",), variants={"a": {"steps": 5}, "b": {"max_minutes": 0.0, "steps": 9}}
    )
    (case,) = harness.cases(bench, tmp_path, scenes=[str(tmp_path)], variants=["a+b"], sets=["seed=3"])
    assert case.overrides == {"steps": 9, "max_minutes": 0.0, "seed": 3} and case.scene == str(tmp_path)
    with pytest.raises(harness.BenchError, match="unknown variant"):
        harness.cases(bench, tmp_path, variants=["a+c"])


def test_a_generated_scene_with_an_unknown_synth_option_is_refused():
    with pytest.raises(harness.BenchError, match="no_such_setting"):
        harness.Scene("x", synth={"seed": 1, "no_such_setting": 2})
    assert all(s.synth is None or s.synth.get("seed") is not None for s in harness.SCENES.values())


def test_the_commit_comes_from_the_environment_where_there_is_no_git(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSEG3D_COMMIT", "1234abc")
    assert results.commit(tmp_path) == "1234abc"
    monkeypatch.delenv("OVSEG3D_COMMIT")
    with pytest.raises(results.ResultError, match="OVSEG3D_COMMIT"):
        results.commit(tmp_path)  # a folder outside any checkout


def test_an_interrupted_run_measures_only_the_cases_left(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "commit", lambda root=None: "abc1234")
    calls = []

    def measure(case):
        calls.append(case.seed)
        if case.seed == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # the first run stops in its third case
        return {"score": 10.0 + case.seed}

    bench = harness.Benchmark("toy", "a toy", measure, ("score",), repeats=3)
    with pytest.raises(KeyboardInterrupt):
        harness.run(bench, tmp_path / "r.json", tmp_path, command="toy")
    assert harness.partial_path(tmp_path / "r.json").exists() and not (tmp_path / "r.json").exists()
    data = harness.run(bench, tmp_path / "r.json", tmp_path, command="toy")
    assert calls == [0, 1, 2, 2]  # the two measured cases are not run again
    assert data["figures"]["demo/default/score"]["runs"] == [10.0, 11.0, 12.0]
    assert not harness.partial_path(tmp_path / "r.json").exists()
    harness.run(bench, tmp_path / "r.json", tmp_path, sets=["steps=5"], command="toy")
    assert calls[4:] == [0, 1, 2]  # other settings start again


def test_the_field_figure_gives_each_cases_median_and_range_and_the_training_views():
    runs = {"psnr": [24.1, 24.6, 24.3], "ssim": [0.7, 0.72, 0.71], "train_view_psnr": [26.0, 26.4, 26.2]}
    figures = {f"/data/fox/{v}/{k}": results.summary(r) for v in ("no_depth", "depth_light") for k, r in runs.items()}
    figures |= {
        "/data/fox/no_depth/steps": results.summary([1300.0] * 3),
        "/data/fox/depth_light/steps": results.summary([1300.0] * 3),
    }
    text = tables.field_figure(_result(figures=figures))
    assert text.startswith("1300 steps: ")
    assert "fox `depth_light` **24.30 (24.10-24.60, 3 runs) dB** / 0.710 held out (training views 26.20)" in text
    assert text.index("depth_light") < text.index("no_depth")


def test_the_lift_figure_sets_each_teachers_distillation_beside_its_liftings():
    runs = {
        "default": [60.0, 70.0, 65.0],
        "lift": [72.0] * 3,
        "lift_view_filter": [74.0] * 3,
        "per_view_teacher": [90.0, 91.0, 92.0],
        "per_view_teacher+lift": [85.0] * 3,
    }
    figures = {f"demo/{v}/miou": results.summary(r) for v, r in runs.items()}
    figures |= {f"demo/{v}/teacher_miou": results.summary([47.6 if "per" not in v else 69.4] * 3) for v in runs}
    figures |= {f"demo/{v}/semantic_seconds": results.summary([s] * 3) for v, s in (("default", 240.0), ("lift", 10.4))}
    text = tables.lift_figure(_result(figures=figures))
    assert text.startswith("demo, 3D mIoU: persistent errors: distillation 65.0 (60.0-70.0, 3 runs), lifting 72.0 (3")
    assert "with the view filter 74.0" in text and "(2D teacher 47.6)" in text
    assert (
        "per-view errors: distillation 91.0 (90.0-92.0, 3 runs), lifting 85.0 (3 runs alike) (2D teacher 69.4)" in text
    )
    assert text.endswith("semantic stage distillation 240 s, lifting 10 s")
