"""One harness for every benchmark: named scenes, named variants, ``--set`` overrides, seeded repeats, one result.

A benchmark module declares a :class:`Benchmark`: the scenes it runs on by default, its variants (each a set of
config overrides, as ``--set`` gives them), the figures it measures, how many seeded repeats a figure takes, and a
``measure(case)`` function that runs one (scene, variant, seed) and returns its figures. The declaration is checked
when it is made: an unknown scene, or a variant that sets an option the training config does not have, fails there,
before anything runs. :func:`run` then loops scenes x variants x seeds, and writes one result file
(:mod:`ovseg3d.bench.result`) with each figure's runs, median and range.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovseg3d import atomic
from ovseg3d.bench import result as results
from ovseg3d.config import ConfigError, apply_overrides, parse_overrides, resolve_base
from ovseg3d.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
"""The checkout (scene paths below are relative to it)."""

SHARED = ROOT.parent / "shared" / "external-scenes"


class BenchError(UsageError):
    """A benchmark declared or asked for with something the harness does not know: one line."""


@dataclass(frozen=True)
class Scene:
    """A scene a benchmark can name: a folder, or a generated scene made once under the work folder."""

    name: str
    path: Path | None = None
    """A folder (relative to the checkout, or absolute)."""
    synth: dict[str, Any] | None = None
    """Else: ``SynthConfig`` fields of a scene the benchmark generates (``ovseg3d synth``)."""
    note: str = ""

    def __post_init__(self) -> None:
        if self.synth is not None:
            from ovseg3d.synth.config import SynthConfig

            unknown = sorted(set(self.synth) - {f.name for f in dataclasses.fields(SynthConfig)})
            if unknown:
                raise BenchError(f"scene '{self.name}': unknown synth option(s) {', '.join(unknown)}")

    def folder(self, work: Path) -> Path:
        """The scene's folder, generating it under ``work/scenes`` the first time."""
        if self.path is not None:
            return self.path if self.path.is_absolute() else ROOT / self.path
        from ovseg3d.synth import SynthConfig, synthesize

        out = work / "scenes" / self.name
        if not (out / "scene.json").exists():
            print(f"generating scene '{self.name}' -> {out}", flush=True)
            synthesize(SynthConfig(**(self.synth or {})), out)
        return out


SCENES: dict[str, Scene] = {
    s.name: s
    for s in (
        Scene("demo", Path("scenes/demo"), note="the bundled demo (forward-facing, 3D-OVS's format)"),
        Scene("orbit", synth={"cameras": "orbit", "format": "transforms", "seed": 3}, note="a generated 360° room"),
        Scene("tilt10", synth={"seed": 31, "elevation_deg": 10.0}, note="a generated forward room, 10° tilt"),
        Scene("tilt40", synth={"seed": 32, "elevation_deg": 40.0}, note="a generated forward room, 40° tilt"),
        Scene(
            "orbit_high",
            synth={
                "cameras": "orbit",
                "format": "transforms",
                "seed": 33,
                "orbit_min_elevation_deg": 35.0,
                "orbit_max_elevation_deg": 60.0,
            },
            note="a generated 360° room seen from above",
        ),
        Scene("forward", SHARED / "forward", note="a forward room from another generator"),
        Scene("orbit-shared", SHARED / "orbit", note="a 360° room from another generator"),
        Scene(
            "outdoor-colmap-lens", SHARED / "outdoor-colmap-lens", note="an unbounded outdoor scene, another generator"
        ),
    )
}
"""Every scene a benchmark may name (with the generated outdoor cases below). A scene that is not here is refused
when the benchmark is declared; on the command line a scene folder may be given as well."""

OUTDOOR = {"outdoor": True, "cameras": "orbit", "format": "colmap", "lens": "opencv", "width": 320, "height": 240}
"""The generated unbounded scenes' common settings (``ovseg3d synth --outdoor --cameras orbit --format colmap
--lens opencv`` at 320x240); each case below changes a seed, the view count or one property of the capture."""
for _name, _case in {
    "seed5": {"seed": 5, "n_views": 30},
    "seed6": {"seed": 6, "n_views": 30},
    "views16": {"seed": 7, "n_views": 16},
    "views40": {"seed": 8, "n_views": 40},
    "far": {"seed": 9, "n_views": 30, "orbit_distance": 3.0},
    "fine_texture": {"seed": 10, "n_views": 30, "texture_scale": 3.0},
    "no_antialias": {"seed": 11, "n_views": 30, "supersample": 1},
    "wide_lens": {"seed": 12, "n_views": 30, "fov_deg": 80.0},
    **{f"seed7_views{n}": {"seed": 7, "n_views": n} for n in (16, 20, 24, 32, 40)},  # one world, more cameras
}.items():
    SCENES[f"outdoor_{_name}"] = Scene(f"outdoor_{_name}", synth={**OUTDOOR, **_case}, note="a generated outdoor scene")


