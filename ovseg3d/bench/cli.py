"""``ovseg3d bench``: list the benchmarks, run one into a result file, make the tables.

    ovseg3d bench list
    ovseg3d bench run masks --scenes demo --variants default --repeats 3 --set steps=1500 --device cpu \
        --work bench/runs --out results/masks.json
    ovseg3d bench table            # print the headline table from results/
    ovseg3d bench table --write    # rewrite the README's and docs/benchmarks.md's generated blocks
    ovseg3d bench table --check    # exit 1 when a block differs from the result files
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ovseg3d.bench import harness, tables

NOT_BENCHMARKS = frozenset({"cli", "harness", "result", "tables"})
"""The package's modules that hold the harness itself; every other module defines ``BENCHMARK``."""


def modules() -> list[str]:
    """The benchmark modules: every module of :mod:`ovseg3d.bench` but the harness's own, each defining
    ``BENCHMARK`` (a :class:`ovseg3d.bench.harness.Benchmark`); a new benchmark is a new module."""
    here = Path(__file__).parent
    names = sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_") and p.stem not in NOT_BENCHMARKS)
    return [f"ovseg3d.bench.{name}" for name in names]


def benchmarks() -> dict[str, harness.Benchmark]:
    """Every declared benchmark by name (importing a module checks its declaration)."""
    found = {}
    for name in modules():
        bench = importlib.import_module(name).BENCHMARK
        found[bench.name] = bench
    return found


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovseg3d bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the benchmarks, their scenes, variants and figures")
    r = sub.add_parser("run", help="run one benchmark into a result file")
    r.add_argument("name", help="the benchmark (ovseg3d bench list)")
    r.add_argument(
        "--scenes",
        nargs="+",
        help=f"scene names or folders (default: the benchmark's; known: {', '.join(harness.SCENES)})",
    )
    r.add_argument(
        "--variants",
        nargs="+",
        help="the benchmark's variants, several joined by '+' where it says so (default: its own)",
    )
    r.add_argument("--repeats", type=int, help="seeded runs of each case (default: the benchmark's)")
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda where there is one)")
    r.add_argument("--preset", help="the config preset of every run: tiny, cpu, gpu (default: the benchmark's)")
    r.add_argument("--work", type=Path, default=Path("bench/runs"), help="runs and generated scenes go here")
    r.add_argument("--out", type=Path, help="the result file (default: results/NAME.json)")
    t = sub.add_parser("table", help="the headline table from results/")
    t.add_argument("--write", action="store_true", help="rewrite the generated blocks of README.md and docs/")
    t.add_argument("--check", action="store_true", help="exit 1 when a generated block differs from the results")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "list":
        for bench in benchmarks().values():
            print(f"{bench.name}: {bench.doc}")
            scenes = ", ".join(bench.scenes) or "none by default (give --scenes)"
            print(f"  scenes {scenes}; variants {', '.join(bench.variants)}; repeats {bench.repeats}")
            print(f"  figures {', '.join(bench.figures) or 'as each case reports them'}")
        return 0
    if args.action == "run":
        known = benchmarks()
        if args.name not in known:
            raise harness.BenchError(f"unknown benchmark '{args.name}'; known: {', '.join(known)}")
        bench = known[args.name]
        out = args.out or tables.RESULTS / f"{bench.name}.json"
        command = "ovseg3d bench " + " ".join(argv)
        harness.run(
            bench, out, args.work, args.scenes, args.variants, args.set, args.repeats, args.device, command, args.preset
        )
        print(f"wrote {out}")
        return 0
    if args.check:
        problems = tables.differences()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    if args.write:
        for page in tables.write():
            print(f"rewrote the table in {page}")
        return 0
    print(tables.markdown())
    return 0