@dataclass(frozen=True)
class Case:
    """One measurement: a scene, a variant (its overrides merged with ``--set``), a seed, and a work folder."""

    benchmark: str
    scene: str
    folder: Path
    variant: str
    overrides: dict[str, Any]
    seed: int
    work: Path
    device: str = "auto"
    preset: str = "cpu"

    def config(self) -> Any:
        """The preset with this case's overrides; the training config's seed is the repeat's index added to the
        overrides' seed (``--set seed=10 --repeats 3``: 10, 11, 12)."""
        seed = int(self.overrides.get("seed", 0)) + self.seed
        return apply_overrides(resolve_base(self.preset, None), {**self.overrides, "seed": seed}, self.label)

    @property
    def label(self) -> str:
        return f"{self.benchmark}/{self.scene}/{self.variant}/s{self.seed}"


Measure = Callable[[Case], Mapping[str, float]]


def _check_overrides(values: dict[str, Any], source: str, preset: str = "cpu") -> None:
    try:
        apply_overrides(resolve_base(preset, None), values, source)
    except ConfigError as exc:
        raise BenchError(str(exc)) from None


@dataclass(frozen=True)
class Benchmark:
    """What a benchmark runs and what it measures; checked when declared."""

    name: str
    doc: str
    """One line: what it measures."""
    measure: Measure
    figures: tuple[str, ...]
    """The figures ``measure`` returns for each case (per scene and variant they are keyed ``scene/variant/figure``)."""
    scenes: tuple[str, ...] = ("demo",)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"default": {}})
    """Name -> config overrides (the form of ``--set``: nested tables as dicts)."""
    default_variants: tuple[str, ...] = ()
    """The variants run when ``--variants`` is not given (empty: every variant)."""
    repeats: int = 1
    """Seeded runs of each case (figures that vary from run to run want 3 or more: their median and range)."""
    teacher: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    preset: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenes if s not in SCENES]
        if unknown:
            raise BenchError(
                f"benchmark '{self.name}': unknown scene(s) {', '.join(unknown)}; known: {', '.join(SCENES)}"
            )
        if not self.variants:
            raise BenchError(f"benchmark '{self.name}': no variants (give at least {{'default': {{}}}})")
        for variant, values in self.variants.items():
            _check_overrides(dict(values), f"benchmark '{self.name}', variant '{variant}'", self.preset)
        unknown = [v for v in self.default_variants if v not in self.variants]
        if unknown:
            raise BenchError(f"benchmark '{self.name}': unknown default variant(s) {', '.join(unknown)}")
        if self.repeats < 1:
            raise BenchError(f"benchmark '{self.name}': repeats must be 1 or more")
        if self.teacher.get("kind") not in results.TEACHER_KINDS:
            raise BenchError(f"benchmark '{self.name}': teacher kind must be one of {', '.join(results.TEACHER_KINDS)}")


def select(bench: Benchmark, scenes: Sequence[str] | None, variants: Sequence[str] | None) -> tuple[list, list]:
    """The scenes and variants asked for (all the benchmark's when None); an unknown name is one line."""
    scenes = list(scenes or bench.scenes)
    if not scenes:
        raise BenchError(f"bench {bench.name}: it has no default scene: name one or more with --scenes")
    unknown = [s for s in scenes if s not in SCENES and not Path(s).is_dir()]
    if unknown:
        raise BenchError(
            f"bench {bench.name}: unknown scene(s) {', '.join(unknown)} (neither a name nor a folder); "
            f"known: {', '.join(SCENES)}"
        )
    names = list(variants or bench.default_variants or bench.variants)
    unknown = [v for v in names if any(part not in bench.variants for part in v.split("+"))]
    if unknown:
        raise BenchError(
            f"bench {bench.name}: unknown variant(s) {', '.join(unknown)}; known: {', '.join(bench.variants)}"
        )
    return scenes, names


def scene_folder(name: str, work: Path) -> Path:
    """A scene's folder: a name of :data:`SCENES` (generated under ``work`` the first time), or a folder given."""
    return SCENES[name].folder(work) if name in SCENES else Path(name)


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, nested tables merged key by key (a variant, then ``--set``)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def cases(
    bench: Benchmark,
    work: Path,
    scenes: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    sets: Sequence[str] = (),
    repeats: int | None = None,
    device: str = "auto",
    preset: str | None = None,
) -> list[Case]:
    """Every (scene, variant, seed) the benchmark will measure, all checked before the first runs; ``preset``: the
    config preset of every case (default: the benchmark's)."""
    preset = preset or bench.preset
    scene_names, variant_names = select(bench, scenes, variants)
    try:
        extra = parse_overrides(list(sets))
    except ValueError as exc:
        raise BenchError(f"--set: {exc}") from None
    out = []
    for variant in variant_names:
        overrides: dict[str, Any] = {}
        for part in variant.split("+"):  # several variants joined by '+', applied in order
            overrides = merge(overrides, bench.variants[part])
        overrides = merge(overrides, extra)
        _check_overrides(overrides, f"bench {bench.name}, variant '{variant}' with --set", preset)
        for scene in scene_names:
            for seed in range(repeats or bench.repeats):
                out.append(Case(bench.name, scene, Path(), variant, overrides, seed, work, device, preset))
    return out


def teacher_record(bench: Benchmark, case: Case) -> dict[str, Any]:
    """The benchmark's teacher, with what the resolved config says of it (the simulated teacher's errors, which
    ``--set teachers.syn_errors=...`` may change)."""
    record = {"errors": None, "weights": None, **bench.teacher}
    kind = case.config().teachers.kind  # --set teachers.kind=... stands against the benchmark's own
    if kind in results.TEACHER_KINDS and kind != record["kind"] and record["kind"] != "none":
        record = {"kind": kind, "errors": None, "weights": None}
    if record["kind"] == "synthetic":
        record["errors"] = case.config().teachers.syn_errors
    return record


def teachers_record(bench: Benchmark, todo: Sequence[Case]) -> dict[str, Any]:
    """The cases' teacher (:func:`teacher_record`); where variants differ in it (the simulated teacher's errors),
    the first case's, its ``errors`` naming all of them and ``by_variant`` saying whose is whose."""
    records = {c.variant: teacher_record(bench, c) for c in todo}
    first = records[todo[0].variant]
    if all(r == first for r in records.values()):
        return first
    errors = list(dict.fromkeys(str(r["errors"]) for r in records.values()))
    return {**first, "errors": " / ".join(errors), "by_variant": records}


def run(
    bench: Benchmark,
    out: Path,
    work: Path = Path("bench/runs"),
    scenes: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    sets: Sequence[str] = (),
    repeats: int | None = None,
    device: str = "auto",
    command: str | None = None,
    preset: str | None = None,
) -> dict:
    """Measure every case, then write the result file ``out``: each figure's runs over the seeds, median, range.
    Everything but the figures (the cases, the commit, the machine, the teacher) is settled before the first run.

    Each case's figures are kept in ``OUT.partial.json`` as it ends, so the same command after an interruption
    measures only the cases left (with the same settings; other settings start again); the partial file goes when
    the result is written."""
    todo = cases(bench, work, scenes, variants, sets, repeats, device, preset)
    data: dict[str, Any] = {
        "benchmark": bench.name,
        "command": command or " ".join(["ovseg3d", *map(shlex.quote, sys.argv[1:])]),
        "commit": results.commit(),
        "measured": results.today(),
        "machine": {},
        "teacher": teachers_record(bench, todo),
        "settings": {
            "preset": todo[0].preset,
            "scenes": sorted({c.scene for c in todo}),
            "variants": {c.variant: c.overrides for c in todo},  # with --set merged in
            "set": list(sets),
            "repeats": repeats or bench.repeats,
            "device": device,
        },
    }
    runs: dict[str, list[float]] = {}
    start = time.perf_counter()
    partial = partial_path(out)
    done = measured_before(partial, bench.name, data["settings"])
    if done:
        print(f"continuing {partial}: {len(done)} of {len(todo)} cases measured before", flush=True)
    for case in todo:
        if case.label in done:
            figures = done[case.label]
        else:
            case = dataclasses.replace(case, folder=scene_folder(case.scene, work))
            print(f"== {case.label}", flush=True)
            figures = {name: float(value) for name, value in bench.measure(case).items()}
            missing = sorted(set(bench.figures) - set(figures))
            if missing:
                raise BenchError(f"bench {bench.name}: {case.label} did not measure {', '.join(missing)}")
            done[case.label] = figures
            atomic.write_json(partial, {"benchmark": bench.name, "settings": data["settings"], "done": done})
        for name, value in figures.items():
            runs.setdefault(f"{Path(case.scene).name}/{case.variant}/{name}", []).append(float(value))
    data["machine"] = results.machine("cuda" if str(device).startswith("cuda") else "cpu")  # the load at the end
    data["figures"] = {name: results.summary(values) for name, values in runs.items()}
    data["seconds"] = round(time.perf_counter() - start, 1)
    results.write(data, out)
    partial.unlink(missing_ok=True)
    return data


def partial_path(out: Path) -> Path:
    """Where :func:`run` keeps the cases measured so far: ``results/x.json`` -> ``results/x.partial.json``."""
    return Path(out).with_name(Path(out).stem + ".partial.json")


def measured_before(partial: Path, name: str, settings: dict) -> dict[str, dict[str, float]]:
    """The figures of each case a run with the same benchmark and settings measured before it stopped, by label."""
    if not partial.exists():
        return {}
    try:
        saved = json.loads(partial.read_text())
    except (OSError, ValueError):
        return {}
    same = saved.get("benchmark") == name and saved.get("settings") == json.loads(json.dumps(settings))
    return dict(saved.get("done", {})) if same else {}
